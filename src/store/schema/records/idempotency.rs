//! The body of an idempotency record: what a request id was used for.

use serde::{Deserialize, Serialize};

use super::{id, millis, time, Invalid, Stored};
use crate::domain::account::IdempotencyRecord;

impl Stored for IdempotencyRecord {
    type Body = IdempotencyBody;
    const FORMAT: u64 = 1;
}

#[derive(Serialize, Deserialize)]
pub(in crate::store::schema) struct IdempotencyBody {
    fingerprint: String,
    payment: String,
    created_at: i64,
    expires_at: i64,
}

impl From<&IdempotencyRecord> for IdempotencyBody {
    fn from(record: &IdempotencyRecord) -> IdempotencyBody {
        IdempotencyBody {
            fingerprint: record.fingerprint.clone(),
            payment: record.payment.to_string(),
            created_at: millis(record.created_at),
            expires_at: millis(record.expires_at),
        }
    }
}

impl TryFrom<IdempotencyBody> for IdempotencyRecord {
    type Error = Invalid;
    fn try_from(body: IdempotencyBody) -> Result<IdempotencyRecord, Invalid> {
        Ok(IdempotencyRecord {
            fingerprint: body.fingerprint,
            payment: id(body.payment)?,
            created_at: time(body.created_at),
            expires_at: time(body.expires_at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::super::golden::{check, refused};
    use crate::domain::account::IdempotencyRecord;

    const GOLDEN: &str = r#"{"format":1,"fingerprint":"{\"method\":\"create\",\"currency\":\"USD\",\"minor_units\":1250}","payment":"pay_1","created_at":1767225600000,"expires_at":1767312000000}"#;

    #[test]
    fn idempotency_records_keep_their_stored_format() {
        check(&fixtures::idempotency(), GOLDEN);
        refused::<IdempotencyRecord>(&GOLDEN.replacen(r#""pay_1""#, r#""""#, 1));
    }
}
