//! The storage boundary: items addressed by partition and sort key, with
//! conditional writes on a version attribute and atomic multi-item writes of
//! at most 100 items. The shape is DynamoDB's, so the embedded store
//! ([`sqlite`]) and the production one share one contract, checked by one
//! conformance suite (`payvisor_testkit::store`, kept out of the server).
//! A second embedded store, [`lsm`], is log-structured; [`migrate`] copies
//! a SQLite store into it.
//!
//! [`schema`] maps domain records onto items, through storage records of its
//! own (versioned bodies); nothing else knows key formats or bodies.
//!
//! **Invariant:** every write that changes an item carries a condition
//! (`NotExists` or `VersionIs`): a writer that lost a race, or a node that
//! lost ownership of an account, fails instead of overwriting.

pub mod data_dir;
pub mod dynamodb;
mod group_commit;
pub mod lsm;
pub mod migrate;
pub mod schema;
pub mod sqlite;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

/// A boxed future: the store is used as `Arc<dyn Store>` so the backend is
/// chosen at run time (`--store`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An item's primary key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub pk: String,
    pub sk: String,
}

impl Key {
    pub fn new(pk: impl Into<String>, sk: impl Into<String>) -> Key {
        Key {
            pk: pk.into(),
            sk: sk.into(),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}|{}", self.pk, self.sk)
    }
}

/// A key in the one secondary index, which is sparse: only items that set it
/// appear (DynamoDB: a GSI on optional attributes).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct IndexKey {
    pub pk: String,
    pub sk: String,
}

/// A stored item. `version` starts at 1 and is bumped by every writer; it is
/// what conditions compare.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Item {
    pub key: Key,
    pub version: u64,
    pub body: Vec<u8>,
    pub index: Option<IndexKey>,
    /// When the store may delete the item by itself, in Unix seconds
    /// (DynamoDB's TTL is in seconds): only for items whose loss after
    /// that is intended (idempotency records). Until it is deleted, an
    /// expired item reads as any other.
    pub expires_at: Option<i64>,
}

/// What must be true of an item for a write to apply.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Condition {
    /// The item must not exist.
    NotExists,
    /// The item must exist with exactly this version.
    VersionIs(u64),
}

/// One action of an atomic write.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum WriteOp {
    /// Create or replace the item, if the condition holds.
    Put { item: Item, condition: Condition },
    /// Remove the item, if the condition holds.
    Delete { key: Key, condition: Condition },
    /// Write nothing; fail the whole write unless the condition holds.
    Check { key: Key, condition: Condition },
}

impl WriteOp {
    pub fn key(&self) -> &Key {
        match self {
            WriteOp::Put { item, .. } => &item.key,
            WriteOp::Delete { key, .. } | WriteOp::Check { key, .. } => key,
        }
    }
}

/// A range read within one partition, in sort-key order.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Query {
    pub pk: String,
    /// Only sort keys starting with this.
    pub sk_prefix: String,
    /// Resume strictly after this sort key.
    pub start_after: Option<String>,
    /// At most this many items (bounded by the caller's page size).
    pub limit: usize,
}

/// A range read of the secondary index, in index sort-key order.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct IndexQuery {
    pub index_pk: String,
    /// Resume strictly after this index sort key.
    pub start_after: Option<String>,
    /// Only index sort keys up to and including this one. With sort keys
    /// that begin with a time, "everything due by now" costs what is due,
    /// not what is stored.
    pub end_at: Option<String>,
    pub limit: usize,
}

/// One page of a range read.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Page {
    pub items: Vec<Item>,
    /// Pass as `start_after` to read on; `None` when nothing is left.
    pub next: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A condition did not hold; nothing was written. `index` is the
    /// position of the failing action (DynamoDB's cancellation reasons).
    #[error("condition failed on {key:?} (action {index})")]
    ConditionFailed { index: usize, key: Key },
    /// The write is malformed (too many actions, two on one item, empty).
    #[error("invalid write: {0}")]
    InvalidWrite(String),
    /// The backend could not be reached or failed; the write may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A body in a storage format this build cannot read (written by a
    /// newer build): not corrupt, but nothing here can decide on it.
    #[error("{key:?} is in storage format {format}, which this build does not read")]
    UnsupportedFormat { key: Key, format: u64 },
}

/// The storage boundary every backend implements.
pub trait Store: Send + Sync + 'static {
    /// Applies all actions atomically and durably, or none of them.
    fn transact(&self, ops: Vec<WriteOp>) -> BoxFuture<'_, Result<(), StoreError>>;
    /// A strongly consistent point read.
    fn get(&self, key: Key) -> BoxFuture<'_, Result<Option<Item>, StoreError>>;
    /// A strongly consistent range read within one partition.
    fn query(&self, query: Query) -> BoxFuture<'_, Result<Page, StoreError>>;
    /// A range read of the sparse secondary index (may lag on DynamoDB;
    /// used for recovery sweeps, never for decisions).
    fn query_index(&self, query: IndexQuery) -> BoxFuture<'_, Result<Page, StoreError>>;
    /// Deletes up to `limit` items whose `expires_at` is before `now_unix_seconds`,
    /// and says how many it deleted. DynamoDB deletes expired items itself
    /// (TTL), so its store deletes none here. Every wrapper forwards it.
    fn expire(
        &self,
        now_unix_seconds: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<usize, StoreError>>;
    /// Tidies up after the last write of a clean stop (the embedded store
    /// folds its write-ahead log into the database and truncates it).
    /// The store stays usable.
    fn settle(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Checks what every backend must refuse before touching data.
pub fn validate_write(ops: &[WriteOp]) -> Result<(), StoreError> {
    if ops.is_empty() {
        return Err(StoreError::InvalidWrite("no actions".into()));
    }
    if ops.len() > crate::limits::TRANSACT_ITEMS_MAX {
        return Err(StoreError::InvalidWrite(format!(
            "{} actions; at most {} allowed",
            ops.len(),
            crate::limits::TRANSACT_ITEMS_MAX
        )));
    }
    // DynamoDB's own bounds on key attributes, kept by every backend (the
    // log-structured store frames keys with 16-bit lengths).
    let too_long = |partition: &str, sort: &str| {
        partition.len() > crate::limits::STORE_PARTITION_KEY_BYTES_MAX
            || sort.len() > crate::limits::STORE_SORT_KEY_BYTES_MAX
    };
    for op in ops {
        let key = op.key();
        let index_too_long = match op {
            WriteOp::Put { item, .. } => item
                .index
                .as_ref()
                .is_some_and(|index| too_long(&index.pk, &index.sk)),
            _ => false,
        };
        if too_long(&key.pk, &key.sk) || index_too_long {
            return Err(StoreError::InvalidWrite(format!(
                "a key of {:?} is too long: partition keys have at most {} bytes, sort keys {}",
                key,
                crate::limits::STORE_PARTITION_KEY_BYTES_MAX,
                crate::limits::STORE_SORT_KEY_BYTES_MAX
            )));
        }
    }
    // Index sort keys are compared as byte strings, and range reads resume
    // "strictly after" a key by starting at key + U+0001: no control
    // characters, so nothing can sort between the two.
    for op in ops {
        if let WriteOp::Put { item, .. } = op {
            if let Some(index) = &item.index {
                if index
                    .sk
                    .chars()
                    .chain(index.pk.chars())
                    .any(char::is_control)
                {
                    return Err(StoreError::InvalidWrite(format!(
                        "index key of {:?} contains a control character",
                        item.key
                    )));
                }
            }
        }
    }
    let mut keys: Vec<&Key> = ops.iter().map(WriteOp::key).collect();
    keys.sort();
    if let Some(pair) = keys.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(StoreError::InvalidWrite(format!(
            "two actions on {:?}",
            pair[0]
        )));
    }
    Ok(())
}

/// Deletes expired items, each on the version it was read at (an item
/// rewritten meanwhile is left alone), many to a write; a write that meets
/// an item rewritten meanwhile is done again one delete at a time. Says
/// how many were deleted. For the embedded stores' `expire`.
pub(crate) async fn delete_expired(
    store: &dyn Store,
    expired: &[(Key, u64)],
) -> Result<usize, StoreError> {
    let delete = |(key, version): &(Key, u64)| WriteOp::Delete {
        key: key.clone(),
        condition: Condition::VersionIs(*version),
    };
    let mut deleted = 0;
    for chunk in expired.chunks(crate::limits::TRANSACT_ITEMS_MAX) {
        match store.transact(chunk.iter().map(delete).collect()).await {
            Ok(()) => deleted += chunk.len(),
            Err(StoreError::ConditionFailed { .. }) => {
                for one in chunk {
                    match store.transact(vec![delete(one)]).await {
                        Ok(()) => deleted += 1,
                        Err(StoreError::ConditionFailed { .. }) => {}
                        Err(error) => return Err(error),
                    }
                }
            }
            Err(error) => return Err(error),
        }
    }
    Ok(deleted)
}

/// Cuts a result read with `limit + 1` items into a page: the extra item
/// only tells whether another page exists.
pub(crate) fn page_of(
    mut items: Vec<Item>,
    limit: usize,
    position: impl Fn(&Item) -> String,
) -> Page {
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more {
        items.last().map(position)
    } else {
        None
    };
    Page { items, next }
}
