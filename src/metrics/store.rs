//! A [`Store`] that times every call of the store it wraps, by operation
//! and outcome, for `/metrics` (`payvisor_store_call_seconds`). It changes
//! nothing about the calls: what the inner store answers is the answer.

use std::sync::Arc;

use super::{StoreLabels, StoreMetrics};
use crate::store::{BoxFuture, IndexQuery, Item, Key, Page, Query, Store, StoreError, WriteOp};

pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: StoreMetrics,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn Store>, metrics: StoreMetrics) -> MeteredStore {
        // The outcomes an alert fires on exist from the start, at zero: a
        // series born with its first sample hides that sample from
        // `increase()`, and the first damaged read would page no one.
        for operation in ["transact", "get", "query", "query_index"] {
            for outcome in ["corrupt", "unsupported_format", "unavailable"] {
                let _zero =
                    (metrics.call_seconds).get_or_create(&StoreLabels { operation, outcome });
            }
        }
        MeteredStore { inner, metrics }
    }

    /// Runs one call of the inner store, timed under `operation`.
    fn timed<'a, T: Send + 'a>(
        &'a self,
        operation: &'static str,
        call: BoxFuture<'a, Result<T, StoreError>>,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        Box::pin(super::timed(
            &self.metrics.call_seconds,
            call,
            move |answer| StoreLabels {
                operation,
                outcome: outcome(answer),
            },
        ))
    }
}

/// The outcome label: `ok` or the kind of error (never its text, which
/// holds keys: ids would make the page grow without bound).
pub(crate) fn outcome<T>(answer: &Result<T, StoreError>) -> &'static str {
    match answer {
        Ok(_) => "ok",
        Err(StoreError::ConditionFailed { .. }) => "condition_failed",
        Err(StoreError::InvalidWrite(_)) => "invalid_write",
        Err(StoreError::Unavailable(_)) => "unavailable",
        Err(StoreError::Corrupt(_)) => "corrupt",
        Err(StoreError::UnsupportedFormat { .. }) => "unsupported_format",
    }
}

impl Store for MeteredStore {
    fn transact(&self, ops: Vec<WriteOp>) -> BoxFuture<'_, Result<(), StoreError>> {
        self.timed("transact", self.inner.transact(ops))
    }

    fn get(&self, key: Key) -> BoxFuture<'_, Result<Option<Item>, StoreError>> {
        self.timed("get", self.inner.get(key))
    }

    fn query(&self, query: Query) -> BoxFuture<'_, Result<Page, StoreError>> {
        self.timed("query", self.inner.query(query))
    }

    fn query_index(&self, query: IndexQuery) -> BoxFuture<'_, Result<Page, StoreError>> {
        self.timed("query_index", self.inner.query_index(query))
    }

    fn settle(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.timed("settle", self.inner.settle())
    }

    fn expire(
        &self,
        now_unix_seconds: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.timed("expire", self.inner.expire(now_unix_seconds, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    #[tokio::test]
    async fn each_call_is_timed_by_operation_and_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let metrics = StoreMetrics::default();
        let store = MeteredStore::new(inner, metrics.clone());
        let key = Key::new("A#acme", "ACCOUNT");
        assert_eq!(store.get(key.clone()).await, Ok(None));
        let refused = store.transact(Vec::new()).await;
        assert!(matches!(refused, Err(StoreError::InvalidWrite(_))));
        let mut page = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("store_call_seconds", "Store calls", metrics.call_seconds);
        prometheus_client::encoding::text::encode(&mut page, &registry).unwrap();
        assert!(
            page.contains(r#"store_call_seconds_count{operation="get",outcome="ok"} 1"#),
            "{page}"
        );
        assert!(
            page.contains(
                r#"store_call_seconds_count{operation="transact",outcome="invalid_write"} 1"#
            ),
            "{page}"
        );
    }
}
