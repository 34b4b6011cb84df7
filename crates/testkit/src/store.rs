//! The store contract as executable checks. Every backend runs all of them
//! through [`store_conformance_tests!`](crate::store_conformance_tests):
//! `tests/it/store_conformance.rs` instantiates it once per backend.
//!
//! Each check takes a fresh, empty store and panics on a violation.

use std::sync::Arc;

use payvisor::store::{
    Condition, IndexKey, IndexQuery, Item, Key, Query, Store, StoreError, WriteOp,
};

/// An unindexed item (also for backend-specific tests).
pub fn item(pk: &str, sk: &str, version: u64, body: &str) -> Item {
    Item {
        key: Key::new(pk, sk),
        version,
        body: body.as_bytes().to_vec(),
        index: None,
        expires_at: None,
    }
}

/// Items expire: the expiry reads back as written; `expire` deletes
/// expired items (the embedded store) or leaves them to the backend's own
/// time to live (DynamoDB), but never an item not yet expired or without
/// an expiry.
pub async fn expiry_round_trips_and_only_expired_items_go(store: Arc<dyn Store>) {
    let now = 1_900_000_000;
    let mut expired = item("p", "expired", 1, "old");
    expired.expires_at = Some(now - 10);
    let mut later = item("p", "later", 1, "new");
    later.expires_at = Some(now + 3600);
    let kept = item("p", "kept", 1, "forever");
    let items = [expired.clone(), later.clone(), kept.clone()];
    let writes = items
        .iter()
        .map(|item| put(item.clone(), Condition::NotExists))
        .collect();
    store.transact(writes).await.unwrap();
    for written in &items {
        let read = store.get(written.key.clone()).await.unwrap();
        assert_eq!(read.as_ref(), Some(written), "{:?}", written.key);
    }
    let deleted = store.expire(now, 100).await.unwrap();
    assert!(deleted <= 1, "deleted {deleted}");
    let after = store.get(expired.key.clone()).await.unwrap();
    assert_eq!(after.is_none(), deleted == 1, "{after:?}");
    assert_eq!(store.get(later.key.clone()).await.unwrap(), Some(later));
    assert_eq!(store.get(kept.key.clone()).await.unwrap(), Some(kept));
    assert_eq!(
        store.expire(now, 100).await.unwrap(),
        0,
        "nothing left to expire"
    );
}

/// A conditional put.
pub fn put(item: Item, condition: Condition) -> WriteOp {
    WriteOp::Put { item, condition }
}

pub async fn put_then_get_round_trips(store: Arc<dyn Store>) {
    let mut written = item("p", "s", 1, "hello");
    written.index = Some(IndexKey {
        pk: "ix".into(),
        sk: "1".into(),
    });
    store
        .transact(vec![put(written.clone(), Condition::NotExists)])
        .await
        .unwrap();
    assert_eq!(store.get(Key::new("p", "s")).await.unwrap(), Some(written));
    assert_eq!(store.get(Key::new("p", "missing")).await.unwrap(), None);
}

pub async fn not_exists_refuses_a_second_create(store: Arc<dyn Store>) {
    store
        .transact(vec![put(item("p", "s", 1, "first"), Condition::NotExists)])
        .await
        .unwrap();
    let second = store
        .transact(vec![put(item("p", "s", 1, "second"), Condition::NotExists)])
        .await;
    assert!(
        matches!(second, Err(StoreError::ConditionFailed { index: 0, .. })),
        "{second:?}"
    );
    assert_eq!(
        store.get(Key::new("p", "s")).await.unwrap().unwrap().body,
        b"first"
    );
}

pub async fn version_condition_refuses_stale_writers(store: Arc<dyn Store>) {
    store
        .transact(vec![put(item("p", "s", 1, "v1"), Condition::NotExists)])
        .await
        .unwrap();
    store
        .transact(vec![put(item("p", "s", 2, "v2"), Condition::VersionIs(1))])
        .await
        .unwrap();
    let stale = store
        .transact(vec![put(
            item("p", "s", 2, "lost"),
            Condition::VersionIs(1),
        )])
        .await;
    assert!(
        matches!(stale, Err(StoreError::ConditionFailed { .. })),
        "{stale:?}"
    );
    let missing = store
        .transact(vec![put(
            item("p", "other", 2, "x"),
            Condition::VersionIs(1),
        )])
        .await;
    assert!(
        matches!(missing, Err(StoreError::ConditionFailed { .. })),
        "{missing:?}"
    );
    let current = store.get(Key::new("p", "s")).await.unwrap().unwrap();
    assert_eq!((current.version, current.body), (2, b"v2".to_vec()));
}

pub async fn a_failed_condition_writes_nothing(store: Arc<dyn Store>) {
    store
        .transact(vec![put(
            item("p", "existing", 1, "x"),
            Condition::NotExists,
        )])
        .await
        .unwrap();
    let result = store
        .transact(vec![
            put(item("p", "a", 1, "a"), Condition::NotExists),
            put(item("q", "b", 1, "b"), Condition::NotExists),
            WriteOp::Check {
                key: Key::new("p", "existing"),
                condition: Condition::VersionIs(7),
            },
        ])
        .await;
    match result {
        Err(StoreError::ConditionFailed { index, key }) => {
            assert_eq!(index, 2);
            assert_eq!(key, Key::new("p", "existing"));
        }
        other => panic!("expected a condition failure, got {other:?}"),
    }
    assert_eq!(store.get(Key::new("p", "a")).await.unwrap(), None);
    assert_eq!(store.get(Key::new("q", "b")).await.unwrap(), None);
}

pub async fn deletes_are_conditional(store: Arc<dyn Store>) {
    store
        .transact(vec![put(item("p", "s", 1, "x"), Condition::NotExists)])
        .await
        .unwrap();
    let stale = store
        .transact(vec![WriteOp::Delete {
            key: Key::new("p", "s"),
            condition: Condition::VersionIs(2),
        }])
        .await;
    assert!(matches!(stale, Err(StoreError::ConditionFailed { .. })));
    store
        .transact(vec![WriteOp::Delete {
            key: Key::new("p", "s"),
            condition: Condition::VersionIs(1),
        }])
        .await
        .unwrap();
    assert_eq!(store.get(Key::new("p", "s")).await.unwrap(), None);
}

pub async fn malformed_writes_are_refused(store: Arc<dyn Store>) {
    let too_many: Vec<WriteOp> = (0..101)
        .map(|n| put(item("p", &format!("{n:03}"), 1, "x"), Condition::NotExists))
        .collect();
    assert!(matches!(
        store.transact(too_many).await,
        Err(StoreError::InvalidWrite(_))
    ));
    let hundred: Vec<WriteOp> = (0..100)
        .map(|n| put(item("p", &format!("{n:03}"), 1, "x"), Condition::NotExists))
        .collect();
    store.transact(hundred).await.unwrap();
    let twice = vec![
        put(item("q", "s", 1, "x"), Condition::NotExists),
        WriteOp::Check {
            key: Key::new("q", "s"),
            condition: Condition::NotExists,
        },
    ];
    assert!(matches!(
        store.transact(twice).await,
        Err(StoreError::InvalidWrite(_))
    ));
    assert!(matches!(
        store.transact(Vec::new()).await,
        Err(StoreError::InvalidWrite(_))
    ));
    assert_eq!(store.get(Key::new("q", "s")).await.unwrap(), None);
    // Keys past DynamoDB's bounds (partition 2,048 bytes, sort 1,024), of
    // the item or of the index.
    let long_sort = "s".repeat(1025);
    let long_partition = "p".repeat(2049);
    let mut long_index = item("q", "s", 1, "x");
    long_index.index = Some(IndexKey {
        pk: "ix".into(),
        sk: long_sort.clone(),
    });
    for too_long in [
        item("q", &long_sort, 1, "x"),
        item(&long_partition, "s", 1, "x"),
        long_index,
    ] {
        assert!(matches!(
            store
                .transact(vec![put(too_long, Condition::NotExists)])
                .await,
            Err(StoreError::InvalidWrite(_))
        ));
    }
}

/// The sort keys of a query read page by page to the end, each page no
/// longer than `limit`.
async fn sort_keys_in_pages(
    store: &dyn Store,
    pk: &str,
    prefix: &str,
    limit: usize,
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut start_after = None;
    loop {
        let page = store
            .query(Query {
                pk: pk.into(),
                sk_prefix: prefix.into(),
                start_after: start_after.clone(),
                limit,
            })
            .await
            .unwrap();
        assert!(page.items.len() <= limit);
        seen.extend(page.items.iter().map(|item| item.key.sk.clone()));
        match page.next {
            Some(next) => start_after = Some(next),
            None => return seen,
        }
    }
}

pub async fn queries_page_through_a_prefix_exactly_once(store: Arc<dyn Store>) {
    let mut ops = Vec::new();
    for n in 0..57 {
        ops.push(put(
            item("acct", &format!("P#{n:04}"), 1, "x"),
            Condition::NotExists,
        ));
    }
    ops.push(put(item("acct", "ACCOUNT", 1, "x"), Condition::NotExists));
    ops.push(put(item("acct", "Q#0001", 1, "x"), Condition::NotExists));
    ops.push(put(item("other", "P#0000", 1, "x"), Condition::NotExists));
    store.transact(ops).await.unwrap();

    let seen = sort_keys_in_pages(store.as_ref(), "acct", "P#", 10).await;
    let expected: Vec<String> = (0..57).map(|n| format!("P#{n:04}")).collect();
    assert_eq!(seen, expected);
}

/// An empty prefix reads the whole partition, in pages, and nothing of
/// another (DynamoDB refuses an empty key value, so a backend must not
/// pass one through).
pub async fn an_empty_prefix_reads_the_whole_partition(store: Arc<dyn Store>) {
    let mut ops = Vec::new();
    for sk in ["A", "NODE#x", "SHARD#00001", "SHARD#00002", "Z"] {
        ops.push(put(item("cluster", sk, 1, "x"), Condition::NotExists));
    }
    ops.push(put(item("clusters", "A", 1, "x"), Condition::NotExists));
    store.transact(ops).await.unwrap();

    let seen = sort_keys_in_pages(store.as_ref(), "cluster", "", 2).await;
    assert_eq!(seen, ["A", "NODE#x", "SHARD#00001", "SHARD#00002", "Z"]);
}

pub async fn the_sparse_index_holds_only_indexed_items(store: Arc<dyn Store>) {
    let mut ops = Vec::new();
    for n in 0..25 {
        let mut indexed = item(&format!("acct{n}"), "P#1", 1, "x");
        indexed.index = Some(IndexKey {
            pk: "OPEN".into(),
            sk: format!("acct{n:03}"),
        });
        ops.push(put(indexed, Condition::NotExists));
        ops.push(put(
            item(&format!("acct{n}"), "P#2", 1, "x"),
            Condition::NotExists,
        ));
    }
    store.transact(ops).await.unwrap();
    // Leaving the index: rewrite one item without an index key.
    store
        .transact(vec![put(
            item("acct3", "P#1", 2, "closed"),
            Condition::VersionIs(1),
        )])
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut start_after = None;
    loop {
        let page = store
            .query_index(IndexQuery {
                index_pk: "OPEN".into(),
                start_after: start_after.clone(),
                end_at: None,
                limit: 7,
            })
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|item| item.key.pk.clone()));
        match page.next {
            Some(next) => start_after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 24);
    assert!(!seen.contains(&"acct3".to_string()));
}

/// An item is found in the index under its current index key only: moved
/// when its key changes, gone when it is deleted; its expiry moves with it.
pub async fn the_index_follows_an_item_that_moves_or_goes(store: Arc<dyn Store>) {
    let now = 1_900_000_000;
    let indexed = |version: u64, sk: &str, expires_at: i64| {
        let mut moving = item("acct", "P#1", version, "x");
        moving.index = Some(IndexKey {
            pk: "DUE".into(),
            sk: sk.into(),
        });
        moving.expires_at = Some(expires_at);
        moving
    };
    let index_keys = |store: Arc<dyn Store>| async move {
        let page = store
            .query_index(IndexQuery {
                index_pk: "DUE".into(),
                start_after: None,
                end_at: None,
                limit: 10,
            })
            .await
            .unwrap();
        page.items
            .iter()
            .map(|item| item.index.clone().unwrap().sk)
            .collect::<Vec<_>>()
    };
    store
        .transact(vec![put(
            indexed(1, "0001", now + 60),
            Condition::NotExists,
        )])
        .await
        .unwrap();
    store
        .transact(vec![put(
            indexed(2, "0005", now - 60),
            Condition::VersionIs(1),
        )])
        .await
        .unwrap();
    assert_eq!(index_keys(Arc::clone(&store)).await, ["0005"]);
    // Expired now: the embedded stores delete it here (DynamoDB leaves that
    // to its own time to live). Either way, once gone it leaves the index.
    assert!(store.expire(now, 10).await.unwrap() <= 1);
    if store.get(Key::new("acct", "P#1")).await.unwrap().is_none() {
        assert_eq!(index_keys(Arc::clone(&store)).await, Vec::<String>::new());
        return;
    }
    store
        .transact(vec![WriteOp::Delete {
            key: Key::new("acct", "P#1"),
            condition: Condition::VersionIs(2),
        }])
        .await
        .unwrap();
    assert_eq!(index_keys(Arc::clone(&store)).await, Vec::<String>::new());
    assert_eq!(store.expire(now, 10).await.unwrap(), 0);
}

/// Index range reads bounded above (how due reminders are found): only keys
/// up to the bound, in order, paged exactly once, with or without a start.
pub async fn index_reads_stop_at_an_upper_bound(store: Arc<dyn Store>) {
    let mut ops = Vec::new();
    for n in 0..40 {
        let mut indexed = item(&format!("acct{n}"), "P#1", 1, "x");
        indexed.index = Some(IndexKey {
            pk: "DUE".into(),
            sk: format!("{:013}/acct{n}", 1_000 + n * 10),
        });
        ops.push(put(indexed, Condition::NotExists));
    }
    store.transact(ops).await.unwrap();
    let due_by = |millis: u64| format!("{millis:013}/\u{7f}");
    let read_all = |end_at: String, limit: usize| {
        let store = Arc::clone(&store);
        async move {
            let mut seen = Vec::new();
            let mut start_after = None;
            loop {
                let page = store
                    .query_index(IndexQuery {
                        index_pk: "DUE".into(),
                        start_after: start_after.clone(),
                        end_at: Some(end_at.clone()),
                        limit,
                    })
                    .await
                    .unwrap();
                assert!(page.items.len() <= limit);
                seen.extend(page.items.iter().map(|item| item.key.pk.clone()));
                match page.next {
                    Some(next) => start_after = Some(next),
                    None => return seen,
                }
            }
        }
    };
    // Due by 1,100: the eleven items at 1,000..=1,100, nothing later.
    let expected: Vec<String> = (0..=10).map(|n| format!("acct{n}")).collect();
    assert_eq!(read_all(due_by(1_100), 3).await, expected);
    assert_eq!(read_all(due_by(1_100), 100).await, expected);
    assert!(read_all(due_by(999), 5).await.is_empty());
    assert_eq!(read_all(due_by(10_000), 7).await.len(), 40);
    // A control character in an index key is refused (it could sort
    // between a key and the next page's start).
    let mut bad = item("acct-bad", "P#1", 1, "x");
    bad.index = Some(IndexKey {
        pk: "DUE".into(),
        sk: "0000000000001/\u{1}".into(),
    });
    assert!(matches!(
        store.transact(vec![put(bad, Condition::NotExists)]).await,
        Err(StoreError::InvalidWrite(_))
    ));
}

/// Fifty concurrent creators of one idempotency record: exactly one wins.
pub async fn concurrent_creates_have_exactly_one_winner(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..50)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .transact(vec![put(
                        item("acct", "I#req", 1, &format!("writer {n}")),
                        Condition::NotExists,
                    )])
                    .await
            })
        })
        .collect();
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => winners += 1,
            Err(StoreError::ConditionFailed { .. }) => {}
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(winners, 1);
}

/// A hot item under contention: read-modify-write loops with optimistic
/// concurrency lose no update.
pub async fn contended_increments_lose_no_update(store: Arc<dyn Store>) {
    store
        .transact(vec![put(
            item("hot", "counter", 1, "0"),
            Condition::NotExists,
        )])
        .await
        .unwrap();
    let writers = 8;
    let increments = 10;
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut conflicts = 0u32;
                for _ in 0..increments {
                    loop {
                        let current = store
                            .get(Key::new("hot", "counter"))
                            .await
                            .unwrap()
                            .unwrap();
                        let value: u64 = String::from_utf8(current.body).unwrap().parse().unwrap();
                        let next = item(
                            "hot",
                            "counter",
                            current.version + 1,
                            &(value + 1).to_string(),
                        );
                        match store
                            .transact(vec![put(next, Condition::VersionIs(current.version))])
                            .await
                        {
                            Ok(()) => break,
                            Err(StoreError::ConditionFailed { .. }) => conflicts += 1,
                            Err(other) => panic!("unexpected error {other:?}"),
                        }
                        assert!(conflicts < 10_000, "livelock");
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let last = store
        .get(Key::new("hot", "counter"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8(last.body).unwrap(),
        (writers * increments).to_string()
    );
    assert_eq!(last.version, 1 + writers * increments);
}

/// Instantiates every conformance check as a `#[tokio::test]` for a backend.
/// `$factory` is an async expression yielding `Option<Arc<dyn Store>>` (fresh
/// and empty; `None` when the backend is not available here, which the
/// factory must refuse under `CI=true`).
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:expr) => {
        $crate::store_conformance_tests!(@each $factory;
            put_then_get_round_trips,
            not_exists_refuses_a_second_create,
            version_condition_refuses_stale_writers,
            a_failed_condition_writes_nothing,
            deletes_are_conditional,
            malformed_writes_are_refused,
            queries_page_through_a_prefix_exactly_once,
            an_empty_prefix_reads_the_whole_partition,
            the_sparse_index_holds_only_indexed_items,
            index_reads_stop_at_an_upper_bound,
            the_index_follows_an_item_that_moves_or_goes,
            concurrent_creates_have_exactly_one_winner,
            contended_increments_lose_no_update,
            expiry_round_trips_and_only_expired_items_go,
        );
    };
    (@each $factory:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some(store) = $factory.await else { return };
                $crate::store::$check(store).await;
            }
        )*
    };
}
