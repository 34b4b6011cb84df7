//! Stalled payments end to end: the real binary with short stall deadlines,
//! the bank simulator's `hang` and `drop_callback` behaviours, and a local
//! stand-in for PagerDuty's Events API v2 that validates every request.
//! Runs on the embedded store, and on DynamoDB under
//! `PAYVISOR_TEST_STORE=dynamodb` (as `tests/run.sh` does).

use std::time::Duration;

use crate::common::bank_sim::free_port;
use crate::common::pager::PagerReceiver;
use crate::common::*;
use payvisor::grpc::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

const ROUTING_KEY: &str = "R0UT1NGKEYE2E00000000000000000000";
/// Every reminder is due within seconds; the watchdog looks ten times a
/// second. With one re-drive, a hung payment is paged about 3 s after it
/// was sent (1 s, then 2 s of back-off).
const FLAGS: [&str; 8] = [
    "--stall-deadline",
    "sent=1s",
    "--redrive-max",
    "1",
    "--watchdog-interval",
    "100ms",
    "--node-name",
    "payvisor-e2e",
];

fn server(pager: &PagerReceiver, metrics_port: u16) -> Server {
    let url = pager.url();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let mut args: Vec<&str> = FLAGS.to_vec();
    args.extend([
        "--pagerduty-url",
        &url,
        "--pagerduty-routing-key",
        ROUTING_KEY,
        "--metrics-listen",
        &metrics,
        "--runbook-base-url",
        "https://runbooks.example.com/payvisor/",
        "--page-client-url",
        "https://console.example.com/{payment}",
    ]);
    Server::start(&args)
}

fn create(account: &str, request_id: &str, behaviour: &str) -> pb::CreatePaymentRequest {
    let mut request = create_request(account, request_id, 2_500);
    request
        .payment
        .as_mut()
        .unwrap()
        .metadata
        .insert("bank_sim".into(), behaviour.into());
    request
}

fn is_paged(payment: &pb::Payment) -> bool {
    payment.watch.as_ref().is_some_and(|watch| watch.paged)
}

fn causes(payment: &pb::Payment) -> Vec<String> {
    payment
        .history
        .iter()
        .map(|entry| entry.cause.clone())
        .collect()
}

/// The dedup key of a paged payment's stall, as PagerDuty saw it.
fn dedup_key_of(pager: &PagerReceiver, payment: &pb::Payment) -> String {
    let triggers: Vec<_> = pager
        .events()
        .into_iter()
        .filter(|event| {
            event["event_action"] == "trigger"
                && event["payload"]["custom_details"]["payment"] == payment.name.as_str()
        })
        .collect();
    assert_eq!(triggers.len(), 1, "one stall, one trigger: {triggers:?}");
    triggers[0]["dedup_key"].as_str().unwrap().to_owned()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn scrape(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

async fn stalled(
    client: &mut pb::payment_service_client::PaymentServiceClient<tonic::transport::Channel>,
) -> Vec<String> {
    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_stalled_payments(pb::ListStalledPaymentsRequest {
                page_size: 1,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        names.extend(page.payments.into_iter().map(|payment| payment.name));
        if page.next_page_token.is_empty() {
            return names;
        }
        page_token = page.next_page_token;
    }
}

/// `drop_callback`: the bank processed the payment but its answer was lost.
/// The watchdog's re-drive asks the bank, finds the outcome, and the
/// payment is PROCESSED without anyone being paged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_callback_is_recovered_by_a_status_query_without_paging() {
    let pager = PagerReceiver::start(ROUTING_KEY).await;
    let server = server(&pager, free_port());
    let mut client = server.client().await;
    let sent = client
        .create_payment(create("acme", "lost-callback", "drop_callback"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&sent), pb::payment::State::Sent);
    let processed = wait_for(&mut client, &sent.name, |p| {
        state(p) == pb::payment::State::Processed
    })
    .await;
    assert!(
        causes(&processed).contains(&"redrive_1_of_1".to_owned()),
        "{:?}",
        causes(&processed)
    );
    assert!(processed.watch.is_none());
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Nobody was paged: what reached the pager is the watchdog's resolve
    // at start of whatever an earlier incarnation of this node paged.
    let events = pager.events();
    assert!(
        events.iter().all(|event| event["event_action"] == "resolve"
            && event["dedup_key"]
                .as_str()
                .is_some_and(|key| key.starts_with("payvisor/watchdog/"))),
        "nobody was paged: {events:?}"
    );
    assert_eq!(pager.requests() as usize, events.len(), "{events:?}");
    assert!(stalled(&mut client).await.is_empty());
}

/// `hang`: the bank never answers. The payment is re-driven, then paged
/// exactly once (through a pager outage), shown as stalled, kept paged once
/// across a `kill -9` and restart (while another payment's reminder falls
/// due during the downtime and is caught up), and resolved when on-call
/// fails it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_payment_is_redriven_paged_once_across_restarts_and_resolved_when_failed() {
    let pager = PagerReceiver::start(ROUTING_KEY).await;
    let metrics_port = free_port();
    let mut server = server(&pager, metrics_port);
    let mut client = server.client().await;
    let mut alerts = client
        .watch_alerts(pb::WatchAlertsRequest {})
        .await
        .unwrap()
        .into_inner();
    // The pager is down for the first two tries.
    pager.fail_next(2, 503);
    let hung = client
        .create_payment(create("acme", "hung", "hang"))
        .await
        .unwrap()
        .into_inner();
    let paged = wait_for(&mut client, &hung.name, is_paged).await;
    assert_eq!(state(&paged), pb::payment::State::Sent);
    assert!(
        causes(&paged).ends_with(&["redrive_1_of_1".to_owned(), "paged_on_call".to_owned()]),
        "{:?}",
        causes(&paged)
    );
    // The page is the first trigger (the watchdog's resolve at start, of
    // what an earlier incarnation may have paged, is not a page).
    wait_until("the page is delivered", || {
        pager
            .events()
            .iter()
            .any(|event| event["event_action"] == "trigger")
    })
    .await;
    let dedup_key = dedup_key_of(&pager, &paged);
    assert!(
        dedup_key.starts_with(&format!("payvisor/{}/sent/", paged.name)),
        "{dedup_key}"
    );
    let trigger = &pager.triggers_for(&dedup_key)[0];
    assert_eq!(trigger["payload"]["source"], "payvisor-e2e");
    assert_eq!(trigger["payload"]["severity"], "critical");
    assert!(trigger["payload"]["summary"]
        .as_str()
        .unwrap()
        .contains(&paged.name));
    assert_eq!(trigger["payload"]["custom_details"]["state"], "SENT");
    // What on-call needs to act, on the page itself.
    let details = &trigger["payload"]["custom_details"];
    assert_eq!(details["account"], "acme", "{details}");
    assert_eq!(details["bank"], "built-in", "{details}");
    assert_eq!(
        details["waiting_for"], "the outcome from built-in",
        "{details}"
    );
    assert_eq!(details["redrives"], "1", "{details}");
    for time in ["stalled_since", "created_at", "routed_at"] {
        let text = details[time].as_str().unwrap_or_default();
        assert!(
            text.len() == 24 && text.ends_with('Z') && text.as_bytes()[10] == b'T',
            "{time} in RFC 3339: {details}"
        );
    }
    assert_eq!(
        trigger["links"][0]["href"], "https://runbooks.example.com/payvisor/stalled-payments.md",
        "{trigger}"
    );
    assert_eq!(
        trigger["client_url"],
        format!("https://console.example.com/{}", paged.name),
        "{trigger}"
    );
    assert!(pager.rejections().is_empty(), "{:?}", pager.rejections());
    assert!(pager.requests() >= 3, "two failures, then the page");

    // Operators see it: the live alert feed, the stalled list, the gauge.
    let alert = tokio::time::timeout(PROGRESS_DEADLINE, alerts.next())
        .await
        .expect("an alert in time")
        .expect("stream open")
        .unwrap();
    assert_eq!(alert.payment, paged.name);
    assert_eq!(alert.action, pb::alert::Action::Trigger as i32);
    assert_eq!(alert.dedup_key, dedup_key);
    assert_eq!(stalled(&mut client).await, vec![paged.name.clone()]);
    let metrics = scrape(metrics_port).await;
    assert!(
        metrics.contains("payvisor_stalled_payments{state=\"sent\"} 1"),
        "{metrics}"
    );

    // A second payment starts waiting; the node is killed before its
    // reminder falls due, and stays down past it.
    let waiting = client
        .create_payment(create("globex", "waiting", "hang"))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.restart();
    let mut client = server.client().await;
    let mut alerts = client
        .watch_alerts(pb::WatchAlertsRequest {})
        .await
        .unwrap()
        .into_inner();
    // Caught up: the overdue reminder fires, and that stall is paged once.
    let waiting = wait_for(&mut client, &waiting.name, is_paged).await;
    assert!(causes(&waiting).contains(&"redrive_1_of_1".to_owned()));
    wait_until("the second page", || {
        let events = pager.events();
        let triggers = events
            .iter()
            .filter(|event| event["event_action"] == "trigger");
        triggers.count() >= 2
    })
    .await;
    let second_key = dedup_key_of(&pager, &waiting);
    // Several sweeps later, neither stall was paged again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pager.triggers_for(&dedup_key).len(), 1);
    assert_eq!(pager.triggers_for(&second_key).len(), 1);
    let mut names = stalled(&mut client).await;
    names.sort();
    let mut expected = vec![paged.name.clone(), waiting.name.clone()];
    expected.sort();
    assert_eq!(names, expected);

    // On-call gives up on the first over gRPC, the second from the command
    // line: both FAILED, funds released, both pages resolved.
    let failed = client
        .fail_payment(pb::FailPaymentRequest {
            name: paged.name.clone(),
            reason: "bank has no record; customer informed".into(),
            request_id: "fail-hung".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&failed), pb::payment::State::Failed);
    assert_eq!(
        failed.failure_reason,
        "bank has no record; customer informed"
    );
    let listed = cli(&server, &["payments", "stalled"]);
    assert_eq!(listed["payments"].as_array().unwrap().len(), 1);
    let retried = cli(&server, &["payments", "retry", &waiting.name]);
    assert!(retried["history"]
        .as_array()
        .unwrap()
        .iter()
        .any(|entry| entry["cause"] == "operator_retry"));
    let failed_by_cli = cli(
        &server,
        &[
            "payments",
            "fail",
            &waiting.name,
            "--reason",
            "given up by on-call",
        ],
    );
    assert_eq!(failed_by_cli["state"], "STATE_FAILED");
    wait_until("both pages resolved", || {
        pager.resolves_for(&dedup_key).len() == 1 && pager.resolves_for(&second_key).len() == 1
    })
    .await;
    // The feed of the restarted node: the caught-up trigger, two resolves.
    let mut feed = Vec::new();
    while feed.len() < 3 {
        let alert = tokio::time::timeout(PROGRESS_DEADLINE, alerts.next())
            .await
            .expect("an alert in time")
            .expect("stream open")
            .unwrap();
        feed.push((
            alert.dedup_key,
            pb::alert::Action::try_from(alert.action).unwrap(),
        ));
    }
    use pb::alert::Action::{Resolve, Trigger};
    assert_eq!(
        feed,
        [
            (second_key.clone(), Trigger),
            (dedup_key.clone(), Resolve),
            (second_key.clone(), Resolve)
        ]
    );
    assert!(stalled(&mut client).await.is_empty());
    let metrics = scrape(metrics_port).await;
    assert!(
        metrics.contains("payvisor_stalled_payments{state=\"sent\"} 0"),
        "{metrics}"
    );
    // A failed payment cannot be retried or failed again.
    let refused = client
        .retry_payment(pb::RetryPaymentRequest {
            name: paged.name.clone(),
            request_id: "retry-after-fail".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(reason(&refused), "PAYMENT_NOT_RETRYABLE");
    for account in ["acme", "globex"] {
        let balances = client
            .get_account(pb::GetAccountRequest {
                name: format!("accounts/{account}"),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            balances.balances[0].pending.as_ref().unwrap().minor_units,
            0
        );
    }
    server.verify_ledger(&["acme", "globex"]);
}

/// Bad operator input gets a clear error and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_refuse_bad_input() {
    let pager = PagerReceiver::start(ROUTING_KEY).await;
    let server = server(&pager, free_port());
    let mut client = server.client().await;
    let processed = processed_payment(&mut client, "acme", "ok", 100).await;
    let bad = client
        .fail_payment(pb::FailPaymentRequest {
            name: "payments/x".into(),
            reason: String::new(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let mut fields = bad_fields(&bad);
    fields.sort();
    assert_eq!(fields, ["name", "reason", "request_id"]);
    let not_failable = client
        .fail_payment(pb::FailPaymentRequest {
            name: processed.name.clone(),
            reason: "too late".into(),
            request_id: "fail-processed".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&not_failable), "PAYMENT_NOT_FAILABLE");
    let nothing = client
        .retry_payment(pb::RetryPaymentRequest {
            name: processed.name.clone(),
            request_id: "retry-processed".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&nothing), "PAYMENT_NOT_RETRYABLE");
    let missing = client
        .retry_payment(pb::RetryPaymentRequest {
            name: "accounts/acme/payments/nope".into(),
            request_id: "retry-missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let token = client
        .list_stalled_payments(pb::ListStalledPaymentsRequest {
            page_size: 10,
            page_token: "s1.99:0:x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&token), ["page_token"]);
    let unchanged = wait_for(&mut client, &processed.name, |_| true).await;
    assert_eq!(unchanged, processed);
}
