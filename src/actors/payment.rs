//! The payment actor: a child of its account actor, alive while its payment
//! has pending work. It carries out the bank calls the account actor
//! decided and persisted, with bounded retries. Its only state is the work
//! in hand: if it panics, its parent restarts it from the persisted payment.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::account::AccountMsg;
use crate::connectors::{
    BankEvent, BankStatus, Connector, ConnectorError, PaymentSubmission, RefundSubmission,
};
use crate::domain::payment::{BankOutcome, Effect, RefundOutcome};
use crate::domain::PaymentName;
use crate::limits;

pub struct PaymentActor;

pub struct PaymentArgs {
    pub name: PaymentName,
    /// Work to start with (the decision's effects, or the re-drive).
    pub effects: Vec<Effect>,
    pub connector: Arc<dyn Connector>,
    /// Where definite bank answers learned synchronously go.
    pub parent: ActorRef<AccountMsg>,
}

pub enum PaymentMsg {
    Execute(Vec<Effect>),
}

pub struct PaymentState {
    name: PaymentName,
    connector: Arc<dyn Connector>,
    parent: ActorRef<AccountMsg>,
}

impl Actor for PaymentActor {
    type Msg = PaymentMsg;
    type State = PaymentState;
    type Arguments = PaymentArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PaymentMsg>,
        args: PaymentArgs,
    ) -> Result<PaymentState, ActorProcessingErr> {
        if !args.effects.is_empty() {
            // Queued to ourselves so a panic while executing is a supervised
            // failure of a running actor, not a failed start.
            myself.cast(PaymentMsg::Execute(args.effects))?;
        }
        Ok(PaymentState {
            name: args.name,
            connector: args.connector,
            parent: args.parent,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<PaymentMsg>,
        message: PaymentMsg,
        state: &mut PaymentState,
    ) -> Result<(), ActorProcessingErr> {
        let PaymentMsg::Execute(effects) = message;
        for effect in effects {
            state.execute(effect).await;
        }
        Ok(())
    }
}

impl PaymentState {
    async fn execute(&self, effect: Effect) {
        let mut backoff = limits::BANK_SUBMIT_BACKOFF_INITIAL;
        for attempt in 1..=limits::BANK_SUBMIT_ATTEMPTS_MAX {
            let result = match &effect {
                Effect::SubmitPayment {
                    name,
                    amount,
                    metadata,
                } => self.submit_payment(name, *amount, metadata).await,
                Effect::QueryPayment {
                    name,
                    amount,
                    metadata,
                } => match self.connector.payment_status(name.clone()).await {
                    Ok(BankStatus::Done(outcome)) => {
                        tracing::info!(payment = %self.name, ?outcome, "status query found the outcome");
                        let event = BankEvent::Payment {
                            name: name.clone(),
                            outcome,
                        };
                        let _ = self.parent.cast(AccountMsg::FromChild(event));
                        return;
                    }
                    Ok(BankStatus::Pending) => {
                        tracing::info!(payment = %self.name, "status query: bank still processing");
                        return;
                    }
                    Ok(BankStatus::Unknown) => {
                        // The bank never got it: send again, same key.
                        tracing::info!(payment = %self.name, "status query: unknown to the bank; re-submitting");
                        self.submit_payment(name, *amount, metadata).await
                    }
                    Err(error) => Err(error),
                },
                Effect::SubmitRefund {
                    name,
                    refund_id,
                    amount,
                } => {
                    let submission = RefundSubmission {
                        name: name.clone(),
                        refund_id: refund_id.clone(),
                        amount: *amount,
                    };
                    self.connector.submit_refund(submission).await
                }
            };
            match result {
                Ok(()) => {
                    tracing::debug!(payment = %self.name, attempt, "handed to bank");
                    return;
                }
                Err(ConnectorError::Rejected(reason)) => {
                    tracing::info!(payment = %self.name, %reason, "bank rejected");
                    let event = match &effect {
                        Effect::SubmitPayment { name, .. } | Effect::QueryPayment { name, .. } => {
                            BankEvent::Payment {
                                name: name.clone(),
                                outcome: BankOutcome::Failed { reason },
                            }
                        }
                        Effect::SubmitRefund {
                            name, refund_id, ..
                        } => BankEvent::Refund {
                            name: name.clone(),
                            refund_id: refund_id.clone(),
                            outcome: RefundOutcome::Failed { reason },
                        },
                    };
                    let _ = self.parent.cast(AccountMsg::FromChild(event));
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

    async fn submit_payment(
        &self,
        name: &PaymentName,
        amount: crate::domain::Money,
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), ConnectorError> {
        let submission = PaymentSubmission {
            name: name.clone(),
            amount,
            metadata: metadata.clone(),
        };
        self.connector.submit_payment(submission).await
    }
}
