//! Delivers recorded callback messages: POST the stored body to the
//! submission's `callback_url` with `Bank-Signature`, until a 2xx, with
//! doubling back-off, at most [`limits::CALLBACK_ATTEMPTS_MAX`]
//! attempts counted across restarts.
//!
//! One dispatcher reads undelivered messages from the record (oldest first)
//! and runs a task per message, at most
//! [`limits::CALLBACKS_IN_FLIGHT_MAX`] at once; the others wait in
//! the record. Each attempt's result is written before the next, so a
//! restart resumes with the right count; an acknowledged message killed
//! before its write is sent again (delivery is at least once, receivers
//! deduplicate on `message_id`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::outcome;
use super::record::Message;
use super::stats::Stats;
use super::Bank;
use crate::limits;
use payvisor::http_client::{parse_url, HttpPoster};

/// The request header with the signature.
pub const SIGNATURE_HEADER: &str = "bank-signature";

/// Runs until aborted (dropping it aborts the deliveries in flight).
pub async fn run(bank: Arc<Bank>) {
    let poster = match HttpPoster::new(true) {
        Ok(poster) => poster,
        Err(error) => {
            // Plain-HTTP receivers (every test) still work.
            tracing::warn!(%error, "bank-sim: no root certificates; https callbacks will fail");
            match HttpPoster::new(false) {
                Ok(poster) => poster,
                Err(error) => {
                    tracing::error!(%error, "bank-sim: no HTTP client; callbacks are not sent");
                    return;
                }
            }
        }
    };
    // Message id by delivery task.
    let mut in_flight: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut deliveries = JoinSet::new();
    loop {
        let room = limits::CALLBACKS_IN_FLIGHT_MAX - in_flight.len();
        if room > 0 {
            // Messages in flight are still undelivered: read past them.
            let limit = in_flight.len() + room;
            match bank
                .blocking(move |bank| bank.record.undelivered(limit))
                .await
            {
                Ok(messages) => {
                    for message in messages {
                        if in_flight.len() >= limits::CALLBACKS_IN_FLIGHT_MAX {
                            break;
                        }
                        if in_flight.values().any(|id| *id == message.message_id) {
                            continue;
                        }
                        let id = message.message_id.clone();
                        let task =
                            deliveries.spawn(deliver(Arc::clone(&bank), poster.clone(), message));
                        in_flight.insert(task.id(), id);
                    }
                }
                Err(error) => tracing::error!(%error, "bank-sim: reading callbacks failed"),
            }
        }
        tokio::select! {
            () = bank.deliver_wake.notified() => {}
            Some(done) = deliveries.join_next_with_id(), if !deliveries.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(error) => {
                        tracing::error!(%error, "bank-sim: a callback delivery panicked");
                        error.id()
                    }
                };
                in_flight.remove(&id);
            }
            () = tokio::time::sleep(limits::IDLE_POLL) => {}
        }
    }
}

/// Sends one message until acknowledged or given up.
async fn deliver(bank: Arc<Bank>, poster: HttpPoster, message: Message) {
    let faults = &bank.options.faults;
    let url = match parse_url(&message.callback_url) {
        Ok(url) => url,
        Err(why) => {
            // Checked at submission; a record edited by hand could still
            // hold one.
            give_up(
                &bank,
                &message,
                message.attempts,
                &format!("bad url: {why}"),
            )
            .await;
            return;
        }
    };
    if faults.reorder_callbacks {
        let delay = outcome::delay(
            (Duration::ZERO, limits::CALLBACK_REORDER_DELAY_MAX),
            &bank.random,
        );
        tokio::time::sleep(delay).await;
    }
    let mut attempts = message.attempts;
    while attempts < limits::CALLBACK_ATTEMPTS_MAX {
        attempts += 1;
        match send(&bank, &poster, &url, &message).await {
            Ok(()) => {
                Stats::bump(&bank.stats.callbacks_sent);
                let message_id = message.message_id.clone();
                let written = bank
                    .blocking(move |bank| bank.record.mark_delivered(&message_id, attempts))
                    .await;
                if let Err(error) = written {
                    // Sent again after a restart: at least once.
                    tracing::error!(message_id = %message.message_id, %error, "bank-sim: recording a delivery failed");
                }
                tracing::info!(message_id = %message.message_id, attempts, "bank-sim: callback delivered");
                if outcome::draw(faults.duplicate_callback, &bank.random) {
                    let again = send(&bank, &poster, &url, &message).await;
                    Stats::bump(&bank.stats.callbacks_duplicated);
                    if again.is_ok() {
                        Stats::bump(&bank.stats.callbacks_sent);
                    }
                    tracing::info!(message_id = %message.message_id, acknowledged = again.is_ok(), "bank-sim: callback sent twice");
                }
                return;
            }
            Err(error) => {
                Stats::bump(&bank.stats.callback_attempts_failed);
                let last = attempts >= limits::CALLBACK_ATTEMPTS_MAX;
                tracing::warn!(message_id = %message.message_id, attempts, %error, "bank-sim: callback not acknowledged");
                if last {
                    give_up(&bank, &message, attempts, &error).await;
                    return;
                }
                let (message_id, error) = (message.message_id.clone(), error.clone());
                let written = bank
                    .blocking(move |bank| {
                        bank.record
                            .mark_failed(&message_id, attempts, &error, false)
                    })
                    .await;
                if let Err(error) = written {
                    tracing::error!(message_id = %message.message_id, %error, "bank-sim: recording an attempt failed");
                }
                tokio::time::sleep(outcome::callback_backoff(attempts)).await;
            }
        }
    }
    // Only a message that arrived with its attempts spent gets here.
    give_up(&bank, &message, attempts, "attempts exhausted").await;
}

/// One POST; `Err` with a reason unless a 2xx came back.
async fn send(
    bank: &Bank,
    poster: &HttpPoster,
    url: &hyper::Uri,
    message: &Message,
) -> Result<(), String> {
    let unix_seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let signature = payvisor::signature::sign(bank.options.secret(), unix_seconds, &message.body);
    let answer = poster
        .post_json(
            url,
            &[(SIGNATURE_HEADER, signature)],
            message.body.clone(),
            limits::CALLBACK_TIMEOUT,
            limits::CALLBACK_RESPONSE_BYTES_MAX,
        )
        .await;
    match answer {
        Ok((status, _)) if status.is_success() => Ok(()),
        Ok((status, body)) => Err(format!(
            "answered {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        )),
        Err(error) => Err(error.to_string()),
    }
}

async fn give_up(bank: &Arc<Bank>, message: &Message, attempts: u32, error: &str) {
    tracing::error!(message_id = %message.message_id, attempts, error, "bank-sim: callback given up");
    let (message_id, error) = (message.message_id.clone(), error.to_owned());
    let written = bank
        .blocking(move |bank| bank.record.mark_failed(&message_id, attempts, &error, true))
        .await;
    if let Err(error) = written {
        tracing::error!(message_id = %message.message_id, %error, "bank-sim: recording a give-up failed");
    }
}
