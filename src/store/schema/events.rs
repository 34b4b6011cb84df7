//! Each decision's events with their webhook deliveries, the feed (`EVENTS`
//! index) and the pointers of pending deliveries (`HOOK` index).

use super::*;

pub const EVENTS_SK_PREFIX: &str = "E#";

pub const WEBHOOK_DUE_SK_PREFIX: &str = "W#";

pub(super) fn event_tail(payment: &PaymentName, first_seq: u64) -> String {
    format!("{}/{}/{first_seq:010}", payment.account, payment.payment)
}

pub fn event_record_key(payment: &PaymentName, first_seq: u64) -> Key {
    Key::new(
        shard_partition(&payment.account, shard_of(payment.payment.as_str())),
        format!("{EVENTS_SK_PREFIX}{}#{first_seq:010}", payment.payment),
    )
}

/// The events item; its index key places it in the feed by time.
pub fn event_record_item(record: &EventRecord, version: u64) -> Item {
    let tail = event_tail(record.payment(), record.first_seq());
    Item {
        key: event_record_key(record.payment(), record.first_seq()),
        version,
        body: encode(record),
        index: Some(IndexKey {
            pk: index_partition(
                EVENT_FEED,
                shard_of(&format!(
                    "{}/{}",
                    record.payment().account,
                    record.payment().payment
                )),
            ),
            sk: format!("{}/{tail}", time_prefix(record.events[0].at)),
        }),
        expires_at: None,
    }
}

/// Where a reader of the event feed is: opaque above the store (a watcher
/// resumes from one, reconciliation reads a period from one).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FeedPosition(String);

impl FeedPosition {
    /// Just after `record`: the next read starts with what followed it.
    pub fn after(record: &EventRecord) -> FeedPosition {
        FeedPosition(format!(
            "{}/{}",
            time_prefix(record.events[0].at),
            event_tail(record.payment(), record.first_seq())
        ))
    }

    /// Just before everything recorded at `at` or later.
    pub fn before(at: Timestamp) -> FeedPosition {
        FeedPosition(time_prefix(at))
    }
}

/// What the webhook dispatcher reads to find the record, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookDue {
    pub payment: PaymentName,
    pub first_seq: u64,
}

pub fn webhook_due_key(payment: &PaymentName, first_seq: u64) -> Key {
    Key::new(
        shard_partition(&payment.account, shard_of(payment.payment.as_str())),
        format!("{WEBHOOK_DUE_SK_PREFIX}{}#{first_seq:010}", payment.payment),
    )
}

/// The pointer item of a pending delivery, due at `at`.
pub fn webhook_due_item(
    payment: &PaymentName,
    first_seq: u64,
    at: Timestamp,
    version: u64,
) -> Item {
    let tail = event_tail(payment, first_seq);
    Item {
        key: webhook_due_key(payment, first_seq),
        version,
        body: encode(&WebhookDue {
            payment: payment.clone(),
            first_seq,
        }),
        index: Some(IndexKey {
            pk: index_partition(
                WEBHOOKS_DUE,
                shard_of(&format!("{}/{}", payment.account, payment.payment)),
            ),
            sk: format!("{}/{tail}", time_prefix(at)),
        }),
        expires_at: None,
    }
}

pub fn decode_webhook_due(item: &Item) -> Result<WebhookDue, StoreError> {
    decode(item)
}

pub fn decode_event_record(item: &Item) -> Result<Versioned<EventRecord>, StoreError> {
    versioned(item.clone())
}

/// Every event record of one payment, oldest first (a payment has at most a
/// few dozen: its states and its refunds').
pub async fn payment_event_records(
    store: &dyn Store,
    payment: &PaymentName,
) -> Result<Vec<Versioned<EventRecord>>, StoreError> {
    let mut records = Vec::new();
    let mut start_after = None;
    loop {
        let page = store
            .query(Query {
                pk: shard_partition(&payment.account, shard_of(payment.payment.as_str())),
                sk_prefix: format!("{EVENTS_SK_PREFIX}{}#", payment.payment),
                start_after: start_after.take(),
                limit: limits::PAGE_SIZE_MAX,
            })
            .await?;
        for item in page.items {
            records.push(versioned(item)?);
        }
        match page.next {
            Some(next) => start_after = Some(next),
            None => return Ok(records),
        }
    }
}

/// The next records of the feed after `position`, across its shards, in
/// feed order: up to `limit` + 1 from every shard, merged (each shard is
/// sorted, so the first `limit` of the merge are the next `limit` overall).
pub async fn feed_after(
    store: &dyn Store,
    position: Option<&FeedPosition>,
    limit: usize,
) -> Result<Vec<EventRecord>, StoreError> {
    let limit = limit.max(1);
    let mut items = Vec::new();
    for shard in 0..limits::ACCOUNT_SHARDS {
        let page = store
            .query_index(IndexQuery {
                index_pk: index_partition(EVENT_FEED, shard),
                start_after: position.map(|position| position.0.clone()),
                end_at: None,
                limit: limit + 1,
            })
            .await?;
        items.extend(page.items);
    }
    let mut records = items
        .iter()
        .map(decode::<EventRecord>)
        .collect::<Result<Vec<_>, _>>()?;
    records.sort_by_key(FeedPosition::after);
    records.truncate(limit);
    Ok(records)
}

/// Pointers of webhook deliveries due by `now`, at most
/// `per_partition_limit` from each partition of the index.
pub async fn webhooks_due(
    store: &dyn Store,
    now: Timestamp,
    per_partition_limit: usize,
) -> Result<Vec<WebhookDue>, StoreError> {
    due_in_family(store, WEBHOOKS_DUE, now, per_partition_limit)
        .await?
        .iter()
        .map(decode_webhook_due)
        .collect()
}

/// Webhook deliveries pending, at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WebhookBacklog {
    /// Event records with a delivery pending (to any endpoint), counted up
    /// to [`limits::WEBHOOK_BACKLOG_GAUGE_PER_SHARD`] per index partition.
    pub pending: u64,
    /// How long the most overdue of them has been due, in whole seconds
    /// (0 when none is due yet).
    pub overdue_seconds: i64,
}

/// Counts the pending deliveries: the `HOOK` index holds exactly one
/// pointer per event record with a delivery pending, under its next
/// attempt's time, so each partition's first pointer is its most overdue.
pub async fn webhook_backlog(
    store: &dyn Store,
    now: Timestamp,
) -> Result<WebhookBacklog, StoreError> {
    let mut backlog = WebhookBacklog::default();
    for shard in 0..limits::ACCOUNT_SHARDS {
        let page = store
            .query_index(IndexQuery {
                index_pk: index_partition(WEBHOOKS_DUE, shard),
                start_after: None,
                end_at: None,
                limit: limits::WEBHOOK_BACKLOG_GAUGE_PER_SHARD,
            })
            .await?;
        backlog.pending += page.items.len() as u64;
        let first_due = (page.items.first())
            .and_then(|item| item.index.as_ref())
            .and_then(|index| index.sk.get(..13)?.parse::<i64>().ok());
        if let Some(due_ms) = first_due {
            let overdue = (now.unix_millis() - due_ms).div_euclid(1000);
            backlog.overdue_seconds = backlog.overdue_seconds.max(overdue);
        }
    }
    Ok(backlog)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AccountId, PaymentId};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{Condition, WriteOp};

    #[tokio::test]
    async fn the_backlog_counts_pending_deliveries_and_the_most_overdue_ones_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let now = Timestamp::from_unix_millis(1_000_000_000);
        let empty = webhook_backlog(&store, now).await.unwrap();
        assert_eq!(empty, WebhookBacklog::default());
        let name = |id: &str| PaymentName {
            account: AccountId::new("acme").unwrap(),
            payment: PaymentId::new(id).unwrap(),
        };
        // Two due (90 s and 5 s ago), one waiting for its next attempt.
        let pointers = [("p1", -90_000), ("p2", -5_000), ("p3", 60_000)];
        let ops = pointers
            .iter()
            .map(|(id, offset)| WriteOp::Put {
                item: webhook_due_item(&name(id), 1, now.plus_millis(*offset), 1),
                condition: Condition::NotExists,
            })
            .collect();
        store.transact(ops).await.unwrap();
        assert_eq!(
            webhook_backlog(&store, now).await.unwrap(),
            WebhookBacklog {
                pending: 3,
                overdue_seconds: 90
            }
        );
    }
}
