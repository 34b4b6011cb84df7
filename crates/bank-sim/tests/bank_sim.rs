//! `payvisor-bank-sim` over the wire: the real binary on a free port, a
//! minimal HTTP/1.1 client, and a callback receiver that checks every
//! `Bank-Signature`. Waits are liveness deadlines, never timing assertions.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BINARY: &str = env!("CARGO_BIN_EXE_payvisor-bank-sim");
const SECRET: &str = "bank-sim-test-secret-0123456789";
const BANK: &str = "bank-a";
/// Longest wait for anything to happen (a callback, a decision).
const DEADLINE: Duration = Duration::from_secs(10);

/// A running `payvisor bank-sim` process; killed (-9) when dropped.
struct BankProcess {
    child: Child,
    address: SocketAddr,
    /// Kept open: the bank must never write to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl BankProcess {
    fn start(data_dir: &Path, extra: &[&str]) -> BankProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .expect("log file");
        let mut child = Command::new(BINARY)
            .args(["--listen", "127.0.0.1:0", "--name", BANK])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--secret", SECRET, "--seed", "42"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start bank-sim");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the ready line");
        let prefix = format!("bank-sim {BANK} listening on ");
        let address = line
            .trim_end()
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
            .parse()
            .expect("an address");
        BankProcess {
            child,
            address,
            _stdout: stdout,
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        request(self.address, "POST", path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        request(self.address, "GET", path, None).await
    }

    async fn status_of(&self, payment_id: &str) -> Value {
        let (status, body) = self
            .get(&format!("/v1/payments/{}", encode(payment_id)))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["payment_id"], payment_id);
        body
    }

    async fn stats(&self) -> Value {
        let (status, body) = self.get("/admin/stats").await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl Drop for BankProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `/` as `%2F`, as the protocol asks for payment names in paths.
fn encode(payment_id: &str) -> String {
    payment_id.replace('/', "%2F")
}

/// One HTTP/1.1 exchange on a fresh connection: status and JSON body.
async fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let exchange = async {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: bank\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read the answer");
        let raw = String::from_utf8(raw).expect("UTF-8 answer");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a complete answer");
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("a status line");
        let body = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON body {body:?}: {e}"))
        };
        (status, body)
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("the bank answers")
}

/// A callback as the receiver saw it.
#[derive(Clone, Debug)]
struct Delivery {
    message: Value,
    /// The status the receiver answered.
    answered: u16,
}

/// Answers callbacks with `status` (changeable), after checking each
/// signature; a wrongly signed callback fails the test.
struct Receiver {
    url: String,
    status: Arc<AtomicU16>,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/v1/callbacks/{BANK}",
            listener.local_addr().unwrap()
        );
        let status = Arc::new(AtomicU16::new(200));
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let (answer, seen) = (Arc::clone(&status), Arc::clone(&deliveries));
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (answer, seen) = (Arc::clone(&answer), Arc::clone(&seen));
                tokio::spawn(receive(stream, answer, seen));
            }
        });
        Receiver {
            url,
            status,
            deliveries,
        }
    }

    fn answer_with(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }

    /// Deliveries of `payment_id`'s callbacks (any type), in arrival order.
    fn of(&self, payment_id: &str) -> Vec<Delivery> {
        self.deliveries()
            .into_iter()
            .filter(|d| d.message["payment_id"] == payment_id)
            .collect()
    }

    /// Waits until a callback matching `wanted` was answered 200.
    async fn acknowledged(&self, wanted: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            if let Some(found) = self
                .deliveries()
                .into_iter()
                .find(|d| d.answered == 200 && wanted(&d.message))
            {
                return found.message;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "no such callback; got {:?}",
                self.deliveries()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(mut stream: TcpStream, answer: Arc<AtomicU16>, seen: Arc<Mutex<Vec<Delivery>>>) {
    let mut raw = Vec::new();
    let mut buffer = [0u8; 4096];
    let (head, body) = loop {
        let read = stream.read(&mut buffer).await.unwrap_or(0);
        if read == 0 {
            return;
        }
        raw.extend_from_slice(&buffer[..read]);
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8(raw[..end].to_vec()).unwrap();
        let length: usize = header(&head, "content-length")
            .map(|v| v.parse().unwrap())
            .unwrap_or(0);
        while raw.len() < end + 4 + length {
            let read = stream.read(&mut buffer).await.unwrap_or(0);
            assert!(read > 0, "callback body cut short");
            raw.extend_from_slice(&buffer[..read]);
        }
        break (head, raw[end + 4..end + 4 + length].to_vec());
    };
    assert!(head.starts_with("POST /v1/callbacks/"), "{head}");
    let signature = header(&head, "bank-signature").expect("a Bank-Signature header");
    let t: i64 = signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split(',').next())
        .and_then(|t| t.parse().ok())
        .expect("t=<unix seconds>");
    assert_eq!(
        signature,
        payvisor::signature::sign(SECRET.as_bytes(), t, &body),
        "signature over the raw body"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - t).abs() <= 300, "a fresh timestamp");
    let message: Value = serde_json::from_slice(&body).expect("a JSON callback");
    let status = answer.load(Ordering::SeqCst);
    seen.lock().unwrap().push(Delivery {
        message,
        answered: status,
    });
    let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

fn payment(payment_id: &str, currency: &str, minor_units: i64, callback_url: &str) -> Value {
    json!({
        "payment_id": payment_id,
        "amount": {"currency_code": currency, "minor_units": minor_units},
        "metadata": {},
        "callback_url": callback_url,
    })
}

fn steered(payment_id: &str, behaviour: &str, callback_url: &str) -> Value {
    let mut body = payment(payment_id, "USD", 1000, callback_url);
    body["metadata"] = json!({ "bank_sim": behaviour });
    body
}

fn refund(payment_id: &str, refund_id: &str, minor_units: i64, callback_url: &str) -> Value {
    json!({
        "payment_id": payment_id,
        "refund_id": refund_id,
        "amount": {"currency_code": "USD", "minor_units": minor_units},
        "callback_url": callback_url,
    })
}

fn is_payment<'a>(payment_id: &'a str, kind: &'static str) -> impl Fn(&Value) -> bool + 'a {
    move |m| m["payment_id"] == payment_id && m["type"] == kind
}

/// Polls the status query until `status`.
async fn wait_for_status(bank: &BankProcess, payment_id: &str, status: &str) -> Value {
    let started = Instant::now();
    loop {
        let answer = bank.status_of(payment_id).await;
        if answer["status"] == status {
            return answer;
        }
        assert!(started.elapsed() < DEADLINE, "{payment_id}: {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bank");
    (dir, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_is_recorded_once_and_confirmed_by_one_signed_callback() {
    let receiver = Receiver::start().await;
    let (_dir, data) = data_dir();
    let bank = BankProcess::start(
        &data,
        &["--outcome-delay-ms", "500..500", "--currencies", "USD,EUR"],
    );
    let p1 = "accounts/acme/payments/pay_1";

    assert_eq!(bank.status_of(p1).await["status"], "unknown");
    let (status, answer) = bank
        .post("/v1/payments", &payment(p1, "USD", 1250, &receiver.url))
        .await;
    assert_eq!(
        (status, &answer["status"]),
        (202, &json!("pending")),
        "{answer}"
    );
    // The outcome is half a second away; one request is far quicker.
    assert_eq!(bank.status_of(p1).await["status"], "pending");

    let callback = receiver
        .acknowledged(is_payment(p1, "payment.processed"))
        .await;
    assert_eq!(callback["message_id"], format!("{BANK}-00000001"));
    assert_eq!(callback["bank"], BANK);
    assert_eq!(callback["refund_id"], Value::Null);
    assert!(callback["sent_at_ms"].as_i64().unwrap() > 0);
    assert_eq!(bank.status_of(p1).await["status"], "processed");

    // Again: the same answer (with the outcome now known), nothing new.
    let (status, answer) = bank
        .post("/v1/payments", &payment(p1, "USD", 1250, &receiver.url))
        .await;
    assert_eq!(
        (status, &answer["status"]),
        (202, &json!("processed")),
        "{answer}"
    );
    // Another amount or currency under the same id: refused, nothing changed.
    let (status, _) = bank
        .post("/v1/payments", &payment(p1, "USD", 1251, &receiver.url))
        .await;
    assert_eq!(status, 409);
    let (status, _) = bank
        .post("/v1/payments", &payment(p1, "EUR", 1250, &receiver.url))
        .await;
    assert_eq!(status, 409);
    // A currency this bank does not take: a definite rejection, not recorded.
    let p2 = "accounts/acme/payments/pay_2";
    let (status, answer) = bank
        .post("/v1/payments", &payment(p2, "GBP", 100, &receiver.url))
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("GBP"));
    assert_eq!(bank.status_of(p2).await["status"], "unknown");
    // Not the protocol's JSON at all.
    let (status, _) = bank.post("/v1/payments", &json!({"payment_id": p2})).await;
    assert_eq!(status, 400);

    // A declined payment says why, in the callback and the status.
    let p3 = "accounts/acme/payments/pay_3";
    let (status, _) = bank
        .post("/v1/payments", &steered(p3, "fail", &receiver.url))
        .await;
    assert_eq!(status, 202);
    let failed = receiver
        .acknowledged(is_payment(p3, "payment.failed"))
        .await;
    assert_eq!(failed["reason"], "declined by issuer");
    assert_eq!(bank.status_of(p3).await["reason"], "declined by issuer");

    // The repeat after the outcome re-notified it under a new message id;
    // the outcome itself was decided (and settled) once.
    let p1_messages = receiver.of(p1);
    assert_eq!(p1_messages.len(), 2, "{p1_messages:?}");
    assert_ne!(
        p1_messages[0].message["message_id"],
        p1_messages[1].message["message_id"]
    );
    assert!(p1_messages
        .iter()
        .all(|delivery| delivery.message["type"] == "payment.processed"));
    let stats = bank.stats().await;
    assert_eq!(stats["distinct_payments"], 2, "{stats}");
    assert_eq!(stats["duplicate_submissions"], 1, "{stats}");
    assert_eq!(stats["conflicting_submissions"], 2, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_need_a_processed_payment_and_stay_within_its_amount() {
    let receiver = Receiver::start().await;
    let (_dir, data) = data_dir();
    let bank = BankProcess::start(&data, &[]);
    let (p1, hung) = (
        "accounts/acme/payments/pay_r",
        "accounts/acme/payments/pay_h",
    );

    assert_eq!(
        bank.post("/v1/payments", &payment(p1, "USD", 1000, &receiver.url))
            .await
            .0,
        202
    );
    assert_eq!(
        bank.post("/v1/payments", &steered(hung, "hang", &receiver.url))
            .await
            .0,
        202
    );
    // Too early (or never, for the hung one): the payment is not processed.
    let (status, answer) = bank
        .post("/v1/refunds", &refund(hung, "r1", 10, &receiver.url))
        .await;
    assert_eq!(status, 422, "{answer}");
    receiver
        .acknowledged(is_payment(p1, "payment.processed"))
        .await;

    let (status, answer) = bank
        .post("/v1/refunds", &refund(p1, "r1", 600, &receiver.url))
        .await;
    assert_eq!(
        (status, &answer["refund_id"]),
        (202, &json!("r1")),
        "{answer}"
    );
    let (status, _) = bank
        .post("/v1/refunds", &refund(p1, "r1", 600, &receiver.url))
        .await;
    assert_eq!(status, 202, "the same refund again");
    let (status, _) = bank
        .post("/v1/refunds", &refund(p1, "r1", 601, &receiver.url))
        .await;
    assert_eq!(status, 409);
    let (status, answer) = bank
        .post("/v1/refunds", &refund(p1, "r2", 401, &receiver.url))
        .await;
    assert_eq!(status, 422, "beyond the 400 remaining: {answer}");
    let (status, _) = bank
        .post("/v1/refunds", &refund(p1, "r2", 400, &receiver.url))
        .await;
    assert_eq!(status, 202);
    let (status, _) = bank
        .post(
            "/v1/refunds",
            &refund("accounts/acme/payments/nope", "r1", 1, &receiver.url),
        )
        .await;
    assert_eq!(status, 422, "a payment the bank never received");

    for refund_id in ["r1", "r2"] {
        let message = receiver
            .acknowledged(|m| m["type"] == "refund.succeeded" && m["refund_id"] == refund_id)
            .await;
        assert_eq!(message["payment_id"], p1);
    }
    assert_eq!(bank.status_of(hung).await["status"], "pending");

    let (status, report) = bank
        .get("/v1/settlements?from_ms=0&to_ms=9000000000000")
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["bank"], BANK);
    let entries = report["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{report}");
    assert_eq!(
        report["totals"],
        json!([{"currency_code": "USD", "payments_minor_units": 1000, "refunds_minor_units": 1000}])
    );
    // An empty window.
    let (status, report) = bank.get("/v1/settlements?from_ms=0&to_ms=1").await;
    assert_eq!(
        (status, report["entries"].as_array().unwrap().len()),
        (200, 0)
    );
    assert_eq!(bank.get("/v1/settlements?from_ms=0").await.0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_settlement_report_disagrees_with_what_was_settled() {
    let receiver = Receiver::start().await;
    let (_dir, data) = data_dir();
    let bank = BankProcess::start(&data, &["--corrupt-settlement"]);
    let submitted = [
        ("accounts/acme/payments/pay_c1", 1250),
        ("accounts/acme/payments/pay_c2", 300),
    ];
    for (id, minor_units) in submitted {
        assert_eq!(
            bank.post(
                "/v1/payments",
                &payment(id, "USD", minor_units, &receiver.url)
            )
            .await
            .0,
            202
        );
    }
    for (id, _) in submitted {
        receiver
            .acknowledged(is_payment(id, "payment.processed"))
            .await;
    }
    let (status, report) = bank
        .get("/v1/settlements?from_ms=0&to_ms=9000000000000")
        .await;
    assert_eq!(status, 200, "{report}");
    let true_sum: i64 = submitted.iter().map(|(_, minor_units)| minor_units).sum();
    let total = report["totals"][0]["payments_minor_units"]
        .as_i64()
        .unwrap();
    let listed: i64 = report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["minor_units"].as_i64().unwrap())
        .sum();
    assert_ne!(total, true_sum, "{report}");
    assert_eq!(
        (total, listed),
        (true_sum + 1, true_sum + 1),
        "self-consistent, and wrong"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_the_record_survives_and_unacknowledged_callbacks_are_sent() {
    let receiver = Receiver::start().await;
    receiver.answer_with(500);
    let (_dir, data) = data_dir();
    let (p1, p2) = (
        "accounts/acme/payments/pay_k1",
        "accounts/acme/payments/pay_k2",
    );
    let mut bank = BankProcess::start(&data, &["--outcome-delay-ms", "300..300"]);
    assert_eq!(
        bank.post("/v1/payments", &payment(p1, "USD", 500, &receiver.url))
            .await
            .0,
        202
    );
    // The callback is refused at least once...
    let started = Instant::now();
    while receiver.of(p1).is_empty() {
        assert!(started.elapsed() < DEADLINE, "no callback attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = receiver.of(p1)[0].message.clone();
    assert_eq!(receiver.of(p1)[0].answered, 500);
    // ...and a second payment is recorded but not yet decided at the kill.
    let (status, answer) = bank
        .post("/v1/payments", &payment(p2, "USD", 700, &receiver.url))
        .await;
    assert_eq!((status, &answer["status"]), (202, &json!("pending")));
    bank.kill();

    receiver.answer_with(200);
    let bank = BankProcess::start(&data, &[]);
    let delivered = receiver
        .acknowledged(is_payment(p1, "payment.processed"))
        .await;
    assert_eq!(
        delivered["message_id"], refused["message_id"],
        "the same message, re-sent"
    );
    receiver
        .acknowledged(is_payment(p2, "payment.processed"))
        .await;
    for id in [p1, p2] {
        assert_eq!(bank.status_of(id).await["status"], "processed");
    }
    let (status, answer) = bank
        .post("/v1/payments", &payment(p1, "USD", 500, &receiver.url))
        .await;
    assert_eq!(
        (status, &answer["status"]),
        (202, &json!("processed")),
        "idempotent across restarts"
    );
    assert_eq!(bank.stats().await["distinct_payments"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_refuses_every_request_until_lifted() {
    let receiver = Receiver::start().await;
    let (_dir, data) = data_dir();
    let bank = BankProcess::start(&data, &[]);
    let p1 = "accounts/acme/payments/pay_o";

    let (status, answer) = bank.post("/admin/outage", &json!({"down": true})).await;
    assert_eq!((status, answer), (200, json!({"down": true})));
    assert_eq!(
        bank.post("/v1/payments", &payment(p1, "USD", 100, &receiver.url))
            .await
            .0,
        503
    );
    assert_eq!(
        bank.get(&format!("/v1/payments/{}", encode(p1))).await.0,
        503
    );
    let stats = bank.stats().await;
    assert_eq!(
        (
            stats["requests_refused_by_outage"].as_u64(),
            stats["down"].as_bool()
        ),
        (Some(2), Some(true))
    );

    assert_eq!(
        bank.post("/admin/outage", &json!({"down": false})).await.0,
        200
    );
    assert_eq!(
        bank.status_of(p1).await["status"],
        "unknown",
        "nothing was recorded"
    );
    assert_eq!(
        bank.post("/v1/payments", &payment(p1, "USD", 100, &receiver.url))
            .await
            .0,
        202
    );
    receiver
        .acknowledged(is_payment(p1, "payment.processed"))
        .await;

    // A scheduled outage from the start, and a clean stop on SIGTERM.
    let (_dir, data) = data_dir();
    let mut scheduled = BankProcess::start(&data, &["--outage", "0..600"]);
    assert_eq!(
        scheduled
            .post("/v1/payments", &payment(p1, "USD", 100, &receiver.url))
            .await
            .0,
        503
    );
    let killed = Command::new("kill")
        .args(["-TERM", &scheduled.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = scheduled.child.try_wait().unwrap() {
            break exit;
        }
        assert!(started.elapsed() < DEADLINE, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_callback_settles_without_a_callback() {
    let receiver = Receiver::start().await;
    let (_dir, data) = data_dir();
    let bank = BankProcess::start(&data, &[]);
    let (dropped, normal) = (
        "accounts/acme/payments/pay_d",
        "accounts/acme/payments/pay_n",
    );
    assert_eq!(
        bank.post(
            "/v1/payments",
            &steered(dropped, "drop_callback", &receiver.url)
        )
        .await
        .0,
        202
    );
    wait_for_status(&bank, dropped, "processed").await;
    // A later payment's callback arrives: the dropped one was never queued.
    assert_eq!(
        bank.post("/v1/payments", &payment(normal, "USD", 100, &receiver.url))
            .await
            .0,
        202
    );
    let later = receiver
        .acknowledged(is_payment(normal, "payment.processed"))
        .await;
    assert_eq!(
        later["message_id"],
        format!("{BANK}-00000002"),
        "the dropped message kept its number"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        receiver.of(dropped).is_empty(),
        "{:?}",
        receiver.of(dropped)
    );
    assert_eq!(bank.stats().await["callbacks_sent"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_show_on_the_wire() {
    let receiver = Receiver::start().await;
    let (_dir, data) = data_dir();
    let bank = BankProcess::start(
        &data,
        &[
            "--timeout-per-mille",
            "1000",
            "--hold-ms",
            "2000",
            "--duplicate-callback-per-mille",
            "1000",
            "--reorder-callbacks",
            "--latency-ms",
            "1..5",
        ],
    );
    let p1 = "accounts/acme/payments/pay_f";
    // The answer is held past the client's patience, but the submission is
    // recorded: the status query knows it.
    let held = tokio::time::timeout(
        Duration::from_millis(500),
        bank.post("/v1/payments", &payment(p1, "USD", 100, &receiver.url)),
    )
    .await;
    assert!(held.is_err(), "the answer was held: {held:?}");
    assert_ne!(bank.status_of(p1).await["status"], "unknown");
    // The callback comes twice, byte for byte the same message.
    let started = Instant::now();
    while receiver.of(p1).len() < 2 {
        assert!(started.elapsed() < DEADLINE, "{:?}", receiver.deliveries());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let twice = receiver.of(p1);
    assert_eq!(twice[0].message, twice[1].message);
    let stats = bank.stats().await;
    assert_eq!(stats["answers_held"], 1, "{stats}");
    assert_eq!(stats["callbacks_duplicated"], 1, "{stats}");

    // Injected errors: 503 and nothing recorded.
    let (_dir, data) = data_dir();
    let failing = BankProcess::start(&data, &["--error-per-mille", "1000"]);
    let (status, _) = failing
        .post("/v1/payments", &payment(p1, "USD", 100, &receiver.url))
        .await;
    assert_eq!(status, 503);
    let stats = failing.stats().await;
    assert_eq!(stats["distinct_payments"], 0, "{stats}");
    assert_eq!(stats["requests_refused_by_error"], 1, "{stats}");
}
