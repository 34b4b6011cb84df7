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

/// A fresh table made with `payvisor dynamodb create-table`: its name.
pub fn created_table(purpose: &str) -> String {
    let table = fresh_table(purpose);
    let output = std::process::Command::new(super::BINARY)
        .args(["dynamodb", "create-table", "--table", &table])
        .output()
        .expect("run dynamodb create-table");
    assert!(
        output.status.success(),
        "create-table failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    table
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

/// The DynamoDB-API test server's address (host:port), from the endpoint.
fn endpoint_address() -> String {
    let endpoint = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").expect("a DynamoDB endpoint");
    endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

fn faults_call(request: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(endpoint_address()).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {answer}"))
}

/// Switches the test server's fault injection for `table` (see
/// `tests/dynamodb_server.py`): `plan` holds a seed and the odds of each
/// fault; a plan with none switches faults off.
pub fn set_faults(table: &str, mut plan: serde_json::Value) {
    plan["table"] = serde_json::Value::from(table);
    let body = plan.to_string();
    faults_call(&format!(
        "POST /payvisor/faults HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
}

/// How many of each fault the test server injected on `table`.
pub fn faults_injected(table: &str) -> serde_json::Value {
    faults_call(&format!(
        "GET /payvisor/faults?table={table} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    ))
}
