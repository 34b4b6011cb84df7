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
//! of times.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::Serialize;
use tokio::time::Instant;

use super::directory::{Batched, Inbox};
use super::payment::{PaymentActor, PaymentArgs, PaymentMsg};
use super::{
    BankCallback, CallbackAck, CommandError, CreatePayment, OperatorAction, OperatorCommand,
    RefundPayment, Shared,
};
use crate::clock::new_payment_id;
use crate::domain::account::{AccountBook, NewIdempotency, StageContext, StagedDecision};
use crate::domain::payment::BankEvent;
use crate::domain::payment::{self, Decision, NewPayment, Payment, ReviewVerdict};
use crate::domain::rules::{Candidate, VelocityLog};
use crate::domain::{AccountId, PaymentId, PaymentName, RequestId, Timestamp};
use crate::limits;
use crate::store::schema::{self, Versioned};
use crate::store::{Condition, StoreError, WriteOp};

pub struct AccountActor;

pub struct AccountArgs {
    pub account: AccountId,
    pub shared: Arc<Shared>,
    pub inbox: Inbox,
}

pub type Reply = RpcReplyPort<Result<Payment, CommandError>>;

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
    /// Scheduled retries not yet run: the actor must not passivate while
    /// any is pending, or the work would be lost with it.
    retries_pending: u32,
    last_activity: Instant,
    idle_timer: Option<tokio::task::JoinHandle<()>>,
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
            record: None,
            payments: HashMap::new(),
            children: HashMap::new(),
            child_payments: HashMap::new(),
            restarts: HashMap::new(),
            received: 0,
            retries_pending: 0,
            last_activity: Instant::now(),
            idle_timer: None,
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

/// The canonical form of a request, compared on idempotent replay.
#[derive(Serialize)]
#[serde(tag = "method", rename_all = "snake_case")]
enum Fingerprint<'a> {
    Create {
        payment_id: Option<&'a str>,
        currency: &'a str,
        minor_units: i64,
        metadata: &'a std::collections::BTreeMap<String, String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        payer_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        payer_country: Option<&'a str>,
    },
    Refund {
        payment: String,
        currency: Option<&'a str>,
        minor_units: Option<i64>,
        reason: &'a str,
    },
    Retry {
        payment: String,
    },
    Fail {
        payment: String,
        reason: &'a str,
    },
    Review {
        payment: String,
        verdict: ReviewVerdict,
        reason: &'a str,
    },
}

impl<'a> Fingerprint<'a> {
    fn create(command: &'a CreatePayment) -> Fingerprint<'a> {
        Fingerprint::Create {
            payment_id: command.payment_id.as_ref().map(PaymentId::as_str),
            currency: command.amount.currency().code(),
            minor_units: command.amount.minor_units(),
            metadata: &command.metadata,
            payer_id: command.payer_id.as_deref(),
            payer_country: command.payer_country.as_deref(),
        }
    }
}

impl Fingerprint<'_> {
    fn encode(&self) -> String {
        serde_json::to_string(self).expect("fingerprints serialise")
    }
}

/// Decisions prepared for one atomic write.
struct Staging {
    /// The account item as it will be after the write.
    book: AccountBook,
    /// The account item's version now (0: it does not exist yet).
    base_version: u64,
    /// Every action but the account item's, in order.
    ops: Vec<WriteOp>,
    staged: Vec<StagedDecision>,
}

/// What committing a decision ran into.
enum CommitError {
    /// The idempotency key was taken (by a concurrent duplicate).
    KeyTaken,
    /// The payment item exists already (create) or changed (update).
    PaymentTaken,
    /// Someone else changed the account meanwhile: reload and retry.
    Stale,
    Failed(CommandError),
}

impl AccountState {
    /// One message, as [`AccountActor::handle`] receives it.
    async fn handle_message(&mut self, myself: ActorRef<AccountMsg>, message: AccountMsg) {
        if message.via_directory() {
            self.received += 1;
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

    fn name(&self, payment: &PaymentId) -> PaymentName {
        PaymentName {
            account: self.account.clone(),
            payment: payment.clone(),
        }
    }

    async fn hydrate(&mut self) -> Result<(), CommandError> {
        if self.record.is_none() {
            let record = schema::load_account(self.shared.store.as_ref(), &self.account).await?;
            let record = record.unwrap_or(Versioned {
                value: AccountBook::default(),
                version: 0,
            });
            record.value.balances.check_invariants().map_err(|error| {
                CommandError::Internal(format!(
                    "stored balances of {} break an invariant: {error}",
                    self.account
                ))
            })?;
            self.record = Some(record);
        }
        Ok(())
    }

    /// Drops everything cached, so the next use reads fresh state.
    fn invalidate(&mut self) {
        self.record = None;
        self.payments.clear();
    }

    async fn payment(
        &mut self,
        id: &PaymentId,
    ) -> Result<Option<Versioned<Payment>>, CommandError> {
        if let Some(cached) = self.payments.get(id) {
            return Ok(Some(cached.clone()));
        }
        let loaded = schema::load_payment(self.shared.store.as_ref(), &self.name(id)).await?;
        if let Some(loaded) = &loaded {
            loaded
                .value
                .check_invariants()
                .map_err(CommandError::Internal)?;
            self.cache(loaded.clone());
        }
        Ok(loaded)
    }

    /// Keeps a payment in memory while something is still to happen to it
    /// (a bank outcome will need it). Settled payments are dropped: they are
    /// cheap to read back, and an idle account should hold almost nothing.
    fn cache(&mut self, payment: Versioned<Payment>) {
        if !payment.value.has_pending_work() {
            self.payments.remove(&payment.value.id);
            return;
        }
        if self.payments.len() >= limits::ACCOUNT_PAYMENT_CACHE_MAX {
            // Full of busy payments: drop the lot, the store has them.
            self.payments.clear();
        }
        self.payments.insert(payment.value.id.clone(), payment);
    }

    /// Replays a request already applied under `request_id`, or refuses a
    /// reuse of the key for something else. `None`: the key is unused.
    async fn replay(
        &mut self,
        request_id: &RequestId,
        fingerprint: &str,
    ) -> Result<Option<Payment>, CommandError> {
        let Some(record) =
            schema::load_idempotency(self.shared.store.as_ref(), &self.account, request_id).await?
        else {
            return Ok(None);
        };
        if record.fingerprint != fingerprint {
            return Err(CommandError::IdempotencyKeyReused);
        }
        // The result of the original request: the payment it created or
        // changed, as it is now.
        let payment = self.payment(&record.payment).await?;
        payment.map(|payment| Some(payment.value)).ok_or_else(|| {
            CommandError::Internal(format!(
                "idempotency record points at missing payment {}",
                record.payment
            ))
        })
    }

    /// Takes everything in the inbox, a batch at a time.
    async fn drain(&mut self, myself: &ActorRef<AccountMsg>) {
        loop {
            let batch: Vec<Batched> = {
                let mut inbox = self
                    .inbox
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner());
                let take = inbox.len().min(limits::ACCOUNT_BATCH_COMMANDS_MAX);
                inbox.drain(..take).collect()
            };
            if batch.is_empty() {
                return;
            }
            self.run_batch(myself, batch).await;
        }
    }

    /// One command on its own, the way it would run unbatched.
    async fn run_one(&mut self, myself: &ActorRef<AccountMsg>, command: Batched) {
        match command {
            Batched::Create(command, reply) => {
                let result = self.create(myself, command).await;
                let _ = reply.send(result);
            }
            Batched::Bank(event) => {
                self.run_retryable(myself, RetryableWork::Bank(event), 1)
                    .await
            }
        }
    }

    /// Decides every command of `batch` in order, each on the state the
    /// previous ones left, and writes all the decisions in one atomic write:
    /// one commit (one fsync, one DynamoDB transaction) for many commands of
    /// a busy account. Replies and effects follow the write, as for a single
    /// command. If the write fails for any reason, nothing was written and
    /// each command is run again on its own, with the usual retries, replays
    /// and error answers.
    async fn run_batch(&mut self, myself: &ActorRef<AccountMsg>, batch: Vec<Batched>) {
        if batch.len() == 1 || self.hydrate().await.is_err() {
            for command in batch {
                self.run_one(myself, command).await;
            }
            return;
        }
        let now = self.shared.clock.now();
        let mut staging = self.staging();
        // What was staged, to answer after the write or to run again alone.
        let mut staged: Vec<Batched> = Vec::new();
        let mut alone: Vec<Batched> = Vec::new();
        let mut request_ids = std::collections::HashSet::new();
        let mut payments_touched = std::collections::HashSet::new();
        for command in batch {
            match command {
                Batched::Create(create, reply) => {
                    // Caller-chosen ids and repeated keys have answers of
                    // their own (taken id, replay): they run alone.
                    if create.payment_id.is_some() || !request_ids.insert(create.request_id.clone())
                    {
                        alone.push(Batched::Create(create, reply));
                        continue;
                    }
                    let fingerprint = Fingerprint::create(&create).encode();
                    let Ok(id) = PaymentId::new(new_payment_id(self.shared.random.as_ref())) else {
                        alone.push(Batched::Create(create, reply));
                        continue;
                    };
                    let decision =
                        match self.decide_create(&create, id, &staging.book.velocity, now) {
                            Ok(decision) => decision,
                            Err(rejection) => {
                                let _ = reply.send(Err(rejection.into()));
                                continue;
                            }
                        };
                    let idempotency = NewIdempotency {
                        request_id: create.request_id.clone(),
                        fingerprint,
                    };
                    match self.stage(&mut staging, decision, None, Some(idempotency)) {
                        Ok(()) => staged.push(Batched::Create(create, reply)),
                        Err(error) => {
                            let _ = reply.send(Err(error));
                        }
                    }
                }
                Batched::Bank(event) => {
                    let id = event.payment_name().payment.clone();
                    // A second outcome for a payment staged in this batch
                    // must see the first applied: it runs after the write.
                    if payments_touched.contains(&id) {
                        alone.push(Batched::Bank(event));
                        continue;
                    }
                    let current = match self.payment(&id).await {
                        Ok(Some(current)) => current,
                        Ok(None) | Err(_) => {
                            alone.push(Batched::Bank(event));
                            continue;
                        }
                    };
                    let decision = current
                        .value
                        .on_bank_event(&event, now, &self.shared.policy);
                    match decision {
                        Ok(Some(decision)) => {
                            if self
                                .stage(&mut staging, decision, Some(current.version), None)
                                .is_ok()
                            {
                                payments_touched.insert(id);
                                staged.push(Batched::Bank(event));
                            } else {
                                alone.push(Batched::Bank(event));
                            }
                        }
                        Ok(None) => {
                            tracing::debug!(payment = %event.payment_name(), "duplicate or late bank outcome ignored");
                        }
                        Err(_) => alone.push(Batched::Bank(event)),
                    }
                }
            }
        }
        if !staging.staged.is_empty() {
            match self.write(&staging).await {
                Ok(()) => {
                    let written = self.apply_written(myself, staging).await;
                    for (command, payment) in staged.into_iter().zip(written) {
                        if let Batched::Create(_, reply) = command {
                            let _ = reply.send(Ok(payment));
                        }
                    }
                }
                Err(error) => {
                    tracing::debug!(account = %self.account, %error, commands = staged.len(), "batch not written; running its commands one by one");
                    self.invalidate();
                    for command in staged {
                        self.run_one(myself, command).await;
                    }
                }
            }
        }
        for command in alone {
            self.run_one(myself, command).await;
        }
    }

    async fn create(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        command: CreatePayment,
    ) -> Result<Payment, CommandError> {
        let fingerprint = Fingerprint::create(&command).encode();
        // No read of the idempotency record up front: it is the first action
        // of the conditional write, so a duplicate fails there (`KeyTaken`)
        // and is replayed then. New requests, the common case, save a read.
        let mut key_taken = false;
        for _ in 0..=limits::CONCURRENCY_RETRIES_MAX {
            if key_taken {
                if let Some(original) = self.replay(&command.request_id, &fingerprint).await? {
                    return Ok(original);
                }
            }
            self.hydrate().await?;
            let id = match &command.payment_id {
                Some(id) => id.clone(),
                None => PaymentId::new(new_payment_id(self.shared.random.as_ref()))
                    .map_err(|error| CommandError::Internal(error.to_string()))?,
            };
            let velocity = &self.record.as_ref().expect("hydrated").value.velocity;
            let decision = self.decide_create(&command, id, velocity, self.shared.clock.now())?;
            let idempotency = NewIdempotency {
                request_id: command.request_id.clone(),
                fingerprint: fingerprint.clone(),
            };
            match self.commit(myself, decision, None, Some(idempotency)).await {
                Ok(payment) => return Ok(payment),
                Err(CommitError::KeyTaken) => key_taken = true, // replayed at the top
                Err(CommitError::PaymentTaken) if command.payment_id.is_some() => {
                    return Err(CommandError::PaymentAlreadyExists(
                        self.name(command.payment_id.as_ref().expect("checked"))
                            .to_string(),
                    ));
                }
                Err(CommitError::PaymentTaken) => continue, // generated id collided: draw again
                Err(CommitError::Stale) => self.invalidate(),
                Err(CommitError::Failed(error)) => return Err(error),
            }
        }
        Err(CommandError::Conflict)
    }

    /// The approval rules' verdict on a new payment (on the account's own
    /// velocity state), and the decision to create it.
    fn decide_create(
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

    async fn refund(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        command: RefundPayment,
    ) -> Result<Payment, CommandError> {
        let fingerprint = Fingerprint::Refund {
            payment: command.name.to_string(),
            currency: command.amount.map(|amount| amount.currency().code()),
            minor_units: command.amount.map(|amount| amount.minor_units()),
            reason: &command.reason,
        }
        .encode();
        let policy = Arc::clone(&self.shared);
        self.apply(
            myself,
            &command.name,
            &command.request_id,
            fingerprint,
            |payment, now| {
                Ok(payment.request_refund(command.amount, &command.reason, now, &policy.policy)?)
            },
        )
        .await
    }

    async fn operate(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        command: OperatorCommand,
    ) -> Result<Payment, CommandError> {
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
        let shared = Arc::clone(&self.shared);
        self.apply(
            myself,
            &command.name,
            &command.request_id,
            fingerprint,
            |payment, now| {
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
        )
        .await
    }

    /// Applies an idempotent command to one existing payment: replay if the
    /// key was used, else decide and commit with the idempotency record,
    /// from fresh state on a lost race.
    async fn apply(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        name: &PaymentName,
        request_id: &RequestId,
        fingerprint: String,
        decide: impl Fn(&Payment, crate::domain::Timestamp) -> Result<Decision, CommandError>,
    ) -> Result<Payment, CommandError> {
        for _ in 0..=limits::CONCURRENCY_RETRIES_MAX {
            if let Some(original) = self.replay(request_id, &fingerprint).await? {
                return Ok(original);
            }
            self.hydrate().await?;
            let current = self
                .payment(&name.payment)
                .await?
                .ok_or_else(|| CommandError::NotFound(format!("payment {name}")))?;
            let decision = decide(&current.value, self.shared.clock.now())?;
            let idempotency = NewIdempotency {
                request_id: request_id.clone(),
                fingerprint: fingerprint.clone(),
            };
            match self
                .commit(myself, decision, Some(current.version), Some(idempotency))
                .await
            {
                Ok(payment) => return Ok(payment),
                Err(CommitError::KeyTaken) => continue,
                Err(CommitError::PaymentTaken | CommitError::Stale) => self.invalidate(),
                Err(CommitError::Failed(error)) => return Err(error),
            }
        }
        Err(CommandError::Conflict)
    }

    /// A reminder fell due: let the core decide (re-drive, page, or nothing
    /// if the watch moved on meanwhile), then commit.
    async fn on_reminder(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        payment_id: &PaymentId,
    ) -> Result<(), CommandError> {
        for _ in 0..=limits::CONCURRENCY_RETRIES_MAX {
            self.hydrate().await?;
            let Some(current) = self.payment(payment_id).await? else {
                return Ok(());
            };
            let Some(decision) = current
                .value
                .on_reminder(self.shared.clock.now(), &self.shared.policy)?
            else {
                return Ok(());
            };
            match self
                .commit(myself, decision, Some(current.version), None)
                .await
            {
                Ok(payment) => {
                    let watch = payment.watch.as_ref();
                    tracing::warn!(payment = %payment.name(), state = ?payment.state, redrives = watch.map(|w| w.redrives), paged = watch.map(|w| w.paged), "stalled payment handled");
                    return Ok(());
                }
                Err(CommitError::KeyTaken | CommitError::PaymentTaken | CommitError::Stale) => {
                    self.invalidate()
                }
                Err(CommitError::Failed(error)) => return Err(error),
            }
        }
        Err(CommandError::Conflict)
    }

    /// Records a callback in the inbox (first action, `NotExists`: a
    /// duplicate fails there) together with the decision it causes, if any.
    async fn on_callback(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        callback: BankCallback,
    ) -> Result<CallbackAck, CommandError> {
        let name = callback.event.payment_name().clone();
        for _ in 0..=limits::CONCURRENCY_RETRIES_MAX {
            self.hydrate().await?;
            let current = self
                .payment(&name.payment)
                .await?
                .ok_or_else(|| CommandError::NotFound(format!("payment {name}")))?;
            let now = self.shared.clock.now();
            // An outcome from a bank the payment is not at changes nothing
            // (recorded, logged; reconciliation reports the bank's side).
            let elsewhere = current
                .value
                .current_bank()
                .is_some_and(|bank| bank != callback.bank);
            if elsewhere {
                tracing::error!(payment = %name, bank = %callback.bank, at = ?current.value.current_bank(), "outcome from a bank the payment is not at; ignored");
            }
            let decision = if elsewhere {
                None
            } else {
                current
                    .value
                    .on_bank_event(&callback.event, now, &self.shared.policy)?
            };
            let applied = decision.is_some();
            let mut staging = self.staging();
            staging.ops.push(WriteOp::Put {
                item: schema::inbox_item(&schema::InboxRecord {
                    bank: callback.bank.clone(),
                    message_id: callback.message_id.clone(),
                    payment: name.clone(),
                    kind: callback.kind.clone(),
                    received_at: now,
                    applied,
                }),
                condition: Condition::NotExists,
            });
            if let Some(decision) = decision {
                self.stage(&mut staging, decision, Some(current.version), None)?;
            }
            match self.write(&staging).await {
                Ok(()) => {
                    self.apply_written(myself, staging).await;
                    return Ok(if applied {
                        CallbackAck::Applied
                    } else {
                        CallbackAck::Ignored
                    });
                }
                Err(StoreError::ConditionFailed { index: 0, .. }) => {
                    return Ok(CallbackAck::Duplicate)
                }
                Err(StoreError::ConditionFailed { .. }) => self.invalidate(),
                Err(error) => return Err(error.into()),
            }
        }
        Err(CommandError::Conflict)
    }

    async fn on_bank_event(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        event: &BankEvent,
    ) -> Result<(), CommandError> {
        let payment_id = &event.payment_name().payment;
        for _ in 0..=limits::CONCURRENCY_RETRIES_MAX {
            self.hydrate().await?;
            let Some(current) = self.payment(payment_id).await? else {
                tracing::warn!(payment = %event.payment_name(), "bank outcome for an unknown payment ignored");
                return Ok(());
            };
            let now = self.shared.clock.now();
            let decision = current
                .value
                .on_bank_event(event, now, &self.shared.policy)?;
            let Some(decision) = decision else {
                tracing::debug!(payment = %event.payment_name(), "duplicate or late bank outcome ignored");
                return Ok(());
            };
            match self
                .commit(myself, decision, Some(current.version), None)
                .await
            {
                Ok(payment) => {
                    tracing::info!(payment = %event.payment_name(), state = ?payment.state, "bank outcome applied");
                    return Ok(());
                }
                Err(CommitError::KeyTaken | CommitError::PaymentTaken | CommitError::Stale) => {
                    self.invalidate()
                }
                Err(CommitError::Failed(error)) => return Err(error),
            }
        }
        Err(CommandError::Conflict)
    }

    async fn resume(
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
            tracing::info!(payment = %self.name(payment_id), state = ?current.value.state, "re-driving payment");
            self.spawn_child(myself, payment_id.clone(), effects).await;
        }
        Ok(())
    }

    /// Persists `decision` in one atomic write, then updates memory and
    /// hands the decision's effects to the payment's child actor.
    async fn commit(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        decision: Decision,
        payment_version: Option<u64>,
        idempotency: Option<NewIdempotency>,
    ) -> Result<Payment, CommitError> {
        let has_key = idempotency.is_some();
        let mut staging = self.staging();
        self.stage(&mut staging, decision, payment_version, idempotency)
            .map_err(CommitError::Failed)?;
        match self.write(&staging).await {
            Ok(()) => {}
            Err(StoreError::ConditionFailed { index, .. }) => {
                // The idempotency record is the first action, the payment
                // the next. Anything else (the account item, or an alert
                // recorded already by an earlier commit) means what we hold
                // is stale.
                return Err(match (has_key, index) {
                    (true, 0) => CommitError::KeyTaken,
                    (true, 1) | (false, 0) => CommitError::PaymentTaken,
                    _ => CommitError::Stale,
                });
            }
            Err(error) => return Err(CommitError::Failed(error.into())),
        }
        let mut written = self.apply_written(myself, staging).await;
        Ok(written.pop().expect("one decision staged"))
    }

    /// An empty atomic write on top of the account as last read or written.
    fn staging(&self) -> Staging {
        let record = self.record.as_ref().expect("hydrated before commit");
        Staging {
            book: record.value.clone(),
            base_version: record.version,
            ops: Vec::new(),
            staged: Vec::new(),
        }
    }

    /// Adds one decision to `staging`: the core stages everything it
    /// writes (route, outbox, movements, velocity, idempotency record, page,
    /// deliveries) and the schema turns that into items. On error `staging`
    /// is unchanged.
    fn stage(
        &self,
        staging: &mut Staging,
        decision: Decision,
        payment_version: Option<u64>,
        idempotency: Option<NewIdempotency>,
    ) -> Result<(), CommandError> {
        let rules = self.shared.rules.current();
        let webhooks = self.shared.webhooks.settings();
        let endpoints: Vec<&str> = webhooks
            .endpoints
            .iter()
            .map(|endpoint| endpoint.name.as_str())
            .collect();
        let context = StageContext {
            now: self.shared.clock.now(),
            policy: &self.shared.policy,
            banks: self.shared.router.as_ref(),
            velocity_keep_millis: rules.keep_millis(),
            webhook_endpoints: &endpoints,
            webhook_retry_for_millis: webhooks.retry_for.as_millis() as i64,
            idempotency_retention_millis: limits::IDEMPOTENCY_RETENTION.as_millis() as i64,
        };
        let staged = staging
            .book
            .stage(decision, payment_version, idempotency, &context)?;
        schema::staged_writes(&self.account, &staged, &mut staging.ops);
        staging.staged.push(staged);
        Ok(())
    }

    /// Writes what is staged, and the account item, in one atomic write.
    async fn write(&self, staging: &Staging) -> Result<(), StoreError> {
        let mut ops = staging.ops.clone();
        // Every write touches the account item under its version: the
        // account is the unit of ordering, and (later) of ownership fencing.
        let condition = match staging.base_version {
            0 => Condition::NotExists,
            version => Condition::VersionIs(version),
        };
        ops.push(WriteOp::Put {
            item: schema::account_item(&self.account, &staging.book, staging.base_version + 1),
            condition,
        });
        self.shared.store.transact(ops).await
    }

    /// After a durable write: update memory, then act (pages, bank calls).
    /// Returns the staged payments as written.
    async fn apply_written(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        staging: Staging,
    ) -> Vec<Payment> {
        self.record = Some(Versioned {
            value: staging.book,
            version: staging.base_version + 1,
        });
        let mut written = Vec::with_capacity(staging.staged.len());
        for staged in staging.staged {
            let version = staged.version();
            let StagedDecision {
                decision, alert, ..
            } = staged;
            if let Some(alert) = alert {
                self.shared.pager.recorded(alert);
            }
            if !decision.events.is_empty() {
                for event in &decision.events {
                    // No subscriber is fine: the feed is durable.
                    let _ = self.shared.events.send(Arc::new(event.clone()));
                }
                self.shared.webhooks.wake();
            }
            let payment = decision.payment;
            self.cache(Versioned {
                value: payment.clone(),
                version,
            });
            let id = payment.id.clone();
            if !decision.effects.is_empty() {
                match self.children.get(&id) {
                    Some(child) => {
                        if child
                            .cast(PaymentMsg::Execute(decision.effects.clone()))
                            .is_err()
                        {
                            self.spawn_child(myself, id.clone(), decision.effects).await;
                        }
                    }
                    None => self.spawn_child(myself, id.clone(), decision.effects).await,
                }
            } else if !payment.has_pending_work() {
                if let Some(child) = self.children.get(&id) {
                    child.stop(None);
                }
            }
            written.push(payment);
        }
        written
    }

    async fn spawn_child(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        payment: PaymentId,
        effects: Vec<payment::Effect>,
    ) {
        let args = PaymentArgs {
            name: self.name(&payment),
            effects,
            router: Arc::clone(&self.shared.router),
            store: Arc::clone(&self.shared.store),
            clock: Arc::clone(&self.shared.clock),
            parent: myself.clone(),
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

    fn forget_child(&mut self, actor: ActorId) -> Option<PaymentId> {
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
    async fn run_retryable(
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
        let transient = matches!(error, CommandError::Unavailable(_) | CommandError::Conflict);
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

    fn maybe_passivate(&mut self, myself: &ActorRef<AccountMsg>) {
        let idle = self.last_activity.elapsed() >= self.shared.settings.passivate_after;
        if idle
            && self.children.is_empty()
            && self.retries_pending == 0
            && self
                .shared
                .directory
                .try_passivate(&self.account, myself.get_id(), self.received)
        {
            tracing::debug!(account = %self.account, "passivating idle account actor");
            myself.stop(Some("idle".into()));
        }
    }
}
