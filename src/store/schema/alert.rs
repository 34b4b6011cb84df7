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
        expires_at: None,
    }
}

pub fn decode_alert(item: &Item) -> Result<AlertRecord, StoreError> {
    decode(item)
}

/// A page as recorded, if it is.
pub async fn load_alert(
    store: &dyn Store,
    payment: &PaymentName,
    alert: &Alert,
) -> Result<Option<AlertRecord>, StoreError> {
    store
        .get(alert_key(payment, alert))
        .await?
        .as_ref()
        .map(decode_alert)
        .transpose()
}

/// One page of the pages not yet delivered, oldest first per partition.
pub async fn undelivered_alerts(
    store: &dyn Store,
    after: Option<&IndexPosition>,
    limit: usize,
) -> Result<(Vec<AlertRecord>, Option<IndexPosition>), StoreError> {
    let (items, next) = index_page(store, &[PAGES_UNDELIVERED], None, after, limit).await?;
    let records = items.iter().map(decode_alert).collect::<Result<_, _>>()?;
    Ok((records, next))
}
