//! CreatePayment: the approval rules' verdict on the account's own velocity
//! state, the payment, and its idempotency record in one write. No read of
//! the idempotency record up front: it is the first action of the
//! conditional write, so a duplicate fails there and is replayed then; new
//! requests, the common case, save a read.

use super::commit::CommitError;
use super::retry::{AccountCommand, Attempt};
use super::{AccountMsg, AccountState};
use crate::actors::{Answered, CommandError, CreatePayment};
use crate::domain::account::NewIdempotency;
use crate::domain::idempotency::Fingerprint;
use crate::domain::payment::{self, Decision, NewPayment};
use crate::domain::rules::{Candidate, VelocityLog};
use crate::domain::{PaymentId, Timestamp};
use crate::random::new_payment_id;
use ractor::ActorRef;

/// The canonical form of a create, kept with its idempotency key.
pub(super) fn fingerprint(command: &CreatePayment) -> String {
    Fingerprint::create(
        command.payment_id.as_ref(),
        command.amount,
        &command.metadata,
        command.payer_id.as_deref(),
        command.payer_country.as_deref(),
    )
    .encode()
}

/// A create in progress: the request, its fingerprint, and whether its key
/// turned out to be taken (then the next attempt replays it).
pub(super) struct Create {
    pub(super) command: CreatePayment,
    fingerprint: String,
    key_taken: bool,
}

impl Create {
    pub(super) fn new(command: CreatePayment) -> Create {
        let fingerprint = fingerprint(&command);
        Create {
            command,
            fingerprint,
            key_taken: false,
        }
    }
}

impl AccountCommand for Create {
    type Answer = Answered;

    async fn attempt(
        &mut self,
        state: &mut AccountState,
        myself: &ActorRef<AccountMsg>,
    ) -> Result<Attempt<Answered>, CommandError> {
        let command = &self.command;
        if self.key_taken {
            if let Some(original) = state.replay(&command.request_id, &self.fingerprint).await? {
                return Ok(Attempt::Done(Answered::replayed(original)));
            }
        }
        let id = match &command.payment_id {
            Some(id) => id.clone(),
            None => PaymentId::new(new_payment_id(state.shared.random.as_ref()))
                .map_err(|error| CommandError::Internal(error.to_string()))?,
        };
        let velocity = &state.record.as_ref().expect("hydrated").value.velocity;
        let decision = state.decide_create(command, id, velocity, state.shared.clock.now())?;
        let idempotency = NewIdempotency {
            request_id: command.request_id.clone(),
            fingerprint: self.fingerprint.clone(),
        };
        match state
            .commit(
                myself,
                decision,
                None,
                Some(idempotency),
                command.trace.clone(),
            )
            .await
        {
            Ok(payment) => Ok(Attempt::Done(Answered::new(payment))),
            Err(CommitError::KeyTaken) => {
                self.key_taken = true;
                Ok(Attempt::Again)
            }
            Err(CommitError::PaymentTaken) => match &command.payment_id {
                Some(id) => Err(CommandError::PaymentAlreadyExists(
                    state.name(id).to_string(),
                )),
                // A generated id collided: draw again.
                None => Ok(Attempt::Again),
            },
            Err(CommitError::Stale) => Ok(Attempt::Stale),
            Err(CommitError::Failed(error)) => Err(error),
        }
    }
}

impl AccountState {
    pub(super) async fn create(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        command: CreatePayment,
    ) -> Result<Answered, CommandError> {
        self.retrying(myself, &mut Create::new(command)).await
    }

    /// The approval rules' verdict on a new payment (on the account's own
    /// velocity state), and the decision to create it.
    pub(super) fn decide_create(
        &self,
        command: &CreatePayment,
        id: PaymentId,
        velocity: &VelocityLog,
        now: Timestamp,
    ) -> Result<Decision, payment::Rejection> {
        let candidate = Candidate {
            account: &self.account,
            amount: command.amount,
            payer_id: command.payer_id.as_deref(),
            payer_country: command.payer_country.as_deref(),
            metadata: &command.metadata,
        };
        let evaluation = self
            .shared
            .rules
            .current()
            .evaluate(&candidate, velocity, now);
        let new = NewPayment {
            account: self.account.clone(),
            id,
            amount: command.amount,
            metadata: command.metadata.clone(),
            payer_id: command.payer_id.clone(),
            payer_country: command.payer_country.clone(),
        };
        payment::create(new, Some(evaluation), now, &self.shared.policy)
    }
}
