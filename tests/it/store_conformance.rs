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

/// The simulator's table (its index kept up to date here; in a simulation
/// it lags, as DynamoDB's does).
async fn simulated() -> Option<Arc<dyn Store>> {
    Some(Arc::new(payvisor_sim::store::SimStore::consistent()))
}

mod simulated_store {
    use super::*;
    payvisor_testkit::store_conformance_tests!(simulated());
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

/// The embedded store deletes what expired, many at a time, and keeps
/// expiries across reopening.
#[tokio::test]
async fn the_embedded_store_deletes_expired_items_and_keeps_expiries_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let now = 1_900_000_000;
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        let writes = (0..250)
            .map(|n| {
                let mut expiring = item("p", &format!("i{n:03}"), 1, "x");
                // Every other one has expired.
                expiring.expires_at = Some(if n % 2 == 0 { now - 1 } else { now + 60 });
                expiring
            })
            .collect::<Vec<_>>();
        for chunk in writes.chunks(50) {
            let puts = chunk
                .iter()
                .map(|item| put(item.clone(), Condition::NotExists))
                .collect();
            store.transact(puts).await.unwrap();
        }
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(
        store.expire(now, 100).await.unwrap(),
        100,
        "at most the limit"
    );
    assert_eq!(store.expire(now, 1_000).await.unwrap(), 25);
    assert_eq!(store.expire(now, 1_000).await.unwrap(), 0);
    let left = store.get(Key::new("p", "i001")).await.unwrap().unwrap();
    assert_eq!(left.expires_at, Some(now + 60));
    assert_eq!(store.get(Key::new("p", "i000")).await.unwrap(), None);
    assert_eq!(store.expire(now + 61, 1_000).await.unwrap(), 125);
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

/// A database of the format before expiry (2: no `exp` column) opens
/// upgraded in place: its rows still verify against their checksums, and
/// items written after can expire.
#[tokio::test]
async fn a_store_of_the_format_before_expiry_is_upgraded_and_its_rows_still_verify() {
    let dir = tempfile::tempdir().unwrap();
    let mut indexed = item("p", "indexed", 3, "kept");
    indexed.index = Some(payvisor::store::IndexKey {
        pk: "ix".into(),
        sk: "0000000000001/a".into(),
    });
    let plain = item("p", "plain", 1, "kept too");
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        let writes = [indexed.clone(), plain.clone()]
            .into_iter()
            .map(|item| put(item, Condition::NotExists))
            .collect();
        store.transact(writes).await.unwrap();
    }
    // Back to format 2, as the previous release left it.
    {
        let connection = rusqlite::Connection::open(dir.path().join("payvisor.db")).unwrap();
        connection
            .execute_batch(
                "DROP INDEX items_expiring;
                 ALTER TABLE items DROP COLUMN exp;
                 UPDATE meta SET value = '2' WHERE key = 'format';",
            )
            .unwrap();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(store.get(indexed.key.clone()).await.unwrap(), Some(indexed));
    assert_eq!(store.get(plain.key.clone()).await.unwrap(), Some(plain));
    let report = store.check().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!((report.rows, report.unchecked), (2, 0));
    let mut expiring = item("p", "expiring", 1, "soon gone");
    expiring.expires_at = Some(100);
    store
        .transact(vec![put(expiring, Condition::NotExists)])
        .await
        .unwrap();
    assert_eq!(store.expire(101, 10).await.unwrap(), 1);
}
