//! Signed HTTP bodies: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "t.body")>`, the scheme of Stripe's webhooks. payvisor signs its
//! webhooks to merchants this way, and banks sign their callbacks to
//! payvisor the same way (`docs/bank-protocol.md`); the timestamp bounds
//! replays.

/// `t=<unix>,v1=<hex HMAC-SHA256(secret, "t.body")>`.
pub fn sign(secret: &[u8], unix_seconds: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(unix_seconds.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    let tag = context.sign();
    let hex: String = tag
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("t={unix_seconds},v1={hex}")
}

/// Why a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no signature header")]
    Missing,
    #[error("malformed signature header")]
    Malformed,
    #[error("timestamp outside the replay window")]
    Stale,
    #[error("signature does not match")]
    Mismatch,
}

/// Checks a `t=<unix>,v1=<hex>` header over `body` with `secret`: the
/// timestamp within `tolerance_seconds` of `now_unix` (a replay is refused),
/// the HMAC compared in constant time. The receiving side of [`sign`]
/// (payvisor receives bank callbacks signed this way).
pub fn verify(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now_unix: i64,
    tolerance_seconds: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => candidates.push(value),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if (now_unix - timestamp).abs() > tolerance_seconds {
        return Err(SignatureError::Stale);
    }
    let expected = sign(secret, timestamp, body);
    let expected = expected
        .rsplit_once("v1=")
        .map(|(_, hex)| hex)
        .unwrap_or("");
    let matches = candidates.iter().any(|given| {
        given.len() == expected.len()
            && given
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |difference, (a, b)| difference | (a ^ b))
                == 0
    });
    if matches {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value a receiver computes (checked against Python's `hmac` in
    /// `tests/it/webhooks.rs`; this pins the format).
    #[test]
    fn signatures_follow_the_documented_format() {
        // HMAC-SHA256("key", "1.") computed independently with openssl:
        // printf '1.' | openssl dgst -sha256 -hmac key
        let signed = sign(b"key", 1, b"");
        assert_eq!(
            signed,
            "t=1,v1=53123bc365c2fe4bee48bc5cc6cd6c19699147d43513154ed34277c7c063e80f"
        );
        assert_ne!(sign(b"key", 2, b""), signed);
        assert_ne!(sign(b"other", 1, b""), signed);
    }

    #[test]
    fn signatures_are_verified_within_the_replay_window() {
        let body = b"{}";
        let header = sign(b"secret-secret-16", 1_000, body);
        let verify = |header: Option<&str>, secret: &[u8], now| {
            super::verify(secret, header, body, now, 300)
        };
        assert_eq!(verify(Some(&header), b"secret-secret-16", 1_100), Ok(()));
        assert_eq!(
            verify(Some(&header), b"secret-secret-17", 1_100),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&header), b"secret-secret-16", 1_301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(None, b"secret-secret-16", 1_000),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(Some("t=1000"), b"secret-secret-16", 1_000),
            Err(SignatureError::Malformed)
        );
        let tampered = header.replace("t=1000", "t=1001");
        assert_eq!(
            verify(Some(&tampered), b"secret-secret-16", 1_001),
            Err(SignatureError::Mismatch)
        );
    }
}
