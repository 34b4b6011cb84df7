//! The single-table design: how accounts, payments, ledger movements and
//! idempotency records map onto items. The only module that knows key
//! formats.
//!
//! | item        | pk                  | sk               | index (sparse)                                      |
//! |-------------|---------------------|------------------|-----------------------------------------------------|
//! | account     | `A#{acct}`          | `ACCOUNT`        | –                                                   |
//! | payment     | `A#{acct}#{shard}`  | `P#{payment}`    | `WATCH#nn` / `REVIEW#nn` / `STALL#nn` / `PAGED#nn` and `{due:013}/{acct}/{payment}` while watched |
//! | movement    | `A#{acct}#{shard}`  | `M#{seq:020}`    | –                                                   |
//! | idempotency | `A#{acct}#{shard}`  | `I#{request_id}` | –                                                   |
//! | alert       | `A#{acct}#{shard}`  | `L#{payment}#{stage}#{since:013}#{n}` | `PAGE#nn` / `{at:013}/{acct}/{payment}/{n}` until delivered |
//! | events      | `A#{acct}#{shard}`  | `E#{payment}#{first seq:010}` | `EVENTS#nn` / `{at:013}/{acct}/{payment}/{first seq:010}` (the feed) |
//! | webhook due | `A#{acct}#{shard}`  | `W#{payment}#{first seq:010}` | `HOOK#nn` / `{next attempt:013}/{acct}/{payment}/{first seq:010}` |
//! | inbox       | `A#{acct}#{shard}`  | `X#{bank}#{message id}` | –                                     |
//! | outbox      | `A#{acct}#{shard}`  | `O#{payment}#{n:06}` | `OUTBOX#nn` / `{created:013}/{acct}/{payment}/{n:06}` until acknowledged |
//!
//! **Events.** The events of one decision are one item, written with the
//! decision (the event outbox); with them, the state of their delivery to
//! each webhook endpoint. While a delivery is pending, a small pointer item
//! sits in the `HOOK` index at the time of its next attempt, so "what is due
//! now" costs what is due; it is deleted, in the same write, when every
//! endpoint has its events. The `EVENTS` index is the durable feed that
//! `WatchPaymentEvents` resumes from.
//!
//! **Reminders.** A payment that waits carries a watch (see
//! [`crate::domain::watch`]); its index key is the reminder: the family says
//! whether it is merely watched (`WATCH`), stalled and being re-driven
//! (`STALL`) or paged and waiting for a person (`PAGED`, keyed by when the
//! stall began), and the sort key begins with the due time. "What is due by
//! now" is a range read up to now in each shard: its cost is what is due,
//! not the number of payments. The reminder is written with the
//! transition, in the same item, so it can neither be lost nor outlive it.
//!
//! **Hot accounts.** A DynamoDB partition takes about 1,000 write units per
//! second, and one command writes a payment, a movement, an idempotency
//! record and the account item. So that one busy account is not capped by one
//! partition, its items are spread over [`limits::ACCOUNT_SHARDS`]
//! sub-partitions by a stable hash of the payment id (payment and its
//! movements) or of the request id (idempotency record). Only the small
//! account item (balances, movement count) is shared; it is written once per
//! command and keeps the balance invariants exact at account level. Lists
//! merge the shards by sort key. The pending-work index is sharded the same
//! way (`WATCH#00`…), or it would be one hot partition for the whole system.
//! One atomic write may span partitions (DynamoDB transactions do).
//! Ids never contain `#` or `/` (checked at construction), so keys are
//! unambiguous.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{Condition, IndexKey, IndexQuery, Item, Key, Query, Store, StoreError, WriteOp};
use crate::domain::account::StagedDecision;
pub use crate::domain::account::{
    AccountBook, AlertRecord, Delivery, DeliveryState, EventRecord, IdempotencyRecord, OutboxRecord,
};
use crate::domain::ledger::Movement;
use crate::domain::payment::Payment;
use crate::domain::watch::{Alert, PageAction, Stage};
use crate::domain::{AccountId, PaymentId, PaymentName, RequestId, Timestamp};
use crate::limits;

pub const ACCOUNT_SK: &str = "ACCOUNT";
pub const PAYMENT_SK_PREFIX: &str = "P#";
pub const MOVEMENT_SK_PREFIX: &str = "M#";
pub const IDEMPOTENCY_SK_PREFIX: &str = "I#";
pub const ALERT_SK_PREFIX: &str = "L#";
pub const EVENTS_SK_PREFIX: &str = "E#";
pub const WEBHOOK_DUE_SK_PREFIX: &str = "W#";
pub const INBOX_SK_PREFIX: &str = "X#";
pub const OUTBOX_SK_PREFIX: &str = "O#";

/// Index families (each in `ACCOUNT_SHARDS` partitions `{family}#00`…).
/// Watched payments, not stalled: sort key starts with the due time.
pub const WATCHING: &str = "WATCH";
/// Stalled payments being re-driven: sort key starts with the due time.
pub const STALLED_REDRIVING: &str = "STALL";
/// Stalled payments on-call was paged for: sort key starts with the stall's
/// beginning; no reminder (a person acts).
pub const STALLED_PAGED: &str = "PAGED";
/// Payments waiting for a person's review, not stalled: sort key starts
/// with the review deadline (the reminder). `payvisor reviews list` reads it.
pub const IN_REVIEW: &str = "REVIEW";
/// Pages not yet delivered: sort key starts with when they were decided.
pub const PAGES_UNDELIVERED: &str = "PAGE";
/// Messages to banks not yet acknowledged, by when they were decided.
pub const OUTBOX_UNACKNOWLEDGED: &str = "OUTBOX";
/// Every decision's events, by time (the feed).
pub const EVENT_FEED: &str = "EVENTS";
/// Webhook deliveries pending: sort key starts with the next attempt's time.
pub const WEBHOOKS_DUE: &str = "HOOK";
/// Families with reminders that fall due.
pub const DUE_FAMILIES: [&str; 3] = [WATCHING, IN_REVIEW, STALLED_REDRIVING];
/// Every watched payment (start-up recovery reads them all).
pub const WATCHED_FAMILIES: [&str; 4] = [WATCHING, IN_REVIEW, STALLED_REDRIVING, STALLED_PAGED];
/// Where payments in review are (the review queue; stalled ones too).
pub const REVIEW_FAMILIES: [&str; 3] = [IN_REVIEW, STALLED_REDRIVING, STALLED_PAGED];
/// Stalled payments (`ListStalledPayments`, the gauge).
pub const STALLED_FAMILIES: [&str; 2] = [STALLED_REDRIVING, STALLED_PAGED];

/// A decoded item with the version its next writer must condition on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    pub version: u64,
}

/// FNV-1a: a hash that never changes across processes, platforms or Rust
/// versions (keys are stored; std's hasher makes no such promise).
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Which of an account's sub-partitions an id belongs to.
pub fn shard_of(id: &str) -> usize {
    (stable_hash(id) % limits::ACCOUNT_SHARDS as u64) as usize
}

/// The account item's partition.
pub fn account_partition(account: &AccountId) -> String {
    format!("A#{account}")
}

/// One of an account's sub-partitions.
pub fn shard_partition(account: &AccountId, shard: usize) -> String {
    format!("A#{account}#{shard:02}")
}

pub fn account_key(account: &AccountId) -> Key {
    Key::new(account_partition(account), ACCOUNT_SK)
}

pub fn payment_key(account: &AccountId, payment: &PaymentId) -> Key {
    Key::new(
        shard_partition(account, shard_of(payment.as_str())),
        format!("{PAYMENT_SK_PREFIX}{payment}"),
    )
}

/// A movement lives beside its payment.
pub fn movement_key(account: &AccountId, payment: &PaymentId, sequence: u64) -> Key {
    Key::new(
        shard_partition(account, shard_of(payment.as_str())),
        movement_sk(sequence),
    )
}

fn movement_sk(sequence: u64) -> String {
    format!("{MOVEMENT_SK_PREFIX}{sequence:020}")
}

pub fn idempotency_key(account: &AccountId, request_id: &RequestId) -> Key {
    Key::new(
        shard_partition(account, shard_of(request_id.as_str())),
        format!("{IDEMPOTENCY_SK_PREFIX}{}", request_id.as_str()),
    )
}

fn index_partition(family: &str, shard: usize) -> String {
    format!("{family}#{shard:02}")
}

/// A time as the start of an index sort key: fixed width, so byte order is
/// time order (13 digits last until the year 2286).
fn time_prefix(at: Timestamp) -> String {
    format!("{:013}", at.unix_millis().max(0))
}

/// The upper bound of a range read of everything due by `now`.
pub fn due_by(now: Timestamp) -> String {
    // '/' follows the time in every key; '0' sorts after it, so every key
    // of this millisecond is included and none of the next.
    format!("{}0", time_prefix(now))
}

fn alert_ordinal(alert: &Alert) -> &'static str {
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

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising plain data structs to JSON cannot fail.
    serde_json::to_vec(value).expect("records serialise to JSON")
}

fn decode<T: DeserializeOwned>(item: &Item) -> Result<T, StoreError> {
    serde_json::from_slice(&item.body)
        .map_err(|error| StoreError::Corrupt(format!("{:?}: {error}", item.key)))
}

fn versioned<T: DeserializeOwned>(item: Item) -> Result<Versioned<T>, StoreError> {
    Ok(Versioned {
        value: decode(&item)?,
        version: item.version,
    })
}

pub fn payment_item(payment: &Payment, version: u64) -> Item {
    let index = payment.watch.as_ref().map(|watch| {
        let tail = format!("{}/{}", payment.account, payment.id);
        let (family, at) = match watch.due_at {
            Some(due) if watch.is_stalled() => (STALLED_REDRIVING, due),
            Some(due) if watch.stage == Stage::InReview => (IN_REVIEW, due),
            Some(due) => (WATCHING, due),
            None => (STALLED_PAGED, watch.since),
        };
        IndexKey {
            pk: index_partition(family, shard_of(&tail)),
            sk: format!("{}/{tail}", time_prefix(at)),
        }
    });
    Item {
        key: payment_key(&payment.account, &payment.id),
        version,
        body: encode(payment),
        index,
    }
}

pub fn account_item(account: &AccountId, record: &AccountBook, version: u64) -> Item {
    Item {
        key: account_key(account),
        version,
        body: encode(record),
        index: None,
    }
}

pub fn movement_item(account: &AccountId, sequence: u64, movement: &Movement) -> Item {
    Item {
        key: movement_key(account, &movement.payment, sequence),
        version: 1,
        body: encode(movement),
        index: None,
    }
}

/// The items one staged decision writes, appended to `ops` in this order:
/// the idempotency record first (a duplicate request fails there and is
/// replayed), then the payment (created, or under its version), its
/// movements, its page, its messages to banks, and its events with the
/// pointer of their pending deliveries. Every one is conditional.
pub fn staged_writes(account: &AccountId, staged: &StagedDecision, ops: &mut Vec<WriteOp>) {
    let created = |item: Item| WriteOp::Put {
        item,
        condition: Condition::NotExists,
    };
    if let Some((request_id, record)) = &staged.idempotency {
        ops.push(created(idempotency_item(account, request_id, record)));
    }
    ops.push(WriteOp::Put {
        item: payment_item(&staged.decision.payment, staged.version()),
        condition: match staged.base_version {
            None => Condition::NotExists,
            Some(version) => Condition::VersionIs(version),
        },
    });
    for (sequence, movement) in &staged.movements {
        ops.push(created(movement_item(account, *sequence, movement)));
    }
    if let Some(alert) = &staged.alert {
        ops.push(created(alert_item(alert)));
    }
    for record in &staged.outbox {
        ops.push(created(outbox_item(record)));
    }
    if let Some(record) = &staged.events {
        ops.push(created(event_record_item(record, 1)));
        if let Some(due) = record.next_due() {
            ops.push(created(webhook_due_item(
                record.payment(),
                record.first_seq(),
                due,
                1,
            )));
        }
    }
}

pub fn idempotency_item(
    account: &AccountId,
    request_id: &RequestId,
    record: &IdempotencyRecord,
) -> Item {
    Item {
        key: idempotency_key(account, request_id),
        version: 1,
        body: encode(record),
        index: None,
    }
}

fn event_tail(payment: &PaymentName, first_seq: u64) -> String {
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
    }
}

/// Where a record sits in the feed (the resume point of a watcher).
pub fn feed_position(record: &EventRecord) -> String {
    format!(
        "{}/{}",
        time_prefix(record.events[0].at),
        event_tail(record.payment(), record.first_seq())
    )
}

/// The feed position just before everything at `at` or later.
pub fn feed_position_at(at: Timestamp) -> String {
    time_prefix(at)
}

/// What the webhook dispatcher reads to find the record, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    position: Option<&str>,
    limit: usize,
) -> Result<Vec<EventRecord>, StoreError> {
    let limit = limit.max(1);
    let mut items = Vec::new();
    for shard in 0..limits::ACCOUNT_SHARDS {
        let page = store
            .query_index(IndexQuery {
                index_pk: index_partition(EVENT_FEED, shard),
                start_after: position.map(str::to_owned),
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
    records.sort_by_key(feed_position);
    records.truncate(limit);
    Ok(records)
}

/// Pointers of webhook deliveries due by `now` in one shard.
pub async fn webhooks_due(
    store: &dyn Store,
    shard: usize,
    now: Timestamp,
    limit: usize,
) -> Result<Vec<WebhookDue>, StoreError> {
    let page = store
        .query_index(IndexQuery {
            index_pk: index_partition(WEBHOOKS_DUE, shard),
            start_after: None,
            end_at: Some(due_by(now)),
            limit,
        })
        .await?;
    page.items.iter().map(decode_webhook_due).collect()
}

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
    let mut records = Vec::new();
    for shard in 0..limits::ACCOUNT_SHARDS {
        let page = store
            .query_index(IndexQuery {
                index_pk: index_partition(OUTBOX_UNACKNOWLEDGED, shard),
                start_after: None,
                end_at: Some(due_by(before)),
                limit,
            })
            .await?;
        for item in &page.items {
            records.push(decode::<OutboxRecord>(item)?);
        }
    }
    Ok(records)
}

/// A bank callback as received (the inbox): written once, with the
/// decision it caused, keyed by the bank's message id, so a duplicate finds
/// it and changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxRecord {
    pub bank: String,
    pub message_id: String,
    pub payment: PaymentName,
    /// What the message said (`payment.processed`, …).
    pub kind: String,
    pub received_at: Timestamp,
    /// Whether it changed the payment (false: late, duplicate in meaning, or
    /// out of order).
    pub applied: bool,
}

/// Bank names and message ids are checked by the callback endpoint: short,
/// without `#` or `/`.
pub fn inbox_key(payment: &PaymentName, bank: &str, message_id: &str) -> Key {
    Key::new(
        shard_partition(&payment.account, shard_of(payment.payment.as_str())),
        format!("{INBOX_SK_PREFIX}{bank}#{message_id}"),
    )
}

pub fn inbox_item(record: &InboxRecord) -> Item {
    Item {
        key: inbox_key(&record.payment, &record.bank, &record.message_id),
        version: 1,
        body: encode(record),
        index: None,
    }
}

pub async fn load_account(
    store: &dyn Store,
    account: &AccountId,
) -> Result<Option<Versioned<AccountBook>>, StoreError> {
    store
        .get(account_key(account))
        .await?
        .map(versioned)
        .transpose()
}

pub async fn load_payment(
    store: &dyn Store,
    name: &PaymentName,
) -> Result<Option<Versioned<Payment>>, StoreError> {
    store
        .get(payment_key(&name.account, &name.payment))
        .await?
        .map(versioned)
        .transpose()
}

pub async fn load_idempotency(
    store: &dyn Store,
    account: &AccountId,
    request_id: &RequestId,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    match store.get(idempotency_key(account, request_id)).await? {
        Some(item) => decode(&item).map(Some),
        None => Ok(None),
    }
}

/// Reads up to `limit` + 1 items after `start_after` from every shard of an
/// account and merges them by sort key: the first `limit` of the merge are
/// the next page of the whole account (each shard is sorted, so nothing
/// before them can be missing). Returns the page and whether more exist.
async fn merged_page(
    store: &dyn Store,
    account: &AccountId,
    sk_prefix: &str,
    start_after: Option<String>,
    limit: usize,
) -> Result<(Vec<Item>, bool), StoreError> {
    let limit = limit.max(1);
    let mut items = Vec::new();
    for shard in 0..limits::ACCOUNT_SHARDS {
        let page = store
            .query(Query {
                pk: shard_partition(account, shard),
                sk_prefix: sk_prefix.into(),
                start_after: start_after.clone(),
                limit: limit + 1,
            })
            .await?;
        items.extend(page.items);
    }
    items.sort_by(|a, b| a.key.sk.cmp(&b.key.sk));
    let more = items.len() > limit;
    items.truncate(limit);
    Ok((items, more))
}

/// One page of an account's payments, in payment id order.
pub async fn list_payments(
    store: &dyn Store,
    account: &AccountId,
    start_after: Option<&PaymentId>,
    limit: usize,
) -> Result<(Vec<Payment>, Option<PaymentId>), StoreError> {
    let start_after = start_after.map(|id| format!("{PAYMENT_SK_PREFIX}{id}"));
    let (items, more) = merged_page(store, account, PAYMENT_SK_PREFIX, start_after, limit).await?;
    let payments = items
        .iter()
        .map(decode)
        .collect::<Result<Vec<Payment>, _>>()?;
    let next = if more {
        payments.last().map(|payment| payment.id.clone())
    } else {
        None
    };
    Ok((payments, next))
}

/// One page of an account's movements, in sequence order, starting at
/// sequence number `from`.
pub async fn list_movements(
    store: &dyn Store,
    account: &AccountId,
    from: u64,
    limit: usize,
) -> Result<Vec<Movement>, StoreError> {
    let start_after = from.checked_sub(1).map(movement_sk);
    let (items, _) = merged_page(store, account, MOVEMENT_SK_PREFIX, start_after, limit).await?;
    items.iter().map(decode).collect()
}

/// Reads an [`index_page`] token: `{family}:{shard}:{last index sort key}`.
/// `None` unless it is one `index_page` could have made (so a token that
/// came back from a client can be checked before it reaches the store).
pub fn parse_index_token(token: &str) -> Option<(usize, usize, Option<String>)> {
    let mut parts = token.splitn(3, ':');
    let mut small_number = || {
        parts
            .next()
            .and_then(|part| part.parse::<usize>().ok())
            .filter(|number| *number < limits::ACCOUNT_SHARDS)
    };
    let (family, shard) = (small_number()?, small_number()?);
    let after = parts.next()?;
    // Index sort keys are short and hold no control characters.
    if token.len() > limits::INDEX_TOKEN_BYTES_MAX || after.chars().any(char::is_control) {
        return None;
    }
    Some((
        family,
        shard,
        Some(after.to_owned()).filter(|after| !after.is_empty()),
    ))
}

/// One page of an index read across `families`, each in all its shards,
/// up to `end_at` (inclusive) when given. The token is
/// `{family}:{shard}:{last index sort key}`; partitions are read in turn.
pub async fn index_page(
    store: &dyn Store,
    families: &[&str],
    end_at: Option<&str>,
    token: Option<&str>,
    limit: usize,
) -> Result<(Vec<Item>, Option<String>), StoreError> {
    let (mut family, mut shard, mut start_after) = match token {
        Some(token) => parse_index_token(token)
            .ok_or_else(|| StoreError::Corrupt(format!("index page token {token:?}")))?,
        None => (0, 0, None),
    };
    let limit = limit.max(1);
    let mut items = Vec::new();
    // Fill the page from partition after partition, so a sparse index does
    // not hand the caller a string of short or empty pages.
    while family < families.len() {
        let page = store
            .query_index(IndexQuery {
                index_pk: index_partition(families[family], shard),
                start_after: start_after.take(),
                end_at: end_at.map(str::to_owned),
                limit: limit - items.len(),
            })
            .await?;
        items.extend(page.items);
        if let Some(after) = page.next {
            return Ok((items, Some(format!("{family}:{shard}:{after}"))));
        }
        (family, shard) = if shard + 1 < limits::ACCOUNT_SHARDS {
            (family, shard + 1)
        } else {
            (family + 1, 0)
        };
        if items.len() >= limit && family < families.len() {
            return Ok((items, Some(format!("{family}:{shard}:"))));
        }
    }
    Ok((items, None))
}

/// A page of watched payments (families as given), decoded.
pub async fn watched_payments(
    store: &dyn Store,
    families: &[&str],
    end_at: Option<&str>,
    token: Option<&str>,
    limit: usize,
) -> Result<(Vec<Payment>, Option<String>), StoreError> {
    let (items, next) = index_page(store, families, end_at, token, limit).await?;
    let payments = items.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
    Ok((payments, next))
}

/// Reminders due by `now` in one partition of one family: the watchdog's
/// sweep reads each partition this way, bounded.
pub async fn due_reminders(
    store: &dyn Store,
    family: &str,
    shard: usize,
    now: Timestamp,
    limit: usize,
) -> Result<Vec<PaymentName>, StoreError> {
    let page = store
        .query_index(IndexQuery {
            index_pk: index_partition(family, shard),
            start_after: None,
            end_at: Some(due_by(now)),
            limit,
        })
        .await?;
    page.items
        .iter()
        .map(|item| decode::<Payment>(item).map(|payment| payment.name()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::payment::{self, Policy, RefundState};
    use crate::domain::{Currency, Money, Timestamp};

    /// DynamoDB items are limited to 400 KB. The largest payment the limits
    /// allow must stay far below that: under a quarter of it.
    /// One busy account's items spread evenly over its sub-partitions.
    #[test]
    fn a_hot_accounts_items_spread_over_every_shard() {
        let account = AccountId::new("hot").unwrap();
        let mut per_partition = std::collections::HashMap::new();
        for n in 0..16_000 {
            let payment = PaymentId::new(format!("pay_{n}")).unwrap();
            *per_partition
                .entry(payment_key(&account, &payment).pk)
                .or_insert(0) += 1;
            let request = RequestId::new(format!("req-{n}")).unwrap();
            *per_partition
                .entry(idempotency_key(&account, &request).pk)
                .or_insert(0) += 1;
        }
        assert_eq!(per_partition.len(), limits::ACCOUNT_SHARDS);
        // Even within ±15%: no sub-partition takes much more than its share.
        let share = 32_000 / limits::ACCOUNT_SHARDS;
        for (partition, count) in per_partition {
            assert!(
                count > share * 85 / 100 && count < share * 115 / 100,
                "{partition}: {count} of {share}"
            );
        }
        assert!(!payment_key(&account, &PaymentId::new("x").unwrap())
            .pk
            .ends_with(ACCOUNT_SK));
    }

    /// Keys are stored: the shard of an id must never change.
    #[test]
    fn shards_are_stable() {
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            shard_partition(&AccountId::new("acme").unwrap(), shard_of("pay_1")),
            format!("A#acme#{:02}", shard_of("pay_1"))
        );
    }

    #[test]
    fn the_largest_payment_item_stays_far_below_dynamodbs_item_limit() {
        let usd = Currency::from_code("USD").unwrap();
        let metadata: BTreeMap<String, String> = (0..limits::METADATA_ENTRIES_MAX)
            .map(|n| {
                (
                    format!("{n:0width$}", width = limits::METADATA_KEY_BYTES_MAX),
                    "v".repeat(limits::METADATA_VALUE_BYTES_MAX),
                )
            })
            .collect();
        let new = payment::NewPayment {
            account: AccountId::new("a".repeat(limits::RESOURCE_ID_CHARS_MAX)).unwrap(),
            id: PaymentId::new("p".repeat(limits::RESOURCE_ID_CHARS_MAX)).unwrap(),
            amount: Money::from_minor(usd, limits::AMOUNT_MINOR_MAX),
            metadata,
            payer_id: None,
            payer_country: None,
        };
        let at = Timestamp::from_unix_millis(1);
        let mut payment = payment::create(new, None, at, &Policy::default())
            .unwrap()
            .payment;
        payment = payment
            .on_bank_outcome(&payment::BankOutcome::Processed, at, &Policy::default())
            .unwrap()
            .unwrap()
            .payment;
        let reason = "r".repeat(limits::REFUND_REASON_BYTES_MAX);
        for _ in 0..limits::REFUNDS_PER_PAYMENT_MAX {
            payment = payment
                .request_refund(
                    Some(Money::from_minor(usd, 1)),
                    &reason,
                    at,
                    &Policy::default(),
                )
                .unwrap()
                .payment;
        }
        for refund in payment.refunds.iter_mut() {
            refund.state = RefundState::Failed;
            refund.failure_reason = Some(reason.clone());
        }
        while payment.history.len() < limits::HISTORY_ENTRIES_MAX {
            payment.history.push(payment.history[0].clone());
        }
        let item = payment_item(&payment, u64::MAX);
        let bytes = item.body.len() + item.key.pk.len() + item.key.sk.len() + 100;
        assert!(bytes < 100 * 1024, "largest payment item is {bytes} bytes");
    }
}
