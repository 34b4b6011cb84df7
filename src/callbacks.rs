//! The bank callback endpoint (`docs/bank-protocol.md`): `POST
//! /v1/callbacks/{bank}`. A callback is authenticated (HMAC-SHA256 with the
//! bank's own secret, timestamp within the replay window), checked, and
//! handed to the payment's account actor, which records it in the inbox
//! (keyed by the bank's message id) in the same atomic write as the change
//! it causes. The bank gets `200` only once that write is durable; a
//! duplicate gets `200` and changes nothing; an unsigned, wrongly signed or
//! stale callback gets `401` and is logged.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{header, Method, Request, Response, StatusCode};
use serde::Deserialize;

use crate::actors::{BankCallback, CallbackAck, CommandError, Orchestrator};
use crate::clock::Clock;
use crate::cluster::{Cluster, Route};
use crate::domain::parse_payment_name;
use crate::domain::payment::BankEvent;
use crate::domain::payment::{BankOutcome, RefundOutcome};
use crate::limits;

/// The header with the bank's signature.
pub const BANK_SIGNATURE_HEADER: &str = "bank-signature";

/// Who may call back, with what secret.
pub struct CallbackEndpoint {
    /// Bank name → its signing secret.
    secrets: HashMap<String, Vec<u8>>,
    orchestrator: Orchestrator,
    clock: Arc<dyn Clock>,
    /// Set on a cluster member: a callback for an account another node
    /// owns is handed to it, with `HandOff` (the gRPC layer's).
    cluster: Option<(Arc<Cluster>, HandOff)>,
}

/// Hands a callback, as received (bank, signature, body), to the node at
/// the end of the channel; returns the HTTP status and body the bank is to
/// be answered.
pub type HandOff = fn(
    Arc<Cluster>,
    tonic::transport::Channel,
    String,
    Option<String>,
    Vec<u8>,
) -> crate::store::BoxFuture<'static, Result<(u16, String), CommandError>>;

/// One callback as a bank sends it.
#[derive(Deserialize)]
struct Message {
    message_id: String,
    bank: String,
    #[serde(rename = "type")]
    kind: String,
    payment_id: String,
    #[serde(default)]
    refund_id: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

impl CallbackEndpoint {
    pub fn new(
        secrets: HashMap<String, Vec<u8>>,
        orchestrator: Orchestrator,
        clock: Arc<dyn Clock>,
        cluster: Option<(Arc<Cluster>, HandOff)>,
    ) -> CallbackEndpoint {
        CallbackEndpoint {
            secrets,
            orchestrator,
            clock,
            cluster,
        }
    }

    /// The handler to serve with [`crate::http_server::serve`].
    pub fn handler(self: Arc<Self>) -> crate::http_server::Handler {
        Arc::new(move |request| {
            let endpoint = Arc::clone(&self);
            Box::pin(async move { endpoint.handle(request).await })
        })
    }

    async fn handle(&self, request: Request<Full<Bytes>>) -> Response<Full<Bytes>> {
        let bank = match (
            request.method(),
            request.uri().path().strip_prefix("/v1/callbacks/"),
        ) {
            (&Method::POST, Some(bank)) if !bank.is_empty() && !bank.contains('/') => {
                bank.to_owned()
            }
            _ => {
                return answer(
                    StatusCode::NOT_FOUND,
                    "not found; POST /v1/callbacks/{bank}",
                )
            }
        };
        if !self.secrets.contains_key(&bank) {
            return answer(StatusCode::NOT_FOUND, "unknown bank");
        }
        let signature = request
            .headers()
            .get(BANK_SIGNATURE_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let request_trace = (request.headers().get(crate::trace::TRACEPARENT))
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = match Limited::new(request.into_body(), limits::BANK_CALLBACK_BYTES_MAX)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(_) => return answer(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
        };
        // A span of the bank's trace, if it sent one; the decision the
        // callback causes is under it.
        let caller = (request_trace).and_then(|value| crate::trace::TraceParent::parse(&value));
        let mut span = crate::trace::Span::start(
            "bank.callback",
            crate::trace::SpanKind::Server,
            caller.as_ref(),
        );
        let (status, text) = self
            .accept(
                &bank,
                signature.as_deref(),
                &body,
                false,
                Some(span.context()),
            )
            .await;
        if span.is_recording() {
            span.set("payvisor.bank", bank.as_str());
            span.set("http.response.status_code", i64::from(status.as_u16()));
            if !status.is_success() {
                span.fail(status.as_str());
            }
        }
        answer(status, &text)
    }

    /// Verifies, checks and records one callback; returns what the bank is
    /// answered. `handed`: another node received it and handed it over
    /// (it is recorded here or refused, never handed on again).
    pub async fn accept(
        &self,
        bank: &str,
        signature: Option<&str>,
        body: &[u8],
        handed: bool,
        trace: Option<&crate::trace::TraceParent>,
    ) -> (StatusCode, String) {
        let Some(secret) = self.secrets.get(bank) else {
            return (StatusCode::NOT_FOUND, "unknown bank".into());
        };
        let now_unix = self.clock.now().unix_millis().div_euclid(1000);
        if let Err(error) = crate::signature::verify(
            secret,
            signature,
            body,
            now_unix,
            limits::BANK_CALLBACK_REPLAY_WINDOW.as_secs() as i64,
        ) {
            tracing::warn!(%bank, %error, "bank callback refused");
            return (StatusCode::UNAUTHORIZED, error.to_string());
        }
        let callback = match parse(bank, body) {
            Ok(mut callback) => {
                callback.trace = trace.cloned();
                callback
            }
            Err(why) => {
                tracing::warn!(%bank, %why, "malformed bank callback");
                return (StatusCode::BAD_REQUEST, why);
            }
        };
        let recorded = match self.owner(&callback, handed).await {
            Ok(Route::Local) => self.orchestrator.bank_callback(callback).await,
            Ok(Route::Forward { node, channel }) => {
                tracing::debug!(%bank, owner = %node, "bank callback handed to the account's owner");
                let handed = match &self.cluster {
                    Some((cluster, hand_off)) => {
                        hand_off(
                            Arc::clone(cluster),
                            channel,
                            bank.to_owned(),
                            signature.map(str::to_owned),
                            body.to_vec(),
                        )
                        .await
                    }
                    None => Err(CommandError::Internal(
                        "no hand-off outside a cluster".into(),
                    )),
                };
                match handed {
                    Ok((status, text)) => {
                        let status =
                            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                        return (status, text);
                    }
                    Err(error) => Err(error),
                }
            }
            Err(error) => Err(error),
        };
        match recorded {
            Ok(ack) => {
                let result = match ack {
                    CallbackAck::Applied => "applied",
                    CallbackAck::Ignored => "ignored",
                    CallbackAck::Duplicate => "duplicate",
                };
                (StatusCode::OK, format!("{{\"result\":\"{result}\"}}"))
            }
            Err(CommandError::NotFound(what)) => (StatusCode::NOT_FOUND, what),
            Err(CommandError::InvalidArgument { .. }) => {
                (StatusCode::BAD_REQUEST, "invalid callback".into())
            }
            Err(error) => {
                tracing::warn!(%bank, %error, "bank callback not recorded; the bank will retry");
                (StatusCode::SERVICE_UNAVAILABLE, error.public_message())
            }
        }
    }

    /// Where the callback is recorded: here, alone on the store or as the
    /// account's owner; else at its owner (one hand-off at most).
    async fn owner(&self, callback: &BankCallback, handed: bool) -> Result<Route, CommandError> {
        match &self.cluster {
            None => Ok(Route::Local),
            Some((cluster, _)) => {
                let account = &callback.event.payment_name().account;
                let deadline = tokio::time::Instant::now() + limits::CLUSTER_MOVE_WAIT;
                Ok(cluster.route(account, handed, deadline).await?)
            }
        }
    }
}

/// A message id or refund id: short and safe inside a store key.
fn valid_token(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= limits::BANK_MESSAGE_ID_CHARS_MAX
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

fn parse(bank: &str, body: &[u8]) -> Result<BankCallback, String> {
    let message: Message =
        serde_json::from_slice(body).map_err(|error| format!("not a callback: {error}"))?;
    if message.bank != bank {
        return Err(format!("bank {:?} differs from the path", message.bank));
    }
    if !valid_token(&message.message_id) {
        return Err("message_id: 1..=128 characters of [A-Za-z0-9._:-]".into());
    }
    let name =
        parse_payment_name(&message.payment_id).map_err(|error| format!("payment_id: {error}"))?;
    let reason = || {
        message
            .reason
            .clone()
            .unwrap_or_else(|| "no reason given".into())
    };
    let refund_id = || {
        message
            .refund_id
            .clone()
            .filter(|id| valid_token(id))
            .ok_or_else(|| "refund_id: required for refund callbacks".to_owned())
    };
    let event = match message.kind.as_str() {
        "payment.processed" => BankEvent::Payment {
            name,
            outcome: BankOutcome::Processed,
        },
        "payment.failed" => BankEvent::Payment {
            name,
            outcome: BankOutcome::Failed { reason: reason() },
        },
        "refund.succeeded" => BankEvent::Refund {
            name,
            refund_id: refund_id()?,
            outcome: RefundOutcome::Succeeded,
        },
        "refund.failed" => BankEvent::Refund {
            name,
            refund_id: refund_id()?,
            outcome: RefundOutcome::Failed { reason: reason() },
        },
        other => return Err(format!("unknown type {other:?}")),
    };
    Ok(BankCallback {
        bank: bank.to_owned(),
        message_id: message.message_id,
        kind: message.kind,
        event,
        trace: None,
    })
}

fn answer(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(text.to_owned())))
        .expect("static headers are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 256, ..Default::default() })]

        /// Any body a bank (or anyone) posts: parsed or refused with a
        /// reason, never a panic.
        #[test]
        fn any_callback_body_is_parsed_or_refused(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            kind in "payment\\.(processed|failed)|refund\\.(succeeded|failed)|\\PC{0,12}",
            id in "\\PC{0,140}",
            payment in "accounts/[a-z]{1,5}/payments/[a-z0-9_]{1,8}|\\PC{0,30}",
            sent_at in proptest::prelude::any::<i64>(),
        ) {
            let _ = parse("bank-a", &bytes);
            let body = serde_json::json!({
                "message_id": id, "bank": "bank-a", "type": kind,
                "payment_id": payment, "sent_at_ms": sent_at, "reason": "x"
            });
            let _ = parse("bank-a", body.to_string().as_bytes());
        }
    }
}
