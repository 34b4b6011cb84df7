//! Decides outcomes when they fall due: reads the due payments and refunds
//! from the record, asks [`outcome`](super::outcome) what happens, and writes
//! each outcome with its callback message in one transaction.
//!
//! Due times are stored with the submission, so after a restart the
//! outcomes a crash interrupted are decided as soon as they are due (at
//! once, if the crash outlasted them).

use std::sync::Arc;
use std::time::Duration;

use super::outcome::{self, Behaviour};
use super::record::{self, RecordError};
use super::wire::Callback;
use super::{now_ms, Bank};
use crate::limits;

/// Runs until aborted.
pub async fn run(bank: Arc<Bank>) {
    loop {
        let wait = match bank.blocking(|bank| decide_due(bank, now_ms())).await {
            Ok(batch) => {
                if batch.decided > 0 {
                    bank.deliver_wake.notify_one();
                }
                if batch.more {
                    continue;
                }
                match bank.blocking(|bank| bank.record.next_due_ms()).await {
                    Ok(Some(due_ms)) => Duration::from_millis((due_ms - now_ms()).max(0) as u64),
                    Ok(None) => limits::IDLE_POLL,
                    Err(error) => {
                        tracing::error!(%error, "bank-sim: reading due outcomes failed");
                        limits::IDLE_POLL
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, "bank-sim: deciding outcomes failed; retrying");
                limits::IDLE_POLL
            }
        };
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            () = bank.decide_wake.notified() => {}
            () = tokio::time::sleep(wait.min(limits::IDLE_POLL)) => {}
        }
    }
}

struct Batch {
    decided: usize,
    /// A batch bound was reached: more may be due now.
    more: bool,
}

/// One decision, logged once its transaction committed.
struct Decided {
    payment_id: String,
    refund_id: Option<String>,
    status: &'static str,
    message_id: String,
    sent: bool,
}

/// Decides what is due by `now_ms`, at most a batch of payments and one of
/// refunds, in one transaction.
fn decide_due(bank: &Bank, now_ms: i64) -> Result<Batch, RecordError> {
    let options = &bank.options;
    let batch_max = limits::DECISIONS_PER_BATCH;
    let (decided, more) = bank.record.write(|tx| {
        let mut decided = Vec::new();
        let payments = record::due_payments(tx, now_ms, batch_max)?;
        for due in &payments {
            let metadata = serde_json::from_str(&due.metadata).unwrap_or_else(|error| {
                tracing::warn!(payment_id = %due.payment_id, %error, "bank-sim: stored metadata unreadable");
                Default::default()
            });
            let verdict = outcome::decide_payment(
                Behaviour::from_metadata(&metadata),
                options.decline,
                options.faults.drop_callback,
                &bank.random,
            );
            record::settle_payment(tx, &due.payment_id, verdict.status, verdict.reason, now_ms)?;
            let message_id = record::insert_message(
                tx,
                &options.name,
                &due.callback_url,
                verdict.send_callback,
                |message_id| {
                    body(&Callback {
                        message_id,
                        bank: &options.name,
                        kind: verdict.status.callback_type(),
                        payment_id: &due.payment_id,
                        refund_id: None,
                        reason: verdict.reason,
                        sent_at_ms: now_ms,
                    })
                },
            )?;
            decided.push(Decided {
                payment_id: due.payment_id.clone(),
                refund_id: None,
                status: verdict.status.as_str(),
                message_id,
                sent: verdict.send_callback,
            });
        }
        let refunds = record::due_refunds(tx, now_ms, batch_max)?;
        for due in &refunds {
            let verdict = outcome::decide_refund(options.faults.drop_callback, &bank.random);
            record::settle_refund(
                tx,
                &due.payment_id,
                &due.refund_id,
                verdict.status,
                verdict.reason,
                now_ms,
            )?;
            let message_id = record::insert_message(
                tx,
                &options.name,
                &due.callback_url,
                verdict.send_callback,
                |message_id| {
                    body(&Callback {
                        message_id,
                        bank: &options.name,
                        kind: verdict.status.callback_type(),
                        payment_id: &due.payment_id,
                        refund_id: Some(&due.refund_id),
                        reason: verdict.reason,
                        sent_at_ms: now_ms,
                    })
                },
            )?;
            decided.push(Decided {
                payment_id: due.payment_id.clone(),
                refund_id: Some(due.refund_id.clone()),
                status: verdict.status.as_str(),
                message_id,
                sent: verdict.send_callback,
            });
        }
        let more = payments.len() == batch_max || refunds.len() == batch_max;
        Ok((decided, more))
    })?;
    for decision in &decided {
        tracing::info!(
            payment_id = %decision.payment_id,
            refund_id = decision.refund_id.as_deref(),
            status = decision.status,
            message_id = %decision.message_id,
            callback = if decision.sent { "queued" } else { "dropped" },
            "bank-sim: outcome decided"
        );
    }
    Ok(Batch {
        decided: decided.len(),
        more,
    })
}

fn body(callback: &Callback<'_>) -> Vec<u8> {
    serde_json::to_vec(callback).expect("a callback of strings and integers serialises")
}

/// A submission repeated after its outcome was decided: the outcome is sent
/// again as a new message (a re-notification), so a client whose callback was
/// lost learns it from its own retry. The client deduplicates on meaning
/// (a settled payment ignores a second outcome), not only on message id.
pub(super) fn renotify(
    bank: &Bank,
    payment_id: &str,
    refund_id: Option<&str>,
    kind: &'static str,
    reason: Option<&str>,
    callback_url: &str,
) -> Result<(), RecordError> {
    let now_ms = super::now_ms();
    bank.record.write(|tx| {
        record::insert_message(tx, &bank.options.name, callback_url, true, |message_id| {
            body(&Callback {
                message_id,
                bank: &bank.options.name,
                kind,
                payment_id,
                refund_id,
                reason,
                sent_at_ms: now_ms,
            })
        })
        .map(|_| ())
    })?;
    bank.deliver_wake.notify_one();
    Ok(())
}
