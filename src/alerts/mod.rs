//! The alert boundary: where on-call pages go. An [`AlertSink`] delivers one
//! [`Page`] (trigger or resolve) in one attempt and says whether trying again
//! could help; the watchdog's dispatcher owns retries, back-off and the
//! durable record of what was delivered.
//!
//! **Boundary:** a page carries a `dedup_key` derived from the payment name.
//! Delivering the same trigger twice (a retry after a lost acknowledgement)
//! must not open a second incident: PagerDuty deduplicates on that key, and
//! every sink here must behave the same way.
//!
//! Implementations: [`pagerduty::PagerDutySink`] (Events API v2 over HTTPS),
//! [`LogSink`] (structured log lines, for a node with no pager configured).
//! Both pass the conformance suite (`payvisor_testkit::alerts`).

pub mod pagerduty;

use std::collections::BTreeMap;

use crate::domain::Timestamp;
use crate::store::BoxFuture;

// The pure core decides pages; these are its words for them.
pub use crate::domain::watch::{PageAction, Severity};

/// What kind of trouble a page is about: PagerDuty's `class`, so that
/// on-call can route and silence each kind on its own, and each has its
/// runbook (docs/runbooks/).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PageClass {
    /// A payment missed its stall deadline and its re-drives ran out.
    StalledPayment,
    /// Reconciliation found the bank, the ledger and the store disagreeing.
    ReconciliationMismatch,
    /// The watchdog itself cannot sweep: the store does not answer it.
    WatchdogFailing,
}

impl PageClass {
    pub const ALL: [PageClass; 3] = [
        PageClass::StalledPayment,
        PageClass::ReconciliationMismatch,
        PageClass::WatchdogFailing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PageClass::StalledPayment => "stalled_payment",
            PageClass::ReconciliationMismatch => "reconciliation_mismatch",
            PageClass::WatchdogFailing => "watchdog_failing",
        }
    }
}

/// One message to on-call.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Page {
    pub action: PageAction,
    pub class: PageClass,
    /// Stable per stall: `payvisor/{payment name}/{stall number}`.
    pub dedup_key: String,
    /// One line for a person: what is stuck, where, since when.
    pub summary: String,
    /// The node that noticed (PagerDuty's `source`).
    pub source: String,
    pub severity: Severity,
    /// When the stall was detected (trigger) or ended (resolve).
    pub timestamp: Timestamp,
    /// Facts for the responder: payment, state, re-drives, deadline.
    pub custom_details: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlertError {
    /// Throttled (429), server error (5xx), timeout or network error: the
    /// same page may be sent again later.
    #[error("alert sink unavailable: {0}")]
    Retryable(String),
    /// The sink refused the page for good (e.g. 400: a bad routing key).
    /// Retrying the same page cannot help; it is logged loudly instead.
    #[error("alert sink rejected the page: {0}")]
    Rejected(String),
}

/// Where pages go.
pub trait AlertSink: Send + Sync + 'static {
    /// Delivers one page, once. `Ok` means the sink acknowledged it.
    fn send(&self, page: &Page) -> BoxFuture<'_, Result<(), AlertError>>;
}

/// Pages as structured log lines at error level: for a node with no pager
/// configured, so that stalls are never silent.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogSink;

impl AlertSink for LogSink {
    fn send(&self, page: &Page) -> BoxFuture<'_, Result<(), AlertError>> {
        match page.action {
            PageAction::Trigger => tracing::error!(
                class = page.class.as_str(),
                dedup_key = %page.dedup_key,
                summary = %page.summary,
                details = ?page.custom_details,
                "PAGE"
            ),
            // Info: a resolve may be for a page this process never sent
            // (the watchdog resolves an earlier incarnation's at start).
            PageAction::Resolve => tracing::info!(
                class = page.class.as_str(),
                dedup_key = %page.dedup_key,
                summary = %page.summary,
                "page resolved"
            ),
        }
        Box::pin(async { Ok(()) })
    }
}
