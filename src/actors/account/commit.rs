//! Persist, then act: decisions are staged by the pure core, written in
//! one atomic conditional write with the account item, and only then
//! applied to memory and executed (pages, live events, bank calls).

use std::sync::Arc;

use ractor::ActorRef;

use super::{AccountMsg, AccountState};
use crate::actors::payment::PaymentMsg;
use crate::actors::CommandError;
use crate::connectors::PaymentSubmission;
use crate::domain::account::{AccountBook, NewIdempotency, StageContext, StagedDecision};
use crate::domain::ownership::fence;
use crate::domain::payment::{Decision, Effect, Payment};
use crate::mutations::{planted, Mutation};
use crate::store::schema::{self, Versioned};
use crate::store::{Condition, StoreError, WriteOp};
use crate::trace::{Span, SpanKind, SpanSet, Stamp, TraceParent};

/// Decisions prepared for one atomic write.
pub(super) struct Staging {
    /// The account item as it will be after the write.
    pub(super) book: AccountBook,
    /// The account item's version now (0: it does not exist yet).
    pub(super) base_version: u64,
    /// Every action but the account item's, in order.
    pub(super) ops: Vec<WriteOp>,
    pub(super) staged: Vec<StagedDecision>,
    /// Each staged decision's trace (the call that caused it, if any).
    pub(super) traces: Vec<Option<TraceParent>>,
}

/// Why a staged write was not made.
#[derive(Debug, thiserror::Error)]
pub(super) enum WriteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The account's shard left this node (released, or past its
    /// self-demotion deadline) between staging and writing: nothing was
    /// sent, so no write of an owner that gave the lease up can land.
    #[error("account {0} is not served by this node now; retry with the same request_id")]
    NotOwner(crate::domain::AccountId),
}

impl From<WriteError> for CommandError {
    fn from(error: WriteError) -> CommandError {
        match error {
            WriteError::Store(error) => error.into(),
            moved @ WriteError::NotOwner(_) => CommandError::Moving(moved.to_string()),
        }
    }
}

/// What committing a decision ran into.
pub(super) enum CommitError {
    /// The idempotency key was taken (by a concurrent duplicate).
    KeyTaken,
    /// The payment item exists already (create) or changed (update).
    PaymentTaken,
    /// Someone else changed the account meanwhile: reload and retry.
    Stale,
    Failed(CommandError),
}

impl AccountState {
    /// Persists `decision` in one atomic write, then updates memory and
    /// hands the decision's effects to the payment's child actor.
    pub(super) async fn commit(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        decision: Decision,
        payment_version: Option<u64>,
        idempotency: Option<NewIdempotency>,
        trace: Option<TraceParent>,
    ) -> Result<Payment, CommitError> {
        let has_key = idempotency.is_some();
        let mut staging = self.staging().map_err(CommitError::Failed)?;
        self.stage(&mut staging, decision, payment_version, idempotency, trace)
            .map_err(CommitError::Failed)?;
        match self.write(&staging).await {
            Ok(()) => {}
            Err(WriteError::Store(StoreError::ConditionFailed { index, .. })) => {
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

    /// An empty atomic write on top of the account as last read or written,
    /// stamped with this node's lease epoch; refused if this node may not
    /// write the account now, or a newer owner has written it (fencing:
    /// the write is conditional on the account's version, so a write
    /// prepared before the new owner's cannot land after it, and reading
    /// the account again shows the newer epoch).
    pub(super) fn staging(&self) -> Result<Staging, CommandError> {
        let record = self.record.as_ref().expect("hydrated before commit");
        let ownership = &self.shared.settings.ownership;
        let moved = || {
            ownership.count_fenced();
            CommandError::Moving(format!(
                "account {} is not served by this node now; retry with the same request_id",
                self.account
            ))
        };
        let mine = ownership.epoch(&self.account).ok_or_else(moved)?;
        let unfenced = planted(Mutation::StaleOwnerNotFenced);
        let fenced = if unfenced {
            Ok(mine)
        } else {
            fence(record.value.owner_epoch, mine)
        };
        let epoch = fenced.map_err(|fenced| {
            tracing::warn!(account = %self.account, %fenced, "write refused: a newer owner wrote the account");
            moved()
        })?;
        let mut book = record.value.clone();
        book.owner_epoch = epoch;
        Ok(Staging {
            book,
            base_version: record.version,
            ops: Vec::new(),
            staged: Vec::new(),
            traces: Vec::new(),
        })
    }

    /// Adds one decision to `staging`: the core stages everything it
    /// writes (route, outbox, movements, velocity, idempotency record, page,
    /// deliveries) and the schema turns that into items. On error `staging`
    /// is unchanged.
    pub(super) fn stage(
        &self,
        staging: &mut Staging,
        decision: Decision,
        payment_version: Option<u64>,
        idempotency: Option<NewIdempotency>,
        trace: Option<TraceParent>,
    ) -> Result<(), CommandError> {
        let rules = self.shared.rules.current();
        let webhooks = self.shared.webhooks.settings();
        // The endpoints in force now, each only if it subscribed to one of
        // this decision's events.
        let in_force = webhooks.endpoints();
        let endpoints: Vec<&str> = in_force
            .iter()
            .filter(|endpoint| {
                endpoint.takes_every_type()
                    || (decision.events.iter()).any(|event| endpoint.wants(&event.event_type()))
            })
            .map(|endpoint| endpoint.name.as_str())
            .collect();
        let context = StageContext {
            now: self.shared.clock.now(),
            policy: &self.shared.policy,
            banks: self.shared.router.as_ref(),
            velocity_keep_millis: rules.keep_millis(),
            webhook_endpoints: &endpoints,
            webhook_retry_for_millis: webhooks.retry_for.as_millis() as i64,
            idempotency_retention_millis: (self.shared.settings.idempotency_retention).as_millis()
                as i64,
        };
        let mut staged = staging
            .book
            .stage(decision, payment_version, idempotency, &context)?;
        if let Some(trace) = &trace {
            let mut span = Span::start_at(
                "account.decide",
                SpanKind::Internal,
                Some(trace),
                self.deciding_since,
            );
            if span.is_recording() {
                let payment = &staged.decision.payment;
                span.set("payvisor.payment", self.name(&payment.id).to_string());
                span.set("payvisor.state", payment.state.api_name());
            }
        }
        // The events of a change a call caused carry its trace: their
        // webhook deliveries are spans of it.
        if let Some(trace) = &trace {
            let events = (staged.events.iter_mut()).flat_map(|record| record.events.iter_mut());
            for event in events.chain(staged.decision.events.iter_mut()) {
                event.trace = Some(trace.header());
            }
        }
        schema::staged_writes(&self.account, &staged, &mut staging.ops);
        staging.staged.push(staged);
        staging.traces.push(trace);
        Ok(())
    }

    /// Writes what is staged, and the account item, in one atomic write,
    /// if this node still holds the account's shard at the epoch staged:
    /// a batch stages before it reads payments, and the shard may have
    /// been given up meanwhile (the membership stops serving a shard before
    /// it frees the lease, so no write is sent after it).
    pub(super) async fn write(&self, staging: &Staging) -> Result<(), WriteError> {
        let ownership = &self.shared.settings.ownership;
        let unfenced = planted(Mutation::StaleOwnerNotFenced);
        if ownership.epoch(&self.account) != Some(staging.book.owner_epoch) && !unfenced {
            ownership.count_fenced();
            return Err(WriteError::NotOwner(self.account.clone()));
        }
        let mut ops = staging.ops.clone();
        if planted(Mutation::OutboxSentBeforeCommit) {
            self.send_before_commit(staging).await;
        }
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
        if staging.base_version == 0 {
            // A new account has no payments older than their creation
            // pointers: its creation order is complete from the start.
            let index = schema::CreationIndex {
                complete: true,
                after: None,
            };
            ops.push(WriteOp::Put {
                item: schema::creation_index_item(&self.account, &index, 1),
                condition: Condition::NotExists,
            });
        }
        if planted(Mutation::StaleOwnerNotFenced) {
            self.unconditioned(&mut ops, true).await?;
        } else if planted(Mutation::RefundWithoutVersionCondition) {
            let refund = (staging.staged.iter())
                .flat_map(|staged| &staged.decision.events)
                .any(|event| event.event_type() == "refund.pending");
            if refund {
                self.unconditioned(&mut ops, false).await?;
            }
        }
        // A span in each traced decision's trace: the write is theirs.
        let traces = staging.traces.iter().map(Option::as_ref);
        let mut persist = SpanSet::start_at("account.persist", traces, Stamp::now());
        persist.set("payvisor.decisions", staging.staged.len() as i64);
        let mut store_call = persist.children("store.transact", SpanKind::Client);
        store_call.set("payvisor.items", ops.len() as i64);
        let written = self.shared.store.transact(ops).await;
        if written.is_err() {
            // The kind of failure only: a store's error text holds keys.
            let outcome = crate::metrics::store::outcome(&written);
            store_call.fail(outcome);
            persist.fail(outcome);
        }
        Ok(written?)
    }

    /// Planted bugs (`mutations`): the version conditions of `ops` (only
    /// the account item's, if `account_only`) replaced by the versions
    /// stored now, so that the write checks nothing its decision read.
    async fn unconditioned(
        &self,
        ops: &mut [WriteOp],
        account_only: bool,
    ) -> Result<(), StoreError> {
        let account = schema::account_key(&self.account);
        for op in ops.iter_mut() {
            let WriteOp::Put { item, condition } = op else {
                continue;
            };
            if !matches!(condition, Condition::VersionIs(_))
                || (account_only && item.key != account)
            {
                continue;
            }
            if let Some(stored) = self.shared.store.get(item.key.clone()).await? {
                *condition = Condition::VersionIs(stored.version);
                item.version = stored.version + 1;
            }
        }
        Ok(())
    }

    /// A planted bug (`mutations`): the payments this write sends to a
    /// bank go there before the write.
    async fn send_before_commit(&self, staging: &Staging) {
        for staged in &staging.staged {
            let payment = &staged.decision.payment;
            for effect in &staged.decision.effects {
                let Effect::SubmitPayment {
                    name,
                    amount,
                    metadata,
                    bank,
                } = effect
                else {
                    continue;
                };
                let bank = bank.as_deref().or(payment.current_bank());
                let Some(connector) = bank.and_then(|bank| self.shared.router.connector(bank))
                else {
                    continue;
                };
                let submission = PaymentSubmission {
                    name: name.clone(),
                    amount: *amount,
                    metadata: metadata.clone(),
                    trace: None,
                };
                let _ = connector.submit_payment(submission).await;
            }
        }
    }

    /// After a durable write: update memory, then act (pages, bank calls).
    /// Returns the staged payments as written.
    pub(super) async fn apply_written(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        staging: Staging,
    ) -> Vec<Payment> {
        self.record = Some(Versioned {
            value: staging.book,
            version: staging.base_version + 1,
        });
        let mut written = Vec::with_capacity(staging.staged.len());
        for (staged, trace) in staging.staged.into_iter().zip(staging.traces) {
            let _act = (trace.as_ref())
                .map(|trace| Span::start("account.act", SpanKind::Internal, Some(trace)));
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
                            .cast(PaymentMsg::Execute(decision.effects.clone(), trace.clone()))
                            .is_err()
                        {
                            self.spawn_child(myself, id.clone(), decision.effects, trace)
                                .await;
                        }
                    }
                    None => (self.spawn_child(myself, id.clone(), decision.effects, trace)).await,
                }
            } else if !payment.has_pending_work() {
                // Out of `children` as it is told to stop, not when its
                // termination arrives: a stop overtakes the messages queued
                // behind it, so an effect cast to a stopping child (a refund
                // right after the payment was processed) would be dropped
                // with it, and wait for the watchdog. The next effect starts
                // a new child; `child_payments` still names this one for
                // its termination.
                if let Some(child) = self.children.remove(&id) {
                    child.stop(None);
                }
            }
            written.push(payment);
        }
        written
    }
}
