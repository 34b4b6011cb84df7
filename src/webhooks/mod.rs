//! Merchant notifications: every payment event is delivered to each
//! configured webhook endpoint, signed, in order per payment, retried with
//! exponential back-off for a configurable period (24 h by default).
//!
//! - The events and their delivery state are written with the decision that
//!   caused them (see `store::schema`, "Events"): nothing is delivered that
//!   was not durably decided, and nothing decided is forgotten by a crash.
//! - [`dispatcher::WebhookDispatcher`] finds due deliveries through the
//!   `HOOK` index, sends them through a [`WebhookSink`], and records each
//!   acknowledgement and failure.
//!
//! **Signature.** Each request carries `Payvisor-Signature:
//! t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">` with the endpoint's
//! secret, and `Payvisor-Event-Id`. A receiver recomputes the HMAC, compares
//! in constant time and refuses old timestamps (replays).
//!
//! **Boundary:** delivery is at least once. A crash between the endpoint's
//! acknowledgement and the write that records it sends the event again,
//! with the same id; receivers deduplicate on it.

pub mod dispatcher;

use std::fmt;
use std::time::Duration;

use std::sync::Arc;

use hyper::Uri;

use crate::domain::events::PaymentEvent;
use crate::domain::payment::Payment;
use crate::http_client::{parse_url, ExchangeError, HttpPoster};
use crate::limits;
use crate::store::BoxFuture;

/// The request header with the signature.
pub const SIGNATURE_HEADER: &str = "payvisor-signature";
/// The request header with the event id (also in the body).
pub const EVENT_ID_HEADER: &str = "payvisor-event-id";

/// A merchant endpoint events are delivered to.
#[derive(Clone)]
pub struct Endpoint {
    /// Stable name: deliveries are recorded under it.
    pub name: String,
    pub url: Uri,
    /// The shared signing secret; never logged.
    secret: Vec<u8>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Endpoint {
    pub fn new(name: &str, url: &str, secret: &str) -> Result<Endpoint, String> {
        let name_ok = !name.is_empty()
            && name.len() <= limits::WEBHOOK_ENDPOINT_NAME_CHARS_MAX
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(format!(
                "endpoint name {name:?}: 1..={} characters of [A-Za-z0-9._-]",
                limits::WEBHOOK_ENDPOINT_NAME_CHARS_MAX
            ));
        }
        let url = parse_url(url).map_err(|why| format!("endpoint {name:?}: url {url:?}: {why}"))?;
        if secret.len() < limits::WEBHOOK_SECRET_BYTES_MIN {
            return Err(format!(
                "endpoint {name:?}: the secret must have at least {} bytes",
                limits::WEBHOOK_SECRET_BYTES_MIN
            ));
        }
        Ok(Endpoint {
            name: name.to_owned(),
            url,
            secret: secret.as_bytes().to_vec(),
        })
    }

    /// `t=<unix>,v1=<hex HMAC-SHA256(secret, "t.body")>`.
    pub fn signature(&self, unix_seconds: i64, body: &[u8]) -> String {
        crate::signature::sign(&self.secret, unix_seconds, body)
    }
}

/// How an event and its payment become a request's body. The API layer
/// owns the contract's types and provides it (`grpc::json::webhook_body`:
/// `payvisor.v1.WebhookEvent` in the canonical JSON mapping).
pub type BodyFormat = Arc<dyn Fn(&PaymentEvent, Option<&Payment>) -> Vec<u8> + Send + Sync>;

/// Why one delivery attempt failed (always worth retrying until the
/// retry period ends: an endpoint that refuses today may be fixed tomorrow).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DeliveryError(pub String);

/// Where events go: one attempt of one event to one endpoint.
pub trait WebhookSink: Send + Sync + 'static {
    /// `Ok` when the endpoint acknowledged (any 2xx). `payment` is the
    /// payment as it is now, which the body carries.
    fn deliver<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        event: &'a PaymentEvent,
        payment: Option<&'a Payment>,
        unix_seconds: i64,
    ) -> BoxFuture<'a, Result<(), DeliveryError>>;
}

/// Webhooks over HTTP(S) POST.
#[derive(Clone)]
pub struct HttpWebhookSink {
    poster: HttpPoster,
    timeout: Duration,
    format: BodyFormat,
}

impl HttpWebhookSink {
    pub fn new(with_roots: bool, format: BodyFormat) -> Result<HttpWebhookSink, std::io::Error> {
        Ok(HttpWebhookSink {
            poster: HttpPoster::new(with_roots)?,
            timeout: limits::WEBHOOK_REQUEST_TIMEOUT,
            format,
        })
    }
}

impl WebhookSink for HttpWebhookSink {
    fn deliver<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        event: &'a PaymentEvent,
        payment: Option<&'a Payment>,
        unix_seconds: i64,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let body = (self.format)(event, payment);
            // A span of the call that caused the event, or a trace of its
            // own (a change no call caused: a bank's outcome).
            let caller = (event.trace.as_deref()).and_then(crate::trace::TraceParent::parse);
            let mut span = crate::trace::Span::start(
                "webhook.deliver",
                crate::trace::SpanKind::Client,
                caller.as_ref(),
            );
            if span.is_recording() {
                span.set("payvisor.endpoint", endpoint.name.as_str());
                span.set("payvisor.event", event.name());
            }
            let delivered = self
                .post_signed(
                    endpoint,
                    &event.name(),
                    body,
                    unix_seconds,
                    Some(&span.context().header()),
                )
                .await;
            // Failed, not why: the endpoint's words stay in the log.
            if delivered.is_err() {
                span.fail("delivery failed");
            }
            delivered
        })
    }
}

impl HttpWebhookSink {
    /// Posts a body made elsewhere (`payvisor webhooks listen` makes it
    /// from the API's messages), signed with the endpoint's secret, with
    /// the event's id and the trace it belongs to.
    pub async fn post_signed(
        &self,
        endpoint: &Endpoint,
        event_name: &str,
        body: Vec<u8>,
        unix_seconds: i64,
        traceparent: Option<&str>,
    ) -> Result<(), DeliveryError> {
        let mut headers = vec![
            (SIGNATURE_HEADER, endpoint.signature(unix_seconds, &body)),
            (EVENT_ID_HEADER, event_name.to_owned()),
        ];
        if let Some(traceparent) = traceparent {
            headers.push((crate::trace::TRACEPARENT, traceparent.to_owned()));
        }
        self.post(endpoint, &headers, body).await
    }

    /// One delivery's exchange: `Ok` on a `2xx`.
    async fn post(
        &self,
        endpoint: &Endpoint,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<(), DeliveryError> {
        {
            let (status, response) = self
                .poster
                .post_json(
                    &endpoint.url,
                    headers,
                    body,
                    self.timeout,
                    limits::WEBHOOK_RESPONSE_BYTES_MAX,
                )
                .await
                .map_err(|error| match error {
                    ExchangeError::Unreachable(why) | ExchangeError::Request(why) => {
                        DeliveryError(why)
                    }
                })?;
            if status.is_success() {
                Ok(())
            } else {
                let text: String = String::from_utf8_lossy(&response)
                    .chars()
                    .take(limits::WEBHOOK_ERROR_CHARS_MAX)
                    .collect();
                Err(DeliveryError(format!("{status}: {text}")))
            }
        }
    }
}

/// Webhook settings of a node.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    pub endpoints: Vec<Endpoint>,
    /// How long a delivery is retried before it is given up.
    pub retry_for: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            endpoints: Vec::new(),
            retry_for: limits::WEBHOOK_RETRY_FOR_DEFAULT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_validated_and_secrets_not_printed() {
        let endpoint =
            Endpoint::new("shop", "http://127.0.0.1:9/hook", "s3cret-s3cret-s3").unwrap();
        assert!(!format!("{endpoint:?}").contains("s3cret"));
        assert!(Endpoint::new("", "http://x/", "s3cret-s3cret-s3").is_err());
        assert!(Endpoint::new("shop", "ftp://x/", "s3cret-s3cret-s3").is_err());
        assert!(Endpoint::new("shop", "http://x/", "short").is_err());
    }
}
