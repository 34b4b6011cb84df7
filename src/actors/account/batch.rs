//! A busy account's creates and bank outcomes, folded several to one
//! atomic write (see `ACCOUNT_BATCH_COMMANDS_MAX`): each decided on the
//! state the previous ones left, answered after the write, and run again
//! one by one if the write fails.

use ractor::ActorRef;

use super::commit::Staging;
use super::create::fingerprint;
use super::{AccountMsg, AccountState, RetryableWork};
use crate::actors::inbox::Batched;
use crate::actors::CommandError;
use crate::domain::account::NewIdempotency;
use crate::domain::payment::Decision;
use crate::domain::PaymentId;
use crate::limits;
use crate::random::new_payment_id;

impl AccountState {
    /// Takes everything in the inbox, a batch at a time.
    pub(super) async fn drain(&mut self, myself: &ActorRef<AccountMsg>) {
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
    pub(super) async fn run_one(&mut self, myself: &ActorRef<AccountMsg>, command: Batched) {
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
    pub(super) async fn run_batch(&mut self, myself: &ActorRef<AccountMsg>, batch: Vec<Batched>) {
        if batch.len() == 1 || self.hydrate().await.is_err() {
            for command in batch {
                self.run_one(myself, command).await;
            }
            return;
        }
        let now = self.shared.clock.now();
        // Not writable here: each command alone gets the answer why.
        let Ok(mut staging) = self.staging() else {
            for command in batch {
                self.run_one(myself, command).await;
            }
            return;
        };
        // What was staged, to answer after the write or to run again alone.
        let mut staged: Vec<Batched> = Vec::new();
        let mut alone: Vec<Batched> = Vec::new();
        let mut request_ids = std::collections::HashSet::new();
        let mut payments_touched = std::collections::HashSet::new();
        for command in batch {
            self.deciding_since = crate::trace::Stamp::now();
            match command {
                Batched::Create(create, reply) => {
                    // Caller-chosen ids and repeated keys have answers of
                    // their own (taken id, replay): they run alone.
                    if create.payment_id.is_some() || !request_ids.insert(create.request_id.clone())
                    {
                        alone.push(Batched::Create(create, reply));
                        continue;
                    }
                    let fingerprint = fingerprint(&create);
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
                    let trace = create.trace.clone();
                    match self.stage_batched(&mut staging, decision, None, Some(idempotency), trace)
                    {
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
                                .stage_batched(
                                    &mut staging,
                                    decision,
                                    Some(current.version),
                                    None,
                                    None,
                                )
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
                            let _ = reply.send(Ok(crate::actors::Answered::new(payment)));
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

    /// Stages a batched command's decision. The batch's bound rests on each
    /// writing at most `DECISION_ITEMS_MAX` items (asserted here; the
    /// relation of the constants is asserted at compile time in `limits`).
    fn stage_batched(
        &self,
        staging: &mut Staging,
        decision: Decision,
        payment_version: Option<u64>,
        idempotency: Option<NewIdempotency>,
        trace: Option<crate::trace::TraceParent>,
    ) -> Result<(), CommandError> {
        let before = staging.ops.len();
        self.stage(staging, decision, payment_version, idempotency, trace)?;
        debug_assert!(
            staging.ops.len() - before <= limits::DECISION_ITEMS_MAX,
            "a batched decision wrote {} items",
            staging.ops.len() - before
        );
        Ok(())
    }
}
