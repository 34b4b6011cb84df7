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
//! | created     | `A#{acct}#{shard}`  | `C#{9999999999999 - created ms:013}#{payment}` | – (an account's payments, newest first) |
//! | creation index | `A#{acct}`       | `CREATED_INDEX`  | – (whether every payment has its `C#` item)         |
//! | alert       | `A#{acct}#{shard}`  | `L#{payment}#{stage}#{since:013}#{n}` | `PAGE#nn` / `{at:013}/{acct}/{payment}/{n}` until delivered |
//! | events      | `A#{acct}#{shard}`  | `E#{payment}#{first seq:010}` | `EVENTS#nn` / `{at:013}/{acct}/{payment}/{first seq:010}` (the feed) |
//! | webhook due | `A#{acct}#{shard}`  | `W#{payment}#{first seq:010}` | `HOOK#nn` / `{next attempt:013}/{acct}/{payment}/{first seq:010}` |
//! | inbox       | `A#{acct}#{shard}`  | `X#{bank}#{message id}` | –                                     |
//! | outbox      | `A#{acct}#{shard}`  | `O#{payment}#{n:06}` | `OUTBOX#nn` / `{created:013}/{acct}/{payment}/{n:06}` until acknowledged |
//! | audit       | `A#{acct}#{shard}`  | `U#{at:013}#{payment}#{version:010}[#E{event seq:010}]` | – (an account's range by time) |
//! | incidents   | `RECONCILE`         | `INCIDENTS#{bank}` | – (a bank's reconciliation incidents, by the leader) |
//! | secret      | `SECRETS`           | `PAGE_TOKEN_KEY` | – (written once, by the first node)                 |
//! | (probe)     | `SECRETS`           | `HEALTH_PROBE`   | – (read by the health probe, never written)         |
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
//! (`STALL`, paged or not) or paged and waiting for a person (`PAGED`, a
//! review past its deadline, keyed by when the stall began), and the sort key begins with the due time. "What is due by
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

mod account;
mod alert;
mod audit;
mod cluster;
mod created;
mod events;
mod idempotency;
mod inbox;
mod incidents;
mod movement;
mod outbox;
mod payment;
mod records;
mod secrets;

pub use account::*;
pub use alert::*;
pub use audit::*;
pub use cluster::*;
pub use created::*;
pub use events::*;
pub use idempotency::*;
pub use inbox::*;
pub use incidents::*;
pub use movement::*;
pub use outbox::*;
pub use payment::*;
pub use secrets::*;

use serde::{Deserialize, Serialize};

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
use records::{Invalid, Stored};

/// Index families (each in `ACCOUNT_SHARDS` partitions `{family}#00`…).
/// Watched payments, not stalled: sort key starts with the due time.
const WATCHING: &str = "WATCH";

/// Stalled payments being re-driven: sort key starts with the due time.
const STALLED_REDRIVING: &str = "STALL";

/// Stalled payments on-call was paged for: sort key starts with the stall's
/// beginning; no reminder (a person acts).
const STALLED_PAGED: &str = "PAGED";

/// Payments waiting for a person's review, not stalled: sort key starts
/// with the review deadline (the reminder). `payvisor reviews list` reads it.
const IN_REVIEW: &str = "REVIEW";

/// Pages not yet delivered: sort key starts with when they were decided.
const PAGES_UNDELIVERED: &str = "PAGE";

/// Messages to banks not yet acknowledged, by when they were decided.
const OUTBOX_UNACKNOWLEDGED: &str = "OUTBOX";

/// Every decision's events, by time (the feed).
const EVENT_FEED: &str = "EVENTS";

/// Webhook deliveries pending: sort key starts with the next attempt's time.
const WEBHOOKS_DUE: &str = "HOOK";

/// Families with reminders that fall due.
const DUE_FAMILIES: [&str; 3] = [WATCHING, IN_REVIEW, STALLED_REDRIVING];

/// The lists of waiting payments across accounts. Each is read from its
/// own families of the sparse index; callers name the list, never a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitingList {
    /// Every payment with a watch: start-up recovery resumes them all.
    Watched,
    /// Payments in review, stalled or not (the review queue filters to the
    /// state, as a stalled payment may be in another).
    Review,
    /// Stalled payments, re-driven or paged (`ListStalledPayments`, the
    /// gauge).
    Stalled,
}

impl WaitingList {
    fn families(self) -> &'static [&'static str] {
        match self {
            WaitingList::Watched => &[WATCHING, IN_REVIEW, STALLED_REDRIVING, STALLED_PAGED],
            WaitingList::Review => &[IN_REVIEW, STALLED_REDRIVING, STALLED_PAGED],
            WaitingList::Stalled => &[STALLED_REDRIVING, STALLED_PAGED],
        }
    }
}

/// Where the next page of an index listing starts: handed out by the
/// store with a page, and given back (perhaps by way of a client) for the
/// next. Opaque above the store; [`IndexPosition::parse`] checks one that
/// came back from outside before it reaches a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexPosition(String);

impl IndexPosition {
    /// `None` unless `text` is a position a listing could have handed out.
    pub fn parse(text: &str) -> Option<IndexPosition> {
        parse_index_token(text).map(|_| IndexPosition(text.to_owned()))
    }

    /// The position as text (to wrap in a page token).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

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

/// A body: the value's storage record, its format first
/// (`{"format":1,…}`; see [`records`]).
fn encode<T: Stored>(value: &T) -> Vec<u8> {
    #[derive(Serialize)]
    struct Envelope<'a, B> {
        format: u64,
        #[serde(flatten)]
        body: &'a B,
    }
    // Serialising plain data structs to JSON cannot fail.
    serde_json::to_vec(&Envelope {
        format: T::FORMAT,
        body: &T::Body::from(value),
    })
    .expect("records serialise to JSON")
}

/// Decodes a body written by [`encode`] (or before formats were versioned),
/// refusing a format this build does not know and any invalid value.
fn decode<T: Stored>(item: &Item) -> Result<T, StoreError> {
    #[derive(Deserialize)]
    struct Header {
        format: Option<u64>,
    }
    let corrupt =
        |problem: &dyn std::fmt::Display| StoreError::Corrupt(format!("{:?}: {problem}", item.key));
    let header: Header = serde_json::from_slice(&item.body).map_err(|error| corrupt(&error))?;
    // Bodies written before formats were versioned have no `format`: they
    // are format 1, whose field names are exactly theirs.
    let format = header.format.unwrap_or(1);
    if format != T::FORMAT {
        return Err(StoreError::UnsupportedFormat {
            key: item.key.clone(),
            format,
        });
    }
    let body: T::Body = serde_json::from_slice(&item.body).map_err(|error| corrupt(&error))?;
    body.try_into().map_err(|error: Invalid| corrupt(&error))
}

fn versioned<T: Stored>(item: Item) -> Result<Versioned<T>, StoreError> {
    Ok(Versioned {
        value: decode(&item)?,
        version: item.version,
    })
}

/// Writes `value` at `key` if nothing is there, and returns what is
/// there after: `value`, or what another writer put first. For the
/// records a whole store agrees on (the cluster's settings, shared keys).
async fn written_once<T: records::Stored>(
    store: &dyn Store,
    key: Key,
    value: T,
) -> Result<T, StoreError> {
    let put = WriteOp::Put {
        item: Item {
            key: key.clone(),
            version: 1,
            body: encode(&value),
            index: None,
            expires_at: None,
        },
        condition: Condition::NotExists,
    };
    match store.transact(vec![put]).await {
        Ok(()) => Ok(value),
        Err(StoreError::ConditionFailed { .. }) => {
            let item = store.get(key.clone()).await?.ok_or_else(|| {
                StoreError::Corrupt(format!("{key:?} vanished after being written"))
            })?;
            decode(&item)
        }
        Err(error) => Err(error),
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
    if staged.base_version.is_none() {
        // Its place in the account's creation order (`created`).
        ops.push(created(created_item(&staged.decision.payment)));
    }
    for (sequence, movement) in &staged.movements {
        ops.push(created(movement_item(account, *sequence, movement)));
    }
    if let Some(alert) = &staged.alert {
        ops.push(created(alert_item(alert)));
    }
    for record in &staged.outbox {
        ops.push(created(outbox_item(record)));
    }
    if let Some(record) = &staged.audit {
        ops.push(created(audit_item(record)));
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

/// What is due by `now` in every partition of one index family, at most
/// `per_partition_limit` from each: a sweep's cost is what is due, bounded
/// however much piled up.
async fn due_in_family(
    store: &dyn Store,
    family: &str,
    now: Timestamp,
    per_partition_limit: usize,
) -> Result<Vec<Item>, StoreError> {
    let mut due = Vec::new();
    for shard in 0..limits::ACCOUNT_SHARDS {
        let page = store
            .query_index(IndexQuery {
                index_pk: index_partition(family, shard),
                start_after: None,
                end_at: Some(due_by(now)),
                limit: per_partition_limit,
            })
            .await?;
        due.extend(page.items);
    }
    Ok(due)
}

/// Reads an [`index_page`] token: `{family}:{shard}:{last index sort key}`.
/// `None` unless it is one `index_page` could have made (so a token that
/// came back from a client can be checked before it reaches the store).
fn parse_index_token(token: &str) -> Option<(usize, usize, Option<String>)> {
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
/// up to `end_at` (inclusive) when given. The position is
/// `{family}:{shard}:{last index sort key}`; partitions are read in turn.
async fn index_page(
    store: &dyn Store,
    families: &[&str],
    end_at: Option<&str>,
    after: Option<&IndexPosition>,
    limit: usize,
) -> Result<(Vec<Item>, Option<IndexPosition>), StoreError> {
    let (mut family, mut shard, mut start_after) = match after {
        Some(position) => parse_index_token(position.as_str())
            .ok_or_else(|| StoreError::Corrupt(format!("index position {position:?}")))?,
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
            return Ok((
                items,
                Some(IndexPosition(format!("{family}:{shard}:{after}"))),
            ));
        }
        (family, shard) = if shard + 1 < limits::ACCOUNT_SHARDS {
            (family, shard + 1)
        } else {
            (family + 1, 0)
        };
        if items.len() >= limit && family < families.len() {
            return Ok((items, Some(IndexPosition(format!("{family}:{shard}:")))));
        }
    }
    Ok((items, None))
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
