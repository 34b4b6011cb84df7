//! Payment items, and the sparse index of watched payments (reminders, the
//! review queue, stalled payments).

use super::*;

pub const PAYMENT_SK_PREFIX: &str = "P#";

pub fn payment_key(account: &AccountId, payment: &PaymentId) -> Key {
    Key::new(
        shard_partition(account, shard_of(payment.as_str())),
        format!("{PAYMENT_SK_PREFIX}{payment}"),
    )
}

/// The payment's key in the sparse index: present while it is watched.
fn payment_index(payment: &Payment) -> Option<IndexKey> {
    payment.watch.as_ref().map(|watch| {
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
    })
}

pub fn payment_item(payment: &Payment, version: u64) -> Item {
    Item {
        key: payment_key(&payment.account, &payment.id),
        version,
        body: encode(payment),
        index: payment_index(payment),
        expires_at: None,
    }
}

/// Where `list` goes on after `payment`, one of its entries: a page cut
/// short after it (to bound a response's bytes) continues from there.
pub fn waiting_position(list: WaitingList, payment: &Payment) -> Option<IndexPosition> {
    let index = payment_index(payment)?;
    let (family, shard) = index.pk.rsplit_once('#')?;
    let family = list.families().iter().position(|known| *known == family)?;
    IndexPosition::parse(&format!(
        "{family}:{}:{}",
        shard.parse::<usize>().ok()?,
        index.sk
    ))
}

/// A payment item, decoded (the simulator's checker reads every write).
pub fn decode_payment(item: &Item) -> Result<Versioned<Payment>, StoreError> {
    versioned(item.clone())
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

/// One page of a list of waiting payments across accounts, decoded.
pub async fn waiting_payments(
    store: &dyn Store,
    list: WaitingList,
    after: Option<&IndexPosition>,
    limit: usize,
) -> Result<(Vec<Payment>, Option<IndexPosition>), StoreError> {
    let (items, next) = index_page(store, list.families(), None, after, limit).await?;
    let payments = items.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
    Ok((payments, next))
}

/// Payments whose reminder is due by `now`: each partition of the indexes
/// with reminders is read up to `now`, at most `per_partition_limit` from
/// each, so one sweep's cost is bounded whatever piled up.
pub async fn due_reminders(
    store: &dyn Store,
    now: Timestamp,
    per_partition_limit: usize,
) -> Result<Vec<PaymentName>, StoreError> {
    let mut due = Vec::new();
    for family in DUE_FAMILIES {
        for item in due_in_family(store, family, now, per_partition_limit).await? {
            due.push(decode::<Payment>(&item)?.name());
        }
    }
    Ok(due)
}
