//! The alert-sink contract as executable checks. Every sink runs all of them
//! through [`alert_sink_conformance_tests!`](crate::alert_sink_conformance_tests):
//! `tests/it/alert_sinks.rs` instantiates it once per sink.
//!
//! Each check takes a fresh sink and panics on a violation. What a sink's
//! far end recorded (one incident per `dedup_key`) is for that sink's own
//! tests: only they can see it.

use std::collections::BTreeMap;
use std::sync::Arc;

use payvisor::alerts::{AlertSink, Page, PageAction, PageClass, Severity};
use payvisor::domain::Timestamp;

/// The key every check pages under.
pub const DEDUP_KEY: &str = "payvisor/accounts/conformance/payments/p-1/1";

/// A realistic page (also for sink-specific tests).
pub fn page(action: PageAction, dedup_key: &str) -> Page {
    Page {
        action,
        class: PageClass::StalledPayment,
        dedup_key: dedup_key.to_owned(),
        summary: "Payment accounts/conformance/payments/p-1 stuck in sent for 15m".into(),
        source: "payvisor-node-1".into(),
        severity: Severity::Critical,
        timestamp: Timestamp::from_unix_millis(1_700_000_000_000),
        custom_details: BTreeMap::from([
            ("payment".into(), "accounts/conformance/payments/p-1".into()),
            ("state".into(), "sent".into()),
            ("redrives".into(), "3".into()),
        ]),
        links: Vec::new(),
        client_url: None,
    }
}

pub async fn a_trigger_is_accepted(sink: Arc<dyn AlertSink>) {
    sink.send(&page(PageAction::Trigger, DEDUP_KEY))
        .await
        .expect("trigger");
}

/// A retry after a lost acknowledgement resends the same trigger: it must be
/// accepted again (and, at the far end, update rather than open an incident).
pub async fn a_repeated_trigger_is_accepted(sink: Arc<dyn AlertSink>) {
    let trigger = page(PageAction::Trigger, DEDUP_KEY);
    sink.send(&trigger).await.expect("first trigger");
    sink.send(&trigger).await.expect("same trigger again");
}

pub async fn a_resolve_of_a_triggered_key_is_accepted(sink: Arc<dyn AlertSink>) {
    sink.send(&page(PageAction::Trigger, DEDUP_KEY))
        .await
        .expect("trigger");
    sink.send(&page(PageAction::Resolve, DEDUP_KEY))
        .await
        .expect("resolve");
}

/// After a restart the dispatcher may resolve a page whose trigger it never
/// saw acknowledged; PagerDuty accepts that, so every sink must.
pub async fn a_resolve_of_an_unknown_key_is_accepted(sink: Arc<dyn AlertSink>) {
    sink.send(&page(PageAction::Resolve, "payvisor/never/triggered/1"))
        .await
        .expect("resolve");
}

/// Summaries are written by code from payment data; their length and
/// characters are the sink's problem (truncate, escape), never a rejection.
pub async fn any_summary_and_details_are_accepted(sink: Arc<dyn AlertSink>) {
    let mut trigger = page(PageAction::Trigger, DEDUP_KEY);
    trigger.summary = "stuck «payment» \"quoted\" \\ \n".repeat(200);
    trigger
        .custom_details
        .insert("note".into(), "ünïcödé, \"quotes\", {braces}".into());
    sink.send(&trigger).await.expect("trigger");
}

/// Instantiates every conformance check as a `#[tokio::test]` for a sink.
/// `$factory` is an async expression yielding `(Arc<dyn AlertSink>, guard)`:
/// a fresh sink, and whatever must live as long as the test (a local
/// receiver; `()` when nothing must).
#[macro_export]
macro_rules! alert_sink_conformance_tests {
    ($factory:expr) => {
        $crate::alert_sink_conformance_tests!(@each $factory;
            a_trigger_is_accepted,
            a_repeated_trigger_is_accepted,
            a_resolve_of_a_triggered_key_is_accepted,
            a_resolve_of_an_unknown_key_is_accepted,
            any_summary_and_details_are_accepted,
        );
    };
    (@each $factory:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                let (sink, _guard) = $factory.await;
                $crate::alerts::$check(sink).await;
            }
        )*
    };
}
