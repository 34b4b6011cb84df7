//! [`PagerDutySink`]: pages through PagerDuty's Events API v2, one HTTP POST
//! per page.
//!
//! **Boundary:** PagerDuty answers 202 once it has queued the event, and
//! deduplicates triggers on `dedup_key`; everything here is one attempt, the
//! dispatcher decides whether to try again from the [`AlertError`] kind.

use std::fmt;
use std::time::Duration;

use hyper::{StatusCode, Uri};
use serde_json::{json, Value};

use super::{AlertError, AlertSink, Page, PageAction};
use crate::http_client::{parse_url, ExchangeError, HttpPoster};
use crate::limits;
use crate::store::BoxFuture;

// Bounds of this module (to move into `limits.rs`).

/// The production Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// Why a [`PagerDutySink`] could not be built (configuration errors, found at
/// start-up rather than at the first page).
#[derive(Debug, thiserror::Error)]
pub enum PagerDutyConfigError {
    #[error("invalid PagerDuty URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("the PagerDuty routing key is empty")]
    EmptyRoutingKey,
    #[error("cannot load the system's root certificates for HTTPS: {0}")]
    RootCertificates(#[source] std::io::Error),
}

/// An [`AlertSink`] speaking PagerDuty Events API v2 (over HTTPS, or plain
/// HTTP for a local test receiver).
#[derive(Clone)]
pub struct PagerDutySink {
    /// Keeps connections alive between pages; cheap to clone.
    client: HttpPoster,
    url: Uri,
    /// The integration key: it routes the event to a service, and anyone
    /// holding it can page that service, so it is never logged.
    routing_key: String,
    request_timeout: Duration,
}

impl fmt::Debug for PagerDutySink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PagerDutySink")
            .field("url", &self.url)
            .field("routing_key", &"<redacted>")
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl PagerDutySink {
    /// A sink posting to `url` (normally [`PAGERDUTY_EVENTS_URL`]).
    pub fn new(url: &str, routing_key: String) -> Result<PagerDutySink, PagerDutyConfigError> {
        let invalid = |reason: &str| PagerDutyConfigError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri = parse_url(url).map_err(|reason| invalid(&reason))?;
        if routing_key.trim().is_empty() {
            return Err(PagerDutyConfigError::EmptyRoutingKey);
        }
        let client = HttpPoster::new(uri.scheme_str() == Some("https"))
            .map_err(PagerDutyConfigError::RootCertificates)?;
        Ok(PagerDutySink {
            client,
            url: uri,
            routing_key,
            request_timeout: limits::PAGERDUTY_REQUEST_TIMEOUT,
        })
    }

    /// Replaces [`limits::PAGERDUTY_REQUEST_TIMEOUT`] (tests use a short one).
    pub fn with_request_timeout(mut self, timeout: Duration) -> PagerDutySink {
        self.request_timeout = timeout;
        self
    }

    async fn post(&self, body: Vec<u8>) -> Result<(), AlertError> {
        let (status, body) = self
            .client
            .post_json(
                &self.url,
                &[],
                body,
                self.request_timeout,
                limits::PAGERDUTY_RESPONSE_BYTES_MAX,
            )
            .await
            .map_err(|error| match error {
                ExchangeError::Unreachable(why) => AlertError::Retryable(why),
                ExchangeError::Request(why) => AlertError::Rejected(why),
            })?;
        classify(status, &body)
    }
}

impl AlertSink for PagerDutySink {
    fn send(&self, page: &Page) -> BoxFuture<'_, Result<(), AlertError>> {
        let body = event(&self.routing_key, page).to_string().into_bytes();
        Box::pin(self.post(body))
    }
}

/// What a response means for the dispatcher.
fn classify(status: StatusCode, body: &[u8]) -> Result<(), AlertError> {
    let text = || {
        truncate_chars(
            &String::from_utf8_lossy(body),
            limits::PAGERDUTY_REJECTION_CHARS_MAX,
        )
    };
    if status.is_success() {
        Ok(())
    } else if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Err(AlertError::Retryable(format!("{status}: {}", text())))
    } else {
        Err(AlertError::Rejected(format!("{status}: {}", text())))
    }
}

/// The Events API v2 body for one page. A resolve needs only the key and the
/// action: PagerDuty ignores its payload.
fn event(routing_key: &str, page: &Page) -> Value {
    match page.action {
        PageAction::Resolve => json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": page.dedup_key,
        }),
        PageAction::Trigger => {
            let mut event = trigger(routing_key, page);
            if !page.links.is_empty() {
                event["links"] = json!(page.links);
            }
            if let Some(url) = &page.client_url {
                event["client"] = json!("payvisor");
                event["client_url"] = json!(url);
            }
            event
        }
    }
}

fn trigger(routing_key: &str, page: &Page) -> Value {
    json!({
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": page.dedup_key,
            "payload": {
                "summary": truncate_chars(&page.summary, limits::PAGERDUTY_SUMMARY_CHARS_MAX),
                "source": page.source,
                "severity": page.severity,
                "timestamp": crate::domain::time::rfc3339(page.timestamp),
                "component": "payvisor",
                "group": "payments",
                "class": page.class.as_str(),
                "custom_details": page.custom_details,
            },
    })
}

/// At most `max` characters of `text`, the last one an ellipsis when cut, so
/// that a reader sees the text was cut.
fn truncate_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::alerts::Severity;
    use crate::domain::Timestamp;

    fn page(action: PageAction, summary: &str) -> Page {
        Page {
            action,
            class: crate::alerts::PageClass::StalledPayment,
            dedup_key: "payvisor/accounts/a/payments/p/1".into(),
            summary: summary.into(),
            source: "node-1".into(),
            severity: Severity::Critical,
            timestamp: Timestamp::from_unix_millis(1_700_000_000_123),
            custom_details: BTreeMap::from([("state".into(), "sent".into())]),
            links: Vec::new(),
            client_url: None,
        }
    }

    #[test]
    fn a_trigger_carries_the_full_payload() {
        let body = event("key", &page(PageAction::Trigger, "stuck"));
        assert_eq!(
            body,
            json!({
                "routing_key": "key",
                "event_action": "trigger",
                "dedup_key": "payvisor/accounts/a/payments/p/1",
                "payload": {
                    "summary": "stuck",
                    "source": "node-1",
                    "severity": "critical",
                    "timestamp": "2023-11-14T22:13:20.123Z",
                    "component": "payvisor",
                    "group": "payments",
                    "class": "stalled_payment",
                    "custom_details": {"state": "sent"},
                },
            })
        );
    }

    #[test]
    fn a_resolve_carries_only_the_key() {
        let body = event("key", &page(PageAction::Resolve, "over"));
        assert_eq!(
            body,
            json!({
                "routing_key": "key",
                "event_action": "resolve",
                "dedup_key": "payvisor/accounts/a/payments/p/1",
            })
        );
    }

    #[test]
    fn long_summaries_are_cut_to_the_limit_on_a_character_boundary() {
        let long = "é".repeat(limits::PAGERDUTY_SUMMARY_CHARS_MAX + 10);
        let body = event("key", &page(PageAction::Trigger, &long));
        let summary = body["payload"]["summary"].as_str().unwrap();
        assert_eq!(summary.chars().count(), limits::PAGERDUTY_SUMMARY_CHARS_MAX);
        assert!(summary.ends_with('…'));
        let exact = "x".repeat(limits::PAGERDUTY_SUMMARY_CHARS_MAX);
        assert_eq!(
            truncate_chars(&exact, limits::PAGERDUTY_SUMMARY_CHARS_MAX),
            exact
        );
    }

    #[test]
    fn statuses_map_to_retryable_or_rejected() {
        assert_eq!(classify(StatusCode::ACCEPTED, b""), Ok(()));
        for retryable in [429, 500, 502, 503] {
            let status = StatusCode::from_u16(retryable).unwrap();
            assert!(matches!(
                classify(status, b""),
                Err(AlertError::Retryable(_))
            ));
        }
        let long = vec![b'x'; 10_000];
        match classify(StatusCode::BAD_REQUEST, &long) {
            Err(AlertError::Rejected(text)) => {
                assert!(text.chars().count() < limits::PAGERDUTY_REJECTION_CHARS_MAX + 32)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn urls_and_keys_are_checked_at_construction() {
        for bad in [
            "",
            "events.pagerduty.com/v2/enqueue",
            "ftp://host/x",
            "http:///x",
        ] {
            assert!(
                matches!(
                    PagerDutySink::new(bad, "key".into()),
                    Err(PagerDutyConfigError::InvalidUrl { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            PagerDutySink::new("http://127.0.0.1:1/v2/enqueue", " ".into()),
            Err(PagerDutyConfigError::EmptyRoutingKey)
        ));
        // HTTPS builds the ring-based TLS config; a host with no CA bundle
        // (some containers) may refuse, but only with this error.
        match PagerDutySink::new(PAGERDUTY_EVENTS_URL, "key".into()) {
            Ok(_) | Err(PagerDutyConfigError::RootCertificates(_)) => {}
            Err(other) => panic!("{other}"),
        }
        let sink = PagerDutySink::new("http://127.0.0.1:1/v2/enqueue", "secret".into()).unwrap();
        assert!(!format!("{sink:?}").contains("secret"));
    }
}
