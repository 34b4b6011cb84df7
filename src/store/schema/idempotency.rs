//! Idempotency records: what a request id was used for.

use super::*;

pub const IDEMPOTENCY_SK_PREFIX: &str = "I#";

pub fn idempotency_key(account: &AccountId, request_id: &RequestId) -> Key {
    Key::new(
        shard_partition(account, shard_of(request_id.as_str())),
        format!("{IDEMPOTENCY_SK_PREFIX}{}", request_id.as_str()),
    )
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
        // Whole seconds, rounded up: never before the record's expiry.
        expires_at: Some((record.expires_at.unix_millis() + 999).div_euclid(1000)),
    }
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
