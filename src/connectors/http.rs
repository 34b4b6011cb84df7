//! A bank over HTTP: the client side of `docs/bank-protocol.md`.
//!
//! Each [`HttpBankConnector`] talks to one bank. A call (submit a payment,
//! submit a refund, ask a payment's status) is one or more *attempts*:
//!
//! - `2xx`: done.
//! - `422` (the bank will never process it) and `409` (same key, different
//!   payment: a bug on our side): [`ConnectorError::Rejected`], never retried.
//! - `5xx`, `408`, `429`, timeout, connection error: the outcome is unknown;
//!   retried with the same idempotency key after a full-jitter exponential
//!   back-off, at most `attempts_max` attempts in all, then
//!   [`ConnectorError::Transient`].
//! - anything else (another status, an answer that breaks the protocol):
//!   [`ConnectorError::Transient`] at once; the same request would get the
//!   same answer.
//!
//! Two guards per bank sit in front of every attempt: the [`CircuitBreaker`]
//! (checked first, so a bank known to be down costs no I/O and no waiting),
//! then a semaphore bounding the requests in flight (a request waits for a
//! slot at most the request timeout). Every attempt's result goes to the
//! breaker: a failure is an attempt that ends in `Transient`, anything else
//! (a `422` included: that is the bank working correctly) is a success.
//! Attempts, not calls, are reported, so that a bank that answers only the
//! third try of each call still shows its failures, and a breaker that opens
//! mid-call stops that call's remaining retries.
//!
//! **Boundary:** the bank's outcome never arrives here; it comes as a signed
//! callback to `callback_url`, handled elsewhere.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::{StatusCode, Uri};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::breaker::{BreakerSettings, BreakerState, CircuitBreaker};
use super::{BankStatus, Connector, ConnectorError, PaymentSubmission, RefundSubmission};
use crate::clock::Clock;
use crate::domain::payment::BankOutcome;
use crate::domain::{Money, PaymentName};
use crate::http_client::{self, ExchangeError, HttpPoster};
use crate::limits;
use crate::random::Random;
use crate::store::BoxFuture;
use crate::trace::{Span, SpanKind, TraceParent, TRACEPARENT};

/// The `Transient` reason of a call the breaker refused.
pub const CIRCUIT_OPEN: &str = "circuit open";

/// Where a bank is, and where it sends its callbacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BankEndpoint {
    /// The bank's name in payvisor (logs, metrics, routing).
    pub name: String,
    /// `http(s)://host[:port][/prefix]`; requests go to `{base_url}/v1/...`.
    pub base_url: Uri,
    /// Sent with every submission: where the bank posts the outcome.
    pub callback_url: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpConnectorSettings {
    /// One attempt, connect to last response byte; also the longest wait for
    /// a slot among the requests in flight.
    pub request_timeout: Duration,
    /// Attempts per call, the first included.
    pub attempts_max: u32,
    /// Requests in flight to this bank at most.
    pub in_flight_max: usize,
    /// Full-jitter back-off: the n-th retry waits a uniform draw in
    /// `[0, min(backoff_max, backoff_base * 2^(n-1))]`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub breaker: BreakerSettings,
}

impl Default for HttpConnectorSettings {
    fn default() -> Self {
        HttpConnectorSettings {
            request_timeout: limits::BANK_REQUEST_TIMEOUT_DEFAULT,
            attempts_max: limits::BANK_ATTEMPTS_DEFAULT,
            in_flight_max: limits::BANK_IN_FLIGHT_DEFAULT,
            backoff_base: limits::BANK_BACKOFF_BASE,
            backoff_max: limits::BANK_BACKOFF_MAX,
            breaker: BreakerSettings::default(),
        }
    }
}

impl HttpConnectorSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.request_timeout.is_zero() {
            return Err("request timeout must be positive".into());
        }
        if !(1..=limits::BANK_ATTEMPTS_MAX).contains(&self.attempts_max) {
            return Err(format!(
                "attempts must be 1 to {}",
                limits::BANK_ATTEMPTS_MAX
            ));
        }
        if !(1..=limits::BANK_IN_FLIGHT_MAX).contains(&self.in_flight_max) {
            return Err(format!(
                "requests in flight must be 1 to {}",
                limits::BANK_IN_FLIGHT_MAX
            ));
        }
        if self.backoff_base > self.backoff_max {
            return Err("back-off base must not exceed its cap".into());
        }
        self.breaker.validate()
    }
}

/// Why a connector could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("bank {bank}: {reason}")]
    Invalid { bank: String, reason: String },
    #[error("bank {bank}: loading root certificates: {source}")]
    Tls {
        bank: String,
        source: std::io::Error,
    },
}

/// One bank over HTTP. Shared by reference; calls run concurrently.
pub struct HttpBankConnector {
    name: String,
    /// `{base}/v1/payments`, built once.
    payments_url: Uri,
    /// `{base}/v1/refunds`, built once.
    refunds_url: Uri,
    /// The base URL without its trailing `/`, for per-payment status URLs.
    base: String,
    callback_url: String,
    settings: HttpConnectorSettings,
    poster: HttpPoster,
    /// Draws the back-off jitter.
    random: Arc<dyn Random>,
    /// One permit per request in flight to this bank.
    in_flight: Semaphore,
    breaker: CircuitBreaker,
}

impl HttpBankConnector {
    /// `clock` times the breaker's cool-down; `random` draws the back-off.
    pub fn new(
        endpoint: BankEndpoint,
        settings: HttpConnectorSettings,
        clock: Arc<dyn Clock>,
        random: Arc<dyn Random>,
    ) -> Result<HttpBankConnector, BuildError> {
        let invalid = |reason: String| BuildError::Invalid {
            bank: endpoint.name.clone(),
            reason,
        };
        if endpoint.name.is_empty() {
            return Err(invalid("empty bank name".into()));
        }
        settings.validate().map_err(invalid)?;
        let base_url = http_client::parse_url(&endpoint.base_url.to_string())
            .map_err(|why| invalid(format!("base URL: {why}")))?;
        if base_url.query().is_some() {
            return Err(invalid("base URL must not have a query".into()));
        }
        http_client::parse_url(&endpoint.callback_url)
            .map_err(|why| invalid(format!("callback URL: {why}")))?;
        let base = base_url.to_string().trim_end_matches('/').to_owned();
        let url = |path: &str| {
            format!("{base}{path}")
                .parse::<Uri>()
                .map_err(|e| invalid(format!("{path} URL: {e}")))
        };
        let payments_url = url("/v1/payments")?;
        let refunds_url = url("/v1/refunds")?;
        let poster = HttpPoster::new(base_url.scheme_str() == Some("https")).map_err(|source| {
            BuildError::Tls {
                bank: endpoint.name.clone(),
                source,
            }
        })?;
        let breaker = CircuitBreaker::new(settings.breaker, clock).map_err(invalid)?;
        Ok(HttpBankConnector {
            name: endpoint.name,
            payments_url,
            refunds_url,
            base,
            callback_url: endpoint.callback_url,
            settings,
            poster,
            random,
            in_flight: Semaphore::new(settings.in_flight_max),
            breaker,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// This bank's breaker, for routing (`breaker().state()`).
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    pub fn settings(&self) -> &HttpConnectorSettings {
        &self.settings
    }

    /// Runs the attempts of one call. `key` names the payment or refund in
    /// logs; `parse` reads a `2xx` answer's body.
    async fn call<T>(
        &self,
        key: &str,
        request: &BankRequest,
        parse: impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<T, ConnectorError> {
        let mut last_failure = String::new();
        for attempt in 1..=self.settings.attempts_max {
            if attempt > 1 {
                let wait = full_jitter(
                    self.settings.backoff_base,
                    self.settings.backoff_max,
                    attempt - 1,
                    self.random.as_ref(),
                );
                tokio::time::sleep(wait).await;
            }
            if !self.breaker.allows() {
                tracing::debug!(bank = %self.name, payment = key, attempt, "circuit open");
                return Err(ConnectorError::Transient(CIRCUIT_OPEN.into()));
            }
            let verdict = match self.attempt(request).await {
                Attempt::Answered(body) => match parse(&body) {
                    Ok(value) => Ok(value),
                    Err(why) => Err(Verdict::GiveUp(format!("bad answer: {why}"))),
                },
                Attempt::Failed(verdict) => Err(verdict),
            };
            self.report(!matches!(
                verdict,
                Err(Verdict::Retry(_) | Verdict::GiveUp(_))
            ));
            match verdict {
                Ok(value) => return Ok(value),
                Err(Verdict::Rejected(why)) => {
                    tracing::info!(bank = %self.name, payment = key, reason = %why, "bank rejected");
                    return Err(ConnectorError::Rejected(why));
                }
                Err(Verdict::GiveUp(why)) => {
                    tracing::warn!(bank = %self.name, payment = key, error = %why, "bank call failed");
                    return Err(ConnectorError::Transient(why));
                }
                Err(Verdict::Retry(why)) => {
                    tracing::warn!(
                        bank = %self.name, payment = key, attempt, error = %why,
                        "bank attempt failed"
                    );
                    last_failure = why;
                }
            }
        }
        Err(ConnectorError::Transient(format!(
            "{} attempts failed, the last: {last_failure}",
            self.settings.attempts_max
        )))
    }

    /// One attempt: a slot, one exchange, the status read.
    async fn attempt(&self, request: &BankRequest) -> Attempt {
        let timeout = self.settings.request_timeout;
        let permit = match tokio::time::timeout(timeout, self.in_flight.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => {
                // The semaphore is never closed; say so rather than panic.
                return Attempt::Failed(Verdict::GiveUp("request slots closed".into()));
            }
            Err(_) => {
                return Attempt::Failed(Verdict::GiveUp(format!(
                    "all {} request slots busy for {timeout:?}",
                    self.settings.in_flight_max
                )))
            }
        };
        let bound = limits::BANK_RESPONSE_BYTES_MAX;
        let exchange = match request {
            BankRequest::Post { url, body, trace } => {
                let headers = [(TRACEPARENT, trace.header())];
                self.poster
                    .post_json(url, &headers, body.clone(), timeout, bound)
                    .await
            }
            BankRequest::Get { url, bound } => {
                self.poster.get_json(url, &[], timeout, *bound).await
            }
        };
        drop(permit);
        match exchange {
            Ok((status, body)) => classify(status, body),
            Err(ExchangeError::Unreachable(why)) => Attempt::Failed(Verdict::Retry(why)),
            Err(ExchangeError::Request(why)) => Attempt::Failed(Verdict::GiveUp(why)),
        }
    }

    /// Tells the breaker, and logs when that changes its state.
    fn report(&self, success: bool) {
        let before = self.breaker.state();
        self.breaker.record(success);
        let after = self.breaker.state();
        if before != after {
            if after == BreakerState::Open {
                tracing::warn!(bank = %self.name, from = ?before, to = ?after, "circuit breaker");
            } else {
                tracing::info!(bank = %self.name, from = ?before, to = ?after, "circuit breaker");
            }
        }
    }

    fn status_url(&self, name: &PaymentName) -> Result<Uri, ConnectorError> {
        let url = format!(
            "{}/v1/payments/{}",
            self.base,
            encode_path_segment(&name.to_string())
        );
        url.parse()
            .map_err(|e| ConnectorError::Transient(format!("cannot build {url}: {e}")))
    }
}

/// The span of one bank call (its retries included) under `trace` (a
/// trace of its own without one): its id is the call's `traceparent`.
fn bank_span(operation: &'static str, bank: &str, key: &str, trace: Option<&TraceParent>) -> Span {
    let mut span = Span::start(operation, SpanKind::Client, trace);
    if span.is_recording() {
        span.set("payvisor.bank", bank);
        span.set("payvisor.payment", key);
    }
    span
}

/// Ends a bank call's span with its outcome: the kind only, not the
/// bank's own words (untrusted text stays in the log, off the collector).
fn end_bank_span<T>(mut span: Span, answer: &Result<T, ConnectorError>) {
    let outcome = match answer {
        Ok(_) => "ok",
        Err(ConnectorError::Rejected(_)) => "rejected",
        Err(ConnectorError::Transient(why)) if why == CIRCUIT_OPEN => "circuit_open",
        Err(ConnectorError::Transient(_)) => "unavailable",
    };
    span.set("payvisor.outcome", outcome);
    if answer.is_err() {
        span.fail(outcome);
    }
}

enum BankRequest {
    Post {
        url: Uri,
        body: Vec<u8>,
        /// The call's span (`traceparent`): a child of the trace that
        /// caused it, or a trace of its own.
        trace: TraceParent,
    },
    /// `bound`: response bytes read at most.
    Get { url: Uri, bound: usize },
}

/// How one attempt ended.
enum Attempt {
    /// A `2xx`, with its body.
    Answered(Bytes),
    Failed(Verdict),
}

/// What a failed attempt means for the call.
enum Verdict {
    /// Definite: the bank will never process it.
    Rejected(String),
    /// Outcome unknown; the same request may get another answer.
    Retry(String),
    /// Outcome unknown; the same request would get the same answer.
    GiveUp(String),
}

fn classify(status: StatusCode, body: Bytes) -> Attempt {
    if status.is_success() {
        return Attempt::Answered(body);
    }
    let text: String = String::from_utf8_lossy(&body)
        .chars()
        .take(limits::BANK_ERROR_CHARS_MAX)
        .collect();
    let why = format!("{status}: {text}");
    Attempt::Failed(match status {
        StatusCode::UNPROCESSABLE_ENTITY | StatusCode::CONFLICT => Verdict::Rejected(why),
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => Verdict::Retry(why),
        _ if status.is_server_error() => Verdict::Retry(why),
        _ => Verdict::GiveUp(format!("unexpected answer {why}")),
    })
}

/// The wait before the `retry`-th retry (1 for the first): a uniform draw in
/// `[0, min(cap, base * 2^(retry-1))]` ("full jitter").
pub fn full_jitter(base: Duration, cap: Duration, retry: u32, random: &dyn Random) -> Duration {
    let base = base.as_micros().min(u128::from(u64::MAX)) as u64;
    let cap = cap.as_micros().min(u128::from(u64::MAX)) as u64;
    let doubling = 1u64 << retry.saturating_sub(1).min(32);
    let ceiling = base.saturating_mul(doubling).min(cap);
    Duration::from_micros(random.below(ceiling.saturating_add(1)))
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so a
/// payment name (which holds `/`) is one path segment.
fn encode_path_segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[derive(Serialize)]
struct AmountBody {
    currency_code: &'static str,
    minor_units: i64,
}

impl From<Money> for AmountBody {
    fn from(money: Money) -> Self {
        AmountBody {
            currency_code: money.currency().code(),
            minor_units: money.minor_units(),
        }
    }
}

/// `POST /v1/payments`, fields in the protocol's order.
#[derive(Serialize)]
struct PaymentBody<'a> {
    payment_id: String,
    amount: AmountBody,
    metadata: &'a BTreeMap<String, String>,
    callback_url: &'a str,
}

/// `POST /v1/refunds`.
#[derive(Serialize)]
struct RefundBody<'a> {
    payment_id: String,
    refund_id: &'a str,
    amount: AmountBody,
    callback_url: &'a str,
}

/// `GET /v1/payments/{payment_id}`'s answer.
#[derive(Deserialize)]
struct StatusAnswer {
    payment_id: String,
    status: String,
    #[serde(default)]
    reason: Option<String>,
}

fn parse_status(expected_id: &str, body: &[u8]) -> Result<BankStatus, String> {
    let answer: StatusAnswer = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if answer.payment_id != expected_id {
        return Err(format!(
            "asked about {expected_id}, answered about {}",
            answer.payment_id
        ));
    }
    Ok(match answer.status.as_str() {
        "unknown" => BankStatus::Unknown,
        "pending" => BankStatus::Pending,
        "processed" => BankStatus::Done(BankOutcome::Processed),
        "failed" => BankStatus::Done(BankOutcome::Failed {
            reason: answer
                .reason
                .filter(|reason| !reason.is_empty())
                .unwrap_or_else(|| "failed at the bank (no reason given)".into()),
        }),
        other => return Err(format!("unknown status {other:?}")),
    })
}

fn to_json(body: &impl Serialize) -> Vec<u8> {
    // Strings, integers and string maps always serialize.
    serde_json::to_vec(body).expect("a request body serializes")
}

/// One line of a bank's settlement report (`docs/bank-protocol.md`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct SettlementEntry {
    pub payment_id: String,
    #[serde(default)]
    pub refund_id: Option<String>,
    /// `payment` or `refund`.
    pub kind: String,
    pub currency_code: String,
    pub minor_units: i64,
    pub settled_at_ms: i64,
}

/// The bank's totals per currency, as it states them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct SettlementTotal {
    pub currency_code: String,
    pub payments_minor_units: i64,
    pub refunds_minor_units: i64,
}

/// What a bank settled in `[from_ms, to_ms)`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Settlement {
    pub bank: String,
    pub entries: Vec<SettlementEntry>,
    pub totals: Vec<SettlementTotal>,
}

impl HttpBankConnector {
    /// `GET /v1/settlements?from_ms&to_ms`: the bank's settlement report.
    pub async fn settlement(&self, from_ms: i64, to_ms: i64) -> Result<Settlement, ConnectorError> {
        let url = format!(
            "{}/v1/settlements?from_ms={from_ms}&to_ms={to_ms}",
            self.base
        )
        .parse::<Uri>()
        .map_err(|error| ConnectorError::Rejected(format!("settlement URL: {error}")))?;
        let request = BankRequest::Get {
            url,
            bound: limits::BANK_SETTLEMENT_BYTES_MAX,
        };
        self.call("settlement", &request, |body| {
            serde_json::from_slice::<Settlement>(body).map_err(|error| error.to_string())
        })
        .await
    }
}

impl Connector for HttpBankConnector {
    fn submit_payment(
        &self,
        submission: PaymentSubmission,
    ) -> BoxFuture<'_, Result<(), ConnectorError>> {
        Box::pin(async move {
            let payment_id = submission.name.to_string();
            let body = to_json(&PaymentBody {
                payment_id: payment_id.clone(),
                amount: submission.amount.into(),
                metadata: &submission.metadata,
                callback_url: &self.callback_url,
            });
            let span = bank_span(
                "bank.submit_payment",
                &self.name,
                &payment_id,
                submission.trace.as_ref(),
            );
            let request = BankRequest::Post {
                url: self.payments_url.clone(),
                body,
                trace: span.context().clone(),
            };
            let answer = self.call(&payment_id, &request, |_| Ok(())).await;
            end_bank_span(span, &answer);
            answer
        })
    }

    fn submit_refund(
        &self,
        submission: RefundSubmission,
    ) -> BoxFuture<'_, Result<(), ConnectorError>> {
        Box::pin(async move {
            let payment_id = submission.name.to_string();
            let body = to_json(&RefundBody {
                payment_id: payment_id.clone(),
                refund_id: &submission.refund_id,
                amount: submission.amount.into(),
                callback_url: &self.callback_url,
            });
            let key = format!("{payment_id}/refunds/{}", submission.refund_id);
            let span = bank_span(
                "bank.submit_refund",
                &self.name,
                &key,
                submission.trace.as_ref(),
            );
            let request = BankRequest::Post {
                url: self.refunds_url.clone(),
                body,
                trace: span.context().clone(),
            };
            let answer = self.call(&key, &request, |_| Ok(())).await;
            end_bank_span(span, &answer);
            answer
        })
    }

    fn payment_status(
        &self,
        name: PaymentName,
    ) -> BoxFuture<'_, Result<BankStatus, ConnectorError>> {
        Box::pin(async move {
            let payment_id = name.to_string();
            let request = BankRequest::Get {
                url: self.status_url(&name)?,
                bound: limits::BANK_RESPONSE_BYTES_MAX,
            };
            self.call(&payment_id, &request, |body| {
                parse_status(&payment_id, body)
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SeededRandom;

    #[test]
    fn payment_names_are_one_path_segment() {
        assert_eq!(
            encode_path_segment("accounts/acme-1/payments/pay_1.x~"),
            "accounts%2Facme-1%2Fpayments%2Fpay_1.x~"
        );
        assert_eq!(encode_path_segment("a b%é"), "a%20b%25%C3%A9");
    }

    #[test]
    fn jitter_stays_under_the_doubling_ceiling_and_the_cap() {
        let random = SeededRandom::new(7);
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for retry in 1..=40 {
            let ceiling = (base * 2u32.saturating_pow(retry - 1)).min(cap);
            for _ in 0..100 {
                assert!(full_jitter(base, cap, retry, &random) <= ceiling);
            }
        }
        assert_eq!(full_jitter(Duration::ZERO, cap, 3, &random), Duration::ZERO);
    }

    #[test]
    fn statuses_map_to_verdicts() {
        let verdict = |code: u16| match classify(StatusCode::from_u16(code).unwrap(), Bytes::new())
        {
            Attempt::Answered(_) => "ok",
            Attempt::Failed(Verdict::Rejected(_)) => "rejected",
            Attempt::Failed(Verdict::Retry(_)) => "retry",
            Attempt::Failed(Verdict::GiveUp(_)) => "give up",
        };
        for (code, expected) in [
            (200, "ok"),
            (202, "ok"),
            (409, "rejected"),
            (422, "rejected"),
            (408, "retry"),
            (429, "retry"),
            (500, "retry"),
            (503, "retry"),
            (400, "give up"),
            (404, "give up"),
            (301, "give up"),
        ] {
            assert_eq!(verdict(code), expected, "{code}");
        }
    }

    #[test]
    fn status_answers_are_checked() {
        let id = "accounts/a/payments/p";
        let parse = |body: &str| parse_status(id, body.as_bytes());
        assert_eq!(
            parse(r#"{"payment_id":"accounts/a/payments/p","status":"failed","reason":"no"}"#),
            Ok(BankStatus::Done(BankOutcome::Failed {
                reason: "no".into()
            }))
        );
        assert!(parse(r#"{"payment_id":"accounts/a/payments/q","status":"pending"}"#).is_err());
        assert!(parse(r#"{"payment_id":"accounts/a/payments/p","status":"lost"}"#).is_err());
        assert!(parse("not json").is_err());
    }
}
