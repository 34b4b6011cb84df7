//! Secrets the nodes of one store share: created once, by the first node
//! that needs one, and read by every later one (strongly consistent), so
//! what one node seals another opens.

use super::*;

const SECRETS_PARTITION: &str = "SECRETS";
const PAGE_TOKEN_KEY_SK: &str = "PAGE_TOKEN_KEY";

/// The key that seals cross-account page tokens (see
/// `crate::grpc::page_token`): 32 random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct PageTokenKey(pub [u8; 32]);

impl std::fmt::Debug for PageTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokenKey(…)")
    }
}

/// Never written: the health probe's read costs the smallest read there is.
const HEALTH_PROBE_SK: &str = "HEALTH_PROBE";

/// One strongly consistent read of a fixed key that is never written: what
/// the health probe asks of the store to learn whether it answers.
pub async fn probe(store: &dyn Store) -> Result<(), StoreError> {
    store
        .get(Key::new(SECRETS_PARTITION, HEALTH_PROBE_SK))
        .await
        .map(|_| ())
}

fn page_token_key_key() -> Key {
    Key::new(SECRETS_PARTITION, PAGE_TOKEN_KEY_SK)
}

/// The store's page-token key: `fresh` if no node has recorded one yet
/// (the caller draws it: the schema reads no randomness), else the one
/// recorded.
pub async fn page_token_key(
    store: &dyn Store,
    fresh: PageTokenKey,
) -> Result<PageTokenKey, StoreError> {
    // Read first: every later start finds it, without a failed write.
    if let Some(item) = store.get(page_token_key_key()).await? {
        return decode(&item);
    }
    written_once(store, page_token_key_key(), fresh).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    #[tokio::test]
    async fn the_first_key_recorded_is_every_later_callers() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let first = page_token_key(&store, PageTokenKey([1; 32])).await.unwrap();
        assert_eq!(first, PageTokenKey([1; 32]));
        let later = page_token_key(&store, PageTokenKey([2; 32])).await.unwrap();
        assert_eq!(later, first);
        // Reopened: the same key, and its Debug shows none of it.
        drop(store);
        let store = SqliteStore::open(dir.path()).unwrap();
        let reopened = page_token_key(&store, PageTokenKey([3; 32])).await.unwrap();
        assert_eq!(reopened, first);
        assert_eq!(format!("{reopened:?}"), "PageTokenKey(…)");
    }
}
