//! The outbound boundaries, metered: a bank [`Connector`], an
//! [`AlertSink`] and a [`WebhookSink`] that count and time every call of the
//! one they wrap, for `/metrics`. Like [`super::store::MeteredStore`], they
//! change nothing about the calls: what the inner one answers is the answer.
//!
//! Labels name the configured bank, endpoint or page class, and the kind of
//! outcome, never an error's text or a payment: the page stays bounded by
//! the configuration, whatever the traffic.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::{latency_family, timed, LatencyFamily};
use crate::alerts::{AlertError, AlertSink, Page, PageAction, PageClass};
use crate::connectors::{
    BankStatus, Connector, ConnectorError, PaymentSubmission, RefundSubmission,
};
use crate::domain::events::PaymentEvent;
use crate::domain::payment::Payment;
use crate::domain::PaymentName;
use crate::store::BoxFuture;
use crate::webhooks::{DeliveryError, Endpoint, WebhookSink};

/// A bank call's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BankLabels {
    /// The bank's configured name.
    pub bank: String,
    /// `submit_payment`, `submit_refund`, `payment_status`.
    pub operation: &'static str,
    /// `ok`, `rejected` (the bank refused for good), `circuit_open` (the
    /// breaker refused the call's last attempt: the bank is failing),
    /// `unavailable` (timeout, network, 5xx: the outcome is unknown).
    pub outcome: &'static str,
}

/// Bank calls timed (retries inside a call included), by bank, operation
/// and outcome.
#[derive(Clone, Debug)]
pub struct BankMetrics {
    pub call_seconds: LatencyFamily<BankLabels>,
}

impl Default for BankMetrics {
    fn default() -> BankMetrics {
        BankMetrics {
            call_seconds: latency_family(),
        }
    }
}

/// A bank, its calls metered.
pub struct MeteredConnector {
    bank: String,
    inner: Arc<dyn Connector>,
    metrics: BankMetrics,
}

impl MeteredConnector {
    pub fn new(bank: &str, inner: Arc<dyn Connector>, metrics: BankMetrics) -> MeteredConnector {
        // The failures an alert fires on exist at zero from the start, so
        // `increase()` sees the first one.
        for operation in ["submit_payment", "submit_refund", "payment_status"] {
            for outcome in ["unavailable", "circuit_open"] {
                let _zero = metrics.call_seconds.get_or_create(&BankLabels {
                    bank: bank.to_owned(),
                    operation,
                    outcome,
                });
            }
        }
        MeteredConnector {
            bank: bank.to_owned(),
            inner,
            metrics,
        }
    }

    fn timed<'a, T: Send + 'a>(
        &'a self,
        operation: &'static str,
        call: BoxFuture<'a, Result<T, ConnectorError>>,
    ) -> BoxFuture<'a, Result<T, ConnectorError>> {
        Box::pin(timed(&self.metrics.call_seconds, call, move |answer| {
            let outcome = match answer {
                Ok(_) => "ok",
                Err(ConnectorError::Rejected(_)) => "rejected",
                Err(ConnectorError::Transient(why))
                    if why == crate::connectors::http::CIRCUIT_OPEN =>
                {
                    "circuit_open"
                }
                Err(ConnectorError::Transient(_)) => "unavailable",
            };
            BankLabels {
                bank: self.bank.clone(),
                operation,
                outcome,
            }
        }))
    }
}

impl Connector for MeteredConnector {
    fn submit_payment(
        &self,
        submission: PaymentSubmission,
    ) -> BoxFuture<'_, Result<(), ConnectorError>> {
        self.timed("submit_payment", self.inner.submit_payment(submission))
    }

    fn submit_refund(
        &self,
        submission: RefundSubmission,
    ) -> BoxFuture<'_, Result<(), ConnectorError>> {
        self.timed("submit_refund", self.inner.submit_refund(submission))
    }

    fn payment_status(
        &self,
        name: PaymentName,
    ) -> BoxFuture<'_, Result<BankStatus, ConnectorError>> {
        self.timed("payment_status", self.inner.payment_status(name))
    }
}

/// A page's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PageLabels {
    /// The page's [`PageClass`].
    pub class: &'static str,
    /// `trigger` or `resolve`.
    pub action: &'static str,
    /// `sent` (the pager acknowledged), `failed` (worth retrying; it will
    /// be), `rejected` (refused for good: a bad routing key).
    pub outcome: &'static str,
}

/// Pages handed to the pager, each attempt counted.
#[derive(Clone, Debug, Default)]
pub struct PageMetrics {
    pub attempts: Family<PageLabels, Counter>,
}

/// A pager, its attempts counted.
pub struct MeteredAlertSink {
    inner: Arc<dyn AlertSink>,
    metrics: PageMetrics,
}

impl MeteredAlertSink {
    pub fn new(inner: Arc<dyn AlertSink>, metrics: PageMetrics) -> MeteredAlertSink {
        for class in PageClass::ALL {
            for action in ["trigger", "resolve"] {
                for outcome in ["sent", "failed", "rejected"] {
                    let _zero = metrics.attempts.get_or_create(&PageLabels {
                        class: class.as_str(),
                        action,
                        outcome,
                    });
                }
            }
        }
        MeteredAlertSink { inner, metrics }
    }
}

impl AlertSink for MeteredAlertSink {
    fn send(&self, page: &Page) -> BoxFuture<'_, Result<(), AlertError>> {
        let call = self.inner.send(page);
        let class = page.class.as_str();
        let action = match page.action {
            PageAction::Trigger => "trigger",
            PageAction::Resolve => "resolve",
        };
        Box::pin(async move {
            let answer = call.await;
            let outcome = match &answer {
                Ok(()) => "sent",
                Err(AlertError::Retryable(_)) => "failed",
                Err(AlertError::Rejected(_)) => "rejected",
            };
            let labels = PageLabels {
                class,
                action,
                outcome,
            };
            self.metrics.attempts.get_or_create(&labels).inc();
            answer
        })
    }
}

/// A webhook delivery's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// The endpoint's configured name.
    pub endpoint: String,
    /// `ok` (a 2xx) or `failed` (anything else: retried with back-off).
    pub outcome: &'static str,
}

/// Webhook deliveries (one event, one endpoint, one attempt) timed.
#[derive(Clone, Debug)]
pub struct WebhookMetrics {
    pub delivery_seconds: LatencyFamily<WebhookLabels>,
}

impl Default for WebhookMetrics {
    fn default() -> WebhookMetrics {
        WebhookMetrics {
            delivery_seconds: latency_family(),
        }
    }
}

/// Webhook endpoints, their deliveries metered.
pub struct MeteredWebhookSink {
    inner: Arc<dyn WebhookSink>,
    metrics: WebhookMetrics,
}

impl MeteredWebhookSink {
    pub fn new<'a>(
        inner: Arc<dyn WebhookSink>,
        endpoints: impl IntoIterator<Item = &'a Endpoint>,
        metrics: WebhookMetrics,
    ) -> MeteredWebhookSink {
        for endpoint in endpoints {
            let _zero = metrics.delivery_seconds.get_or_create(&WebhookLabels {
                endpoint: endpoint.name.clone(),
                outcome: "failed",
            });
        }
        MeteredWebhookSink { inner, metrics }
    }
}

impl WebhookSink for MeteredWebhookSink {
    fn deliver<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        event: &'a PaymentEvent,
        payment: Option<&'a Payment>,
        unix_seconds: i64,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        let call = self.inner.deliver(endpoint, event, payment, unix_seconds);
        Box::pin(timed(&self.metrics.delivery_seconds, call, |answer| {
            WebhookLabels {
                endpoint: endpoint.name.clone(),
                outcome: if answer.is_ok() { "ok" } else { "failed" },
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::domain::{AccountId, PaymentId};

    /// Answers each call with the next of its answers.
    struct Scripted(Mutex<Vec<Result<(), ConnectorError>>>);

    impl Connector for Scripted {
        fn submit_payment(
            &self,
            _: PaymentSubmission,
        ) -> BoxFuture<'_, Result<(), ConnectorError>> {
            let answer = self.0.lock().unwrap().remove(0);
            Box::pin(async move { answer })
        }
        fn submit_refund(&self, _: RefundSubmission) -> BoxFuture<'_, Result<(), ConnectorError>> {
            let answer = self.0.lock().unwrap().remove(0);
            Box::pin(async move { answer })
        }
        fn payment_status(
            &self,
            _: PaymentName,
        ) -> BoxFuture<'_, Result<BankStatus, ConnectorError>> {
            let answer = self.0.lock().unwrap().remove(0);
            Box::pin(async move { answer.map(|()| BankStatus::Pending) })
        }
    }

    fn count(metrics: &BankMetrics, operation: &'static str, outcome: &'static str) -> u64 {
        let mut page = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("bank", "Bank calls", metrics.call_seconds.clone());
        prometheus_client::encoding::text::encode(&mut page, &registry).unwrap();
        let series = format!(
            "bank_count{{bank=\"bank-a\",operation=\"{operation}\",outcome=\"{outcome}\"}} "
        );
        page.lines()
            .find_map(|line| line.strip_prefix(&series))
            .map_or(0, |value| value.parse().unwrap())
    }

    #[tokio::test]
    async fn each_bank_call_is_counted_under_its_outcome() {
        let metrics = BankMetrics::default();
        let bank = MeteredConnector::new(
            "bank-a",
            Arc::new(Scripted(Mutex::new(vec![
                Ok(()),
                Err(ConnectorError::Rejected("no".into())),
                Err(ConnectorError::Transient("timeout".into())),
                Err(ConnectorError::Transient(
                    crate::connectors::http::CIRCUIT_OPEN.into(),
                )),
                Ok(()),
            ]))),
            metrics.clone(),
        );
        let name = PaymentName {
            account: AccountId::new("acme").unwrap(),
            payment: PaymentId::new("p1").unwrap(),
        };
        let submission = PaymentSubmission {
            name: name.clone(),
            amount: crate::domain::Money::from_minor(
                crate::domain::Currency::from_code("USD").unwrap(),
                100,
            ),
            metadata: Default::default(),
            trace: None,
        };
        for _ in 0..4 {
            let _ = bank.submit_payment(submission.clone()).await;
        }
        assert_eq!(bank.payment_status(name).await, Ok(BankStatus::Pending));
        for outcome in ["ok", "rejected", "unavailable", "circuit_open"] {
            assert_eq!(count(&metrics, "submit_payment", outcome), 1, "{outcome}");
        }
        assert_eq!(count(&metrics, "payment_status", "ok"), 1);
        // The failures alerts watch exist before any happened.
        assert_eq!(count(&metrics, "submit_refund", "unavailable"), 0);
        let mut page = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("bank", "Bank calls", metrics.call_seconds.clone());
        prometheus_client::encoding::text::encode(&mut page, &registry).unwrap();
        assert!(
            page.contains(
                "bank_count{bank=\"bank-a\",operation=\"submit_refund\",outcome=\"unavailable\"} 0"
            ),
            "{page}"
        );
    }
}
