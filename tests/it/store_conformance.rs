//! The store conformance suite, run against every backend: the embedded
//! SQLite store and DynamoDB (a DynamoDB-API server on loopback). Plus what
//! only a durable embedded store must show (survives reopening).

use crate::common::dynamodb as dynamodb_server;

use std::sync::Arc;

use payvisor::store::sqlite::SqliteStore;
use payvisor::store::{Condition, Key, Store};
use payvisor_testkit::store::{item, put};

/// A fresh SQLite store in its own directory (kept so it outlives the test).
async fn sqlite() -> Option<Arc<dyn Store>> {
    let dir = tempfile::tempdir().unwrap().keep();
    Some(Arc::new(SqliteStore::open(&dir).unwrap()))
}

/// A fresh DynamoDB table, or `None` when no endpoint is configured.
async fn dynamodb() -> Option<Arc<dyn Store>> {
    if !dynamodb_server::available("dynamodb conformance") {
        return None;
    }
    Some(Arc::new(dynamodb_server::fresh_store("conformance").await))
}

mod sqlite_store {
    use super::*;
    payvisor_testkit::store_conformance_tests!(sqlite());
}

mod dynamodb_store {
    use super::*;
    payvisor_testkit::store_conformance_tests!(dynamodb());
}

#[tokio::test]
async fn committed_writes_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        store
            .transact(vec![put(
                item("p", "s", 1, "durable"),
                Condition::NotExists,
            )])
            .await
            .unwrap();
    }
    let reopened = SqliteStore::open(dir.path()).unwrap();
    let stored = reopened.get(Key::new("p", "s")).await.unwrap().unwrap();
    assert_eq!(stored.body, b"durable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_are_all_committed_through_group_commit() {
    let store = sqlite().await.unwrap();
    let tasks: Vec<_> = (0..2000)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let new = item(&format!("p{}", n % 50), &format!("s{n}"), 1, "x");
                store.transact(vec![put(new, Condition::NotExists)]).await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    for n in [0, 999, 1999] {
        assert!(store
            .get(Key::new(format!("p{}", n % 50), format!("s{n}")))
            .await
            .unwrap()
            .is_some());
    }
}
