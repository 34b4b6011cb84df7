//! Idempotent commands on one existing payment: a refund, an operator's
//! retry or fail, a reviewer's approve or decline. Each replays if its key
//! was used, else decides on the payment and commits with the idempotency
//! record.

use ractor::ActorRef;

use super::commit::CommitError;
use super::retry::{AccountCommand, Attempt};
use super::{AccountMsg, AccountState};
use crate::actors::{Answered, CommandError, OperatorAction, OperatorCommand, RefundPayment};
use crate::domain::account::NewIdempotency;
use crate::domain::idempotency::Fingerprint;
use crate::domain::payment::{Decision, Payment};
use crate::domain::{PaymentName, RequestId, Timestamp};

/// A command on one payment: its key, its canonical form, and the core's
/// decision on the payment as it is.
struct OnPayment<'a, Decide> {
    name: &'a PaymentName,
    request_id: &'a RequestId,
    fingerprint: String,
    decide: Decide,
    /// The trace of the call that asked.
    trace: Option<crate::trace::TraceParent>,
}

impl<Decide> AccountCommand for OnPayment<'_, Decide>
where
    Decide: Fn(&Payment, Timestamp) -> Result<Decision, CommandError>,
{
    type Answer = Answered;

    async fn attempt(
        &mut self,
        state: &mut AccountState,
        myself: &ActorRef<AccountMsg>,
    ) -> Result<Attempt<Answered>, CommandError> {
        if let Some(original) = state.replay(self.request_id, &self.fingerprint).await? {
            return Ok(Attempt::Done(Answered::replayed(original)));
        }
        let name = self.name;
        let current = state
            .payment(&name.payment)
            .await?
            .ok_or_else(|| CommandError::NotFound(format!("payment {name}")))?;
        let decision = (self.decide)(&current.value, state.shared.clock.now())?;
        let idempotency = NewIdempotency {
            request_id: self.request_id.clone(),
            fingerprint: self.fingerprint.clone(),
        };
        match state
            .commit(
                myself,
                decision,
                Some(current.version),
                Some(idempotency),
                self.trace.clone(),
            )
            .await
        {
            Ok(payment) => Ok(Attempt::Done(Answered::new(payment))),
            // A duplicate won the race: replayed on the next attempt.
            Err(CommitError::KeyTaken) => Ok(Attempt::Again),
            Err(CommitError::PaymentTaken | CommitError::Stale) => Ok(Attempt::Stale),
            Err(CommitError::Failed(error)) => Err(error),
        }
    }
}

impl AccountState {
    pub(super) async fn refund(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        command: RefundPayment,
    ) -> Result<Answered, CommandError> {
        let fingerprint =
            Fingerprint::refund(&command.name, command.amount, &command.reason).encode();
        let shared = std::sync::Arc::clone(&self.shared);
        let mut refund = OnPayment {
            name: &command.name,
            request_id: &command.request_id,
            fingerprint,
            trace: command.trace.clone(),
            decide: |payment: &Payment, now| {
                let payment = payment.clone().acting(command.actor.clone());
                Ok(payment.request_refund(command.amount, &command.reason, now, &shared.policy)?)
            },
        };
        self.retrying(myself, &mut refund).await
    }

    pub(super) async fn operate(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        command: OperatorCommand,
    ) -> Result<Answered, CommandError> {
        let payment = command.name.to_string();
        let fingerprint = match &command.action {
            OperatorAction::Retry => Fingerprint::Retry { payment },
            OperatorAction::Fail { reason } => Fingerprint::Fail { payment, reason },
            OperatorAction::Review { verdict, reason } => Fingerprint::Review {
                payment,
                verdict: *verdict,
                reason,
            },
        }
        .encode();
        let shared = std::sync::Arc::clone(&self.shared);
        let mut operate = OnPayment {
            name: &command.name,
            request_id: &command.request_id,
            fingerprint,
            trace: command.trace.clone(),
            decide: |payment: &Payment, now| {
                let payment = payment.clone().acting(command.actor.clone());
                let decision = match &command.action {
                    OperatorAction::Retry => payment.operator_retry(now, &shared.policy),
                    OperatorAction::Fail { reason } => {
                        payment.operator_fail(reason, now, &shared.policy)
                    }
                    OperatorAction::Review { verdict, reason } => {
                        payment.review(*verdict, reason, now, &shared.policy)
                    }
                };
                decision.map_err(CommandError::OperatorRejected)
            },
        };
        self.retrying(myself, &mut operate).await
    }
}
