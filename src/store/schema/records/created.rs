//! The bodies of the creation-order pointers of payments and of an
//! account's record of that index (see `crate::store::schema::created`).

use serde::{Deserialize, Serialize};

use super::{invalid, millis, time, Invalid, NameBody, Stored};
use crate::store::schema::{CreatedPointer, CreationIndex, PAYMENT_SK_PREFIX};

impl Stored for CreatedPointer {
    type Body = CreatedPointerBody;
    const FORMAT: u64 = 1;
}

#[derive(Serialize, Deserialize)]
pub(in crate::store::schema) struct CreatedPointerBody {
    payment: NameBody,
    created_at: i64,
}

impl From<&CreatedPointer> for CreatedPointerBody {
    fn from(pointer: &CreatedPointer) -> CreatedPointerBody {
        CreatedPointerBody {
            payment: NameBody::from(&pointer.payment),
            created_at: millis(pointer.created_at),
        }
    }
}

impl TryFrom<CreatedPointerBody> for CreatedPointer {
    type Error = Invalid;
    fn try_from(body: CreatedPointerBody) -> Result<CreatedPointer, Invalid> {
        Ok(CreatedPointer {
            payment: body.payment.try_into()?,
            created_at: time(body.created_at),
        })
    }
}

impl Stored for CreationIndex {
    type Body = CreationIndexBody;
    const FORMAT: u64 = 1;
}

#[derive(Serialize, Deserialize)]
pub(in crate::store::schema) struct CreationIndexBody {
    complete: bool,
    after: Option<String>,
}

impl From<&CreationIndex> for CreationIndexBody {
    fn from(index: &CreationIndex) -> CreationIndexBody {
        CreationIndexBody {
            complete: index.complete,
            after: index.after.clone(),
        }
    }
}

impl TryFrom<CreationIndexBody> for CreationIndex {
    type Error = Invalid;
    fn try_from(body: CreationIndexBody) -> Result<CreationIndex, Invalid> {
        if let Some(after) = &body.after {
            if !after.starts_with(PAYMENT_SK_PREFIX) {
                return Err(invalid(format!(
                    "a position {after:?} that is not a payment's"
                )));
            }
        }
        Ok(CreationIndex {
            complete: body.complete,
            after: body.after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::super::golden::{check, refused};
    use crate::store::schema::{CreatedPointer, CreationIndex};

    const POINTER: &str =
        r#"{"format":1,"payment":{"account":"acme","payment":"pay_1"},"created_at":1767225603000}"#;
    const INDEX: &str = r#"{"format":1,"complete":false,"after":"P#pay_1"}"#;

    #[test]
    fn creation_pointers_and_indexes_keep_their_stored_format() {
        let pointer = CreatedPointer {
            payment: fixtures::name(),
            created_at: fixtures::at(3_000),
        };
        check(&pointer, POINTER);
        refused::<CreatedPointer>(&POINTER.replacen("pay_1", "pay#1", 1));
        let index = CreationIndex {
            complete: false,
            after: Some("P#pay_1".into()),
        };
        check(&index, INDEX);
        refused::<CreationIndex>(&INDEX.replacen("P#pay_1", "E#pay_1", 1));
    }
}
