//! The single-table design: how accounts, payments, ledger movements and
//! idempotency records map onto items. The only module that knows key
//! formats.
//!
//! | item        | pk          | sk                  | index (sparse)                 |
//! |-------------|-------------|---------------------|--------------------------------|
//! | account     | `A#{acct}`  | `ACCOUNT`           | –                              |
//! | payment     | `A#{acct}`  | `P#{payment}`       | `OPEN`, `{acct}/{payment}` while it has pending work |
//! | movement    | `A#{acct}`  | `M#{seq:020}`       | –                              |
//! | idempotency | `A#{acct}`  | `I#{request_id}`    | –                              |
//!
//! Everything of one account shares a partition, so one atomic write covers a
//! payment, its movement, the account balances and the idempotency record.
//! Ids never contain `#` or `/` (checked at construction), so keys are
//! unambiguous.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{IndexKey, IndexQuery, Item, Key, Query, Store, StoreError};
use crate::domain::payment::Payment;
use crate::domain::{AccountId, PaymentId, PaymentName, RequestId, Timestamp};
use crate::ledger::{Balances, Movement};

pub const ACCOUNT_SK: &str = "ACCOUNT";
pub const PAYMENT_SK_PREFIX: &str = "P#";
pub const MOVEMENT_SK_PREFIX: &str = "M#";
pub const IDEMPOTENCY_SK_PREFIX: &str = "I#";
/// Index partition of payments with pending work (recovery sweeps it).
pub const OPEN_PAYMENTS_INDEX: &str = "OPEN";

/// A decoded item with the version its next writer must condition on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    pub version: u64,
}

/// The account item: balances and how many movements have been written.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AccountRecord {
    pub balances: Balances,
    /// Movements written so far; the next one gets this sequence number.
    pub movement_count: u64,
}

/// What an idempotency key was used for, so a replay can be answered and a
/// reuse with other parameters refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// The canonical form of the original request.
    pub fingerprint: String,
    /// The payment the request created or changed.
    pub payment: PaymentId,
    pub created_at: Timestamp,
    /// Kept at least until then (24 h after creation).
    pub expires_at: Timestamp,
}

pub fn partition(account: &AccountId) -> String {
    format!("A#{account}")
}

pub fn account_key(account: &AccountId) -> Key {
    Key::new(partition(account), ACCOUNT_SK)
}

pub fn payment_key(account: &AccountId, payment: &PaymentId) -> Key {
    Key::new(partition(account), format!("{PAYMENT_SK_PREFIX}{payment}"))
}

pub fn movement_key(account: &AccountId, sequence: u64) -> Key {
    Key::new(
        partition(account),
        format!("{MOVEMENT_SK_PREFIX}{sequence:020}"),
    )
}

pub fn idempotency_key(account: &AccountId, request_id: &RequestId) -> Key {
    Key::new(
        partition(account),
        format!("{IDEMPOTENCY_SK_PREFIX}{}", request_id.as_str()),
    )
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
    let index = payment.has_pending_work().then(|| IndexKey {
        pk: OPEN_PAYMENTS_INDEX.into(),
        sk: format!("{}/{}", payment.account, payment.id),
    });
    Item {
        key: payment_key(&payment.account, &payment.id),
        version,
        body: encode(payment),
        index,
    }
}

pub fn account_item(account: &AccountId, record: &AccountRecord, version: u64) -> Item {
    Item {
        key: account_key(account),
        version,
        body: encode(record),
        index: None,
    }
}

pub fn movement_item(account: &AccountId, sequence: u64, movement: &Movement) -> Item {
    Item {
        key: movement_key(account, sequence),
        version: 1,
        body: encode(movement),
        index: None,
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

pub async fn load_account(
    store: &dyn Store,
    account: &AccountId,
) -> Result<Option<Versioned<AccountRecord>>, StoreError> {
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

/// One page of an account's payments, in payment id order.
pub async fn list_payments(
    store: &dyn Store,
    account: &AccountId,
    start_after: Option<&PaymentId>,
    limit: usize,
) -> Result<(Vec<Payment>, Option<PaymentId>), StoreError> {
    let page = store
        .query(Query {
            pk: partition(account),
            sk_prefix: PAYMENT_SK_PREFIX.into(),
            start_after: start_after.map(|id| format!("{PAYMENT_SK_PREFIX}{id}")),
            limit,
        })
        .await?;
    let payments = page
        .items
        .iter()
        .map(decode)
        .collect::<Result<Vec<Payment>, _>>()?;
    let next = match page.next {
        Some(sk) => Some(
            sk.strip_prefix(PAYMENT_SK_PREFIX)
                .and_then(|id| PaymentId::new(id).ok())
                .ok_or_else(|| StoreError::Corrupt(format!("payment sort key {sk}")))?,
        ),
        None => None,
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
    let start_after = from
        .checked_sub(1)
        .map(|previous| movement_key(account, previous).sk);
    let page = store
        .query(Query {
            pk: partition(account),
            sk_prefix: MOVEMENT_SK_PREFIX.into(),
            start_after,
            limit,
        })
        .await?;
    page.items.iter().map(decode).collect()
}

/// One page of payments with pending work, across all accounts.
pub async fn open_payments(
    store: &dyn Store,
    start_after: Option<String>,
    limit: usize,
) -> Result<(Vec<PaymentName>, Option<String>), StoreError> {
    let page = store
        .query_index(IndexQuery {
            index_pk: OPEN_PAYMENTS_INDEX.into(),
            start_after,
            limit,
        })
        .await?;
    let names = page
        .items
        .iter()
        .map(|item| decode::<Payment>(item).map(|payment| payment.name()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((names, page.next))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::payment::{self, Policy, RefundState};
    use crate::domain::{Currency, Money, Timestamp};
    use crate::limits;

    /// DynamoDB items are limited to 400 KB. The largest payment the limits
    /// allow must stay far below that: under a quarter of it.
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
        };
        let at = Timestamp::from_unix_millis(1);
        let mut payment = payment::create(new, at, &Policy::default())
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
                .request_refund(Some(Money::from_minor(usd, 1)), &reason, at)
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
