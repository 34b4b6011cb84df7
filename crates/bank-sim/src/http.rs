//! The bank's HTTP/1.1 server: the protocol's four routes, the admin
//! controls, and the request-side faults (outage, latency, injected 503s,
//! held answers).
//!
//! **Boundary:** shapes are checked here (a body that is not the protocol's
//! JSON is `400`; a value the bank will never accept is `422`); what the
//! bank knows is decided by the [`record`](super::record).

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{header, Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpListener;

use super::decider;
use super::outcome::{self, Behaviour, PaymentStatus, RefundStatus};
use super::record::{self, Admission, NewPayment, NewRefund, RecordError};
use super::stats::Stats;
use super::wire::{
    ErrorAnswer, OutageSwitch, PaymentRequest, RefundRequest, SettlementReport, StatusAnswer,
};
use super::{now_ms, Bank};
use crate::limits;
use payvisor::http_client::parse_url;
use payvisor::shutdown::Shutdown;

type Answer = Response<Full<Bytes>>;

/// Serves on `listener` until `shutdown` fires; then open connections
/// (held answers included) are dropped: what they answered is committed.
pub async fn serve(listener: TcpListener, bank: Arc<Bank>, shutdown: Shutdown) {
    let handler: payvisor::http_server::Handler = Arc::new(move |request| {
        let bank = Arc::clone(&bank);
        Box::pin(async move {
            match respond(bank, request).await {
                Ok(answer) => answer,
                Err(never) => match never {},
            }
        })
    });
    let bounds = payvisor::http_server::ServerLimits {
        connections_max: limits::CONNECTIONS_MAX,
        header_read_timeout: limits::HEADER_READ_TIMEOUT,
        body_read_timeout: limits::HEADER_READ_TIMEOUT,
        body_bytes_max: limits::REQUEST_BYTES_MAX,
        drain_max: limits::DRAIN_MAX,
    };
    payvisor::http_server::serve("bank-sim", listener, bounds, handler, shutdown).await;
}

async fn respond(bank: Arc<Bank>, request: Request<Full<Bytes>>) -> Result<Answer, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if let Some(control) = path.strip_prefix("/admin/") {
        return Ok(admin(&bank, &method, control, request).await);
    }
    if bank.is_down() {
        Stats::bump(&bank.stats.requests_refused_by_outage);
        return Ok(
            refusal(StatusCode::SERVICE_UNAVAILABLE, "bank unavailable (outage)").into_answer(),
        );
    }
    let faults = &bank.options.faults;
    let latency = outcome::delay(faults.latency, &bank.random);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if outcome::draw(faults.error, &bank.random) {
        Stats::bump(&bank.stats.requests_refused_by_error);
        return Ok(refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "bank unavailable (injected error; nothing recorded)",
        )
        .into_answer());
    }
    let answer = match (&method, path.as_str()) {
        (&Method::POST, "/v1/payments") => submit_payment(&bank, request).await,
        (&Method::POST, "/v1/refunds") => submit_refund(&bank, request).await,
        (&Method::GET, "/v1/settlements") => settlements(&bank, request.uri().query()).await,
        (&Method::GET, _) if path.starts_with("/v1/payments/") => {
            payment_status(&bank, &path["/v1/payments/".len()..]).await
        }
        (_, "/v1/payments" | "/v1/refunds" | "/v1/settlements") => Err(refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
        )),
        _ => Err(refusal(StatusCode::NOT_FOUND, "no such route")),
    };
    Ok(answer.unwrap_or_else(Refusal::into_answer))
}

/// `POST /v1/payments`.
async fn submit_payment(
    bank: &Arc<Bank>,
    request: Request<Full<Bytes>>,
) -> Result<Answer, Refusal> {
    let submission: PaymentRequest = read_json(request).await?;
    check_id("payment_id", &submission.payment_id)?;
    check_amount(submission.amount.minor_units)?;
    check_callback_url(&submission.callback_url)?;
    Stats::bump(&bank.stats.payments_received);
    let received_at_ms = now_ms();
    let behaviour = Behaviour::from_metadata(&submission.metadata);
    let decide_at_ms = outcome::payment_due_in(behaviour, bank.options.outcome_delay, &bank.random)
        .map(|delay| received_at_ms + delay.as_millis() as i64);
    let currency = submission.amount.currency_code.clone();
    // Refused only if new: a payment recorded before keeps its answer even
    // if a restart changed `--currencies`.
    let refusal_if_new = (!bank.options.accepts(&currency))
        .then(|| format!("currency {currency:?} is not supported by this bank"));
    let metadata = serde_json::Value::Object(submission.metadata).to_string();
    let (payment_id, callback_url) = (submission.payment_id, submission.callback_url);
    let minor_units = submission.amount.minor_units;
    let admission = {
        let payment_id = payment_id.clone();
        let callback_url = callback_url.clone();
        bank.blocking(move |bank| {
            bank.record.submit_payment(&NewPayment {
                payment_id: &payment_id,
                currency: &currency,
                minor_units,
                metadata: &metadata,
                callback_url: &callback_url,
                received_at_ms,
                decide_at_ms,
                refusal_if_new,
            })
        })
        .await
        .map_err(unavailable)?
    };
    let row = match admission {
        Admission::Recorded(row) => {
            tracing::info!(%payment_id, currency = %row.currency, minor_units, ?behaviour, "bank-sim: payment received");
            bank.decide_wake.notify_one();
            row
        }
        Admission::Known(row) => {
            Stats::bump(&bank.stats.duplicate_submissions);
            tracing::info!(%payment_id, status = row.status.as_str(), "bank-sim: payment submitted again");
            if row.status != PaymentStatus::Pending {
                let (id, reason) = (row.payment_id.clone(), row.reason.clone());
                let kind = row.status.callback_type();
                let url = callback_url.clone();
                bank.blocking(move |bank| {
                    decider::renotify(bank, &id, None, kind, reason.as_deref(), &url)
                })
                .await
                .map_err(unavailable)?;
            }
            row
        }
        Admission::Conflict => {
            Stats::bump(&bank.stats.conflicting_submissions);
            tracing::warn!(%payment_id, "bank-sim: payment submitted again with another amount or currency");
            return Err(refusal(
                StatusCode::CONFLICT,
                "payment_id was submitted before with another amount or currency",
            ));
        }
        Admission::Rejected(why) => {
            tracing::info!(%payment_id, %why, "bank-sim: payment rejected");
            return Err(refusal(StatusCode::UNPROCESSABLE_ENTITY, &why));
        }
    };
    hold(bank, &payment_id).await;
    Ok(json(
        StatusCode::ACCEPTED,
        &StatusAnswer {
            payment_id: &row.payment_id,
            refund_id: None,
            status: row.status.as_str(),
            reason: row.reason.as_deref(),
        },
    ))
}

/// `POST /v1/refunds`.
async fn submit_refund(bank: &Arc<Bank>, request: Request<Full<Bytes>>) -> Result<Answer, Refusal> {
    let submission: RefundRequest = read_json(request).await?;
    check_id("payment_id", &submission.payment_id)?;
    check_id("refund_id", &submission.refund_id)?;
    check_amount(submission.amount.minor_units)?;
    check_callback_url(&submission.callback_url)?;
    Stats::bump(&bank.stats.refunds_received);
    let received_at_ms = now_ms();
    let decide_at_ms = received_at_ms
        + outcome::delay(bank.options.outcome_delay, &bank.random).as_millis() as i64;
    let (payment_id, refund_id) = (submission.payment_id, submission.refund_id);
    let callback_url = submission.callback_url;
    let admission = {
        let (payment_id, refund_id) = (payment_id.clone(), refund_id.clone());
        let currency = submission.amount.currency_code;
        let minor_units = submission.amount.minor_units;
        let callback_url = callback_url.clone();
        bank.blocking(move |bank| {
            bank.record.submit_refund(&NewRefund {
                payment_id: &payment_id,
                refund_id: &refund_id,
                currency: &currency,
                minor_units,
                callback_url: &callback_url,
                received_at_ms,
                decide_at_ms: Some(decide_at_ms),
            })
        })
        .await
        .map_err(unavailable)?
    };
    let row = match admission {
        Admission::Recorded(row) => {
            tracing::info!(%payment_id, %refund_id, minor_units = row.minor_units, "bank-sim: refund received");
            bank.decide_wake.notify_one();
            row
        }
        Admission::Known(row) => {
            tracing::info!(%payment_id, %refund_id, status = row.status.as_str(), "bank-sim: refund submitted again");
            if row.status != RefundStatus::Pending {
                let (id, refund, reason) = (
                    row.payment_id.clone(),
                    row.refund_id.clone(),
                    row.reason.clone(),
                );
                let kind = row.status.callback_type();
                let url = callback_url.clone();
                bank.blocking(move |bank| {
                    decider::renotify(bank, &id, Some(&refund), kind, reason.as_deref(), &url)
                })
                .await
                .map_err(unavailable)?;
            }
            row
        }
        Admission::Conflict => {
            tracing::warn!(%payment_id, %refund_id, "bank-sim: refund submitted again with another amount or currency");
            return Err(refusal(
                StatusCode::CONFLICT,
                "refund_id was submitted before with another amount or currency",
            ));
        }
        Admission::Rejected(why) => {
            tracing::info!(%payment_id, %refund_id, %why, "bank-sim: refund rejected");
            return Err(refusal(StatusCode::UNPROCESSABLE_ENTITY, &why));
        }
    };
    hold(bank, &payment_id).await;
    Ok(json(
        StatusCode::ACCEPTED,
        &StatusAnswer {
            payment_id: &row.payment_id,
            refund_id: Some(&row.refund_id),
            status: row.status.as_str(),
            reason: row.reason.as_deref(),
        },
    ))
}

/// `GET /v1/payments/{payment_id}`: `unknown` when never received.
async fn payment_status(bank: &Arc<Bank>, encoded: &str) -> Result<Answer, Refusal> {
    let payment_id = percent_decode(encoded)
        .ok_or_else(|| refusal(StatusCode::BAD_REQUEST, "payment_id: bad URL encoding"))?;
    check_id("payment_id", &payment_id)?;
    let row = {
        let payment_id = payment_id.clone();
        bank.blocking(move |bank| bank.record.payment(&payment_id))
            .await
            .map_err(unavailable)?
    };
    Ok(json(
        StatusCode::OK,
        &StatusAnswer {
            payment_id: &payment_id,
            refund_id: None,
            status: row.as_ref().map_or("unknown", |row| row.status.as_str()),
            reason: row.as_ref().and_then(|row| row.reason.as_deref()),
        },
    ))
}

/// `GET /v1/settlements?from_ms=A&to_ms=B`: settled with outcome time in
/// `[A, B)`.
async fn settlements(bank: &Arc<Bank>, query: Option<&str>) -> Result<Answer, Refusal> {
    let from_ms = query_i64(query, "from_ms")?;
    let to_ms = query_i64(query, "to_ms")?;
    if from_ms > to_ms {
        return Err(refusal(StatusCode::BAD_REQUEST, "from_ms is after to_ms"));
    }
    let limit = limits::SETTLEMENT_ENTRIES_MAX;
    let mut entries = bank
        .blocking(move |bank| bank.record.settled(from_ms, to_ms, limit))
        .await
        .map_err(unavailable)?
        .ok_or_else(|| {
            refusal(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("more than {limit} entries; ask for a shorter window"),
            )
        })?;
    let mut totals = record::totals(&entries).ok_or_else(|| {
        refusal(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a total overflows; ask for a shorter window",
        )
    })?;
    if bank.options.faults.corrupt_settlement {
        // One minor unit too many on the first entry and on its total, so
        // the report is self-consistent and wrong: only a reconciliation
        // against payvisor's own books finds it.
        if let Some(entry) = entries
            .first_mut()
            .filter(|entry| entry.minor_units < i64::MAX)
        {
            let total = totals
                .iter_mut()
                .find(|total| total.currency_code == entry.currency_code)
                .expect("every entry's currency has a total");
            let sum = if entry.kind == "refund" {
                &mut total.refunds_minor_units
            } else {
                &mut total.payments_minor_units
            };
            if let Some(corrupted) = sum.checked_add(1) {
                *sum = corrupted;
                entry.minor_units += 1;
                tracing::warn!(payment_id = %entry.payment_id, "bank-sim: settlement report corrupted on purpose");
            }
        }
    }
    Ok(json(
        StatusCode::OK,
        &SettlementReport {
            bank: &bank.options.name,
            from_ms,
            to_ms,
            entries,
            totals,
        },
    ))
}

/// `/admin/…`: test controls, not part of the protocol; no fault applies.
async fn admin(
    bank: &Arc<Bank>,
    method: &Method,
    control: &str,
    request: Request<Full<Bytes>>,
) -> Answer {
    match (method, control) {
        (&Method::POST, "outage") => {
            let switch: OutageSwitch = match read_json(request).await {
                Ok(switch) => switch,
                Err(refused) => return refused.into_answer(),
            };
            bank.forced_down.store(switch.down, Ordering::SeqCst);
            tracing::warn!(down = switch.down, "bank-sim: outage switched");
            json(StatusCode::OK, &switch)
        }
        (&Method::GET, "stats") => match bank.blocking(|bank| bank.record.payment_count()).await {
            Ok(distinct) => json(StatusCode::OK, &bank.stats.answer(distinct, bank.is_down())),
            Err(error) => unavailable(error).into_answer(),
        },
        _ => refusal(StatusCode::NOT_FOUND, "no such admin route").into_answer(),
    }
}

/// `--timeout-per-mille`: after recording, keep the answer back long enough
/// that the client gives up (at most [`limits::HOLDS_MAX`] at once).
async fn hold(bank: &Bank, payment_id: &str) {
    let faults = &bank.options.faults;
    if !outcome::draw(faults.timeout, &bank.random) {
        return;
    }
    match bank.holds.try_acquire() {
        Ok(_permit) => {
            Stats::bump(&bank.stats.answers_held);
            tracing::info!(%payment_id, hold_ms = faults.hold.as_millis() as u64, "bank-sim: holding the answer");
            tokio::time::sleep(faults.hold).await;
        }
        Err(_) => {
            tracing::warn!(%payment_id, "bank-sim: too many answers held; answering at once");
        }
    }
}

async fn read_json<T: DeserializeOwned>(request: Request<Full<Bytes>>) -> Result<T, Refusal> {
    let body = Limited::new(request.into_body(), limits::REQUEST_BYTES_MAX)
        .collect()
        .await
        .map_err(|error| {
            if error.downcast_ref::<LengthLimitError>().is_some() {
                refusal(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("body over {} bytes", limits::REQUEST_BYTES_MAX),
                )
            } else {
                refusal(
                    StatusCode::BAD_REQUEST,
                    &format!("reading the body: {error}"),
                )
            }
        })?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|error| refusal(StatusCode::BAD_REQUEST, &format!("body: {error}")))
}

fn check_id(field: &str, id: &str) -> Result<(), Refusal> {
    if id.is_empty() || id.chars().count() > limits::ID_CHARS_MAX {
        return Err(refusal(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("{field}: 1..={} characters", limits::ID_CHARS_MAX),
        ));
    }
    Ok(())
}

fn check_amount(minor_units: i64) -> Result<(), Refusal> {
    if minor_units <= 0 || minor_units > limits::AMOUNT_MINOR_MAX {
        return Err(refusal(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("amount.minor_units: 1..={}", limits::AMOUNT_MINOR_MAX),
        ));
    }
    Ok(())
}

fn check_callback_url(url: &str) -> Result<(), Refusal> {
    if url.len() > limits::CALLBACK_URL_BYTES_MAX {
        return Err(refusal(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!(
                "callback_url: at most {} bytes",
                limits::CALLBACK_URL_BYTES_MAX
            ),
        ));
    }
    parse_url(url).map(drop).map_err(|why| {
        refusal(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("callback_url: {why}"),
        )
    })
}

/// A whole-number query parameter.
fn query_i64(query: Option<&str>, name: &str) -> Result<i64, Refusal> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| percent_decode(value)?.parse().ok())
        .ok_or_else(|| {
            refusal(
                StatusCode::BAD_REQUEST,
                &format!("query parameter {name}: a whole number of Unix ms is required"),
            )
        })
}

/// `%XX` escapes to bytes, then UTF-8; `None` for a broken escape or
/// invalid UTF-8. (`+` stays `+`: this is a path, not a form.)
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = bytes.get(at + 1..at + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            decoded.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Answer {
    let body = serde_json::to_vec(value).expect("answers serialise");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static headers are valid")
}

/// A request refused: a status and `{"error": why}`.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    why: String,
}

impl Refusal {
    fn into_answer(self) -> Answer {
        json(self.status, &ErrorAnswer { error: &self.why })
    }
}

fn refusal(status: StatusCode, why: &str) -> Refusal {
    Refusal {
        status,
        why: why.to_owned(),
    }
}

/// The record failed: `500`, outcome unknown to the client.
fn unavailable(error: RecordError) -> Refusal {
    tracing::error!(%error, "bank-sim: record unavailable");
    refusal(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_handles_names_and_refuses_broken_escapes() {
        assert_eq!(
            percent_decode("accounts%2Facme%2Fpayments%2Fpay_1").as_deref(),
            Some("accounts/acme/payments/pay_1")
        );
        assert_eq!(
            percent_decode("accounts/acme/payments/p+1%20x").as_deref(),
            Some("accounts/acme/payments/p+1 x")
        );
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        for broken in ["%2", "%zz", "%+1", "%FF"] {
            assert_eq!(percent_decode(broken), None, "{broken}");
        }
    }

    #[test]
    fn query_parameters_are_whole_numbers() {
        assert_eq!(query_i64(Some("from_ms=5&to_ms=9"), "to_ms").ok(), Some(9));
        assert_eq!(query_i64(Some("from_ms=-5"), "from_ms").ok(), Some(-5));
        assert!(query_i64(Some("from_ms=5"), "to_ms").is_err());
        assert!(query_i64(Some("to_ms=1.5"), "to_ms").is_err());
        assert!(query_i64(None, "to_ms").is_err());
    }
}
