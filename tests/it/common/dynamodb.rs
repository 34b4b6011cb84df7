//! Access to the DynamoDB-API test server that `tests/run.sh` starts
//! (`moto[server]` on a free loopback port), found the standard AWS way
//! through `AWS_ENDPOINT_URL_DYNAMODB`.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use payvisor::store::dynamodb::{DynamoDbSettings, DynamoDbStore};

/// Whether a DynamoDB endpoint is configured. Without one the DynamoDB tests
/// skip, except under `CI=true`, where skipping would hide a missing setup.
pub fn available(test: &str) -> bool {
    if std::env::var_os("AWS_ENDPOINT_URL_DYNAMODB").is_some() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: AWS_ENDPOINT_URL_DYNAMODB is not set under CI=true; run the tests through `bash tests/run.sh`"
    );
    eprintln!("{test}: skipped (no AWS_ENDPOINT_URL_DYNAMODB; `bash tests/run.sh` starts a DynamoDB-API server)");
    false
}

/// A table name no other test (or test process) uses.
pub fn fresh_table(purpose: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "payvisor-{purpose}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A store on a fresh table, if a DynamoDB endpoint is configured (see
/// [`available`]).
pub async fn store_if_available(
    test: &str,
    purpose: &str,
) -> Option<std::sync::Arc<dyn payvisor::store::Store>> {
    if !available(test) {
        return None;
    }
    Some(std::sync::Arc::new(fresh_store(purpose).await))
}

/// A store on a fresh, empty table.
pub async fn fresh_store(purpose: &str) -> DynamoDbStore {
    let store = DynamoDbStore::connect(&DynamoDbSettings::new(fresh_table(purpose))).await;
    store.create_table().await.expect("create the test table");
    store
}
