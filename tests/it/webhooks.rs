//! Signed merchant webhooks and the event feed, end to end: the real binary
//! delivers to a receiver written in Python (`tests/webhook_receiver.py`),
//! which checks every signature with its own HMAC implementation. Covers a
//! receiver outage across a `kill -9` of payvisor, order per payment, the
//! delivery state an operator sees, giving up after the retry period and an
//! operator's re-send, and resuming `WatchPaymentEvents` from an event id.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use payvisor::grpc::pb;
use payvisor::grpc::pb::event_delivery::State as DeliveryState;
use serde_json::Value;

const SECRET: &str = "whsec_test_0123456789abcdef";

/// The Python receiver on a fixed port (so it can be restarted on it).
struct Receiver {
    process: Option<Child>,
    port: u16,
    log: PathBuf,
    rejected: PathBuf,
}

impl Receiver {
    fn start(dir: &Path) -> Receiver {
        let port = crate::common::bank_sim::free_port();
        let mut receiver = Receiver {
            process: None,
            port,
            log: dir.join("received.jsonl"),
            rejected: dir.join("rejected.jsonl"),
        };
        receiver.restart();
        receiver
    }

    fn restart(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webhook_receiver.py");
        let mut process = Command::new("python3")
            .arg(script)
            .args(["--port", &self.port.to_string(), "--secret", SECRET])
            .arg("--log")
            .arg(&self.log)
            .arg("--rejected")
            .arg(&self.rejected)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the webhook receiver");
        let mut ready = [0u8; 8];
        process
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut ready)
            .expect("receiver starts");
        self.process = Some(process);
    }

    fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Accepted events in arrival order.
    fn received(&self) -> Vec<Value> {
        read_lines(&self.log)
    }

    fn rejected(&self) -> Vec<Value> {
        read_lines(&self.rejected)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn webhooks_file(dir: &Path, url: &str) -> PathBuf {
    let path = dir.join("webhooks.json");
    let text = serde_json::json!({
        "endpoints": [{"name": "shop", "url": url, "secret": SECRET}]
    });
    std::fs::write(&path, text.to_string()).unwrap();
    path
}

/// Event sequence numbers per payment, first arrival of each id only,
/// in arrival order.
fn sequences_per_payment(received: &[Value]) -> BTreeMap<String, Vec<u64>> {
    let mut seen = HashSet::new();
    let mut per_payment: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for event in received {
        if seen.insert(event["id"].as_str().unwrap().to_owned()) {
            per_payment
                .entry(event["payment"].as_str().unwrap().to_owned())
                .or_default()
                .push(event["sequence"].as_u64().unwrap());
        }
    }
    per_payment
}

async fn events_of(
    client: &mut pb::payment_service_client::PaymentServiceClient<tonic::transport::Channel>,
    payment: &str,
) -> Vec<pb::PaymentEvent> {
    client
        .list_payment_events(pb::ListPaymentEventsRequest {
            parent: payment.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
}

/// Waits until `done` holds of what the receiver accepted.
async fn wait_received(receiver: &Receiver, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
    loop {
        let received = receiver.received();
        if done(&received) {
            return received;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "webhooks never arrived: {received:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every payment's events 1..=n arrived, first arrivals in order.
fn all_in_order(received: &[Value], expected: &BTreeMap<String, u64>) -> bool {
    let got = sequences_per_payment(received);
    expected.iter().all(|(payment, count)| {
        got.get(payment)
            .is_some_and(|seqs| *seqs == (1..=*count).collect::<Vec<_>>())
    })
}

#[test]
fn the_python_receiver_refuses_a_wrong_signature() {
    // Without this, a receiver that accepts everything would pass the rest.
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path());
    let body = r#"{"id":"x","type":"payment.sent","sequence":"1","event":{"payment":"p","state":"STATE_SENT"},"payment":null}"#;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let good = payvisor::signature::sign(SECRET.as_bytes(), now, body.as_bytes());
    let cases = [
        (good.replace("v1=", "v1=0"), 400),
        (
            payvisor::signature::sign(b"other-secret-000000", now, body.as_bytes()),
            400,
        ),
        (
            payvisor::signature::sign(SECRET.as_bytes(), now - 3600, body.as_bytes()),
            400,
        ),
        (good, 200),
    ];
    for (signature, expected) in cases {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", receiver.port)).unwrap();
        write!(
            stream,
            "POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nPayvisor-Signature: {signature}\r\nPayvisor-Event-Id: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with(&format!("HTTP/1.0 {expected}")),
            "{signature}: {answer}"
        );
    }
    assert_eq!(receiver.rejected().len(), 3);
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_are_signed_in_order_and_survive_a_receiver_outage_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::start(dir.path());
    let hooks = webhooks_file(dir.path(), &receiver.url());
    let mut server = Server::start(&["--webhooks", hooks.to_str().unwrap()]);
    let mut client = server.client().await;

    // Receiver up: created, approved, sent, processed for each payment.
    let mut expected = BTreeMap::new();
    let mut up = Vec::new();
    for n in 0..3 {
        let payment = processed_payment(&mut client, "shop", &format!("up-{n}"), 1_000 + n).await;
        expected.insert(payment.name.clone(), 4);
        up.push(payment.name);
    }
    wait_received(&receiver, |received| all_in_order(received, &expected)).await;

    // Receiver down: new events are recorded, attempted, and wait.
    receiver.stop();
    let mut during = Vec::new();
    for n in 0..3 {
        let payment = processed_payment(&mut client, "shop", &format!("down-{n}"), 2_000 + n).await;
        expected.insert(payment.name.clone(), 4);
        during.push(payment.name);
    }
    let refunded = up[0].clone();
    client
        .refund_payment(refund_request(&refunded, "refund-1", None))
        .await
        .unwrap();
    wait_for(&mut client, &refunded, |p| {
        state(p) == pb::payment::State::Refunded
    })
    .await;
    // refund.pending, refund.succeeded, payment.refunded.
    expected.insert(refunded.clone(), 7);
    // The operator's view: pending, attempted, with the error.
    let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
    loop {
        let events = events_of(&mut client, &during[0]).await;
        assert_eq!(events.len(), 4);
        let first = &events[0].deliveries[0];
        assert_eq!(first.endpoint, "shop");
        if first.attempts >= 1 {
            assert_eq!(first.state, DeliveryState::Pending as i32);
            assert!(!first.last_error.is_empty());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // payvisor is killed while deliveries are pending, and comes back;
    // then the receiver does. Everything arrives, in order per payment.
    server.kill9();
    server.restart();
    let mut client = server.client().await;
    receiver.restart();
    let received = wait_received(&receiver, |received| all_in_order(received, &expected)).await;
    assert!(receiver.rejected().is_empty(), "{:?}", receiver.rejected());
    let types: Vec<_> = received
        .iter()
        .filter(|event| event["payment"] == refunded.as_str())
        .map(|event| event["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        &types[..7],
        [
            "payment.created",
            "payment.approved",
            "payment.sent",
            "payment.processed",
            "refund.pending",
            "refund.succeeded",
            "payment.refunded"
        ]
    );
    // Delivered is what the operator sees too.
    let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
    loop {
        let events = events_of(&mut client, &during[0]).await;
        if events
            .iter()
            .all(|event| event.deliveries[0].state == DeliveryState::Delivered as i32)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.verify_ledger(&["shop"]);
}

/// A webhook is a span of the call that caused its event: the create's
/// `traceparent` reaches the receiver with `payment.created` (same trace, a
/// span of its own); a bank's outcome, which no call caused, comes under a
/// trace of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_carries_the_trace_of_the_call_that_caused_its_event() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path());
    let hooks = webhooks_file(dir.path(), &receiver.url());
    let server = Server::start(&["--webhooks", hooks.to_str().unwrap()]);
    let mut client = server.client().await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let caller = format!("00-{trace}-b7ad6b7169203331-01");
    let mut request = tonic::Request::new(create_request("shop", "traced-1", 1_000));
    request
        .metadata_mut()
        .insert("traceparent", caller.parse().unwrap());
    let payment = client.create_payment(request).await.unwrap().into_inner();
    let received = wait_received(&receiver, |received| {
        received
            .iter()
            .any(|event| event["type"] == "payment.processed")
    })
    .await;
    let traceparent = |kind: &str| -> String {
        let event = received
            .iter()
            .find(|event| event["type"] == kind && event["payment"] == payment.name.as_str())
            .unwrap_or_else(|| panic!("no {kind}: {received:?}"));
        event["traceparent"].as_str().unwrap().to_owned()
    };
    let created = traceparent("payment.created");
    assert!(created.starts_with(&format!("00-{trace}-")), "{created}");
    assert_ne!(created, caller, "a span of its own");
    let processed = traceparent("payment.processed");
    assert!(
        processed.starts_with("00-") && !processed.contains(trace),
        "{processed}"
    );
}

/// A webhook's body is `payvisor.v1.WebhookEvent` in the canonical JSON
/// mapping: the event, its type and sequence, and the payment as GetPayment
/// returns it, with the metadata a merchant finds its order under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_carries_its_event_and_the_payment_with_its_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path());
    let hooks = webhooks_file(dir.path(), &receiver.url());
    let server = Server::start(&["--webhooks", hooks.to_str().unwrap()]);
    let mut client = server.client().await;
    let mut request = create_request("shop", "body-1", 1_250);
    (request.payment.as_mut().unwrap().metadata).insert("order_id".into(), "ord-7".into());
    let payment = client.create_payment(request).await.unwrap().into_inner();
    let received = wait_received(&receiver, |received| {
        received
            .iter()
            .any(|event| event["type"] == "payment.processed")
    })
    .await;
    assert!(receiver.rejected().is_empty(), "{:?}", receiver.rejected());
    for event in &received {
        assert_eq!(
            event["fields"],
            serde_json::json!(["createTime", "event", "id", "payment", "sequence", "type"]),
            "{event}"
        );
        assert_eq!(event["payment"], payment.name.as_str(), "{event}");
        assert_eq!(event["payment_name"], payment.name.as_str(), "{event}");
        assert_eq!(event["metadata"]["order_id"], "ord-7", "{event}");
    }
    let created = received
        .iter()
        .find(|event| event["type"] == "payment.created")
        .unwrap();
    assert_eq!(created["sequence"], 1);
    assert_eq!(created["event_state"], "STATE_CREATED");
    let processed = received
        .iter()
        .find(|event| event["type"] == "payment.processed")
        .unwrap();
    assert_eq!(processed["event_state"], "STATE_PROCESSED");
    assert_eq!(processed["payment_state"], "STATE_PROCESSED");
}

/// Each endpoint gets the event types it subscribed to (all when it names
/// none), and the webhooks file is reloaded when it changes: a new endpoint
/// gets the events decided after; a file that does not validate is refused
/// with its problems and the endpoints in force stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_get_the_types_they_subscribe_to_and_the_file_is_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let (shop_dir, crm_dir) = (dir.path().join("shop"), dir.path().join("crm"));
    std::fs::create_dir_all(&shop_dir).unwrap();
    std::fs::create_dir_all(&crm_dir).unwrap();
    let shop = Receiver::start(&shop_dir);
    let crm = Receiver::start(&crm_dir);
    let hooks = dir.path().join("webhooks.json");
    let write = |endpoints: Value| {
        let text = serde_json::json!({ "endpoints": endpoints }).to_string();
        std::fs::write(&hooks, text).unwrap();
    };
    // shop wants two types: approved comes in one write with created and
    // sent, which are passed over for it.
    let shop_entry = serde_json::json!({"name": "shop", "url": shop.url(), "secret": SECRET, "events": ["payment.approved", "payment.processed"]});
    write(serde_json::json!([shop_entry]));
    let server = Server::start_logged(&["--webhooks", hooks.to_str().unwrap()]);
    let mut client = server.client().await;
    let types_of = |received: &[Value], payment: &str| -> Vec<String> {
        received
            .iter()
            .filter(|event| event["payment"] == payment)
            .map(|event| event["type"].as_str().unwrap().to_owned())
            .collect()
    };

    // shop gets the two types it wants of a payment, and no other.
    let shop_got_its_types = |payment: String| {
        let (shop, types_of) = (&shop, &types_of);
        async move {
            let received = wait_received(shop, |received| {
                types_of(received, &payment).contains(&"payment.processed".to_owned())
            })
            .await;
            assert_eq!(
                types_of(&received, &payment),
                ["payment.approved", "payment.processed"]
            );
        }
    };
    let first = processed_payment(&mut client, "acme", "sub-1", 1_000).await;
    shop_got_its_types(first.name.clone()).await;
    // Nothing is left pending for shop: what it wants was sent, the rest
    // passed over.
    let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
    loop {
        let events = events_of(&mut client, &first.name).await;
        let delivered = |event: &pb::PaymentEvent| {
            (event.deliveries.iter()).all(|d| d.state == DeliveryState::Delivered as i32)
        };
        if events.iter().all(delivered) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A re-send of a type shop does not want is refused, saying why.
    let refused = client
        .resend_payment_event(pb::ResendPaymentEventRequest {
            name: format!("{}/events/1", first.name),
            endpoint: "shop".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&refused), ["endpoint"]);

    // crm is added, for every type, without a restart.
    let crm_entry = serde_json::json!({"name": "crm", "url": crm.url(), "secret": SECRET});
    write(serde_json::json!([shop_entry, crm_entry]));
    server.logged("webhooks file reloaded").await;
    let second = processed_payment(&mut client, "acme", "sub-2", 1_100).await;
    let mut expected = BTreeMap::new();
    expected.insert(second.name.clone(), 4);
    wait_received(&crm, |received| all_in_order(received, &expected)).await;
    shop_got_its_types(second.name.clone()).await;

    // A file naming an unknown type is refused; both endpoints stay.
    let bad_entry = serde_json::json!({"name": "crm", "url": crm.url(), "secret": SECRET, "events": ["payment.shipped"]});
    write(serde_json::json!([shop_entry, bad_entry]));
    server.logged("webhooks file not reloaded").await;
    let log = server.log();
    assert!(log.contains("payment.shipped"), "the problem is named");
    assert!(!log.contains(SECRET), "the secret is never logged");
    let third = processed_payment(&mut client, "acme", "sub-3", 1_200).await;
    expected.insert(third.name.clone(), 4);
    wait_received(&crm, |received| all_in_order(received, &expected)).await;
    assert!(shop.rejected().is_empty() && crm.rejected().is_empty());

    // The same file stops a server from starting, with the problem named.
    let output = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("other"))
        .arg("--webhooks")
        .arg(&hooks)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("payment.shipped"), "{stderr}");
}

/// An endpoint taken out of the webhooks file while deliveries to it are
/// pending keeps them pending (retried, not given up) and gets them, in
/// order, once it is back: an edit of the file loses and reorders nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_removed_for_a_while_gets_its_events_in_order_once_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::start(dir.path());
    let hooks = webhooks_file(dir.path(), &receiver.url());
    let listed = std::fs::read_to_string(&hooks).unwrap();
    let server = Server::start_logged(&["--webhooks", hooks.to_str().unwrap()]);
    let mut client = server.client().await;
    // The receiver is down: the payment's events wait for it.
    receiver.stop();
    let payment = processed_payment(&mut client, "shop", "away-1", 1_000).await;
    // Every delivery pending; the first record's, attempted, says why (the
    // later record waits behind it).
    let pending_with = |events: &[pb::PaymentEvent], error: &str| {
        let all_pending = (events.iter().flat_map(|event| &event.deliveries))
            .all(|d| d.state == DeliveryState::Pending as i32);
        all_pending && events[0].deliveries[0].last_error.contains(error)
    };
    // Out of the file: still pending, for that reason.
    std::fs::write(&hooks, r#"{"endpoints": []}"#).unwrap();
    let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
    loop {
        let events = events_of(&mut client, &payment.name).await;
        if pending_with(&events, "not in the webhooks file") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Back in the file, and up: everything arrives, in order.
    std::fs::write(&hooks, listed).unwrap();
    receiver.restart();
    let mut expected = BTreeMap::new();
    expected.insert(payment.name.clone(), 4);
    wait_received(&receiver, |received| all_in_order(received, &expected)).await;
    assert!(receiver.rejected().is_empty());
}

/// Creates of a new account that arrive together are folded into batched
/// writes; with a webhook endpoint each create writes its most items
/// (idempotency record, payment, creation pointer, movement, outbox,
/// events, webhook pointer). Every create is acknowledged and delivered:
/// a batch stays within the store's bound on one atomic write (the server
/// is a debug build, which asserts each decision's item count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_batched_with_a_webhook_endpoint_stay_within_one_atomic_write() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path());
    let hooks = webhooks_file(dir.path(), &receiver.url());
    let mut server = Server::start(&["--webhooks", hooks.to_str().unwrap()]);
    let client = server.client().await;
    let mut creates = tokio::task::JoinSet::new();
    for n in 0..64 {
        let mut client = client.clone();
        creates.spawn(async move {
            let request = create_request("batched", &format!("batched-{n}"), 100 + n);
            client
                .create_payment(request)
                .await
                .map(|p| p.into_inner().name)
        });
    }
    let mut expected = BTreeMap::new();
    while let Some(created) = creates.join_next().await {
        let name = created.unwrap().expect("every create is acknowledged");
        expected.insert(name, 4);
    }
    wait_received(&receiver, |received| all_in_order(received, &expected)).await;
    server.verify_ledger(&["batched"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_given_up_after_its_retry_period_is_resent_by_an_operator() {
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::start(dir.path());
    receiver.stop();
    let hooks = webhooks_file(dir.path(), &receiver.url());
    let server = Server::start(&[
        "--webhooks",
        hooks.to_str().unwrap(),
        "--webhook-retry-for",
        "2s",
    ]);
    let mut client = server.client().await;
    let payment = processed_payment(&mut client, "shop", "given-up", 500).await;
    let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
    let events = loop {
        let events = events_of(&mut client, &payment.name).await;
        if events
            .iter()
            .all(|event| event.deliveries[0].state == DeliveryState::Failed as i32)
        {
            break events;
        }
        assert!(tokio::time::Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(events[0].deliveries[0].attempts >= 2);

    receiver.restart();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.received().is_empty(), "given up means not retried");
    let resend = pb::ResendPaymentEventRequest {
        name: events[0].name.clone(),
        endpoint: "shop".into(),
        request_id: "resend-1".into(),
    };
    let resent = client.resend_payment_event(resend.clone()).await.unwrap();
    assert!(resent.metadata().get("idempotent-replayed").is_none());
    let resent = resent.into_inner();
    assert_eq!(resent.deliveries[0].state, DeliveryState::Pending as i32);
    // The re-send takes the event and the ones decided with it after it.
    let mut expected = BTreeMap::new();
    expected.insert(payment.name.clone(), 3);
    wait_received(&receiver, |received| all_in_order(received, &expected)).await;
    // The same request again (a client's retry): a replay, nothing re-sent.
    let again = client.resend_payment_event(resend).await.unwrap();
    assert_eq!(
        again
            .metadata()
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 3, "nothing sent again");

    let error = client
        .resend_payment_event(pb::ResendPaymentEventRequest {
            name: events[0].name.clone(),
            endpoint: "nowhere".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&error), ["endpoint"]);
    let error = client
        .resend_payment_event(pb::ResendPaymentEventRequest {
            name: format!("{}/events/99", payment.name),
            endpoint: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound);
}

/// Reads a stream until `count` events arrived (bounded).
async fn take_events(
    stream: &mut tonic::Streaming<pb::PaymentEvent>,
    count: usize,
) -> Vec<pb::PaymentEvent> {
    let mut events = Vec::new();
    while events.len() < count {
        let next = tokio::time::timeout(PROGRESS_DEADLINE, stream.message())
            .await
            .expect("events keep coming")
            .unwrap()
            .expect("stream open");
        events.push(next);
    }
    events
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_payment_events_is_live_and_resumes_after_an_event_id() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let mut live = client
        .watch_payment_events(pb::WatchPaymentEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = processed_payment(&mut client, "feed", "first", 100).await;
    let seen = take_events(&mut live, 4).await;
    let names: Vec<_> = seen.iter().map(|e| e.name.clone()).collect();
    assert_eq!(
        names,
        (1..=4)
            .map(|n| format!("{}/events/{n}", first.name))
            .collect::<Vec<_>>()
    );
    assert_eq!(seen[2].r#type, "payment.sent");
    drop(live);

    // Disconnected: more happens.
    let second = processed_payment(&mut client, "feed", "second", 200).await;
    client
        .refund_payment(refund_request(&first.name, "refund", Some(50)))
        .await
        .unwrap();
    wait_for(&mut client, &first.name, |p| {
        state(p) == pb::payment::State::PartiallyRefunded && is_settled(p)
    })
    .await;

    // Resume after the first payment's `sent` event.
    let mut resumed = client
        .watch_payment_events(pb::WatchPaymentEventsRequest {
            after_event: seen[2].name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    // first: processed (4), refund.pending (5), refund.succeeded (6),
    // payment.partially_refunded (7); second: 1..=4.
    let mut wanted: HashSet<String> = (4..=7)
        .map(|n| format!("{}/events/{n}", first.name))
        .chain((1..=4).map(|n| format!("{}/events/{n}", second.name)))
        .collect();
    let mut last_seq: BTreeMap<String, i64> = BTreeMap::new();
    while !wanted.is_empty() {
        let event = take_events(&mut resumed, 1).await.remove(0);
        assert!(
            !(event.payment == first.name && event.sequence <= 3),
            "{} was before the resume point",
            event.name
        );
        // In order per payment.
        let previous = last_seq.insert(event.payment.clone(), event.sequence);
        assert!(previous.is_none_or(|previous| previous < event.sequence));
        wanted.remove(&event.name);
    }
    // And then live.
    let third = created_payment(&mut client, "feed", "third", 300).await;
    let next = take_events(&mut resumed, 1).await.remove(0);
    assert_eq!(next.name, format!("{}/events/1", third.name));

    let error = client
        .watch_payment_events(pb::WatchPaymentEventsRequest {
            after_event: "accounts/feed/payments/nope/events/1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound);
    let error = client
        .watch_payment_events(pb::WatchPaymentEventsRequest {
            after_event: "garbage".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&error), ["after_event"]);
}

/// `payvisor webhooks listen --forward-to URL` forwards the live events to
/// a merchant's local receiver, each signed as the server's webhooks are:
/// the Python receiver checks every signature with its own HMAC, and
/// refuses what does not verify. No endpoint is configured on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_forwards_live_events_to_a_local_receiver_signed() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path());
    let server = Server::start(&[]);
    let mut listen = Command::new(BINARY)
        .args(["webhooks", "listen", "--forward-to", &receiver.url()])
        .args(["--secret", SECRET])
        .args(["--server", &format!("http://{}", server.address)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It says so once the server has subscribed it: then make a payment.
    following(&mut listen, "following events");
    let mut client = server.client().await;
    let payment = processed_payment(&mut client, "acme", "listen-1", 1_500).await;
    let mut expected = BTreeMap::new();
    expected.insert(payment.name.clone(), 4);
    let received = wait_received(&receiver, |received| all_in_order(received, &expected)).await;
    assert!(receiver.rejected().is_empty(), "{:?}", receiver.rejected());
    // The body the server's own webhooks have: the event and the payment
    // as GetPayment returns it (`grpc::json::webhook_body_of`).
    let processed = received
        .iter()
        .find(|event| event["type"] == "payment.processed")
        .unwrap();
    assert_eq!(processed["payment"], payment.name.as_str());
    assert_eq!(processed["id"], format!("{}/events/4", payment.name));
    assert_eq!(processed["payment_name"], payment.name.as_str());
    assert_eq!(processed["payment_state"], "STATE_PROCESSED");
    listen.kill().unwrap();
    let _ = listen.wait();
    // A receiver given another secret refuses what `listen` signs.
    let mut wrong = Command::new(BINARY)
        .args(["webhooks", "listen", "--forward-to", &receiver.url()])
        .args(["--secret", "whsec_not_the_receivers_secret"])
        .args(["--server", &format!("http://{}", server.address)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    following(&mut wrong, "following events");
    created_payment(&mut client, "acme", "listen-2", 700).await;
    let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
    while receiver.rejected().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "nothing refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wrong.kill().unwrap();
    let _ = wrong.wait();
}

/// `payvisor events watch` and `payvisor alerts watch` follow the live
/// streams, one JSON object per line with `--json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_follows_live_events_and_pages() {
    // Stalls in `sent` are paged after one second, without a re-drive.
    let server = Server::start(&["--stall-deadline", "sent=1s", "--redrive-max", "0"]);
    let follow = |what: &str| {
        let mut child = Command::new(BINARY)
            .args([what, "watch", "--json"])
            .args(["--server", &format!("http://{}", server.address)])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        following(&mut child, "following");
        let received = json_lines(child.stdout.take().unwrap());
        (child, received)
    };
    let (mut events, event_lines) = follow("events");
    let (mut alerts, alert_lines) = follow("alerts");
    let mut client = server.client().await;
    let mut hung = create_request("acme", "watch-1", 900);
    hung.payment
        .as_mut()
        .unwrap()
        .metadata
        .insert("bank_sim".into(), "hang".into());
    let payment = client.create_payment(hung).await.unwrap().into_inner();
    let next = |lines: &std::sync::mpsc::Receiver<Value>, what: &str| -> Value {
        lines
            .recv_timeout(PROGRESS_DEADLINE)
            .unwrap_or_else(|_| panic!("no {what} line"))
    };
    let mut types = Vec::new();
    while types.len() < 3 {
        let event = next(&event_lines, "event");
        if event["name"].as_str().unwrap().starts_with(&payment.name) {
            types.push(event["type"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        types,
        ["payment.created", "payment.approved", "payment.sent"]
    );
    let page = next(&alert_lines, "page");
    assert_eq!(page["action"], "ACTION_TRIGGER", "{page}");
    assert_eq!(page["payment"], payment.name.as_str(), "{page}");
    for child in [&mut events, &mut alerts] {
        child.kill().unwrap();
        let _ = child.wait();
    }
}

/// `payvisor events watch` outlives a server's crash: it resumes after
/// the last event it printed once the server is back (on the same
/// address), printing what was committed meanwhile, each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_watch_resumes_across_a_server_crash_without_repeating_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::common::bank_sim::free_port();
    let address = format!("127.0.0.1:{port}");
    let serve = || {
        let mut process = Command::new(BINARY)
            .args(["serve", "--listen", &address, "--data-dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::BufRead;
        let stdout = process.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        while !(lines.next().expect("listening").unwrap()).starts_with("payvisor listening on") {}
        std::thread::spawn(move || for _ in lines {});
        process
    };
    let mut server = serve();
    let mut watch = Command::new(BINARY)
        .args(["events", "watch", "--json", "--server", &address])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    following(&mut watch, "following");
    let printed = json_lines(watch.stdout.take().unwrap());
    let connect = || async {
        let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
        loop {
            match pb::payment_service_client::PaymentServiceClient::connect(format!(
                "http://{address}"
            ))
            .await
            {
                Ok(client) => return client,
                Err(error) => assert!(tokio::time::Instant::now() < deadline, "{error}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let take = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                let event = printed
                    .recv_timeout(PROGRESS_DEADLINE)
                    .expect("an event line");
                event["name"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let mut client = connect().await;
    let first = processed_payment_via(&mut client, "crash-1").await;
    // A processed payment's four events, by name.
    let four_events = |payment: &str| -> Vec<String> {
        (1..=4).map(|n| format!("{payment}/events/{n}")).collect()
    };
    assert_eq!(take(4), four_events(&first));

    // The server is killed; a payment is made as soon as it is back, most
    // likely before the command has reconnected (it waits between
    // attempts): then it comes from the durable feed, after the resume
    // point, else live. Either way each event once, in order.
    let _ = server.kill();
    let _ = server.wait();
    let mut server = serve();
    let mut client = connect().await;
    let second = processed_payment_via(&mut client, "crash-2").await;
    assert_eq!(take(4), four_events(&second));
    // Nothing else: no event of the first payment again.
    assert!(
        printed.recv_timeout(Duration::from_millis(500)).is_err(),
        "an event was printed twice"
    );
    watch.kill().unwrap();
    let _ = watch.wait();
    let _ = server.kill();
    let _ = server.wait();
}

/// A processed payment of account `crash`, by name.
async fn processed_payment_via(
    client: &mut pb::payment_service_client::PaymentServiceClient<tonic::transport::Channel>,
    request_id: &str,
) -> String {
    processed_payment(client, "crash", request_id, 500)
        .await
        .name
}

/// A command's stdout, one JSON value per line, read on a thread of its
/// own (so the command never blocks on a full pipe).
fn json_lines(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<Value> {
    let (lines, received) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines.send(serde_json::from_str(&line).unwrap()).is_err() {
                return;
            }
        }
    });
    received
}

/// Waits (bounded) until a command-line child says `ready` on stderr: the
/// line it prints once the server has subscribed it. Its stderr is read
/// on a thread of its own from then on, so it never blocks on a full pipe.
fn following(child: &mut Child, ready: &str) {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("stderr piped");
    let (lines, said) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            let _ = lines.send(line);
        }
    });
    let deadline = std::time::Instant::now() + PROGRESS_DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match said.recv_timeout(left) {
            Ok(line) if line.contains(ready) => return,
            Ok(_) => {}
            Err(_) => panic!("the command never said {ready:?}"),
        }
    }
}
