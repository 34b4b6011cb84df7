//! The body of a message to a bank (the outbox).

use serde::{Deserialize, Serialize};

use super::{currency, millis, time, Invalid, NameBody, Stored};
use crate::domain::account::OutboxRecord;

impl Stored for OutboxRecord {
    type Body = OutboxBody;
    const FORMAT: u64 = 1;
}

#[derive(Serialize, Deserialize)]
pub(in crate::store::schema) struct OutboxBody {
    payment: NameBody,
    seq: u64,
    bank: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refund_id: Option<String>,
    currency: String,
    minor_units: i64,
    created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    acknowledged_at: Option<i64>,
}

impl From<&OutboxRecord> for OutboxBody {
    fn from(record: &OutboxRecord) -> OutboxBody {
        OutboxBody {
            payment: NameBody::from(&record.payment),
            seq: record.seq,
            bank: record.bank.clone(),
            refund_id: record.refund_id.clone(),
            currency: record.currency.clone(),
            minor_units: record.minor_units,
            created_at: millis(record.created_at),
            acknowledged_at: record.acknowledged_at.map(millis),
        }
    }
}

impl TryFrom<OutboxBody> for OutboxRecord {
    type Error = Invalid;
    /// Refuses an unknown currency.
    fn try_from(body: OutboxBody) -> Result<OutboxRecord, Invalid> {
        currency(&body.currency)?;
        Ok(OutboxRecord {
            payment: body.payment.try_into()?,
            seq: body.seq,
            bank: body.bank,
            refund_id: body.refund_id,
            currency: body.currency,
            minor_units: body.minor_units,
            created_at: time(body.created_at),
            acknowledged_at: body.acknowledged_at.map(time),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::super::golden::{check, refused};
    use crate::domain::account::OutboxRecord;

    const GOLDEN: &str = r#"{"format":1,"payment":{"account":"acme","payment":"pay_1"},"seq":2,"bank":"bank-a","refund_id":"r1","currency":"USD","minor_units":500,"created_at":1767225604000,"acknowledged_at":1767225604100}"#;

    #[test]
    fn outbox_records_keep_their_stored_format() {
        check(&fixtures::outbox(), GOLDEN);
        refused::<OutboxRecord>(&GOLDEN.replacen(r#""currency":"USD""#, r#""currency":"usd""#, 1));
    }
}
