//! An account's payments by creation time, newest first (what
//! `ListPayments` returns). Each payment has a small pointer item,
//! `C#{newest first}#{payment}` in its shard of the account, written in the
//! same atomic write that creates the payment; its sort key orders newer
//! payments first, so "newest first since T until U" is one range read per
//! shard, merged.
//!
//! Accounts whose payments were written before these pointers existed (0.1.0)
//! are indexed when they are first listed: [`index_by_creation`] writes the
//! missing pointers in id order, a bounded number per call, and records how
//! far it got in the account's `CREATED_INDEX` item, which says "complete"
//! once every payment has its pointer. A new account's first write records
//! it complete: it has no older payments.

use super::*;

pub const CREATED_SK_PREFIX: &str = "C#";
pub const CREATION_INDEX_SK: &str = "CREATED_INDEX";

/// Times are turned around so that a newer payment sorts first: this
/// minus the Unix milliseconds, 13 digits (the year 2286 fits).
const NEWEST_FIRST_BASE: i64 = 9_999_999_999_999;

/// A payment's place in its account's creation order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedPointer {
    pub payment: PaymentName,
    pub created_at: Timestamp,
}

/// How far an account's payments are indexed by creation time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreationIndex {
    /// Every payment of the account has its pointer.
    pub complete: bool,
    /// The sort key of the last payment item indexed (`P#…`), while not
    /// complete.
    pub after: Option<String>,
}

fn newest_first(at: Timestamp) -> String {
    format!(
        "{:013}",
        NEWEST_FIRST_BASE - at.unix_millis().clamp(0, NEWEST_FIRST_BASE)
    )
}

pub fn created_key(payment: &PaymentName, created_at: Timestamp) -> Key {
    Key::new(
        shard_partition(&payment.account, shard_of(payment.payment.as_str())),
        format!(
            "{CREATED_SK_PREFIX}{}#{}",
            newest_first(created_at),
            payment.payment
        ),
    )
}

pub fn created_item(payment: &Payment) -> Item {
    let pointer = CreatedPointer {
        payment: payment.name(),
        created_at: payment.created_at,
    };
    Item {
        key: created_key(&pointer.payment, pointer.created_at),
        version: 1,
        body: encode(&pointer),
        index: None,
        expires_at: None,
    }
}

pub fn creation_index_key(account: &AccountId) -> Key {
    Key::new(account_partition(account), CREATION_INDEX_SK)
}

pub fn creation_index_item(account: &AccountId, index: &CreationIndex, version: u64) -> Item {
    Item {
        key: creation_index_key(account),
        version,
        body: encode(index),
        index: None,
        expires_at: None,
    }
}

/// Where a listing by creation goes on: the sort key of the last pointer
/// returned, without its prefix (`{newest first}#{payment}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedPosition(String);

impl CreatedPosition {
    /// A position read from a page token; `None` if it is not one.
    pub fn parse(text: &str) -> Option<CreatedPosition> {
        let (time, payment) = text.split_once('#')?;
        let well_formed = time.len() == 13
            && time.bytes().all(|byte| byte.is_ascii_digit())
            && PaymentId::new(payment).is_ok();
        well_formed.then(|| CreatedPosition(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a listing goes on after `payment`.
pub fn created_position(payment: &Payment) -> CreatedPosition {
    CreatedPosition(format!(
        "{}#{}",
        newest_first(payment.created_at),
        payment.id
    ))
}

/// Creation times a listing keeps: at or after `since`, before `until`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CreatedWindow {
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

/// One page of an account's payments created in `window`, newest first,
/// after `after`; and where the next page starts, if there is one. The
/// account must be indexed ([`index_by_creation`]).
pub async fn list_payments_by_creation(
    store: &dyn Store,
    account: &AccountId,
    after: Option<&CreatedPosition>,
    window: CreatedWindow,
    limit: usize,
) -> Result<(Vec<Payment>, Option<CreatedPosition>), StoreError> {
    // Newer than `until` sorts before this; '$' follows the '#' after the
    // time, so a payment created exactly at `until` is passed over too.
    let floor = window
        .until
        .map(|until| format!("{CREATED_SK_PREFIX}{}$", newest_first(until)));
    let resume = after.map(|after| format!("{CREATED_SK_PREFIX}{}", after.as_str()));
    let start_after = match (floor, resume) {
        (Some(floor), Some(resume)) => Some(floor.max(resume)),
        (floor, resume) => floor.or(resume),
    };
    // Older than `since` sorts after this.
    let ceiling = window
        .since
        .map(|since| format!("{CREATED_SK_PREFIX}{}$", newest_first(since)));
    let (mut items, mut more) =
        merged_page(store, account, CREATED_SK_PREFIX, start_after, limit).await?;
    if let Some(ceiling) = &ceiling {
        // Older than the window: the listing ends before them.
        if let Some(outside) = items.iter().position(|item| item.key.sk > *ceiling) {
            items.truncate(outside);
            more = false;
        }
    }
    let pointers = (items.iter())
        .map(decode::<CreatedPointer>)
        .collect::<Result<Vec<_>, _>>()?;
    // The payments, read a bounded number at a time, in pointer order.
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    let payments: Vec<Payment> = stream::iter(pointers)
        .map(|pointer| async move {
            let payment = load_payment(store, &pointer.payment).await?;
            payment.map(|payment| payment.value).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "a creation pointer without its payment {}",
                    pointer.payment
                ))
            })
        })
        .buffered(limits::LIST_READS_IN_FLIGHT)
        .try_collect()
        .await?;
    let last = (items.last()).and_then(|item| item.key.sk.strip_prefix(CREATED_SK_PREFIX));
    let next = if more {
        last.and_then(CreatedPosition::parse)
    } else {
        None
    };
    Ok((payments, next))
}

/// Gives every payment of `account` its pointer, at most `budget` payments
/// (in whole batches) and about `CREATION_INDEX_CALL_TIME` in this call,
/// resuming where the last call stopped. `Ok(true)` once the
/// account is completely indexed. Safe to run anywhere and concurrently:
/// a pointer is written only where none is, and progress is recorded under
/// the index item's version.
pub async fn index_by_creation(
    store: &dyn Store,
    account: &AccountId,
    budget: usize,
) -> Result<bool, StoreError> {
    let started = std::time::Instant::now();
    let mut done = 0;
    loop {
        let current: Option<Versioned<CreationIndex>> = store
            .get(creation_index_key(account))
            .await?
            .map(versioned)
            .transpose()?;
        let (after, version) = match &current {
            Some(index) if index.value.complete => return Ok(true),
            Some(index) => (index.value.after.clone(), index.version),
            None => {
                // No account, nothing to index (and its first write
                // records the index complete).
                if load_account(store, account).await?.is_none() {
                    return Ok(true);
                }
                (None, 0)
            }
        };
        let (items, more) = merged_page(
            store,
            account,
            PAYMENT_SK_PREFIX,
            after.clone(),
            limits::CREATION_INDEX_BATCH,
        )
        .await?;
        for item in &items {
            let payment: Payment = decode(item)?;
            let pointer = WriteOp::Put {
                item: created_item(&payment),
                condition: Condition::NotExists,
            };
            match store.transact(vec![pointer]).await {
                Ok(()) | Err(StoreError::ConditionFailed { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        done += items.len();
        let progress = CreationIndex {
            complete: !more,
            after: items.last().map(|item| item.key.sk.clone()).or(after),
        };
        let record = WriteOp::Put {
            item: creation_index_item(account, &progress, version + 1),
            condition: match version {
                0 => Condition::NotExists,
                version => Condition::VersionIs(version),
            },
        };
        match store.transact(vec![record]).await {
            // Another indexer moved on meanwhile: go on from where it is.
            Ok(()) | Err(StoreError::ConditionFailed { .. }) => {}
            Err(error) => return Err(error),
        }
        if progress.complete {
            return Ok(true);
        }
        if done >= budget || started.elapsed() >= limits::CREATION_INDEX_CALL_TIME {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_payments_sort_first_and_positions_are_checked() {
        let name = crate::domain::parse_payment_name("accounts/acme/payments/p1").unwrap();
        let older = created_key(&name, Timestamp::from_unix_millis(1_000));
        let newer = created_key(&name, Timestamp::from_unix_millis(2_000));
        assert!(newer.sk < older.sk);
        assert_eq!(older.sk, "C#9999999998999#p1");
        assert!(CreatedPosition::parse("9999999998999#p1").is_some());
        for bad in [
            "",
            "9999999998999",
            "99#p1",
            "9999999998999#",
            "x999999998999#p1",
        ] {
            assert!(CreatedPosition::parse(bad).is_none(), "{bad}");
        }
    }
}
