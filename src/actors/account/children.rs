//! The account's children: one payment actor per payment with bank calls
//! in flight, started after the write that decided them, restarted from
//! the persisted state after a panic; and the work that must survive a
//! transient store failure (a bank outcome, a resume), retried with
//! back-off.
//!
//! One actor takes a payment's new work. An actor told to stop (its
//! payment has nothing pending) may still be finishing its last call, an
//! acknowledgement or a re-submission the bank has already settled, beside
//! a new actor that carries the payment's next effect: both calls carry
//! their idempotency keys, so the bank applies each once.

use std::sync::Arc;

use ractor::{ActorId, ActorRef};

use super::{AccountMsg, AccountState, RetryableWork};
use crate::actors::payment::{PaymentActor, PaymentArgs};
use crate::actors::CommandError;
use crate::domain::payment;
use crate::domain::PaymentId;
use crate::limits;

impl AccountState {
    pub(super) async fn resume(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        payment_id: &PaymentId,
    ) -> Result<(), CommandError> {
        self.hydrate().await?;
        // Read it fresh: this is recovery, the cache may be behind.
        self.payments.remove(payment_id);
        let Some(current) = self.payment(payment_id).await? else {
            return Ok(());
        };
        let effects = current.value.pending_effects();
        if !effects.is_empty() && !self.children.contains_key(payment_id) {
            tracing::info!(payment = %self.name(payment_id), state = current.value.state.api_name(), "re-driving payment");
            // A trace of its own (recovery, a gained shard): the bank
            // calls of the re-drive are spans of it.
            let mut span =
                crate::trace::Span::start("payment.resume", crate::trace::SpanKind::Internal, None);
            if span.is_recording() {
                span.set("payvisor.payment", self.name(payment_id).to_string());
                span.set("payvisor.state", current.value.state.api_name());
            }
            let trace = Some(span.context().clone());
            self.spawn_child(myself, payment_id.clone(), effects, trace)
                .await;
        }
        Ok(())
    }

    pub(super) async fn spawn_child(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        payment: PaymentId,
        effects: Vec<payment::Effect>,
        trace: Option<crate::trace::TraceParent>,
    ) {
        let args = PaymentArgs {
            name: self.name(&payment),
            effects,
            trace,
            router: Arc::clone(&self.shared.router),
            store: Arc::clone(&self.shared.store),
            clock: Arc::clone(&self.shared.clock),
            parent: myself.get_derived(),
        };
        // Instant: the child's start-up runs on its own task, so a batch
        // that creates many payments does not wait for each start in turn.
        match ractor::ActorRuntime::spawn_linked_instant(
            None,
            PaymentActor,
            args,
            myself.get_cell(),
        ) {
            Ok((child, _)) => {
                self.child_payments.insert(child.get_id(), payment.clone());
                self.children.insert(payment, child);
            }
            Err(error) => {
                // The payment is persisted with its pending step; re-drive
                // picks it up.
                tracing::error!(payment = %self.name(&payment), %error, "could not start payment actor");
            }
        }
    }

    pub(super) fn forget_child(&mut self, actor: ActorId) -> Option<PaymentId> {
        let payment = self.child_payments.remove(&actor)?;
        if self
            .children
            .get(&payment)
            .is_some_and(|child| child.get_id() == actor)
        {
            self.children.remove(&payment);
        }
        Some(payment)
    }

    /// Runs a bank outcome or a resume. On a transient failure it is tried
    /// again later with back-off, a bounded number of times; after that the
    /// payment stays as persisted and re-drive (start-up recovery, the
    /// watchdog) picks it up.
    pub(super) async fn run_retryable(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        work: RetryableWork,
        attempt: u32,
    ) {
        let result = match &work {
            RetryableWork::Bank(event) => self.on_bank_event(myself, event).await,
            RetryableWork::Resume(payment) => self.resume(myself, payment).await,
        };
        let Err(error) = result else { return };
        if let CommandError::Moving(_) = error {
            // Not this node's any more: the new owner recovers the payment.
            tracing::info!(account = %self.account, ?work, "account moved to another node; left to its owner");
            return;
        }
        let transient = matches!(
            error,
            CommandError::Unavailable(_)
                | CommandError::StoreUnavailable(_)
                | CommandError::Conflict
        );
        if !transient || attempt >= limits::ACTOR_RETRY_ATTEMPTS_MAX {
            tracing::error!(account = %self.account, ?work, %error, attempt, "giving up; left for re-drive");
            return;
        }
        let delay = limits::ACTOR_RETRY_BACKOFF_INITIAL
            .saturating_mul(1 << (attempt - 1).min(16))
            .min(limits::ACTOR_RETRY_BACKOFF_MAX);
        tracing::warn!(account = %self.account, ?work, %error, attempt, ?delay, "transient failure; will retry");
        self.retries_pending += 1;
        let next = attempt + 1;
        myself.send_after(delay, move || AccountMsg::Retry {
            work,
            attempt: next,
        });
    }
}
