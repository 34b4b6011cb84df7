//! A bank's outcome for a payment or a refund, as a connector reported it
//! (the built-in bank, or a definite answer a payment actor got): applied
//! once; a duplicate or late one changes nothing.

use ractor::ActorRef;

use super::retry::{AccountCommand, Attempt};
use super::{AccountMsg, AccountState};
use crate::actors::CommandError;
use crate::domain::payment::BankEvent;

struct Outcome<'a> {
    event: &'a BankEvent,
}

impl AccountCommand for Outcome<'_> {
    type Answer = ();

    async fn attempt(
        &mut self,
        state: &mut AccountState,
        myself: &ActorRef<AccountMsg>,
    ) -> Result<Attempt<()>, CommandError> {
        let event = self.event;
        let Some(current) = state.payment(&event.payment_name().payment).await? else {
            tracing::warn!(payment = %event.payment_name(), "bank outcome for an unknown payment ignored");
            return Ok(Attempt::Done(()));
        };
        let now = state.shared.clock.now();
        let Some(decision) = current
            .value
            .on_bank_event(event, now, &state.shared.policy)?
        else {
            tracing::debug!(payment = %event.payment_name(), "duplicate or late bank outcome ignored");
            return Ok(Attempt::Done(()));
        };
        let attempt = state
            .commit_update(myself, decision, current.version, None)
            .await?;
        if let Attempt::Done(payment) = &attempt {
            tracing::info!(payment = %event.payment_name(), state = payment.state.api_name(), "bank outcome applied");
        }
        Ok(attempt.map(|_| ()))
    }
}

impl AccountState {
    pub(super) async fn on_bank_event(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        event: &BankEvent,
    ) -> Result<(), CommandError> {
        self.retrying(myself, &mut Outcome { event }).await
    }
}
