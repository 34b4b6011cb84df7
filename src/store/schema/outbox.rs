//! Messages to banks (the outbox), in the index until acknowledged.

use super::*;

pub const OUTBOX_SK_PREFIX: &str = "O#";

pub fn outbox_key(payment: &PaymentName, seq: u64) -> Key {
    Key::new(
        shard_partition(&payment.account, shard_of(payment.payment.as_str())),
        format!("{OUTBOX_SK_PREFIX}{}#{seq:06}", payment.payment),
    )
}

/// Version 1 when decided (in the `OUTBOX` index), 2 once acknowledged.
pub fn outbox_item(record: &OutboxRecord) -> Item {
    let index = record.acknowledged_at.is_none().then(|| {
        let tail = format!("{}/{}", record.payment.account, record.payment.payment);
        IndexKey {
            pk: index_partition(OUTBOX_UNACKNOWLEDGED, shard_of(&tail)),
            sk: format!(
                "{}/{tail}/{:06}",
                time_prefix(record.created_at),
                record.seq
            ),
        }
    });
    Item {
        key: outbox_key(&record.payment, record.seq),
        version: if record.acknowledged_at.is_some() {
            2
        } else {
            1
        },
        body: encode(record),
        index,
        expires_at: None,
    }
}

/// A payment's messages to banks, oldest first.
pub async fn payment_outbox(
    store: &dyn Store,
    payment: &PaymentName,
) -> Result<Vec<OutboxRecord>, StoreError> {
    let page = store
        .query(Query {
            pk: shard_partition(&payment.account, shard_of(payment.payment.as_str())),
            sk_prefix: format!("{OUTBOX_SK_PREFIX}{}#", payment.payment),
            start_after: None,
            limit: limits::OUTBOX_PER_PAYMENT_MAX,
        })
        .await?;
    page.items.iter().map(decode).collect()
}

/// Messages decided before `before` and still not acknowledged, across
/// shards (bounded by `limit` per shard).
pub async fn unacknowledged_before(
    store: &dyn Store,
    before: Timestamp,
    limit: usize,
) -> Result<Vec<OutboxRecord>, StoreError> {
    due_in_family(store, OUTBOX_UNACKNOWLEDGED, before, limit)
        .await?
        .iter()
        .map(decode::<OutboxRecord>)
        .collect()
}
