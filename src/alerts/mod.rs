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

    /// The runbook a person paged for this kind of trouble follows, in
    /// `docs/runbooks/`.
    pub fn runbook(self) -> &'static str {
        match self {
            PageClass::StalledPayment => "stalled-payments.md",
            PageClass::ReconciliationMismatch => "reconciliation-mismatch.md",
            PageClass::WatchdogFailing => "watchdog-cannot-sweep.md",
        }
    }

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
    /// Where to read next: the runbook of the page's class (filled in by
    /// [`LinkedSink`]).
    #[serde(default)]
    pub links: Vec<PageLink>,
    /// The payment in an operator's UI, when one is configured.
    #[serde(default)]
    pub client_url: Option<String>,
}

/// A link a page carries (PagerDuty shows them on the incident).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PageLink {
    pub href: String,
    pub text: String,
}

/// Where a page's links point: the published runbooks, and an operator
/// UI's page for a payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageLinks {
    /// The runbooks' address, ending in `/`; a class's runbook file name
    /// is appended.
    pub runbook_base: String,
    /// An operator UI's address for a payment: `{payment}` is replaced by
    /// its resource name (`accounts/…/payments/…`), `{account}` by its
    /// account. `None`: no such UI.
    pub client_url: Option<String>,
}

/// Where the runbooks are published unless configured otherwise: the
/// project's repository, `docs/runbooks/`.
pub const RUNBOOK_BASE_DEFAULT: &str =
    "https://github.com/payvisor/payvisor/blob/main/docs/runbooks/";

impl Default for PageLinks {
    fn default() -> PageLinks {
        PageLinks {
            runbook_base: RUNBOOK_BASE_DEFAULT.to_owned(),
            client_url: None,
        }
    }
}

impl PageLinks {
    /// Adds the page's runbook link (and its path to the details, for
    /// sinks without links), and the payment's UI address when the page
    /// names a payment and a UI is configured.
    pub fn apply(&self, page: &mut Page) {
        let runbook = page.class.runbook();
        page.links.push(PageLink {
            href: format!("{}{runbook}", self.runbook_base),
            text: format!("Runbook: {}", page.class.as_str()),
        });
        page.custom_details
            .entry("runbook".to_owned())
            .or_insert_with(|| format!("docs/runbooks/{runbook}"));
        let payment = page.custom_details.get("payment");
        let account = page.custom_details.get("account");
        if let (Some(template), Some(payment)) = (&self.client_url, payment) {
            let mut url = template.replace("{payment}", payment);
            if let Some(account) = account {
                url = url.replace("{account}", account);
            }
            page.client_url = Some(url);
        }
    }
}

/// A sink that adds [`PageLinks`] to every page before the one it wraps
/// sends it: one place for every kind of page.
pub struct LinkedSink {
    inner: std::sync::Arc<dyn AlertSink>,
    links: PageLinks,
}

impl LinkedSink {
    pub fn new(inner: std::sync::Arc<dyn AlertSink>, links: PageLinks) -> LinkedSink {
        LinkedSink { inner, links }
    }
}

impl AlertSink for LinkedSink {
    fn send(&self, page: &Page) -> BoxFuture<'_, Result<(), AlertError>> {
        let mut linked = page.clone();
        if linked.action == PageAction::Trigger {
            self.links.apply(&mut linked);
        }
        Box::pin(async move { self.inner.send(&linked).await })
    }
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
                links = ?page.links.iter().map(|link| &link.href).collect::<Vec<_>>(),
                client_url = page.client_url.as_deref(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn page(class: PageClass, details: &[(&str, &str)]) -> Page {
        Page {
            action: PageAction::Trigger,
            class,
            dedup_key: "k".into(),
            summary: "s".into(),
            source: "n".into(),
            severity: Severity::Error,
            timestamp: Timestamp::from_unix_millis(0),
            custom_details: details
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            links: Vec::new(),
            client_url: None,
        }
    }

    #[test]
    fn every_page_links_its_runbook_and_a_payment_page_its_payment() {
        let links = PageLinks {
            runbook_base: "https://docs.example.com/rb/".into(),
            client_url: Some("https://ui.example.com/{account}/x/{payment}".into()),
        };
        let mut stalled = page(
            PageClass::StalledPayment,
            &[
                ("payment", "accounts/acme/payments/p1"),
                ("account", "acme"),
            ],
        );
        links.apply(&mut stalled);
        assert_eq!(
            stalled.links[0].href,
            "https://docs.example.com/rb/stalled-payments.md"
        );
        assert_eq!(
            stalled.custom_details["runbook"],
            "docs/runbooks/stalled-payments.md"
        );
        assert_eq!(
            stalled.client_url.as_deref(),
            Some("https://ui.example.com/acme/x/accounts/acme/payments/p1")
        );
        // No payment named: no client link.
        let mut mismatch = page(PageClass::ReconciliationMismatch, &[]);
        links.apply(&mut mismatch);
        assert_eq!(
            mismatch.links[0].href,
            "https://docs.example.com/rb/reconciliation-mismatch.md"
        );
        assert_eq!(mismatch.client_url, None);
        // Every class's runbook exists.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/runbooks");
        for class in PageClass::ALL {
            assert!(root.join(class.runbook()).is_file(), "{}", class.runbook());
        }
    }
}
