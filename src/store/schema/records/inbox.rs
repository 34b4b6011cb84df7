//! The body of a bank callback as received (the inbox).

use serde::{Deserialize, Serialize};

use super::{millis, time, Invalid, NameBody, Stored};
use crate::store::schema::InboxRecord;

impl Stored for InboxRecord {
    type Body = InboxBody;
    const FORMAT: u64 = 1;
}

#[derive(Serialize, Deserialize)]
pub(in crate::store::schema) struct InboxBody {
    bank: String,
    message_id: String,
    payment: NameBody,
    kind: String,
    received_at: i64,
    applied: bool,
}

impl From<&InboxRecord> for InboxBody {
    fn from(record: &InboxRecord) -> InboxBody {
        InboxBody {
            bank: record.bank.clone(),
            message_id: record.message_id.clone(),
            payment: NameBody::from(&record.payment),
            kind: record.kind.clone(),
            received_at: millis(record.received_at),
            applied: record.applied,
        }
    }
}

impl TryFrom<InboxBody> for InboxRecord {
    type Error = Invalid;
    fn try_from(body: InboxBody) -> Result<InboxRecord, Invalid> {
        Ok(InboxRecord {
            bank: body.bank,
            message_id: body.message_id,
            payment: body.payment.try_into()?,
            kind: body.kind,
            received_at: time(body.received_at),
            applied: body.applied,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::super::golden::{check, refused};
    use crate::store::schema::InboxRecord;

    const GOLDEN: &str = r#"{"format":1,"bank":"bank-a","message_id":"m-1","payment":{"account":"acme","payment":"pay_1"},"kind":"payment.processed","received_at":1767225603000,"applied":true}"#;

    #[test]
    fn inbox_records_keep_their_stored_format() {
        let record = InboxRecord {
            bank: "bank-a".into(),
            message_id: "m-1".into(),
            payment: fixtures::name(),
            kind: "payment.processed".into(),
            received_at: fixtures::at(3_000),
            applied: true,
        };
        check(&record, GOLDEN);
        refused::<InboxRecord>(&GOLDEN.replacen(r#""account":"acme""#, r#""account":"a/b""#, 1));
    }
}
