//! The account actor: one per account, the single writer of the account's
//! partition. Commands are processed one at a time in arrival order:
//!
//! 1. decide with the pure core (state machine + ledger),
//! 2. persist the decision in one atomic, conditional write (payment,
//!    ledger movements, account balances, idempotency record),
//! 3. only then act: reply, and hand bank calls to the payment's child actor.
//!
//! A write that loses an optimistic-concurrency race (another writer changed
//! the account) reloads fresh state and re-runs the command, a bounded number
//! of times ([`retry`]).
//!
//! Every decision comes from the pure core: the payment state machine, and
//! `AccountBook::stage` for everything the account adds around it (route,
//! outbox, movements, velocity, idempotency record, page, deliveries). This
//! module and its children only read, write and execute.
//!
//! Code map: this file holds the actor, its messages and its state;
//! [`state`] the reads and the cache; [`retry`] the one concurrency loop;
//! one module per command ([`create`], [`payment_command`] for refunds,
//! operator and reviewer actions, [`reminder`], [`bank_outcome`],
//! [`callback`]); [`batch`] folds a busy account's commands into one write;
//! [`commit`] persists then acts; [`children`] the payment actors and the
//! work retried after transient failures.

mod bank_outcome;
mod batch;
mod callback;
mod children;
mod commit;
mod create;
mod payment_command;
mod reminder;
mod retry;
mod state;

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::time::Instant;

use super::inbox::Inbox;
use super::payment::{LearnedOutcome, PaymentMsg};
use super::{BankCallback, CallbackAck, CommandError, OperatorCommand, RefundPayment, Shared};
use crate::domain::account::AccountBook;
use crate::domain::payment::{BankEvent, Payment};
use crate::domain::{AccountId, PaymentId};
use crate::limits;
use crate::store::schema::Versioned;

pub struct AccountActor;

pub struct AccountArgs {
    pub account: AccountId,
    pub shared: Arc<Shared>,
    pub inbox: Inbox,
    pub passivation: Arc<dyn Passivation>,
    /// Where the actor publishes how many directory messages it has
    /// received, so the directory can report mailbox depth (sent minus
    /// received) without asking the actor.
    pub received_gauge: Arc<std::sync::atomic::AtomicU64>,
}

pub use super::inbox::Reply;

/// Where an idle account actor asks to stop: the directory that started
/// it, which agrees only if the actor received every message sent to it
/// (a port, so the actor does not depend on the directory).
pub trait Passivation: Send + Sync + 'static {
    fn try_passivate(&self, account: &AccountId, actor: ActorId, received: u64) -> bool;
}

pub enum AccountMsg {
    /// Creates and bank outcomes wait in the inbox: take them, several per
    /// atomic write.
    Drain,
    Refund(RefundPayment, Reply),
    /// Start-up recovery: carry this payment forward if it has pending work.
    Resume(PaymentId),
    /// The watchdog found this payment's reminder due.
    Reminder(PaymentId),
    /// An operator's retry or fail of a stuck payment.
    Operate(OperatorCommand, Reply),
    /// A bank's callback, to record in the inbox and apply.
    Callback(
        BankCallback,
        RpcReplyPort<Result<CallbackAck, CommandError>>,
    ),
    /// A bank outcome a child learned synchronously (a definite rejection).
    /// Comes from a child, not through the directory, so it is not counted.
    FromChild(BankEvent),
    /// Timer: passivate if idle. Not counted either.
    IdleCheck,
    /// Timer: try again work that failed for a transient reason (the store
    /// was unavailable or kept conflicting). Not counted.
    Retry {
        work: RetryableWork,
        attempt: u32,
    },
}

/// Work that must not be dropped when the store fails transiently: a bank
/// outcome not yet applied, a payment not yet resumed.
#[derive(Clone, Debug)]
pub enum RetryableWork {
    Bank(BankEvent),
    Resume(PaymentId),
}

impl From<LearnedOutcome> for AccountMsg {
    fn from(learned: LearnedOutcome) -> AccountMsg {
        AccountMsg::FromChild(learned.0)
    }
}

impl TryFrom<AccountMsg> for LearnedOutcome {
    type Error = AccountMsg;

    /// Back from a message the parent's mailbox refused.
    fn try_from(message: AccountMsg) -> Result<LearnedOutcome, AccountMsg> {
        match message {
            AccountMsg::FromChild(event) => Ok(LearnedOutcome(event)),
            other => Err(other),
        }
    }
}

impl AccountMsg {
    /// Whether the directory counted this message when sending it.
    fn via_directory(&self) -> bool {
        !matches!(
            self,
            AccountMsg::FromChild(_) | AccountMsg::IdleCheck | AccountMsg::Retry { .. }
        )
    }
}

pub struct AccountState {
    account: AccountId,
    shared: Arc<Shared>,
    /// Creates and bank outcomes, taken in batches (see `Drain`).
    inbox: Inbox,
    /// Asked before stopping when idle.
    passivation: Arc<dyn Passivation>,
    /// The account item as last read or written; `None` until hydrated.
    /// Version 0 means the account has no item yet.
    record: Option<Versioned<AccountBook>>,
    /// Payments as persisted (cache; the store is the truth).
    payments: HashMap<PaymentId, Versioned<Payment>>,
    /// Running child actors, by payment and by actor id.
    children: HashMap<PaymentId, ActorRef<PaymentMsg>>,
    child_payments: HashMap<ActorId, PaymentId>,
    /// Panic restarts per payment during this activation.
    restarts: HashMap<PaymentId, u32>,
    /// Messages received through the directory (see passivation).
    received: u64,
    /// `received`, published for the mailbox-depth gauge.
    received_gauge: Arc<std::sync::atomic::AtomicU64>,
    /// Scheduled retries not yet run: the actor must not passivate while
    /// any is pending, or the work would be lost with it.
    retries_pending: u32,
    last_activity: Instant,
    idle_timer: Option<tokio::task::JoinHandle<()>>,
    /// When the command being decided was taken up: its `account.decide`
    /// span starts here (read only while spans are exported).
    deciding_since: crate::trace::Stamp,
}

impl Actor for AccountActor {
    type Msg = AccountMsg;
    type State = AccountState;
    type Arguments = AccountArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<AccountMsg>,
        args: AccountArgs,
    ) -> Result<AccountState, ActorProcessingErr> {
        // Cheap on purpose: the directory spawns under a lock. Hydration
        // happens on the first message.
        Ok(AccountState {
            account: args.account,
            shared: args.shared,
            inbox: args.inbox,
            passivation: args.passivation,
            record: None,
            payments: HashMap::new(),
            children: HashMap::new(),
            child_payments: HashMap::new(),
            restarts: HashMap::new(),
            received: 0,
            received_gauge: args.received_gauge,
            retries_pending: 0,
            last_activity: Instant::now(),
            idle_timer: None,
            deciding_since: crate::trace::Stamp::default(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<AccountMsg>,
        state: &mut AccountState,
    ) -> Result<(), ActorProcessingErr> {
        let every = state.shared.settings.idle_check_every;
        state.idle_timer = Some(myself.send_interval(every, || AccountMsg::IdleCheck));
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<AccountMsg>,
        state: &mut AccountState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(timer) = state.idle_timer.take() {
            timer.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<AccountMsg>,
        message: AccountMsg,
        state: &mut AccountState,
    ) -> Result<(), ActorProcessingErr> {
        // Boxed: the actor's task keeps its future for as long as the actor
        // lives, at the size of its largest state. Inline, a command's
        // whole decide-persist-act future would be resident in every idle
        // actor; boxed, it exists only while a message is being handled.
        Box::pin(state.handle_message(myself, message)).await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<AccountMsg>,
        event: SupervisionEvent,
        state: &mut AccountState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(child, error) => {
                let Some(payment) = state.forget_child(child.get_id()) else {
                    return Ok(());
                };
                let restarts = state.restarts.entry(payment.clone()).or_insert(0);
                *restarts += 1;
                tracing::error!(account = %state.account, %payment, %error, restarts = *restarts, "payment actor failed");
                if *restarts > limits::PAYMENT_ACTOR_RESTARTS_MAX {
                    tracing::error!(account = %state.account, %payment, "payment actor keeps failing; left for re-drive");
                    return Ok(());
                }
                // Restart from the persisted state: re-drive its pending step.
                Box::pin(state.run_retryable(&myself, RetryableWork::Resume(payment), 1)).await;
            }
            SupervisionEvent::ActorTerminated(child, _, _) => {
                state.forget_child(child.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}

impl AccountState {
    /// One message, as [`AccountActor::handle`] receives it.
    async fn handle_message(&mut self, myself: ActorRef<AccountMsg>, message: AccountMsg) {
        self.deciding_since = crate::trace::Stamp::now();
        if message.via_directory() {
            self.received += 1;
            (self.received_gauge).store(self.received, std::sync::atomic::Ordering::Relaxed);
            self.last_activity = Instant::now();
        }
        match message {
            AccountMsg::Drain => self.drain(&myself).await,
            AccountMsg::Refund(command, reply) => {
                let result = self.refund(&myself, command).await;
                let _ = reply.send(result);
            }
            AccountMsg::Operate(command, reply) => {
                let result = self.operate(&myself, command).await;
                let _ = reply.send(result);
            }
            AccountMsg::Callback(callback, reply) => {
                let result = self.on_callback(&myself, callback).await;
                let _ = reply.send(result);
            }
            AccountMsg::Reminder(payment) => {
                // A reminder that fails here is found again by the next
                // sweep: it stays due in the store until handled.
                if let Err(error) = self.on_reminder(&myself, &payment).await {
                    tracing::warn!(payment = %self.name(&payment), %error, "reminder not handled; the next sweep retries");
                }
                self.shared.reminder_done(&self.name(&payment));
            }
            AccountMsg::FromChild(event) => {
                self.run_retryable(&myself, RetryableWork::Bank(event), 1)
                    .await;
            }
            AccountMsg::Resume(payment) => {
                self.run_retryable(&myself, RetryableWork::Resume(payment), 1)
                    .await;
            }
            AccountMsg::Retry { work, attempt } => {
                self.retries_pending -= 1;
                self.run_retryable(&myself, work, attempt).await;
            }
            AccountMsg::IdleCheck => self.maybe_passivate(&myself),
        }
    }

    fn maybe_passivate(&mut self, myself: &ActorRef<AccountMsg>) {
        let idle = self.last_activity.elapsed() >= self.shared.settings.passivate_after;
        // `child_payments`, not `children`: an actor told to stop is out of
        // `children` but may still be finishing its last call.
        if idle
            && self.child_payments.is_empty()
            && self.retries_pending == 0
            && self
                .passivation
                .try_passivate(&self.account, myself.get_id(), self.received)
        {
            tracing::debug!(account = %self.account, "passivating idle account actor");
            myself.stop(Some("idle".into()));
        }
    }
}
