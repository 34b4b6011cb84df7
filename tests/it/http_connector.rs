//! The HTTP bank connector against a fake bank on `127.0.0.1:0`: a few lines
//! of HTTP/1.1 over a `TcpListener` that answers from a script and records
//! what it was sent and how many requests it held at once.
//!
//! No test asserts on speed; every wait is bounded.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::Uri;
use payvisor::clock::ManualClock;
use payvisor::connectors::breaker::{BreakerSettings, BreakerState};
use payvisor::connectors::http::{
    BankEndpoint, HttpBankConnector, HttpConnectorSettings, CIRCUIT_OPEN,
};
use payvisor::connectors::{
    BankStatus, Connector, ConnectorError, PaymentSubmission, RefundSubmission,
};
use payvisor::domain::payment::BankOutcome;
use payvisor::domain::{parse_payment_name, Currency, Money, PaymentName, Timestamp};
use payvisor::random::SeededRandom;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Longest any test waits for anything.
const PATIENCE: Duration = Duration::from_secs(20);
const CALLBACK_URL: &str = "http://127.0.0.1:7070/v1/callbacks/bank-a";

/// What the fake bank does with one request.
#[derive(Clone, Debug)]
enum Answer {
    /// Answers at once.
    Now(u16, String),
    /// Answers once the test releases it ([`FakeBank::release`]).
    Held(u16, String),
    /// Never answers (keeps the connection open).
    Hang,
}

fn accepted() -> Answer {
    Answer::Now(202, r#"{"status":"pending"}"#.into())
}

/// A request as the fake bank received it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    content_type: Option<String>,
    traceparent: Option<String>,
    body: String,
}

#[derive(Debug)]
struct Script {
    /// Answers for the next requests, in order; then `default`.
    queue: VecDeque<Answer>,
    default: Answer,
    seen: Vec<Seen>,
    /// Requests read and not yet answered.
    in_progress: usize,
    max_in_progress: usize,
}

struct FakeBank {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    /// One permit per held answer to let go.
    releases: Arc<Semaphore>,
}

impl FakeBank {
    async fn start(default: Answer) -> FakeBank {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bank = FakeBank {
            addr: listener.local_addr().unwrap(),
            script: Arc::new(Mutex::new(Script {
                queue: VecDeque::new(),
                default,
                seen: Vec::new(),
                in_progress: 0,
                max_in_progress: 0,
            })),
            releases: Arc::new(Semaphore::new(0)),
        };
        let (script, releases) = (bank.script.clone(), bank.releases.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, script.clone(), releases.clone()));
            }
        });
        bank
    }

    fn then(&self, answers: impl IntoIterator<Item = Answer>) {
        self.script.lock().unwrap().queue.extend(answers);
    }

    fn answer_by_default(&self, answer: Answer) {
        self.script.lock().unwrap().default = answer;
    }

    fn seen(&self) -> Vec<Seen> {
        self.script.lock().unwrap().seen.clone()
    }

    fn in_progress(&self) -> usize {
        self.script.lock().unwrap().in_progress
    }

    fn max_in_progress(&self) -> usize {
        self.script.lock().unwrap().max_in_progress
    }

    fn release(&self, answers: usize) {
        self.releases.add_permits(answers);
    }

    fn base_url(&self) -> Uri {
        format!("http://{}", self.addr).parse().unwrap()
    }

    /// Waits (bounded) until `in_progress` requests are being held.
    async fn until_in_progress(&self, in_progress: usize) {
        tokio::time::timeout(PATIENCE, async {
            while self.in_progress() < in_progress {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the fake bank never saw the requests");
    }
}

/// One request per connection (answered with `connection: close`), so
/// requests in progress are connections in progress.
async fn serve(mut stream: TcpStream, script: Arc<Mutex<Script>>, releases: Arc<Semaphore>) {
    let Some(seen) = read_request(&mut stream).await else {
        return;
    };
    let answer = {
        let mut script = script.lock().unwrap();
        script.seen.push(seen);
        script.in_progress += 1;
        script.max_in_progress = script.max_in_progress.max(script.in_progress);
        script
            .queue
            .pop_front()
            .unwrap_or_else(|| script.default.clone())
    };
    let (status, body) = match answer {
        Answer::Now(status, body) => (status, body),
        Answer::Held(status, body) => {
            releases.acquire().await.unwrap().forget();
            (status, body)
        }
        Answer::Hang => std::future::pending().await,
    };
    script.lock().unwrap().in_progress -= 1;
    let response = format!(
        "HTTP/1.1 {status} Answer\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn read_request(stream: &mut TcpStream) -> Option<Seen> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        assert!(buffer.len() < 64 * 1024, "request head too long");
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8(buffer[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let (method, path) = (
        request_line.next()?.to_owned(),
        request_line.next()?.to_owned(),
    );
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let header = |wanted: &str| {
        headers
            .iter()
            .find(|(name, _)| name == wanted)
            .map(|(_, value)| value.clone())
    };
    let length: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
    while buffer.len() < head_end + length {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    Some(Seen {
        method,
        path,
        content_type: header("content-type"),
        traceparent: header("traceparent"),
        body: String::from_utf8(buffer[head_end..head_end + length].to_vec()).unwrap(),
    })
}

/// Fast settings whose breaker never opens (window and minimum 100).
fn settings() -> HttpConnectorSettings {
    HttpConnectorSettings {
        request_timeout: Duration::from_secs(5),
        attempts_max: 3,
        in_flight_max: 8,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        breaker: BreakerSettings {
            window_calls: 100,
            min_calls: 100,
            ..BreakerSettings::default()
        },
    }
}

fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::starting_at(Timestamp::from_unix_millis(
        1_800_000_000_000,
    )))
}

fn connector_with(
    bank: &FakeBank,
    settings: HttpConnectorSettings,
    clock: Arc<ManualClock>,
) -> HttpBankConnector {
    let endpoint = BankEndpoint {
        name: "bank-a".into(),
        base_url: bank.base_url(),
        callback_url: CALLBACK_URL.into(),
    };
    HttpBankConnector::new(endpoint, settings, clock, Arc::new(SeededRandom::new(42))).unwrap()
}

fn connector(bank: &FakeBank, settings: HttpConnectorSettings) -> HttpBankConnector {
    connector_with(bank, settings, manual_clock())
}

fn name(payment: &str) -> PaymentName {
    parse_payment_name(&format!("accounts/acme/payments/{payment}")).unwrap()
}

fn usd(minor_units: i64) -> Money {
    Money::from_minor(Currency::from_code("USD").unwrap(), minor_units)
}

fn payment(id: &str) -> PaymentSubmission {
    PaymentSubmission {
        name: name(id),
        amount: usd(1250),
        metadata: BTreeMap::from([("bank_sim".to_owned(), "succeed".to_owned())]),
        trace: None,
    }
}

/// Submits with a bound on the whole call.
async fn submit(connector: &HttpBankConnector, id: &str) -> Result<(), ConnectorError> {
    tokio::time::timeout(PATIENCE, connector.submit_payment(payment(id)))
        .await
        .expect("the call gave up within its bounds")
}

fn transient(result: Result<(), ConnectorError>) -> String {
    match result {
        Err(ConnectorError::Transient(why)) => why,
        other => panic!("expected Transient, got {other:?}"),
    }
}

/// A bank call is a span of the call that caused it (same trace, a span of
/// its own), or, for a re-drive, the first span of a trace of its own.
#[tokio::test]
async fn bank_calls_carry_the_trace_of_the_call_that_caused_them() {
    use payvisor::trace::TraceParent;
    let bank = FakeBank::start(accepted()).await;
    let connector = connector(&bank, settings());
    let caller =
        TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
    let mut traced = payment("pay_1");
    traced.trace = Some(caller.clone());
    connector.submit_payment(traced).await.unwrap();
    let refund = RefundSubmission {
        name: name("pay_1"),
        refund_id: "r1".into(),
        amount: usd(100),
        trace: Some(caller.clone()),
    };
    connector.submit_refund(refund).await.unwrap();
    submit(&connector, "pay_2").await.unwrap();
    let seen = bank.seen();
    let spans: Vec<TraceParent> = seen
        .iter()
        .map(|seen| TraceParent::parse(seen.traceparent.as_deref().unwrap()).unwrap())
        .collect();
    for span in &spans[..2] {
        assert_eq!(span.trace_id(), caller.trace_id(), "{seen:?}");
        assert_ne!(span.header(), caller.header(), "a span of its own");
    }
    assert_ne!(
        spans[2].trace_id(),
        caller.trace_id(),
        "a re-drive begins its own trace"
    );
}

#[tokio::test]
async fn payment_submission_matches_the_protocol() {
    let bank = FakeBank::start(accepted()).await;
    let connector = connector(&bank, settings());
    assert_eq!(connector.name(), "bank-a");
    submit(&connector, "pay_1").await.unwrap();
    let seen = bank.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/v1/payments");
    assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(
        body,
        json!({"payment_id": "accounts/acme/payments/pay_1",
               "amount": {"currency_code": "USD", "minor_units": 1250},
               "metadata": {"bank_sim": "succeed"},
               "callback_url": CALLBACK_URL})
    );
}

#[tokio::test]
async fn refund_submission_matches_the_protocol() {
    let bank = FakeBank::start(accepted()).await;
    let connector = connector(&bank, settings());
    let refund = RefundSubmission {
        name: name("pay_1"),
        refund_id: "r1".into(),
        amount: usd(500),
        trace: None,
    };
    connector.submit_refund(refund).await.unwrap();
    let seen = bank.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/v1/refunds")
    );
    let body: serde_json::Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(
        body,
        json!({"payment_id": "accounts/acme/payments/pay_1", "refund_id": "r1",
               "amount": {"currency_code": "USD", "minor_units": 500},
               "callback_url": CALLBACK_URL})
    );
}

#[tokio::test]
async fn status_query_encodes_the_payment_id_and_maps_each_status() {
    let bank = FakeBank::start(accepted()).await;
    let connector = connector(&bank, settings());
    let id = "accounts/acme/payments/pay_1";
    let answer = |status: &str| {
        Answer::Now(
            200,
            json!({"payment_id": id, "status": status, "reason": "insufficient funds"}).to_string(),
        )
    };
    bank.then(["unknown", "pending", "processed", "failed"].map(answer));
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(connector.payment_status(name("pay_1")).await.unwrap());
    }
    assert_eq!(
        statuses,
        [
            BankStatus::Unknown,
            BankStatus::Pending,
            BankStatus::Done(BankOutcome::Processed),
            BankStatus::Done(BankOutcome::Failed {
                reason: "insufficient funds".into()
            }),
        ]
    );
    for seen in bank.seen() {
        assert_eq!(seen.method, "GET");
        assert_eq!(seen.path, "/v1/payments/accounts%2Facme%2Fpayments%2Fpay_1");
        assert_eq!(seen.body, "");
    }
}

#[tokio::test]
async fn server_errors_are_retried_with_the_same_request() {
    let bank = FakeBank::start(accepted()).await;
    let connector = connector(&bank, settings());
    bank.then([Answer::Now(503, "{}".into()), Answer::Now(503, "{}".into())]);
    submit(&connector, "pay_1").await.unwrap();
    let seen = bank.seen();
    assert_eq!(seen.len(), 3, "two 503s, then the 202");
    assert!(seen
        .iter()
        .all(|s| s.path == "/v1/payments" && s.body == seen[0].body));
}

#[tokio::test]
async fn a_failing_bank_gets_exactly_the_configured_attempts() {
    let bank = FakeBank::start(Answer::Now(503, r#"{"error":"down"}"#.into())).await;
    let connector = connector(
        &bank,
        HttpConnectorSettings {
            attempts_max: 4,
            ..settings()
        },
    );
    let why = transient(submit(&connector, "pay_1").await);
    assert!(why.contains("4 attempts") && why.contains("503"), "{why}");
    assert_eq!(bank.seen().len(), 4);
}

#[tokio::test]
async fn a_bank_that_never_answers_is_transient_after_its_attempts() {
    let bank = FakeBank::start(Answer::Hang).await;
    let connector = connector(
        &bank,
        HttpConnectorSettings {
            request_timeout: Duration::from_millis(200),
            attempts_max: 2,
            ..settings()
        },
    );
    let why = transient(submit(&connector, "pay_1").await);
    assert!(why.contains("no answer within"), "{why}");
    assert_eq!(bank.seen().len(), 2);
}

#[tokio::test]
async fn rejections_are_final_and_do_not_count_against_the_bank() {
    let bank = FakeBank::start(accepted()).await;
    let connector = connector(
        &bank,
        HttpConnectorSettings {
            breaker: BreakerSettings {
                window_calls: 2,
                min_calls: 2,
                ..BreakerSettings::default()
            },
            ..settings()
        },
    );
    bank.then([
        Answer::Now(422, r#"{"error":"unsupported currency"}"#.into()),
        Answer::Now(409, r#"{"error":"different payment"}"#.into()),
        Answer::Now(422, r#"{"error":"closed account"}"#.into()),
    ]);
    let first = submit(&connector, "pay_1").await;
    assert!(
        matches!(&first, Err(ConnectorError::Rejected(why)) if why.contains("unsupported currency")),
        "{first:?}"
    );
    assert_eq!(bank.seen().len(), 1, "a 422 is not retried");
    assert!(matches!(
        submit(&connector, "pay_2").await,
        Err(ConnectorError::Rejected(_))
    ));
    assert_eq!(bank.seen().len(), 2, "a 409 is not retried");
    assert!(matches!(
        submit(&connector, "pay_3").await,
        Err(ConnectorError::Rejected(_))
    ));
    assert_eq!(connector.breaker().state(), BreakerState::Closed);
}

#[tokio::test]
async fn requests_in_flight_are_bounded() {
    const LIMIT: usize = 3;
    const CALLS: usize = 10;
    let bank = FakeBank::start(Answer::Held(202, "{}".into())).await;
    let connector = Arc::new(connector(
        &bank,
        HttpConnectorSettings {
            in_flight_max: LIMIT,
            request_timeout: PATIENCE,
            ..settings()
        },
    ));
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let connector = connector.clone();
            tokio::spawn(async move { submit(&connector, &format!("pay_{i}")).await })
        })
        .collect();
    bank.until_in_progress(LIMIT).await;
    // The other calls queue at the connector: give a broken limit a chance
    // to show, then let the bank answer everything.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(bank.seen().len(), LIMIT);
    bank.release(CALLS);
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(bank.seen().len(), CALLS);
    assert_eq!(bank.max_in_progress(), LIMIT);
}

#[tokio::test]
async fn waiting_for_a_slot_is_bounded() {
    const CALLS: usize = 5;
    let bank = FakeBank::start(Answer::Hang).await;
    let connector = Arc::new(connector(
        &bank,
        HttpConnectorSettings {
            in_flight_max: 1,
            request_timeout: Duration::from_millis(500),
            attempts_max: 1,
            ..settings()
        },
    ));
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let connector = connector.clone();
            tokio::spawn(async move { submit(&connector, &format!("pay_{i}")).await })
        })
        .collect();
    let mut busy = 0;
    for call in calls {
        let why = transient(call.await.unwrap());
        busy += usize::from(why.contains("slots busy"));
    }
    // Each waits one timeout at most: the first holds the slot for a whole
    // timeout, the next in line may get it then, everyone else gives up.
    assert!(bank.seen().len() <= 2, "{} sent", bank.seen().len());
    assert!(busy >= CALLS - 2, "{busy} gave up waiting");
}

#[tokio::test]
async fn the_breaker_opens_fails_fast_and_probes_after_the_cool_down() {
    const COOL_DOWN: Duration = Duration::from_secs(30);
    let bank = FakeBank::start(Answer::Now(503, "{}".into())).await;
    let clock = manual_clock();
    let connector = Arc::new(connector_with(
        &bank,
        HttpConnectorSettings {
            attempts_max: 2,
            breaker: BreakerSettings {
                window_calls: 4,
                min_calls: 4,
                failure_percent: 50,
                cool_down: COOL_DOWN,
            },
            ..settings()
        },
        clock.clone(),
    ));
    let breaker = || connector.breaker().state();

    // Two calls of two failed attempts each fill the window: open.
    transient(submit(&connector, "pay_1").await);
    assert_eq!(breaker(), BreakerState::Closed);
    transient(submit(&connector, "pay_2").await);
    assert_eq!(breaker(), BreakerState::Open);
    assert_eq!(bank.seen().len(), 4);

    // Open: fails fast, the bank sees nothing.
    assert_eq!(transient(submit(&connector, "pay_3").await), CIRCUIT_OPEN);
    assert_eq!(bank.seen().len(), 4);

    // After the cool-down one probe goes; it fails, and the breaker, open
    // again, stops that call's retry.
    clock.advance(COOL_DOWN);
    assert_eq!(breaker(), BreakerState::HalfOpen);
    assert_eq!(transient(submit(&connector, "pay_4").await), CIRCUIT_OPEN);
    assert_eq!(bank.seen().len(), 5);
    assert_eq!(breaker(), BreakerState::Open);
    assert_eq!(transient(submit(&connector, "pay_5").await), CIRCUIT_OPEN);
    assert_eq!(bank.seen().len(), 5);

    // The bank recovers. One probe at a time: while it is out, others fail
    // fast; its success closes the breaker.
    clock.advance(COOL_DOWN);
    bank.answer_by_default(Answer::Held(202, "{}".into()));
    let probe = {
        let connector = connector.clone();
        tokio::spawn(async move { submit(&connector, "pay_6").await })
    };
    bank.until_in_progress(1).await;
    assert_eq!(transient(submit(&connector, "pay_7").await), CIRCUIT_OPEN);
    assert_eq!(bank.seen().len(), 6);
    bank.release(1);
    probe.await.unwrap().unwrap();
    assert_eq!(breaker(), BreakerState::Closed);
    bank.answer_by_default(accepted());
    submit(&connector, "pay_8").await.unwrap();
    assert_eq!(bank.seen().len(), 7);
}
