//! The account's one optimistic-concurrency loop. Every command that
//! writes runs through [`AccountState::retrying`]: an attempt decides on the
//! state the actor holds and commits it; a write that lost a race to
//! another writer of the account (another node during an ownership change,
//! or the payment actor) drops what is cached and tries again on fresh
//! state, a bounded number of times (`CONCURRENCY_RETRIES_MAX`).

use ractor::ActorRef;

use super::commit::CommitError;
use super::{AccountMsg, AccountState};
use crate::actors::CommandError;
use crate::domain::payment::{Decision, Payment};
use crate::limits;

/// What one attempt of a command came to.
pub(super) enum Attempt<T> {
    /// Answered: stop.
    Done(T),
    /// Lost an optimistic-concurrency race: read fresh state and try again.
    Stale,
    /// Try again on the state held (a duplicate request turned up: it is
    /// replayed; a generated payment id collided: another is drawn).
    Again,
}

impl<T> Attempt<T> {
    pub(super) fn map<U>(self, f: impl FnOnce(T) -> U) -> Attempt<U> {
        match self {
            Attempt::Done(answer) => Attempt::Done(f(answer)),
            Attempt::Stale => Attempt::Stale,
            Attempt::Again => Attempt::Again,
        }
    }
}

/// A command of the account, as one attempt on the state the actor holds.
pub(super) trait AccountCommand {
    type Answer;

    async fn attempt(
        &mut self,
        state: &mut AccountState,
        myself: &ActorRef<AccountMsg>,
    ) -> Result<Attempt<Self::Answer>, CommandError>;
}

impl AccountState {
    /// Runs `command` until it answers: hydrated first, from fresh state
    /// after every lost race, at most `CONCURRENCY_RETRIES_MAX + 1` times.
    pub(super) async fn retrying<C: AccountCommand>(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        command: &mut C,
    ) -> Result<C::Answer, CommandError> {
        for _ in 0..=limits::CONCURRENCY_RETRIES_MAX {
            self.hydrate().await?;
            match command.attempt(self, myself).await? {
                Attempt::Done(answer) => return Ok(answer),
                Attempt::Stale => self.invalidate(),
                Attempt::Again => {}
            }
        }
        Err(CommandError::Conflict)
    }

    /// Commits a decision on an existing payment that carries no
    /// idempotency key (a reminder, a bank outcome): any condition that
    /// failed means what the actor holds is stale.
    pub(super) async fn commit_update(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        decision: Decision,
        version: u64,
        trace: Option<crate::trace::TraceParent>,
    ) -> Result<Attempt<Payment>, CommandError> {
        match self
            .commit(myself, decision, Some(version), None, trace)
            .await
        {
            Ok(payment) => Ok(Attempt::Done(payment)),
            Err(CommitError::KeyTaken | CommitError::PaymentTaken | CommitError::Stale) => {
                Ok(Attempt::Stale)
            }
            Err(CommitError::Failed(error)) => Err(error),
        }
    }
}
