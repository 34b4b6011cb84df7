//! Every alert sink through the conformance suite; then what only the
//! PagerDuty sink has: its wire format, as a strict stand-in for PagerDuty
//! sees it, and how it classifies failures for the dispatcher's retries.

use std::sync::Arc;
use std::time::Duration;

use crate::common::pager::PagerReceiver;
use payvisor::alerts::pagerduty::PagerDutySink;
use payvisor::alerts::{AlertError, AlertSink, LogSink, PageAction};
use payvisor_testkit::alerts::{page, DEDUP_KEY};

/// Shaped like a real integration key (32 characters).
const ROUTING_KEY: &str = "R0UT1NGKEY0PAYVISOR0TEST00000000";

async fn log_sink() -> (Arc<dyn AlertSink>, ()) {
    (Arc::new(LogSink), ())
}

/// A PagerDuty sink and the receiver it posts to (kept alive by the test).
async fn pagerduty() -> (Arc<dyn AlertSink>, PagerReceiver) {
    let receiver = PagerReceiver::start(ROUTING_KEY).await;
    let sink = PagerDutySink::new(&receiver.url(), ROUTING_KEY.into()).unwrap();
    (Arc::new(sink), receiver)
}

mod log_sink {
    use super::*;
    payvisor_testkit::alert_sink_conformance_tests!(log_sink());
}

mod pagerduty_sink {
    use super::*;
    payvisor_testkit::alert_sink_conformance_tests!(pagerduty());
}

#[tokio::test]
async fn a_trigger_reaches_pagerduty_with_the_full_payload() {
    let (sink, receiver) = pagerduty().await;
    sink.send(&page(PageAction::Trigger, DEDUP_KEY))
        .await
        .unwrap();
    let triggers = receiver.triggers_for(DEDUP_KEY);
    assert_eq!(triggers.len(), 1, "{:?}", receiver.rejections());
    let payload = &triggers[0]["payload"];
    assert_eq!(payload["severity"], "critical");
    assert_eq!(payload["source"], "payvisor-node-1");
    assert_eq!(payload["timestamp"], "2023-11-14T22:13:20.000Z");
    assert_eq!(payload["component"], "payvisor");
    assert_eq!(payload["group"], "payments");
    assert_eq!(payload["class"], "stalled_payment");
    assert_eq!(payload["custom_details"]["redrives"], "3");
}

#[tokio::test]
async fn a_retried_trigger_and_its_resolve_share_one_key() {
    let (sink, receiver) = pagerduty().await;
    let trigger = page(PageAction::Trigger, DEDUP_KEY);
    sink.send(&trigger).await.unwrap();
    sink.send(&trigger).await.unwrap();
    sink.send(&page(PageAction::Resolve, DEDUP_KEY))
        .await
        .unwrap();
    assert_eq!(receiver.triggers_for(DEDUP_KEY).len(), 2);
    let resolves = receiver.resolves_for(DEDUP_KEY);
    assert_eq!(resolves.len(), 1);
    assert!(resolves[0].get("payload").is_none(), "{}", resolves[0]);
    assert_eq!(receiver.events().len(), 3);
    assert!(receiver.rejections().is_empty());
}

#[tokio::test]
async fn throttling_and_server_errors_are_retryable() {
    let (sink, receiver) = pagerduty().await;
    let trigger = page(PageAction::Trigger, DEDUP_KEY);
    for status in [500, 429, 503] {
        receiver.fail_next(1, status);
        let result = sink.send(&trigger).await;
        assert!(
            matches!(&result, Err(AlertError::Retryable(m)) if m.contains(&status.to_string())),
            "{status}: {result:?}"
        );
        // The failure was transient: the same page goes through next time.
        sink.send(&trigger).await.unwrap();
    }
    assert_eq!(receiver.requests(), 6);
    assert_eq!(receiver.triggers_for(DEDUP_KEY).len(), 3);
}

#[tokio::test]
async fn a_bad_routing_key_is_rejected_for_good() {
    let receiver = PagerReceiver::start(ROUTING_KEY).await;
    let sink = PagerDutySink::new(&receiver.url(), "not-the-key".into()).unwrap();
    let result = sink.send(&page(PageAction::Trigger, DEDUP_KEY)).await;
    assert!(
        matches!(&result, Err(AlertError::Rejected(m)) if m.contains("400") && m.contains("Invalid routing key")),
        "{result:?}"
    );
    assert_eq!(receiver.rejections().len(), 1);
    assert!(receiver.events().is_empty());
}

#[tokio::test]
async fn a_refused_connection_is_retryable() {
    // A port that was free a moment ago: nothing listens on it now.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let sink =
        PagerDutySink::new(&format!("http://{address}/v2/enqueue"), ROUTING_KEY.into()).unwrap();
    let result = sink.send(&page(PageAction::Trigger, DEDUP_KEY)).await;
    assert!(
        matches!(&result, Err(AlertError::Retryable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn no_answer_in_time_is_retryable() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let sink = PagerDutySink::new(&format!("http://{address}/v2/enqueue"), ROUTING_KEY.into())
        .unwrap()
        .with_request_timeout(Duration::from_millis(200));
    let result = sink.send(&page(PageAction::Trigger, DEDUP_KEY)).await;
    assert!(
        matches!(&result, Err(AlertError::Retryable(m)) if m.contains("no answer")),
        "{result:?}"
    );
    silent.abort();
}
