//! The body of an audit record: a privileged action, with who asked.

use serde::{Deserialize, Serialize};

use super::{millis, time, Invalid, NameBody, PaymentStateBody, Stored};
use crate::domain::account::AuditRecord;

impl Stored for AuditRecord {
    type Body = AuditBody;
    const FORMAT: u64 = 1;
}

#[derive(Serialize, Deserialize)]
pub(in crate::store::schema) struct AuditBody {
    payment: NameBody,
    at: i64,
    actor: String,
    causes: Vec<String>,
    state: PaymentStateBody,
    version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<u64>,
}

impl From<&AuditRecord> for AuditBody {
    fn from(record: &AuditRecord) -> AuditBody {
        AuditBody {
            payment: NameBody::from(&record.payment),
            at: millis(record.at),
            actor: record.actor.clone(),
            causes: record.causes.clone(),
            state: record.state.into(),
            version: record.version,
            event: record.event,
        }
    }
}

impl TryFrom<AuditBody> for AuditRecord {
    type Error = Invalid;
    fn try_from(body: AuditBody) -> Result<AuditRecord, Invalid> {
        Ok(AuditRecord {
            payment: body.payment.try_into()?,
            at: time(body.at),
            actor: body.actor,
            causes: body.causes,
            state: body.state.into(),
            version: body.version,
            event: body.event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::super::golden::{check, refused};
    use crate::domain::account::AuditRecord;
    use crate::domain::payment::PaymentState;

    const GOLDEN: &str = r#"{"format":1,"payment":{"account":"acme","payment":"pay_1"},"at":1767225601000,"actor":"reviewer-7","causes":["review","dispatched"],"state":"sent","version":3}"#;

    #[test]
    fn audit_records_keep_their_stored_format() {
        let record = AuditRecord {
            payment: fixtures::name(),
            at: fixtures::at(1_000),
            actor: "reviewer-7".into(),
            causes: vec!["review".into(), "dispatched".into()],
            state: PaymentState::Sent,
            version: 3,
            event: None,
        };
        check(&record, GOLDEN);
        // A re-sent event's record names the event.
        let resent = AuditRecord {
            causes: vec!["event_resent".into()],
            event: Some(4),
            ..record
        };
        check(
            &resent,
            &GOLDEN
                .replacen(r#"["review","dispatched"]"#, r#"["event_resent"]"#, 1)
                .replacen(r#""version":3}"#, r#""version":3,"event":4}"#, 1),
        );
        refused::<AuditRecord>(&GOLDEN.replacen(r#""state":"sent""#, r#""state":"lost""#, 1));
    }
}
