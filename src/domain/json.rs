//! Errors of JSON documents an operator writes (access lists, banks and
//! webhook files), told without the values in them: serde's own message
//! quotes a value of the wrong type (`invalid type: integer `4242…``),
//! and that value may be a secret.

/// `error`'s message with any quoted value left out, and where it is.
pub fn without_values(error: &serde_json::Error) -> String {
    let message = error.to_string();
    // serde_json appends " at line L column C"; it is added back below.
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(message, _)| message);
    let message = match message.split_once(", expected ") {
        Some((found, expected))
            if found.starts_with("invalid type: ") || found.starts_with("invalid value: ") =>
        {
            // "invalid type: integer `42`": keep the kind, not the value.
            let kind = found.split(['`', '"']).next().unwrap_or(found).trim_end();
            format!("{kind}, expected {expected}")
        }
        _ => message.to_owned(),
    };
    if error.line() == 0 {
        return message;
    }
    format!(
        "{message} at line {} column {}",
        error.line(),
        error.column()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Endpoint {
        secret: String,
        retries: u8,
    }

    fn error(text: &str) -> String {
        without_values(&serde_json::from_str::<Endpoint>(text).unwrap_err())
    }

    #[test]
    fn wrong_values_are_described_but_not_repeated() {
        let told = error(r#"{"secret": 123456789012345678, "retries": 1}"#);
        assert!(!told.contains("123456789012345678"), "{told}");
        assert!(
            told.starts_with("invalid type: integer, expected a string"),
            "{told}"
        );
        assert!(told.contains("line 1 column"), "{told}");
        let told = error(r#"{"secret": "s3cr3t-value", "retries": "s3cr3t-too"}"#);
        assert!(!told.contains("s3cr3t"), "{told}");
        let told = error(r#"{"secret": "x", "retries": 300}"#);
        assert!(!told.contains("300"), "{told}");
        // What carries no value is told as it is.
        assert!(error(r#"{"secret": "x"}"#).starts_with("missing field `retries`"));
        assert!(error(r#"{"secret": "x", "#).contains("EOF"));
    }
}
