//! The actor layer: executes what the pure core decides.
//!
//! - [`Orchestrator`] is the cheap-clone handle the gRPC layer uses. Reads go
//!   straight to the store (the store is the source of truth; actors only
//!   reply after their writes commit). Commands go to the account's actor.
//! - [`directory::Directory`] spawns an account actor on first use and lets
//!   an idle one stop (passivation) without ever losing a message.
//! - [`account::AccountActor`] processes one account's commands in arrival
//!   order: decide (pure core), persist atomically, then act.
//! - [`payment::PaymentActor`] (a supervised child, one per payment with
//!   pending work) carries out bank calls. If it panics, the account actor
//!   restarts it from the persisted payment and it re-drives idempotently.

pub mod account;
pub mod directory;
pub mod inbox;
pub mod payment;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::alerts::AlertSink;
use crate::approval::RulesInForce;
use crate::clock::Clock;
use crate::cluster::AccountOwnership;
use crate::connectors::routing::Router;
use crate::domain::events::PaymentEvent;
use crate::domain::ledger::{Balances, LedgerError};
use crate::domain::payment::BankEvent;
use crate::domain::payment::{Payment, PaymentState, Policy, Rejection, ReviewVerdict};
use crate::domain::watch::OperatorRejection;
use crate::domain::{AccountId, Money, PaymentId, PaymentName, RequestId};
use crate::limits;
use crate::random::Random;
use crate::shutdown::{Shutdown, Tasks};
use crate::store::schema::{FeedPosition, IndexPosition, WaitingList};
use crate::store::{schema, Store, StoreError};

use crate::watchdog::{self, AlertEvent, Pager};
use crate::webhooks::dispatcher::{ResendError, WebhookDispatcher};
use crate::webhooks::{WebhookSettings, WebhookSink};
use account::AccountMsg;
use directory::Directory;

/// Why a command or query failed: the orchestrator's boundary error. The
/// gRPC layer maps it to a status in exactly one place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("invalid request")]
    InvalidArgument { violations: Vec<FieldViolation> },
    #[error("{0} not found")]
    NotFound(String),
    #[error("payment {0} already exists")]
    PaymentAlreadyExists(String),
    #[error("request_id was already used for a different request")]
    IdempotencyKeyReused,
    #[error("{0}")]
    Rejected(Rejection),
    #[error("{0}")]
    OperatorRejected(OperatorRejection),
    #[error("the account's available balance is too low for this refund")]
    InsufficientFunds,
    #[error("concurrent writers kept conflicting; retry the request")]
    Conflict,
    #[error("this subscriber fell behind the live events; resume with after_event set to the last event received")]
    StreamLagged,
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// The store did not answer (or failed): retry. What it said is for
    /// the log, not the caller (SDK and socket debug text, addresses).
    #[error("the store is unavailable: {0}")]
    StoreUnavailable(String),
    /// The account is not served by this node now (its shard is moving
    /// between nodes, or its owner cannot be reached): retry shortly.
    #[error("{0}")]
    Moving(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// No or bad credentials (the text says what to fix, never what was
    /// presented).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's roles or account scope do not cover the call. The
    /// same answer whether the account exists or not.
    #[error("the caller's roles or accounts do not allow this call")]
    PermissionDenied,
    /// The caller's key sent more calls than its rate allows.
    #[error("too many calls for this key's rate; retry after {} ms", retry_after.as_millis())]
    RateLimited { retry_after: std::time::Duration },
    /// The request could not be read as the method's message (bad wire
    /// format, bad UTF-8 in a string, a bad compression flag): the
    /// client's fault, not the server's.
    #[error("the request is not a valid {0} message; check the client's protobuf encoding")]
    Malformed(String),
    /// Stored data is damaged: a permanent fault, not worth a retry, for
    /// an operator to repair (`payvisor store check`).
    #[error("stored data is damaged: {0}")]
    DataCorrupt(String),
    /// The request is larger than the server takes.
    #[error("the request is larger than the server takes ({0} bytes at most)")]
    TooLarge(usize),
}

impl CommandError {
    /// What a caller outside payvisor is told (a gRPC status message, a
    /// bank's callback answer): never a store's, SDK's or socket's own
    /// text (addresses, debug output), which the server's log keeps.
    pub fn public_message(&self) -> String {
        match self {
            CommandError::StoreUnavailable(_) => {
                "the store is not answering for now; retry (a command with the same request_id)"
                    .to_owned()
            }
            CommandError::Internal(_) => {
                "internal error; the server's log has the details".to_owned()
            }
            CommandError::DataCorrupt(_) => {
                "stored data this request needs is damaged; an operator must repair it (payvisor store check)"
                    .to_owned()
            }
            other => other.to_string(),
        }
    }
}

impl From<crate::cluster::RouteError> for CommandError {
    fn from(error: crate::cluster::RouteError) -> CommandError {
        match error {
            crate::cluster::RouteError::Moving(_) => CommandError::Moving(error.to_string()),
            crate::cluster::RouteError::BadPeerAddress(_) => {
                CommandError::Internal(error.to_string())
            }
        }
    }
}

/// One bad field of a request (AIP-193 `BadRequest.FieldViolation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl CommandError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> CommandError {
        CommandError::InvalidArgument {
            violations: vec![FieldViolation {
                field: field.into(),
                description: description.into(),
            }],
        }
    }
}

impl From<StoreError> for CommandError {
    fn from(error: StoreError) -> CommandError {
        match error {
            StoreError::Unavailable(message) => CommandError::StoreUnavailable(message),
            StoreError::Corrupt(message) => CommandError::DataCorrupt(message),
            other => CommandError::Internal(other.to_string()),
        }
    }
}

impl From<Rejection> for CommandError {
    fn from(rejection: Rejection) -> CommandError {
        match rejection {
            Rejection::Ledger(LedgerError::WouldGoNegative { .. }) => {
                CommandError::InsufficientFunds
            }
            Rejection::Ledger(other) => CommandError::Internal(other.to_string()),
            Rejection::Invariant(detail) => CommandError::Internal(detail),
            Rejection::CurrencyMismatch { .. } => {
                CommandError::invalid("amount.currency_code", rejection.to_string())
            }
            other => CommandError::Rejected(other),
        }
    }
}

/// A validated CreatePayment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatePayment {
    pub account: AccountId,
    /// Chosen by the caller, or generated when `None`.
    pub payment_id: Option<PaymentId>,
    pub amount: Money,
    pub metadata: BTreeMap<String, String>,
    pub payer_id: Option<String>,
    pub payer_country: Option<String>,
    pub request_id: RequestId,
    /// The trace of the call that asked (its bank calls are spans of it).
    pub trace: Option<crate::trace::TraceParent>,
}

/// A validated RefundPayment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundPayment {
    pub name: PaymentName,
    /// `None`: all that remains.
    pub amount: Option<Money>,
    pub reason: String,
    pub request_id: RequestId,
    /// Who asks (key id or certificate subject); recorded with the refund.
    pub actor: Option<String>,
    /// The trace of the call that asked (its bank calls are spans of it).
    pub trace: Option<crate::trace::TraceParent>,
}

/// A validated RetryPayment or FailPayment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorCommand {
    pub name: PaymentName,
    pub action: OperatorAction,
    /// Who asks (key id or certificate subject); recorded with the change.
    pub actor: Option<String>,
    pub request_id: RequestId,
    /// The trace of the call that asked (its bank calls are spans of it).
    pub trace: Option<crate::trace::TraceParent>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperatorAction {
    /// Re-drive the stuck step now.
    Retry,
    /// Give up: FAILED with this reason, pending funds released.
    Fail { reason: String },
    /// A person's verdict on a payment in review.
    Review {
        verdict: ReviewVerdict,
        reason: String,
    },
}

/// A bank's callback, authenticated by the callback endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BankCallback {
    pub bank: String,
    /// Unique per message of that bank: the inbox key.
    pub message_id: String,
    /// `payment.processed`, `refund.failed`, …
    pub kind: String,
    pub event: BankEvent,
    /// The span of the callback's receipt: the decision it causes, and the
    /// events' webhooks, are spans of it.
    pub trace: Option<crate::trace::TraceParent>,
}

/// The answer to a command on a payment: the payment as it is now, and
/// whether the command was a replay of one already applied under the same
/// `request_id` (nothing was done again; clients see it as
/// `idempotent-replayed: true` in the response metadata, as Stripe's
/// `Idempotent-Replayed` header).
#[derive(Clone, Debug, PartialEq)]
pub struct Answered {
    pub payment: Payment,
    pub replayed: bool,
}

impl Answered {
    pub fn new(payment: Payment) -> Answered {
        Answered {
            payment,
            replayed: false,
        }
    }

    pub fn replayed(payment: Payment) -> Answered {
        Answered {
            payment,
            replayed: true,
        }
    }
}

/// What became of a callback (all are acknowledged to the bank).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackAck {
    /// Recorded, and it moved the payment.
    Applied,
    /// Recorded; the payment was not waiting for it (late, out of order).
    Ignored,
    /// This message id was recorded before: nothing changed.
    Duplicate,
}

/// Settings of the actor layer that tests shorten.
#[derive(Clone, Debug)]
pub struct ActorSettings {
    pub passivate_after: Duration,
    pub idle_check_every: Duration,
    /// Which accounts this node may write (all of them, unless it is a
    /// cluster member).
    pub ownership: AccountOwnership,
    /// How long idempotency records are kept.
    pub idempotency_retention: Duration,
}

impl Default for ActorSettings {
    fn default() -> Self {
        ActorSettings {
            passivate_after: limits::ACCOUNT_IDLE_PASSIVATE,
            idle_check_every: limits::ACCOUNT_IDLE_CHECK,
            ownership: AccountOwnership::Everything,
            idempotency_retention: limits::IDEMPOTENCY_RETENTION,
        }
    }
}

/// Everything the actors share. Built once; read-only afterwards.
pub struct Shared {
    pub store: Arc<dyn Store>,
    /// The banks, and which one a payment goes to.
    pub router: Arc<Router>,
    pub clock: Arc<dyn Clock>,
    pub random: Arc<dyn Random>,
    pub policy: Policy,
    pub settings: ActorSettings,
    pub pager: Pager,
    /// The approval rules in force (reloadable).
    pub rules: Arc<RulesInForce>,
    /// Webhook endpoints: a delivery state per endpoint is written with
    /// every event.
    pub webhooks: WebhookDispatcher,
    /// Committed events, live (`WatchPaymentEvents`).
    pub events: tokio::sync::broadcast::Sender<Arc<PaymentEvent>>,
    /// Reminders sent to an actor and not yet handled: a sweep does not
    /// send them again, so a slow actor's mailbox does not fill with
    /// duplicates while the store is down.
    /// Entries expire, so a reminder lost with a failed actor is sent again.
    pub reminders_in_hand:
        std::sync::Mutex<std::collections::HashMap<PaymentName, std::time::Instant>>,
}

impl Shared {
    /// Marks a reminder handled (or not sent), so the next sweep may send it.
    pub fn reminder_done(&self, name: &PaymentName) {
        self.reminders_in_hand
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(name);
    }
}

/// What an orchestrator is built from.
pub struct Components {
    pub store: Arc<dyn Store>,
    /// The banks (one, for the built-in simulator).
    pub banks: Arc<Router>,
    pub clock: Arc<dyn Clock>,
    pub random: Arc<dyn Random>,
    pub policy: Policy,
    pub settings: ActorSettings,
    /// Where pages go.
    pub alert_sink: Arc<dyn AlertSink>,
    /// This node's name in pages.
    pub node_name: String,
    pub rules: Arc<RulesInForce>,
    pub webhooks: WebhookSettings,
    /// Where webhooks go.
    pub webhook_sink: Arc<dyn WebhookSink>,
}

/// The handle to the running orchestrator.
#[derive(Clone)]
pub struct Orchestrator {
    shared: Arc<Shared>,
    /// Which account actors run; starts them on first use.
    directory: Arc<Directory>,
}

impl Orchestrator {
    /// Builds the orchestrator and starts, in `tasks`, routing bank
    /// outcomes from `bank_events` to account actors and delivering pages;
    /// both stop on `shutdown`.
    pub fn start(
        parts: Components,
        mut bank_events: mpsc::Receiver<BankEvent>,
        shutdown: &Shutdown,
        tasks: &mut Tasks,
    ) -> Orchestrator {
        let pager = Pager::start(
            Arc::clone(&parts.store),
            parts.alert_sink,
            Arc::clone(&parts.clock),
            parts.node_name,
            shutdown,
            tasks,
        );
        let webhooks = WebhookDispatcher::new(
            Arc::clone(&parts.store),
            parts.webhook_sink,
            Arc::clone(&parts.clock),
            parts.webhooks,
            parts.settings.ownership.clone(),
        );
        let (events, _) = tokio::sync::broadcast::channel(limits::EVENT_FEED_BUFFER);
        let shared = Arc::new(Shared {
            store: parts.store,
            router: parts.banks,
            clock: parts.clock,
            random: parts.random,
            policy: parts.policy,
            settings: parts.settings,
            pager,
            rules: parts.rules,
            webhooks,
            events,
            reminders_in_hand: Default::default(),
        });
        let orchestrator = Orchestrator {
            shared,
            directory: Arc::new(Directory::default()),
        };
        let router = orchestrator.clone();
        let stopping = shutdown.signalled();
        tasks.spawn("bank outcome routing", async move {
            tokio::pin!(stopping);
            loop {
                tokio::select! {
                    biased;
                    () = &mut stopping => return,
                    event = bank_events.recv() => match event {
                        Some(event) => router.deliver(event),
                        None => return,
                    },
                }
            }
        });
        orchestrator
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// Routes a bank outcome to the payment's account actor.
    pub fn deliver(&self, event: BankEvent) {
        let account = event.payment_name().account.clone();
        if let Err(error) =
            self.directory
                .send_batched(&self.shared, &account, inbox::Batched::Bank(event))
        {
            // Only during shutdown; the payment stays SENT in the store and is
            // re-driven on the next start.
            tracing::warn!(%account, %error, "bank outcome not routed");
        }
    }

    pub async fn create_payment(&self, command: CreatePayment) -> Result<Payment, CommandError> {
        Ok(self.create_payment_answered(command).await?.payment)
    }

    /// As [`Orchestrator::create_payment`], saying whether it was a replay.
    pub async fn create_payment_answered(
        &self,
        command: CreatePayment,
    ) -> Result<Answered, CommandError> {
        let account = command.account.clone();
        self.call(&account, |reply| {
            let create = inbox::Batched::Create(command, reply);
            self.directory.send_batched(&self.shared, &account, create)
        })
        .await
    }

    pub async fn refund_payment(&self, command: RefundPayment) -> Result<Payment, CommandError> {
        Ok(self.refund_payment_answered(command).await?.payment)
    }

    /// As [`Orchestrator::refund_payment`], saying whether it was a replay.
    pub async fn refund_payment_answered(
        &self,
        command: RefundPayment,
    ) -> Result<Answered, CommandError> {
        let account = command.name.account.clone();
        self.call(&account, |reply| {
            self.send(&account, AccountMsg::Refund(command, reply))
        })
        .await
    }

    /// RetryPayment, FailPayment, ApprovePayment and DeclinePayment.
    pub async fn operate(&self, command: OperatorCommand) -> Result<Answered, CommandError> {
        let account = command.name.account.clone();
        self.call(&account, |reply| {
            self.send(&account, AccountMsg::Operate(command, reply))
        })
        .await
    }

    /// A bank's callback: recorded in the payment's inbox with the decision
    /// it causes, in one atomic write; a duplicate changes nothing. Answers
    /// once that write is durable.
    pub async fn bank_callback(&self, callback: BankCallback) -> Result<CallbackAck, CommandError> {
        let account = callback.event.payment_name().account.clone();
        let (reply, answer) = ractor::concurrency::oneshot();
        self.send(&account, AccountMsg::Callback(callback, reply.into()))?;
        answer.await.map_err(|_| self.unanswered(&account))?
    }

    /// Sends a message to an account's actor (spawning it if needed).
    fn send(&self, account: &AccountId, message: AccountMsg) -> Result<(), CommandError> {
        self.directory.send(&self.shared, account, message)
    }

    /// Sends a command for `account` with a reply port (through `send`)
    /// and awaits the answer.
    async fn call(
        &self,
        account: &AccountId,
        send: impl FnOnce(account::Reply) -> Result<(), CommandError>,
    ) -> Result<Answered, CommandError> {
        let (reply, answer) = ractor::concurrency::oneshot();
        send(reply.into())?;
        answer.await.map_err(|_| self.unanswered(account))?
    }

    /// Why a command queued for `account` got no answer: its actor
    /// stopped. If this node no longer serves the account (its shard moved
    /// away and the actor was retired with its queue, or the node is past
    /// its deadline), the command is a write refused by fencing like one
    /// refused at staging: counted, and answered ACCOUNT_MOVING so that
    /// the caller retries at the owner.
    fn unanswered(&self, account: &AccountId) -> CommandError {
        if self.serves(account) {
            return CommandError::Unavailable(
                "the account actor stopped before answering; retry with the same request_id".into(),
            );
        }
        self.shared.settings.ownership.count_fenced();
        CommandError::Moving(format!(
            "account {account} moved to another node before its actor answered; retry with the same request_id"
        ))
    }

    pub async fn get_payment(&self, name: &PaymentName) -> Result<Payment, CommandError> {
        schema::load_payment(self.shared.store.as_ref(), name)
            .await?
            .map(|versioned| versioned.value)
            .ok_or_else(|| CommandError::NotFound(format!("payment {name}")))
    }

    /// One page of an account's payments created in `window`, newest
    /// first, after `after`. An account written by 0.1.0 is indexed by
    /// creation time first, a bounded part per call: until it is, the call
    /// answers UNAVAILABLE (retry).
    pub async fn list_payments(
        &self,
        account: &AccountId,
        after: Option<&schema::CreatedPosition>,
        window: schema::CreatedWindow,
        page_size: usize,
    ) -> Result<(Vec<Payment>, Option<schema::CreatedPosition>), CommandError> {
        let store = self.shared.store.as_ref();
        if !schema::index_by_creation(store, account, limits::CREATION_INDEX_PER_CALL).await? {
            return Err(CommandError::Unavailable(
                "this account's payments (written by payvisor 0.1.0) are being indexed by creation time; retry".into(),
            ));
        }
        let page = schema::list_payments_by_creation(store, account, after, window, page_size);
        Ok(page.await?)
    }

    /// One page of an account's audit records in `[from, until)`.
    pub async fn audit_records(
        &self,
        account: &AccountId,
        from: crate::domain::Timestamp,
        until: crate::domain::Timestamp,
        start_after: Option<String>,
        page_size: usize,
    ) -> Result<(Vec<schema::AuditRecord>, Option<String>), CommandError> {
        let store = self.shared.store.as_ref();
        Ok(schema::audit_records(store, account, from, until, start_after, page_size).await?)
    }

    /// One page of an account's payments in `state`: pages are read and
    /// filtered until `page_size` match, the account ends, or
    /// `LIST_FILTER_SCAN_MAX` payments were read (then a shorter page and a
    /// token to go on).
    pub async fn list_payments_in_state(
        &self,
        account: &AccountId,
        state: PaymentState,
        after: Option<schema::CreatedPosition>,
        window: schema::CreatedWindow,
        page_size: usize,
    ) -> Result<(Vec<Payment>, Option<schema::CreatedPosition>), CommandError> {
        let mut matching = Vec::new();
        let mut cursor = after;
        let mut scanned = 0;
        loop {
            let (page, next) = self
                .list_payments(account, cursor.as_ref(), window, page_size)
                .await?;
            for payment in page {
                scanned += 1;
                cursor = Some(schema::created_position(&payment));
                if payment.state == state {
                    matching.push(payment);
                    if matching.len() == page_size {
                        return Ok((matching, cursor));
                    }
                }
            }
            if next.is_none() {
                return Ok((matching, None));
            }
            if scanned >= limits::LIST_FILTER_SCAN_MAX {
                return Ok((matching, cursor));
            }
        }
    }

    /// The orchestrator's clock.
    pub fn now(&self) -> crate::domain::Timestamp {
        self.shared.clock.now()
    }

    pub async fn get_account(&self, account: &AccountId) -> Result<Balances, CommandError> {
        schema::load_account(self.shared.store.as_ref(), account)
            .await?
            .map(|versioned| versioned.value.balances)
            .ok_or_else(|| CommandError::NotFound(format!("account accounts/{account}")))
    }

    /// Account actors running now.
    pub fn live_accounts(&self) -> usize {
        self.directory.len()
    }

    /// What waits in the account actors' queues now.
    pub fn queue_depth(&self) -> crate::metrics::QueueDepth {
        self.directory.queue_depth()
    }

    /// Re-drives every watched payment of the accounts this node serves:
    /// called at start-up. Returns how many payments were resumed.
    pub async fn recover(&self) -> Result<usize, CommandError> {
        self.recover_where(|_| true).await
    }

    /// Re-drives the watched payments of the accounts this node serves
    /// that `pick` picks (a cluster member: those of the shards it gained).
    pub async fn recover_where(
        &self,
        pick: impl Fn(&AccountId) -> bool,
    ) -> Result<usize, CommandError> {
        let mut resumed = 0;
        let mut token = None;
        loop {
            let (payments, next) = schema::waiting_payments(
                self.shared.store.as_ref(),
                WaitingList::Watched,
                token.as_ref(),
                limits::RECOVERY_PAGE_SIZE,
            )
            .await?;
            for payment in payments {
                if !pick(&payment.account) || !self.serves(&payment.account) {
                    continue;
                }
                self.send(&payment.account, AccountMsg::Resume(payment.id))?;
                resumed += 1;
            }
            match next {
                Some(next) => token = Some(next),
                None => return Ok(resumed),
            }
        }
    }

    /// One watchdog pass: wakes the actor of every payment whose reminder
    /// is due now, and queues undelivered pages. Returns the reminders due.
    pub async fn sweep_watchdog(&self) -> Result<usize, CommandError> {
        let store = self.shared.store.as_ref();
        let now = self.shared.clock.now();
        let due = watchdog::sweep_due(store, now, |name| {
            if !self.serves(&name.account) {
                return; // its owner's sweep wakes it
            }
            let message = AccountMsg::Reminder(name.payment);
            if let Err(error) = self.directory.send(&self.shared, &name.account, message) {
                tracing::debug!(account = %name.account, %error, "reminder not routed (stopping)");
            }
        })
        .await?;
        watchdog::sweep_pages(store, &self.shared.pager, |account| self.serves(account)).await?;
        Ok(due)
    }

    /// One page of stalled payments (re-driven or paged), across accounts.
    pub async fn list_stalled(
        &self,
        after: Option<&IndexPosition>,
        page_size: usize,
    ) -> Result<(Vec<Payment>, Option<IndexPosition>), CommandError> {
        Ok(schema::waiting_payments(
            self.shared.store.as_ref(),
            WaitingList::Stalled,
            after,
            page_size,
        )
        .await?)
    }

    /// Stalled payments by state (for the gauge).
    pub async fn stalled_counts(&self) -> Result<BTreeMap<String, u64>, CommandError> {
        Ok(watchdog::stalled_counts(self.shared.store.as_ref()).await?)
    }

    /// The live feed of committed events for `WatchPaymentEvents`.
    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<Arc<PaymentEvent>> {
        self.shared.events.subscribe()
    }

    /// Webhook deliveries pending, read from the store; `None` when no
    /// endpoint is configured.
    pub async fn webhook_backlog(&self) -> Result<Option<schema::WebhookBacklog>, CommandError> {
        if !self.shared.webhooks.settings().in_use() {
            return Ok(None);
        }
        let now = self.shared.clock.now();
        Ok(Some(
            schema::webhook_backlog(self.shared.store.as_ref(), now).await?,
        ))
    }

    /// The webhook dispatcher (its sweep, re-sends).
    pub fn webhooks(&self) -> &WebhookDispatcher {
        &self.shared.webhooks
    }

    /// An event and its delivery state, by name.
    pub async fn payment_events(
        &self,
        payment: &PaymentName,
    ) -> Result<Vec<schema::EventRecord>, CommandError> {
        let records = schema::payment_event_records(self.shared.store.as_ref(), payment).await?;
        if records.is_empty() {
            // Either no such payment, or one written before events existed.
            self.get_payment(payment).await?;
        }
        Ok(records.into_iter().map(|record| record.value).collect())
    }

    /// An operator (`actor`, when identified) re-sends an event to one
    /// endpoint or all.
    pub async fn resend_event(
        &self,
        event: &str,
        endpoint: Option<&str>,
        actor: Option<&str>,
        request_id: Option<&crate::domain::RequestId>,
    ) -> Result<crate::webhooks::dispatcher::Resent, CommandError> {
        let key = request_id.map(|request_id| crate::webhooks::dispatcher::ResendKey {
            request_id,
            retention: self.shared.settings.idempotency_retention,
        });
        self.shared
            .webhooks
            .resend(event, endpoint, actor, key)
            .await
            .map_err(|error| match error {
                ResendError::BadName(why) => CommandError::invalid("name", why),
                ResendError::NotFound(what) => CommandError::NotFound(format!("event {what}")),
                ResendError::UnknownEndpoint(name) => CommandError::invalid(
                    "endpoint",
                    format!("no webhook endpoint named {name:?} is configured"),
                ),
                ResendError::NotSubscribed {
                    endpoint,
                    event_type,
                } => CommandError::invalid(
                    "endpoint",
                    match endpoint {
                        Some(name) => format!(
                            "webhook endpoint {name:?} does not subscribe to {event_type} events"
                        ),
                        None => format!("no webhook endpoint subscribes to {event_type} events"),
                    },
                ),
                ResendError::Conflict => CommandError::Conflict,
                ResendError::KeyReused => CommandError::IdempotencyKeyReused,
                ResendError::Store(error) => error.into(),
            })
    }

    /// Replays the durable feed after `position` (see
    /// `schema::feed_after`).
    pub async fn feed_after(
        &self,
        position: Option<&FeedPosition>,
        limit: usize,
    ) -> Result<Vec<schema::EventRecord>, CommandError> {
        Ok(schema::feed_after(self.shared.store.as_ref(), position, limit).await?)
    }

    /// Payments in review across accounts, one page (review index).
    pub async fn list_in_review(
        &self,
        after: Option<&IndexPosition>,
        page_size: usize,
    ) -> Result<(Vec<Payment>, Option<IndexPosition>), CommandError> {
        let (payments, next) = schema::waiting_payments(
            self.shared.store.as_ref(),
            WaitingList::Review,
            after,
            page_size,
        )
        .await?;
        let payments = payments
            .into_iter()
            .filter(|payment| payment.state == PaymentState::InReview)
            .collect();
        Ok((payments, next))
    }

    /// The live feed of pages for `WatchAlerts`.
    pub fn subscribe_alerts(&self) -> tokio::sync::broadcast::Receiver<AlertEvent> {
        self.shared.pager.subscribe()
    }

    /// Stops taking commands, lets every account actor finish what is in its
    /// mailbox, and waits for them (bounded by `grace`).
    pub async fn shutdown(&self, grace: Duration) {
        let mut drains = tokio::task::JoinSet::new();
        for actor in self.directory.close() {
            drains.spawn(async move {
                let _ = actor.drain_and_wait(Some(grace)).await;
            });
        }
        let _ = tokio::time::timeout(grace, drains.join_all()).await;
    }

    /// Whether this node may act for `account` now (always, alone on its
    /// store; for a cluster member, while it owns the account's shard).
    pub fn serves(&self, account: &AccountId) -> bool {
        self.shared.settings.ownership.serves(account)
    }

    /// Stops the actors of accounts this node no longer serves (their
    /// shard moved away): what they hold is stale, and their owner now
    /// runs them. Returns how many were stopped.
    pub fn retire_unserved(&self) -> usize {
        self.directory
            .retire(|account| !self.serves(account))
            .into_iter()
            .map(|actor| actor.stop(Some("its account moved to another node".into())))
            .count()
    }

    /// Accounts with a running actor (for tests of passivation).
    pub fn active_accounts(&self) -> usize {
        self.directory.len()
    }
}
