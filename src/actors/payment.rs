//! The payment actor: a child of its account actor, alive while its payment
//! has pending work. It carries out the bank calls the account actor
//! decided and persisted, with bounded retries. Its only state is the work
//! in hand: if it panics, its parent restarts it from the persisted payment.

use crate::trace::TraceParent;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef};

use crate::clock::Clock;
use crate::connectors::routing::Router;
use crate::connectors::{
    BankStatus, Connector, ConnectorError, PaymentSubmission, RefundSubmission,
};
use crate::domain::payment::{BankEvent, Departure, Effect, RefundOutcome};
use crate::domain::PaymentName;
use crate::limits;
use crate::store::{schema, Condition, Store, WriteOp};

pub struct PaymentActor;

pub struct PaymentArgs {
    pub name: PaymentName,
    /// Work to start with (the decision's effects, or the re-drive).
    pub effects: Vec<Effect>,
    /// The banks; each effect names its bank.
    pub router: Arc<Router>,
    /// Where the outbox is: acknowledgements are recorded there.
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    /// Where definite bank answers learned synchronously go.
    pub parent: ParentPort,
    /// The trace of the call that caused `effects` (none for re-drives).
    pub trace: Option<TraceParent>,
}

/// A bank outcome the payment actor learned itself (a definite refusal, a
/// status answer), for its account actor to decide on.
pub struct LearnedOutcome(pub BankEvent);

/// How a payment actor reports to its parent: a port that takes only what
/// a child may say, so the child does not know its parent's messages.
pub type ParentPort = DerivedActorRef<LearnedOutcome>;

pub enum PaymentMsg {
    /// Effects to carry out, and the trace of the call that caused them.
    Execute(Vec<Effect>, Option<TraceParent>),
}

pub struct PaymentActorState {
    name: PaymentName,
    router: Arc<Router>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    parent: ParentPort,
}

impl Actor for PaymentActor {
    type Msg = PaymentMsg;
    type State = PaymentActorState;
    type Arguments = PaymentArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PaymentMsg>,
        args: PaymentArgs,
    ) -> Result<PaymentActorState, ActorProcessingErr> {
        if !args.effects.is_empty() {
            // Queued to ourselves so a panic while executing is a supervised
            // failure of a running actor, not a failed start.
            myself.cast(PaymentMsg::Execute(args.effects, args.trace))?;
        }
        Ok(PaymentActorState {
            name: args.name,
            router: args.router,
            store: args.store,
            clock: args.clock,
            parent: args.parent,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<PaymentMsg>,
        message: PaymentMsg,
        state: &mut PaymentActorState,
    ) -> Result<(), ActorProcessingErr> {
        let PaymentMsg::Execute(effects, trace) = message;
        for effect in effects {
            state.execute(effect, trace.as_ref()).await;
        }
        Ok(())
    }
}

impl PaymentActorState {
    /// The bank an effect goes to: the one it names, or (for payments
    /// recorded before routing existed) the router's first.
    fn bank<'a>(&'a self, named: &'a Option<String>) -> (&'a str, Option<&'a Arc<dyn Connector>>) {
        let bank = named
            .as_deref()
            .unwrap_or_else(|| self.router.default_bank());
        (bank, self.router.connector(bank))
    }

    /// Tells the account actor that `bank` does not have the payment.
    fn not_at_bank(&self, name: &PaymentName, bank: &str, departure: Departure) {
        let event = BankEvent::NotAtBank {
            name: name.clone(),
            bank: bank.to_owned(),
            departure,
        };
        let _ = self.parent.send_message(LearnedOutcome(event));
    }

    /// Records the bank's acceptance of a submission on its outbox
    /// messages (every one still open for that bank and refund: a re-drive
    /// re-sends the same message). A lost acknowledgement shows in
    /// reconciliation as an unacknowledged message; the next re-drive
    /// records it again.
    async fn acknowledge(&self, effect: &Effect) {
        let (bank, refund_id) = match effect {
            Effect::SubmitPayment { bank, .. } => (bank, None),
            Effect::SubmitRefund {
                bank, refund_id, ..
            } => (bank, Some(refund_id)),
            Effect::QueryPayment { .. } => return,
        };
        let bank = self.bank(bank).0;
        for _ in 0..limits::OUTBOX_ACK_ATTEMPTS_MAX {
            let records = match schema::payment_outbox(self.store.as_ref(), &self.name).await {
                Ok(records) => records,
                Err(error) => {
                    tracing::warn!(payment = %self.name, %error, "outbox not read; acknowledgement retried");
                    continue;
                }
            };
            let mut ops = Vec::new();
            for mut record in records {
                if record.acknowledged_at.is_none()
                    && record.bank == bank
                    && record.refund_id.as_ref() == refund_id
                {
                    record.acknowledged_at = Some(self.clock.now());
                    ops.push(WriteOp::Put {
                        item: schema::outbox_item(&record),
                        condition: Condition::VersionIs(1),
                    });
                }
            }
            if ops.is_empty() {
                return;
            }
            match self.store.transact(ops).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(payment = %self.name, %error, "acknowledgement not recorded; retrying")
                }
            }
        }
    }

    async fn execute(&self, effect: Effect, trace: Option<&TraceParent>) {
        let mut backoff = limits::BANK_SUBMIT_BACKOFF_INITIAL;
        for attempt in 1..=limits::BANK_SUBMIT_ATTEMPTS_MAX {
            let result = match &effect {
                Effect::SubmitPayment {
                    name,
                    amount,
                    metadata,
                    bank,
                } => {
                    let (bank, connector) = self.bank(bank);
                    let Some(connector) = connector else {
                        tracing::error!(payment = %self.name, bank, "no such bank configured; left for re-drive");
                        return;
                    };
                    let submission = PaymentSubmission {
                        name: name.clone(),
                        amount: *amount,
                        metadata: metadata.clone(),
                        trace: trace.cloned(),
                    };
                    match connector.submit_payment(submission).await {
                        Err(ConnectorError::Rejected(reason)) => {
                            // Refused for good: routing may send it elsewhere.
                            tracing::info!(payment = %self.name, bank, %reason, "bank rejected the payment");
                            self.not_at_bank(name, bank, Departure::Rejected { reason });
                            return;
                        }
                        other => other,
                    }
                }
                Effect::QueryPayment { name, bank, .. } => {
                    let (bank, connector) = self.bank(bank);
                    let Some(connector) = connector else {
                        tracing::error!(payment = %self.name, bank, "no such bank configured; left for re-drive");
                        return;
                    };
                    match connector.payment_status(name.clone()).await {
                        Ok(BankStatus::Done(outcome)) => {
                            tracing::info!(payment = %self.name, bank, ?outcome, "status query found the outcome");
                            let event = BankEvent::Payment {
                                name: name.clone(),
                                outcome,
                            };
                            let _ = self.parent.send_message(LearnedOutcome(event));
                            return;
                        }
                        Ok(BankStatus::Pending) => {
                            tracing::info!(payment = %self.name, bank, "status query: bank still processing");
                            return;
                        }
                        Ok(BankStatus::Unknown) => {
                            // The bank never got it: route it again (the
                            // same bank under the same key, or another).
                            tracing::info!(payment = %self.name, bank, "status query: unknown to the bank");
                            self.not_at_bank(name, bank, Departure::Unknown);
                            return;
                        }
                        Err(error) => Err(error),
                    }
                }
                Effect::SubmitRefund {
                    name,
                    refund_id,
                    amount,
                    bank,
                } => {
                    let (bank, connector) = self.bank(bank);
                    let Some(connector) = connector else {
                        tracing::error!(payment = %self.name, bank, "no such bank configured; left for re-drive");
                        return;
                    };
                    let submission = RefundSubmission {
                        name: name.clone(),
                        refund_id: refund_id.clone(),
                        amount: *amount,
                        trace: trace.cloned(),
                    };
                    match connector.submit_refund(submission).await {
                        Err(ConnectorError::Rejected(reason)) => {
                            tracing::info!(payment = %self.name, bank, %reason, "bank rejected the refund");
                            let event = BankEvent::Refund {
                                name: name.clone(),
                                refund_id: refund_id.clone(),
                                outcome: RefundOutcome::Failed { reason },
                            };
                            let _ = self.parent.send_message(LearnedOutcome(event));
                            return;
                        }
                        other => other,
                    }
                }
            };
            match result {
                Ok(()) => {
                    tracing::debug!(payment = %self.name, attempt, "handed to bank");
                    self.acknowledge(&effect).await;
                    return;
                }
                Err(ConnectorError::Rejected(reason)) => {
                    tracing::warn!(payment = %self.name, %reason, "bank rejected");
                    return;
                }
                Err(ConnectorError::Transient(error)) => {
                    tracing::warn!(payment = %self.name, attempt, %error, "bank unavailable, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(limits::BANK_SUBMIT_BACKOFF_MAX);
                }
            }
        }
        // Persisted as SENT / refund pending: the watchdog re-drives it with
        // the same idempotency key when its reminder falls due.
        tracing::error!(payment = %self.name, "bank unreachable after bounded retries; left for re-drive");
    }
}
