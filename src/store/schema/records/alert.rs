//! The body of a page to deliver (the alert outbox).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{millis, stored_enum, time, Invalid, NameBody, StageBody, Stored};
use crate::domain::account::AlertRecord;
use crate::domain::watch::{Alert, PageAction, Severity};

impl Stored for AlertRecord {
    type Body = AlertBody;
    const FORMAT: u64 = 1;
}

#[derive(Serialize, Deserialize)]
pub(in crate::store::schema) struct AlertBody {
    payment: NameBody,
    alert: PageBody,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delivered_at: Option<i64>,
}

stored_enum!(
    /// Trigger or resolve.
    PageActionBody for PageAction {
        Trigger = "trigger",
        Resolve = "resolve",
    }
);

stored_enum!(
    /// PagerDuty's severities.
    SeverityBody for Severity {
        Info = "info",
        Warning = "warning",
        Error = "error",
        Critical = "critical",
    }
);

#[derive(Serialize, Deserialize)]
struct PageBody {
    action: PageActionBody,
    dedup_key: String,
    stage: StageBody,
    stall_since: i64,
    summary: String,
    severity: SeverityBody,
    details: BTreeMap<String, String>,
    at: i64,
}

impl From<&AlertRecord> for AlertBody {
    fn from(record: &AlertRecord) -> AlertBody {
        let alert = &record.alert;
        AlertBody {
            payment: NameBody::from(&record.payment),
            alert: PageBody {
                action: alert.action.into(),
                dedup_key: alert.dedup_key.clone(),
                stage: alert.stage.into(),
                stall_since: millis(alert.stall_since),
                summary: alert.summary.clone(),
                severity: alert.severity.into(),
                details: alert.details.clone(),
                at: millis(alert.at),
            },
            delivered_at: record.delivered_at.map(millis),
        }
    }
}

impl TryFrom<AlertBody> for AlertRecord {
    type Error = Invalid;
    fn try_from(body: AlertBody) -> Result<AlertRecord, Invalid> {
        let page = body.alert;
        Ok(AlertRecord {
            payment: body.payment.try_into()?,
            alert: Alert {
                action: page.action.into(),
                dedup_key: page.dedup_key,
                stage: page.stage.into(),
                stall_since: time(page.stall_since),
                summary: page.summary,
                severity: page.severity.into(),
                details: page.details,
                at: time(page.at),
            },
            delivered_at: body.delivered_at.map(time),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::super::golden::{check, refused};
    use crate::domain::account::AlertRecord;

    const GOLDEN: &str = r#"{"format":1,"payment":{"account":"acme","payment":"pay_1"},"alert":{"action":"trigger","dedup_key":"payvisor/accounts/acme/payments/pay_1/1","stage":"sent","stall_since":1767225601000,"summary":"pay_1 stuck in sent","severity":"critical","details":{"redrives":"3"},"at":1767225660000},"delivered_at":1767225661000}"#;

    #[test]
    fn alerts_keep_their_stored_format() {
        check(&fixtures::alert(), GOLDEN);
        refused::<AlertRecord>(&GOLDEN.replacen(
            r#""severity":"critical""#,
            r#""severity":"fatal""#,
            1,
        ));
    }
}
