//! A payment's reminder fell due (the watchdog found it): the core decides
//! whether to re-drive it, page on-call, or nothing, if the watch moved on
//! meanwhile.

use ractor::ActorRef;

use super::retry::{AccountCommand, Attempt};
use super::{AccountMsg, AccountState};
use crate::actors::CommandError;
use crate::domain::PaymentId;

struct Reminder<'a> {
    payment: &'a PaymentId,
    /// The reminder's own trace: a re-drive's bank call is a span of it.
    trace: crate::trace::TraceParent,
}

impl AccountCommand for Reminder<'_> {
    type Answer = ();

    async fn attempt(
        &mut self,
        state: &mut AccountState,
        myself: &ActorRef<AccountMsg>,
    ) -> Result<Attempt<()>, CommandError> {
        let Some(current) = state.payment(self.payment).await? else {
            return Ok(Attempt::Done(()));
        };
        let Some(decision) = current
            .value
            .on_reminder(state.shared.clock.now(), &state.shared.policy)?
        else {
            return Ok(Attempt::Done(()));
        };
        let attempt = state
            .commit_update(myself, decision, current.version, Some(self.trace.clone()))
            .await?;
        if let Attempt::Done(payment) = &attempt {
            let watch = payment.watch.as_ref();
            tracing::warn!(payment = %payment.name(), state = payment.state.api_name(), redrives = watch.map(|w| w.redrives), paged = watch.map(|w| w.paged), "stalled payment handled");
        }
        Ok(attempt.map(|_| ()))
    }
}

impl AccountState {
    pub(super) async fn on_reminder(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        payment: &PaymentId,
    ) -> Result<(), CommandError> {
        // A trace of its own: no call caused it.
        let mut span =
            crate::trace::Span::start("watchdog.reminder", crate::trace::SpanKind::Internal, None);
        if span.is_recording() {
            span.set("payvisor.payment", self.name(payment).to_string());
        }
        let trace = span.context().clone();
        let handled = self
            .retrying(myself, &mut Reminder { payment, trace })
            .await;
        if handled.is_err() {
            span.fail("not handled");
        }
        handled
    }
}
