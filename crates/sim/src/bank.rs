//! The simulated banks: one state per bank, shared by every node (a bank is
//! outside the cluster), reached through a [`BankLink`] per node
//! incarnation, which stops when its node is paused or crashed. A bank
//! answers late, fails, times out after it recorded a submission, refuses
//! payments for good, goes down for a while, and delivers its outcomes as
//! callbacks that may be lost, duplicated or overtake each other. What
//! each bank accepted and paid out is kept for the checker.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use payvisor::actors::{BankCallback, CallbackAck, CommandError};
use payvisor::connectors::{
    BankStatus, Connector, ConnectorError, PaymentSubmission, RefundSubmission,
};
use payvisor::domain::payment::{BankEvent, BankOutcome, RefundOutcome};
use payvisor::domain::{Money, PaymentName};
use payvisor::store::BoxFuture;

use crate::node::Gate;
use crate::world::World;

/// How the banks misbehave, in thousandths per call or per callback.
#[derive(Clone, Copy, Debug)]
pub struct BankFaults {
    pub latency_max_ms: u64,
    /// The call fails before the bank records anything.
    pub error_per_mille: u64,
    /// The bank records the submission, then the call times out.
    pub timeout_after_recording_per_mille: u64,
    /// The bank refuses a payment for good (routing moves it on).
    pub refuse_per_mille: u64,
    /// A processed payment fails instead.
    pub decline_per_mille: u64,
    pub callback_lost_per_mille: u64,
    pub callback_duplicated_per_mille: u64,
    /// Callbacks are delivered up to this long after the outcome (so they
    /// overtake each other).
    pub callback_delay_max_ms: u64,
    /// A submission starts an outage of this bank.
    pub outage_per_mille: u64,
    pub outage_max_ms: u64,
    /// The bank takes a payment and never answers for it (its status
    /// stays pending): the watchdog re-drives it, then pages on-call.
    pub hang_per_mille: u64,
    /// A submission is held up on its way: the call times out, and the
    /// bank receives it up to `late_submission_max_ms` later (after a
    /// re-drive sent it again, perhaps).
    pub late_submission_per_mille: u64,
    pub late_submission_max_ms: u64,
}

/// Where a bank's callbacks go: a node of the cluster, as a bank's HTTP
/// callbacks would reach one.
pub trait CallbackTarget: Send + Sync + 'static {
    fn deliver(&self, callback: BankCallback) -> BoxFuture<'_, Result<CallbackAck, CommandError>>;
}

/// What the bank knows of one payment.
#[derive(Clone, Debug)]
pub struct BankPayment {
    pub amount: Money,
    pub outcome: Option<BankOutcome>,
    /// Submissions received under this payment's key (one collection).
    pub submissions: u32,
}

/// What the checker reads of a bank.
#[derive(Default)]
pub struct Books {
    pub payments: BTreeMap<String, BankPayment>,
    /// Payments this bank refused for good.
    pub refused: BTreeMap<String, ()>,
    /// Refunds paid out, by `payment name/refund id`.
    pub refunds: BTreeMap<String, Money>,
    /// Per callback message: how often payvisor answered that it applied
    /// or ignored it (a second delivery must be answered as a duplicate).
    pub decided: BTreeMap<String, u32>,
}

pub struct SimBank {
    pub name: String,
    world: Arc<World>,
    pub faults: BankFaults,
    pub faults_on: Arc<std::sync::atomic::AtomicBool>,
    pub books: Mutex<Books>,
    down_until_ms: Mutex<u64>,
    target: Arc<dyn CallbackTarget>,
    messages: std::sync::atomic::AtomicU64,
    /// The table, and the audit that checks what the bank records against
    /// it as it records it.
    table: Arc<crate::store::SimStore>,
    audit: Arc<Mutex<crate::check::Audit>>,
}

impl SimBank {
    pub fn new(
        name: &str,
        world: Arc<World>,
        faults: BankFaults,
        faults_on: Arc<std::sync::atomic::AtomicBool>,
        target: Arc<dyn CallbackTarget>,
        table: Arc<crate::store::SimStore>,
        audit: Arc<Mutex<crate::check::Audit>>,
    ) -> Arc<SimBank> {
        Arc::new(SimBank {
            name: name.to_owned(),
            world,
            faults,
            faults_on,
            books: Mutex::default(),
            down_until_ms: Mutex::new(0),
            target,
            messages: Default::default(),
            table,
            audit,
        })
    }

    fn faulty(&self) -> bool {
        self.faults_on.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn chance(&self, per_mille: u64) -> bool {
        self.faulty() && self.world.chance(per_mille)
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses the call while the bank is down; may start an outage.
    fn up(&self) -> Result<(), ConnectorError> {
        let now = self.world.now_ms();
        let mut down_until = self.down_until_ms.lock().unwrap_or_else(|p| p.into_inner());
        if now < *down_until && self.faulty() {
            return Err(ConnectorError::Transient("bank down (simulated)".into()));
        }
        if self.chance(self.faults.outage_per_mille) {
            *down_until = now + self.world.between(1, self.faults.outage_max_ms);
            self.world
                .log(format!("bank {} down until {} ms", self.name, *down_until));
            return Err(ConnectorError::Transient("bank down (simulated)".into()));
        }
        if self.chance(self.faults.error_per_mille) {
            return Err(ConnectorError::Transient(
                "bank error 503 (simulated)".into(),
            ));
        }
        Ok(())
    }

    /// Sends the outcome as callbacks after a while: lost, once, or twice.
    fn answer_later(self: &Arc<Self>, event: BankEvent, kind: &str) {
        let copies = if self.chance(self.faults.callback_lost_per_mille) {
            0
        } else if self.chance(self.faults.callback_duplicated_per_mille) {
            2
        } else {
            1
        };
        let message_id = format!(
            "{}-m{}",
            self.name,
            self.messages
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        self.world.log(format!(
            "bank {} {kind} {} → {copies} callback(s) {message_id}",
            self.name,
            event.payment_name()
        ));
        for _ in 0..copies {
            let delay = self.world.between(1, self.faults.callback_delay_max_ms);
            let bank = Arc::clone(self);
            let callback = BankCallback {
                bank: self.name.clone(),
                message_id: message_id.clone(),
                kind: kind.to_owned(),
                event: event.clone(),
                trace: None,
            };
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                bank.deliver(callback).await;
            });
        }
    }

    /// Delivers one callback, retrying as a bank retries an unanswered
    /// webhook, for a bounded number of attempts.
    async fn deliver(&self, callback: BankCallback) {
        for attempt in 0..crate::limits::CALLBACK_ATTEMPTS {
            match self.target.deliver(callback.clone()).await {
                Ok(ack) => {
                    if ack != CallbackAck::Duplicate {
                        let decided = {
                            let mut books = self.books();
                            let decided = books
                                .decided
                                .entry(callback.message_id.clone())
                                .or_default();
                            *decided += 1;
                            *decided
                        };
                        if decided > 1 {
                            (self.audit.lock().unwrap_or_else(|p| p.into_inner()))
                                .violations
                                .push(crate::check::Violation {
                                    invariant: "callbacks_decided_once",
                                    detail: format!(
                                        "callback {} was applied or ignored {decided} times",
                                        callback.message_id
                                    ),
                                });
                        }
                    }
                    self.world.log(format!(
                        "callback {} for {}: {ack:?}",
                        callback.message_id,
                        callback.event.payment_name()
                    ));
                    return;
                }
                Err(error) => {
                    let wait = 500 << attempt.min(6);
                    self.world.log(format!(
                        "callback {} refused ({error}); again in {wait} ms",
                        callback.message_id
                    ));
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
            }
        }
    }

    /// Whether a submission is held up on its way: after how long its
    /// call times out (a connector's deadline, 1–5 s), and when, later
    /// still, the bank receives it.
    fn held_up(&self) -> Option<(Duration, Duration)> {
        if !self.chance(self.faults.late_submission_per_mille) {
            return None;
        }
        let timeout = self.world.between(1_000, 5_000);
        let late = self
            .world
            .between(timeout, timeout.max(self.faults.late_submission_max_ms));
        Some((Duration::from_millis(timeout), Duration::from_millis(late)))
    }

    /// The call of a submission held up on its way times out.
    async fn times_out(&self, what: &str, (timeout, late): (Duration, Duration)) -> ConnectorError {
        self.world.log(format!(
            "bank {}: {what} held up on its way for {} ms",
            self.name,
            late.as_millis()
        ));
        tokio::time::sleep(timeout).await;
        ConnectorError::Transient("timed out (simulated; the submission arrives late)".into())
    }

    async fn latency(&self) {
        let latency = self.world.between(0, self.faults.latency_max_ms);
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }

    async fn submit_payment(
        self: &Arc<Self>,
        submission: PaymentSubmission,
    ) -> Result<(), ConnectorError> {
        self.up()?;
        let key = submission.name.to_string();
        let known = {
            let mut books = self.books();
            if books.refused.contains_key(&key) {
                return Err(ConnectorError::Rejected(
                    "refused earlier (simulated)".into(),
                ));
            }
            match books.payments.get_mut(&key) {
                Some(payment) => {
                    payment.submissions += 1;
                    Some(payment.outcome.clone())
                }
                None if self.chance(self.faults.refuse_per_mille) => {
                    books.refused.insert(key.clone(), ());
                    drop(books);
                    self.world.log(format!("bank {} refuses {key}", self.name));
                    return Err(ConnectorError::Rejected("do not honour (simulated)".into()));
                }
                None => {
                    books.payments.insert(
                        key.clone(),
                        BankPayment {
                            amount: submission.amount,
                            outcome: None,
                            submissions: 1,
                        },
                    );
                    None
                }
            }
        };
        if known.is_none() {
            // Recorded now: checked against the table and the other bank.
            let table: &dyn payvisor::store::Store = self.table.as_ref();
            let stored = payvisor::store::schema::load_payment(table, &submission.name).await;
            let stored = stored.ok().flatten().map(|stored| stored.value);
            (self.audit.lock().unwrap_or_else(|p| p.into_inner())).bank_records(
                &self.name,
                &key,
                submission.amount,
                stored.as_ref(),
            );
        }
        match known {
            // Same key again: never collected twice; the known outcome is
            // sent again (its callback may have been lost).
            Some(Some(outcome)) => {
                let event = BankEvent::Payment {
                    name: submission.name,
                    outcome,
                };
                self.answer_later(event, "payment again");
            }
            Some(None) => {}
            None if self.chance(self.faults.hang_per_mille) => {
                self.world
                    .log(format!("bank {} takes {key} and never answers", self.name));
            }
            None => {
                self.world.log(format!("bank {} accepts {key}", self.name));
                let bank = Arc::clone(self);
                let processing = self.world.between(1, self.faults.latency_max_ms * 4);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(processing)).await;
                    let outcome = if bank.chance(bank.faults.decline_per_mille) {
                        BankOutcome::Failed {
                            reason: "declined by issuer (simulated)".into(),
                        }
                    } else {
                        BankOutcome::Processed
                    };
                    if let Some(payment) = bank.books().payments.get_mut(&key) {
                        payment.outcome = Some(outcome.clone());
                    }
                    let kind = match outcome {
                        BankOutcome::Processed => "payment.processed",
                        BankOutcome::Failed { .. } => "payment.failed",
                    };
                    let event = BankEvent::Payment {
                        name: submission.name,
                        outcome,
                    };
                    bank.answer_later(event, kind);
                });
            }
        }
        if self.chance(self.faults.timeout_after_recording_per_mille) {
            return Err(ConnectorError::Transient(
                "timed out (simulated, recorded)".into(),
            ));
        }
        Ok(())
    }

    async fn submit_refund(
        self: &Arc<Self>,
        submission: RefundSubmission,
    ) -> Result<(), ConnectorError> {
        self.up()?;
        let key = format!("{}/{}", submission.name, submission.refund_id);
        let first = {
            let mut books = self.books();
            if books.refunds.contains_key(&key) {
                false
            } else {
                books.refunds.insert(key.clone(), submission.amount);
                true
            }
        };
        if first {
            self.world.log(format!("bank {} pays out {key}", self.name));
        }
        let event = BankEvent::Refund {
            name: submission.name,
            refund_id: submission.refund_id,
            outcome: RefundOutcome::Succeeded,
        };
        self.answer_later(event, "refund.succeeded");
        if self.chance(self.faults.timeout_after_recording_per_mille) {
            return Err(ConnectorError::Transient(
                "timed out (simulated, recorded)".into(),
            ));
        }
        Ok(())
    }

    fn payment_status(&self, name: &PaymentName) -> Result<BankStatus, ConnectorError> {
        self.up()?;
        Ok(match self.books().payments.get(&name.to_string()) {
            None => BankStatus::Unknown,
            Some(BankPayment { outcome: None, .. }) => BankStatus::Pending,
            Some(BankPayment {
                outcome: Some(outcome),
                ..
            }) => BankStatus::Done(outcome.clone()),
        })
    }
}

/// One node incarnation's connection to a bank.
pub struct BankLink {
    pub bank: Arc<SimBank>,
    pub gate: Arc<Gate>,
}

impl BankLink {
    /// Sends a submission (`arrives`, what the bank does with it), unless
    /// it is held up on its way: then its call times out, and it reaches
    /// the bank later all the same.
    async fn submit<F, Fut>(&self, what: String, arrives: F) -> Result<(), ConnectorError>
    where
        F: FnOnce(Arc<SimBank>) -> Fut,
        Fut: std::future::Future<Output = Result<(), ConnectorError>> + Send + 'static,
    {
        self.gate.pass().await;
        if let Some(held) = self.bank.held_up() {
            let arriving = arrives(self.bank.clone());
            tokio::spawn(async move {
                tokio::time::sleep(held.1).await;
                let _ = arriving.await;
            });
            let error = self.bank.times_out(&what, held).await;
            self.gate.pass().await;
            return Err(error);
        }
        self.bank.latency().await;
        let result = arrives(self.bank.clone()).await;
        self.bank.latency().await;
        self.gate.pass().await;
        result
    }
}

impl Connector for BankLink {
    fn submit_payment(
        &self,
        submission: PaymentSubmission,
    ) -> BoxFuture<'_, Result<(), ConnectorError>> {
        let what = format!("payment {}", submission.name);
        Box::pin(self.submit(
            what,
            |bank| async move { bank.submit_payment(submission).await },
        ))
    }

    fn submit_refund(
        &self,
        submission: RefundSubmission,
    ) -> BoxFuture<'_, Result<(), ConnectorError>> {
        let what = format!("refund {}/{}", submission.name, submission.refund_id);
        Box::pin(self.submit(
            what,
            |bank| async move { bank.submit_refund(submission).await },
        ))
    }

    fn payment_status(
        &self,
        name: PaymentName,
    ) -> BoxFuture<'_, Result<BankStatus, ConnectorError>> {
        Box::pin(async move {
            self.gate.pass().await;
            self.bank.latency().await;
            let result = self.bank.payment_status(&name);
            self.bank.latency().await;
            self.gate.pass().await;
            result
        })
    }
}
