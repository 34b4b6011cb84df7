//! The built-in bank simulator: a [`Connector`] that completes payments
//! asynchronously after a configurable latency, fails a configurable share of
//! them, and can be steered per payment through metadata, like test card
//! numbers:
//!
//! | `bank_sim`      | behaviour                                                  |
//! |-----------------|------------------------------------------------------------|
//! | `succeed`       | processed                                                  |
//! | `fail`          | failed (`insufficient funds at payer bank`)                |
//! | `hang`          | accepted, never answered                                   |
//! | `drop_callback` | processed, but the confirmation is lost (status query sees it) |
//! | anything else   | processed, or failed with probability `failure_per_mille`  |
//!
//! It lives inside the payvisor process: its memory is lost on a crash, and
//! payvisor's re-drive re-submits with the same key. Refunds always succeed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{BankStatus, Connector, ConnectorError, PaymentSubmission, RefundSubmission};
use crate::domain::payment::{BankEvent, BankOutcome, RefundOutcome};
use crate::domain::PaymentName;
use crate::limits;
use crate::random::Random;
use crate::store::BoxFuture;

/// The metadata key that steers the simulator.
pub const BEHAVIOUR_KEY: &str = "bank_sim";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuiltInBankConfig {
    /// Shortest time from submission to outcome.
    pub latency_min: Duration,
    /// Longest time from submission to outcome (uniform in between).
    pub latency_max: Duration,
    /// Payments without a `bank_sim` behaviour fail with this probability,
    /// in thousandths (an integer: no floating point near money).
    pub failure_per_mille: u32,
}

impl Default for BuiltInBankConfig {
    fn default() -> Self {
        BuiltInBankConfig {
            latency_min: Duration::from_millis(5),
            latency_max: Duration::from_millis(50),
            failure_per_mille: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Succeed,
    Fail,
    Hang,
    DropCallback,
}

/// The simulator's memory of one payment.
#[derive(Clone, Debug)]
struct Record {
    behaviour: Behaviour,
    /// Set once the (simulated) processing is complete.
    outcome: Option<BankOutcome>,
}

pub struct BuiltInBank {
    config: BuiltInBankConfig,
    random: Arc<dyn Random>,
    events: mpsc::Sender<BankEvent>,
    payments: Arc<Mutex<HashMap<String, Record>>>,
    /// Refunds seen, for idempotency (bounded like `payments`).
    refunds: Mutex<HashSet<String>>,
}

impl BuiltInBank {
    pub fn new(
        config: BuiltInBankConfig,
        random: Arc<dyn Random>,
        events: mpsc::Sender<BankEvent>,
    ) -> Self {
        BuiltInBank {
            config,
            random,
            events,
            payments: Arc::new(Mutex::new(HashMap::new())),
            refunds: Mutex::new(HashSet::new()),
        }
    }

    fn latency(&self) -> Duration {
        let min = self.config.latency_min.as_micros() as u64;
        let max = (self.config.latency_max.as_micros() as u64).max(min);
        Duration::from_micros(min + self.random.below(max - min + 1))
    }

    fn behaviour_for(&self, submission: &PaymentSubmission) -> Behaviour {
        match submission.metadata.get(BEHAVIOUR_KEY).map(String::as_str) {
            Some("succeed") => Behaviour::Succeed,
            Some("fail") => Behaviour::Fail,
            Some("hang") => Behaviour::Hang,
            Some("drop_callback") => Behaviour::DropCallback,
            _ if self.random.below(1000) < u64::from(self.config.failure_per_mille) => {
                Behaviour::Fail
            }
            _ => Behaviour::Succeed,
        }
    }

    /// Forgets completed payments when the memory bound is reached.
    fn make_room(payments: &mut HashMap<String, Record>) {
        if payments.len() >= limits::SIMULATOR_PAYMENTS_MAX {
            payments.retain(|_, record| record.outcome.is_none());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Connector for BuiltInBank {
    fn submit_payment(
        &self,
        submission: PaymentSubmission,
    ) -> BoxFuture<'_, Result<(), ConnectorError>> {
        Box::pin(async move {
            let key = submission.name.to_string();
            let (behaviour, known_outcome) = {
                let mut payments = lock(&self.payments);
                match payments.get(&key) {
                    Some(record) => (record.behaviour, Some(record.outcome.clone())),
                    None => {
                        BuiltInBank::make_room(&mut payments);
                        let behaviour = self.behaviour_for(&submission);
                        payments.insert(
                            key.clone(),
                            Record {
                                behaviour,
                                outcome: None,
                            },
                        );
                        (behaviour, None)
                    }
                }
            };
            if let Some(outcome) = known_outcome {
                // Same key again: never process twice. Re-send a known
                // outcome (the first callback may have been lost with a
                // crashed caller), except where losing it is the point.
                if let (Some(outcome), Behaviour::Succeed | Behaviour::Fail) = (outcome, behaviour)
                {
                    let _ = self
                        .events
                        .send(BankEvent::Payment {
                            name: submission.name,
                            outcome,
                        })
                        .await;
                }
                return Ok(());
            }
            if behaviour == Behaviour::Hang {
                return Ok(());
            }
            let latency = self.latency();
            let events = self.events.clone();
            let payments = Arc::clone(&self.payments);
            let name = submission.name;
            tokio::spawn(async move {
                tokio::time::sleep(latency).await;
                let outcome = match behaviour {
                    Behaviour::Fail => BankOutcome::Failed {
                        reason: "insufficient funds at payer bank".into(),
                    },
                    _ => BankOutcome::Processed,
                };
                if let Some(record) = lock(&payments).get_mut(&key) {
                    record.outcome = Some(outcome.clone());
                }
                if behaviour != Behaviour::DropCallback {
                    let _ = events.send(BankEvent::Payment { name, outcome }).await;
                }
            });
            Ok(())
        })
    }

    fn submit_refund(
        &self,
        submission: RefundSubmission,
    ) -> BoxFuture<'_, Result<(), ConnectorError>> {
        Box::pin(async move {
            let key = format!("{}/refunds/{}", submission.name, submission.refund_id);
            let first_time = {
                let mut refunds = lock(&self.refunds);
                if refunds.len() >= limits::SIMULATOR_PAYMENTS_MAX {
                    // Every remembered refund has been answered; forgetting
                    // them only forgets idempotency for very old keys.
                    refunds.clear();
                }
                refunds.insert(key)
            };
            if !first_time {
                // Known refund: re-send its (always successful) outcome.
                let event = BankEvent::Refund {
                    name: submission.name,
                    refund_id: submission.refund_id,
                    outcome: RefundOutcome::Succeeded,
                };
                let _ = self.events.send(event).await;
                return Ok(());
            }
            let latency = self.latency();
            let events = self.events.clone();
            tokio::spawn(async move {
                tokio::time::sleep(latency).await;
                let event = BankEvent::Refund {
                    name: submission.name,
                    refund_id: submission.refund_id,
                    outcome: RefundOutcome::Succeeded,
                };
                let _ = events.send(event).await;
            });
            Ok(())
        })
    }

    fn payment_status(
        &self,
        name: PaymentName,
    ) -> BoxFuture<'_, Result<BankStatus, ConnectorError>> {
        Box::pin(async move {
            Ok(match lock(&self.payments).get(&name.to_string()) {
                None => BankStatus::Unknown,
                Some(Record { outcome: None, .. }) => BankStatus::Pending,
                Some(Record {
                    outcome: Some(outcome),
                    ..
                }) => BankStatus::Done(outcome.clone()),
            })
        })
    }
}
