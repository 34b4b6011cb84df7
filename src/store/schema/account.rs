//! The account item: balances, movement counter and velocity log, one per
//! account, written under its version by every command.

use super::*;

pub const ACCOUNT_SK: &str = "ACCOUNT";

pub fn account_key(account: &AccountId) -> Key {
    Key::new(account_partition(account), ACCOUNT_SK)
}

pub fn account_item(account: &AccountId, record: &AccountBook, version: u64) -> Item {
    Item {
        key: account_key(account),
        version,
        body: encode(record),
        index: None,
        expires_at: None,
    }
}

/// An account item, decoded (the simulator's checker reads every write).
pub fn decode_account(item: &Item) -> Result<Versioned<AccountBook>, StoreError> {
    versioned(item.clone())
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
