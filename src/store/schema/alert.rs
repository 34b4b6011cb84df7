//! Pages to deliver (the alert outbox), in the index until delivered.

use super::*;

pub const ALERT_SK_PREFIX: &str = "L#";

pub(super) fn alert_ordinal(alert: &Alert) -> &'static str {
    // A resolve sorts after its trigger.
    match alert.action {
        PageAction::Trigger => "1",
        PageAction::Resolve => "2",
    }
}

pub fn alert_key(payment: &PaymentName, alert: &Alert) -> Key {
    Key::new(
        shard_partition(&payment.account, shard_of(payment.payment.as_str())),
        format!(
            "{ALERT_SK_PREFIX}{}#{}#{}#{}",
            payment.payment,
            alert.stage,
            time_prefix(alert.stall_since),
            alert_ordinal(alert)
        ),
    )
}

/// The alert item: version 1 when decided, 2 once delivered.
pub fn alert_item(record: &AlertRecord) -> Item {
    let index = record.delivered_at.is_none().then(|| {
        let tail = format!(
            "{}/{}/{}",
            record.payment.account,
            record.payment.payment,
            alert_ordinal(&record.alert)
        );
        IndexKey {
            pk: index_partition(PAGES_UNDELIVERED, shard_of(&tail)),
            sk: format!("{}/{tail}", time_prefix(record.alert.at)),
        }
    });
    Item {
        key: alert_key(&record.payment, &record.alert),
        version: if record.delivered_at.is_some() { 2 } else { 1 },
        body: encode(record),
        index,
    }
}

pub fn decode_alert(item: &Item) -> Result<AlertRecord, StoreError> {
    decode(item)
}
