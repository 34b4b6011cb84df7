//! Merchant notifications: every payment event is delivered to each
//! webhook endpoint in force that subscribes to its type, signed, in order
//! per payment, retried with exponential back-off for a configurable
//! period (24 h by default). The endpoints file is reloaded when it
//! changes ([`EndpointsInForce`]).
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

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hyper::Uri;

use crate::domain::events::PaymentEvent;
use crate::domain::payment::Payment;
use crate::http_client::{parse_url, ExchangeError, HttpPoster};
use crate::limits;
use crate::reload::{Document, InForce};
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
    /// The event types it subscribed to; `None`: every type.
    events: Option<BTreeSet<String>>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .finish()
    }
}

impl Endpoint {
    pub fn new(name: &str, url: &str, secret: &str) -> Result<Endpoint, String> {
        let problems = Endpoint::problems(name, Some(url), secret);
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Endpoint {
            name: name.to_owned(),
            url: parse_url(url).map_err(|why| format!("endpoint {name:?}: url: {why}"))?,
            secret: secret.as_bytes().to_vec(),
            events: None,
        })
    }

    /// Everything wrong with an endpoint's name, URL (unless already
    /// checked) and secret. Neither the URL (it may hold credentials) nor
    /// the secret is shown.
    fn problems(name: &str, url: Option<&str>, secret: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let name_ok = !name.is_empty()
            && name.len() <= limits::WEBHOOK_ENDPOINT_NAME_CHARS_MAX
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            problems.push(format!(
                "endpoint name {name:?}: 1..={} characters of [A-Za-z0-9._-]",
                limits::WEBHOOK_ENDPOINT_NAME_CHARS_MAX
            ));
        }
        if let Some(Err(why)) = url.map(parse_url) {
            problems.push(format!("endpoint {name:?}: url: {why}"));
        }
        if secret.len() < limits::WEBHOOK_SECRET_BYTES_MIN {
            problems.push(format!(
                "endpoint {name:?}: the secret must have at least {} bytes",
                limits::WEBHOOK_SECRET_BYTES_MIN
            ));
        }
        problems
    }

    /// Subscribes the endpoint to `events` only (types such as
    /// `payment.processed`); every one must exist.
    pub fn subscribed_to(mut self, events: &[String]) -> Result<Endpoint, String> {
        let problems = Endpoint::subscription_problems(&self.name, events);
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        self.events = Some(events.iter().cloned().collect());
        Ok(self)
    }

    /// Everything wrong with a list of event types: each unknown type.
    fn subscription_problems(name: &str, events: &[String]) -> Vec<String> {
        if events.is_empty() {
            return vec![format!(
                "endpoint {name:?}: events is empty (leave it out for every type)"
            )];
        }
        let known = crate::domain::events::event_types();
        events
            .iter()
            .filter(|event| !known.contains(event))
            .map(|unknown| {
                format!(
                    "endpoint {name:?}: unknown event type {unknown:?} (known, in lower case: {})",
                    known.join(", ")
                )
            })
            .collect()
    }

    /// Whether every event goes to this endpoint (no `events` listed).
    pub fn takes_every_type(&self) -> bool {
        self.events.is_none()
    }

    /// Whether events of `event_type` go to this endpoint.
    pub fn wants(&self, event_type: &str) -> bool {
        self.events
            .as_ref()
            .is_none_or(|events| events.contains(event_type))
    }

    /// `t=<unix>,v1=<hex HMAC-SHA256(secret, "t.body")>`.
    pub fn signature(&self, unix_seconds: i64, body: &[u8]) -> String {
        crate::signature::sign(&self.secret, unix_seconds, body)
    }
}

/// How an event and its payment become a request's body. The API layer
/// owns the contract's types and provides it (`grpc::json::webhook_body`:
/// `payvisor.v1.WebhookEvent` in the canonical JSON mapping).
/// `Err` when the event has no body (a value with no JSON form): the
/// attempt fails and is retried like any other, never a panic.
pub type BodyFormat =
    Arc<dyn Fn(&PaymentEvent, Option<&Payment>) -> Result<Vec<u8>, String> + Send + Sync>;

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
            let body = (self.format)(event, payment).map_err(DeliveryError)?;
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

/// The endpoints of a webhooks file: `{"endpoints": [{"name", "url",
/// "secret", "events"?, "allow_insecure"?}]}`.
#[derive(Debug, Default)]
pub struct Endpoints(pub Vec<Endpoint>);

impl Endpoints {
    pub fn iter(&self) -> std::slice::Iter<'_, Endpoint> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn named(&self, name: &str) -> Option<&Endpoint> {
        self.0.iter().find(|endpoint| endpoint.name == name)
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointsFile {
    endpoints: Vec<EndpointEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointEntry {
    name: String,
    url: String,
    secret: String,
    /// Event types to send (`payment.processed`, `refund.succeeded`, …);
    /// left out: every type.
    #[serde(default)]
    events: Option<Vec<String>>,
    /// Accept an `http://` URL beyond loopback.
    #[serde(default)]
    allow_insecure: bool,
}

impl Document for Endpoints {
    const KIND: &'static str = "webhooks file";
    const BYTES_MAX: usize = limits::WEBHOOK_FILE_BYTES_MAX;

    fn parse(text: &str) -> Result<Endpoints, Vec<String>> {
        let file: EndpointsFile = serde_json::from_str(text)
            .map_err(|error| vec![crate::domain::json::without_values(&error)])?;
        if file.endpoints.len() > limits::WEBHOOK_ENDPOINTS_MAX {
            return Err(vec![format!(
                "at most {} endpoints",
                limits::WEBHOOK_ENDPOINTS_MAX
            )]);
        }
        let mut endpoints: Vec<Endpoint> = Vec::new();
        let mut problems = Vec::new();
        let mut names = BTreeSet::new();
        // Every problem of every entry, so one edit fixes them all.
        for entry in file.endpoints {
            let mut wrong = Vec::new();
            if !names.insert(entry.name.clone()) {
                wrong.push(format!("endpoint name {:?} appears twice", entry.name));
            }
            let url = match crate::http_client::outbound_url(&entry.url, entry.allow_insecure) {
                Ok(_) => Some(entry.url.as_str()),
                Err(why) => {
                    wrong.push(format!("endpoint {:?}: url: {why}", entry.name));
                    None
                }
            };
            wrong.extend(Endpoint::problems(&entry.name, url, &entry.secret));
            if let Some(events) = &entry.events {
                wrong.extend(Endpoint::subscription_problems(&entry.name, events));
            }
            if !wrong.is_empty() {
                problems.extend(wrong);
                continue;
            }
            let endpoint =
                Endpoint::new(&entry.name, &entry.url, &entry.secret).and_then(|endpoint| {
                    match &entry.events {
                        Some(events) => endpoint.subscribed_to(events),
                        None => Ok(endpoint),
                    }
                });
            match endpoint {
                Ok(endpoint) => endpoints.push(endpoint),
                Err(problem) => problems.push(problem),
            }
        }
        if problems.is_empty() {
            Ok(Endpoints(endpoints))
        } else {
            Err(problems)
        }
    }

    fn summary(&self) -> String {
        let names: Vec<&str> = self.iter().map(|endpoint| endpoint.name.as_str()).collect();
        format!("{} endpoints: {}", names.len(), names.join(", "))
    }
}

/// The endpoints in force: the webhooks file, checked for changes and
/// reloaded (validated first; a refused file leaves the old endpoints in
/// force), like the rules file.
pub type EndpointsInForce = InForce<Endpoints>;

/// Webhook settings of a node.
#[derive(Clone)]
pub struct WebhookSettings {
    pub endpoints: Arc<EndpointsInForce>,
    /// How long a delivery is retried before it is given up.
    pub retry_for: Duration,
}

impl WebhookSettings {
    /// The endpoints in force now.
    pub fn endpoints(&self) -> Arc<Endpoints> {
        self.endpoints.current()
    }

    /// Whether webhooks are in use: endpoints are configured now, or come
    /// from a file that may list some later (deliveries recorded for an
    /// endpoint since removed must still be retried, and given up at the
    /// end of their retry period).
    pub fn in_use(&self) -> bool {
        self.endpoints.has_file() || !self.endpoints().is_empty()
    }

    /// Fixed endpoints (no file: tests, benchmarks).
    pub fn fixed(endpoints: Vec<Endpoint>, retry_for: Duration) -> WebhookSettings {
        WebhookSettings {
            endpoints: Arc::new(InForce::fixed(Endpoints(endpoints))),
            retry_for,
        }
    }
}

impl fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("endpoints", &self.endpoints())
            .field("retry_for", &self.retry_for)
            .finish()
    }
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings::fixed(Vec::new(), limits::WEBHOOK_RETRY_FOR_DEFAULT)
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

    #[test]
    fn an_endpoint_subscribes_to_known_event_types_or_every_type() {
        let endpoint =
            Endpoint::new("shop", "http://127.0.0.1:9/hook", "s3cret-s3cret-s3").unwrap();
        assert!(endpoint.wants("payment.sent"));
        let endpoint = endpoint
            .subscribed_to(&["payment.processed".into(), "refund.succeeded".into()])
            .unwrap();
        assert!(endpoint.wants("payment.processed") && endpoint.wants("refund.succeeded"));
        assert!(!endpoint.wants("payment.sent"));
        let unknown = endpoint.clone().subscribed_to(&["payment.shipped".into()]);
        assert!(unknown.unwrap_err().contains("payment.shipped"));
        assert!(endpoint.subscribed_to(&[]).is_err());
    }

    #[test]
    fn a_webhooks_file_lists_every_problem() {
        let text = r#"{"endpoints": [
            {"name": "a", "url": "http://127.0.0.1:9/", "secret": "short"},
            {"name": "b", "url": "http://127.0.0.1:9/", "secret": "s3cret-s3cret-s3", "events": ["nope"]},
            {"name": "c", "url": "http://127.0.0.1:9/", "secret": "s3cret-s3cret-s3", "events": ["payment.failed"]}
        ]}"#;
        let problems = Endpoints::parse(text).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        // Every problem of an entry, and each unknown type.
        let many = r#"{"endpoints": [
            {"name": "a", "url": "http://127.0.0.1:9/", "secret": "short", "events": ["payment.bogus", "refund.nope"]},
            {"name": "a", "url": "http://127.0.0.1:9/", "secret": "s3cret-s3cret-s3"}
        ]}"#;
        let problems = Endpoints::parse(many).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        for told in ["secret", "payment.bogus", "refund.nope", "appears twice"] {
            assert!(
                problems.iter().any(|p| p.contains(told)),
                "{told}: {problems:?}"
            );
        }
        let good = text
            .replace("\"short\"", "\"s3cret-s3cret-s3\"")
            .replace("[\"nope\"]", "[\"refund.failed\"]");
        let endpoints = Endpoints::parse(&good).unwrap();
        assert_eq!(endpoints.summary(), "3 endpoints: a, b, c");
        assert!(!endpoints.named("c").unwrap().wants("payment.sent"));
    }
}
