//! Crash safety: `kill -9` the server while clients stream creates and
//! refunds at it; after a restart every acknowledged request is present
//! exactly once, every payment with pending work resumes and finishes, and
//! the books balance.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::*;
use payvisor::grpc::pb;
use tonic::Code;

const ACCOUNTS: usize = 4;
const CLIENTS: usize = 8;
/// Acknowledgements to collect before each kill: enough that the kill lands
/// mid-stream, with creates and refunds in flight.
const ACKS_BEFORE_KILL: usize = 150;
const ACKS_BEFORE_KILL_UNDER_FAULTS: usize = 60;

#[derive(Clone, Debug)]
enum Acked {
    Create {
        request: Box<pb::CreatePaymentRequest>,
        name: String,
    },
    Refund {
        request: pb::RefundPaymentRequest,
    },
}

/// Unique per create request, so each payment maps back to one request.
/// A replay as a client makes it: `UNAVAILABLE` says "try again" (the
/// store timed out; on the serialised DynamoDB test server a request can
/// wait behind a slow one), so the same request is sent again, a bounded
/// number of times. Any other answer is the answer.
async fn retry_unavailable<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut attempts = 0;
    loop {
        match call().await {
            Err(status) if status.code() == Code::Unavailable && attempts < 3 => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            answer => return answer,
        }
    }
}

/// A client's replay while the test runs: `UNAVAILABLE` (the store failed
/// or timed out) and `ABORTED` (writers kept conflicting) are sent again
/// until the test stops the clients, at the kill.
async fn retry_unavailable_until<T, F, Fut>(
    stop: &AtomicBool,
    mut call: F,
) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    loop {
        match call().await {
            Err(status)
                if matches!(status.code(), Code::Unavailable | Code::Aborted)
                    && !stop.load(Ordering::SeqCst) =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            answer => return answer,
        }
    }
}

fn amount_of(payment: &pb::Payment) -> i64 {
    payment.amount.as_ref().unwrap().minor_units
}

async fn stream_requests(
    server: &Server,
    cycle: usize,
    acked: Arc<Mutex<Vec<Acked>>>,
    sent_amounts: Arc<Mutex<HashSet<i64>>>,
    stop: Arc<AtomicBool>,
    ack_count: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client = server.client().await;
    (0..CLIENTS)
        .map(|task| {
            let client = client.clone();
            let (acked, sent_amounts, stop, ack_count, failures) = (
                acked.clone(),
                sent_amounts.clone(),
                stop.clone(),
                ack_count.clone(),
                failures.clone(),
            );
            tokio::spawn(async move {
                let mut mine: Vec<String> = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let amount = 1_000_000 * (cycle as i64 + 1) + (task as i64) * 10_000 + n;
                    let account = format!("crash-{}", n as usize % ACCOUNTS);
                    let request =
                        create_request(&account, &format!("c{cycle}-t{task}-{n}"), amount);
                    sent_amounts.lock().unwrap().insert(amount);
                    let answer = retry_unavailable_until(&stop, || {
                        let (mut client, request) = (client.clone(), request.clone());
                        async move { client.create_payment(request).await }
                    })
                    .await;
                    match answer {
                        Ok(payment) => {
                            let name = payment.into_inner().name;
                            mine.push(name.clone());
                            acked.lock().unwrap().push(Acked::Create {
                                request: Box::new(request),
                                name,
                            });
                            ack_count.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(status) => {
                            // After `stop` (set just before the kill): the
                            // server is gone. Before it: an answer a client
                            // cannot retry, which fails the round.
                            if !stop.load(Ordering::SeqCst) {
                                failures.lock().unwrap().push(format!("create: {status:?}"));
                            }
                            break;
                        }
                    }
                    if n % 3 == 0 && mine.len() > 2 {
                        let target = mine[mine.len() - 3].clone();
                        let request =
                            refund_request(&target, &format!("r{cycle}-t{task}-{n}"), Some(100));
                        let answer = retry_unavailable_until(&stop, || {
                            let (mut client, request) = (client.clone(), request.clone());
                            async move { client.refund_payment(request).await }
                        })
                        .await;
                        match answer {
                            Ok(_) => {
                                acked.lock().unwrap().push(Acked::Refund { request });
                                ack_count.fetch_add(1, Ordering::SeqCst);
                            }
                            // Not processed yet: a clean refusal, not an ack.
                            Err(status) if status.code() == Code::FailedPrecondition => {}
                            Err(status) => {
                                if !stop.load(Ordering::SeqCst) {
                                    failures.lock().unwrap().push(format!("refund: {status:?}"));
                                }
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_and_doubles_nothing() {
    let mut server = kill_9_rounds(Server::start(&[]), ACKS_BEFORE_KILL).await;
    verify_books(&mut server);
}

/// The same rounds while the store misbehaves: the DynamoDB test server
/// (tests/dynamodb_server.py) throttles, fails, answers 500 after applying,
/// answers after the client gave up, and is slow, on a share of the
/// server's calls, across the kills and the recoveries. The server carries
/// no test tools: the faults are the store's. Runs in the DynamoDB phase of
/// tests/run.sh (`PAYVISOR_TEST_STORE=dynamodb`), whose server it loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_the_store_fails_throttles_and_answers_late_loses_nothing_and_doubles_nothing()
{
    let test = "kill_9_while_the_store_fails";
    if std::env::var("PAYVISOR_TEST_STORE").as_deref() != Ok("dynamodb") {
        eprintln!("{test}: skipped here; tests/run.sh runs it in its DynamoDB phase (PAYVISOR_TEST_STORE=dynamodb)");
        return;
    }
    assert!(dynamodb::available(test));
    // A 1 s attempt timeout, and late answers 1.5 s late: the client gives
    // up on a write that landed and sends it again.
    let server = Server::start(&["--dynamodb-attempt-timeout-ms", "1000"]);
    let table = server.dynamodb_table().expect("on DynamoDB").to_owned();
    dynamodb::set_faults(
        &table,
        serde_json::json!({
            "seed": 15,
            "throttled": 0.03,
            "failed": 0.02,
            // Writes are about a tenth of the calls: a run lands about a
            // dozen of each ambiguous fault on them (late ones only hit
            // writes).
            "applied_then_failed": 0.03,
            "slow": 0.01,
            "applied_then_late": 0.03,
            "late_s": 1.5,
        }),
    );
    // Fewer per round: a store call that fails waits out the SDK's back-off
    // (up to a second), so each acknowledgement costs more.
    let mut server = kill_9_rounds(server, ACKS_BEFORE_KILL_UNDER_FAULTS).await;
    let injected = dynamodb::faults_injected(&table);
    // The books are checked on a store that answers: `ledger verify` is the
    // test's oracle, not the server under test, and does not retry.
    dynamodb::set_faults(&table, serde_json::json!({}));
    verify_books(&mut server);
    eprintln!("{test}: injected {injected}");
    for kind in ["throttled", "failed", "slow"] {
        assert!(
            injected[kind].as_u64().unwrap_or(0) > 0,
            "no {kind} fault was injected: {injected}"
        );
    }
    // The ambiguous ones matter on writes.
    for kind in ["applied_then_failed", "applied_then_late"] {
        assert!(
            injected["writes"][kind].as_u64().unwrap_or(0) > 0,
            "no {kind} fault hit a write: {injected}"
        );
    }
}

/// Two rounds of: clients stream creates and refunds, `kill -9` lands
/// mid-stream, restart, check everything acknowledged; then a graceful
/// stop. Returns the stopped server, for [`verify_books`].
async fn kill_9_rounds(mut server: Server, acks_before_kill: usize) -> Server {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let sent_amounts = Arc::new(Mutex::new(HashSet::new()));

    for cycle in 0..2 {
        let stop = Arc::new(AtomicBool::new(false));
        let ack_count = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = stream_requests(
            &server,
            cycle,
            acked.clone(),
            sent_amounts.clone(),
            stop.clone(),
            ack_count.clone(),
            failures.clone(),
        )
        .await;
        let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
        while ack_count.load(Ordering::SeqCst) < acks_before_kill {
            assert!(
                !tasks.iter().all(|task| task.is_finished()),
                "clients stopped before the kill: {:?}",
                failures.lock().unwrap()
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {acks_before_kill} acknowledgements before the deadline",
                ack_count.load(Ordering::SeqCst)
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // Clients stop retrying from here: what fails after is the kill's.
        stop.store(true, Ordering::SeqCst);
        server.kill9();
        for task in tasks {
            task.await.unwrap();
        }
        let failures = failures.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "answers a client cannot retry, before the kill: {failures:?}"
        );
        server.restart();
        let acked_so_far = acked.lock().unwrap().clone();
        let sent_so_far = sent_amounts.lock().unwrap().clone();
        check_after_restart(&server, &acked_so_far, &sent_so_far).await;
    }

    let status = server.terminate_async().await;
    assert!(
        status.success(),
        "graceful stop after the crashes: {status:?}"
    );
    server
}

/// `payvisor ledger verify` over every account the rounds used.
fn verify_books(server: &mut Server) {
    let accounts: Vec<String> = (0..ACCOUNTS).map(|n| format!("crash-{n}")).collect();
    server.verify_ledger(&accounts.iter().map(String::as_str).collect::<Vec<_>>());
}

async fn check_after_restart(server: &Server, acked: &[Acked], sent_amounts: &HashSet<i64>) {
    let mut client = server.client().await;

    // Nothing doubled: every stored payment maps to exactly one request sent.
    let mut by_amount: HashMap<i64, String> = HashMap::new();
    let mut refunds_before: HashMap<String, usize> = HashMap::new();
    let mut in_flight = 0;
    for account in 0..ACCOUNTS {
        for payment in list_all(&mut client, &format!("crash-{account}"), 100).await {
            in_flight += usize::from(!is_settled(&payment));
            assert!(
                sent_amounts.contains(&amount_of(&payment)),
                "a payment nobody asked for: {payment:?}"
            );
            let previous = by_amount.insert(amount_of(&payment), payment.name.clone());
            assert!(
                previous.is_none(),
                "two payments for one request: {previous:?} and {}",
                payment.name
            );
            refunds_before.insert(payment.name.clone(), payment.refunds.len());
        }
    }

    eprintln!("after restart: {} payments, {in_flight} with bank work in flight, {} acknowledged requests", by_amount.len(), acked.len());

    // Nothing lost: every acknowledged create is there, and replaying it
    // returns the same payment without creating another.
    let mut acked_refunds: HashMap<String, usize> = HashMap::new();
    for ack in acked {
        match ack {
            Acked::Create { request, name } => {
                assert_eq!(
                    by_amount.get(&amount_of(request.payment.as_ref().unwrap())),
                    Some(name),
                    "acknowledged create lost"
                );
                let replay = retry_unavailable(|| {
                    let (mut client, request) = (client.clone(), request.as_ref().clone());
                    async move { client.create_payment(request).await }
                })
                .await
                .expect("replay of an acknowledged create");
                assert_eq!(&replay.into_inner().name, name);
            }
            Acked::Refund { request } => {
                *acked_refunds.entry(request.name.clone()).or_default() += 1;
                let replay = retry_unavailable(|| {
                    let (mut client, request) = (client.clone(), request.clone());
                    async move { client.refund_payment(request).await }
                })
                .await
                .expect("replay of an acknowledged refund");
                assert_eq!(replay.into_inner().name, request.name);
            }
        }
    }
    for account in 0..ACCOUNTS {
        for payment in list_all(&mut client, &format!("crash-{account}"), 100).await {
            let before = refunds_before[&payment.name];
            assert_eq!(
                payment.refunds.len(),
                before,
                "a replay added a refund to {}",
                payment.name
            );
            assert!(
                before >= acked_refunds.get(&payment.name).copied().unwrap_or(0),
                "acknowledged refund lost on {}",
                payment.name
            );
        }
    }
    let total_payments = by_amount.len();
    let after_replays: usize = {
        let mut count = 0;
        for account in 0..ACCOUNTS {
            count += list_all(&mut client, &format!("crash-{account}"), 100)
                .await
                .len();
        }
        count
    };
    assert_eq!(after_replays, total_payments, "replays created payments");

    // Everything in flight at the kill resumes and finishes; books balance.
    for name in by_amount.values() {
        wait_for(&mut client, name, is_settled).await;
    }
    for account in 0..ACCOUNTS {
        assert_balances_match_payments(&mut client, &format!("crash-{account}")).await;
    }
}
