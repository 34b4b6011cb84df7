//! Ledger movements, numbered per account, each beside its payment.

use super::*;

pub const MOVEMENT_SK_PREFIX: &str = "M#";

/// A movement lives beside its payment.
pub fn movement_key(account: &AccountId, payment: &PaymentId, sequence: u64) -> Key {
    Key::new(
        shard_partition(account, shard_of(payment.as_str())),
        movement_sk(sequence),
    )
}

pub(super) fn movement_sk(sequence: u64) -> String {
    format!("{MOVEMENT_SK_PREFIX}{sequence:020}")
}

pub fn movement_item(account: &AccountId, sequence: u64, movement: &Movement) -> Item {
    Item {
        key: movement_key(account, &movement.payment, sequence),
        version: 1,
        body: encode(movement),
        index: None,
        expires_at: None,
    }
}

/// A movement item, decoded (the simulator's checker reads every write).
pub fn decode_movement(item: &Item) -> Result<Movement, StoreError> {
    decode(item)
}

/// The sequence number of a movement item, from its key.
pub fn movement_sequence(key: &Key) -> Option<u64> {
    key.sk.strip_prefix(MOVEMENT_SK_PREFIX)?.parse().ok()
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
