//! A bank's callback, verified by the callback endpoint: recorded in the
//! inbox (keyed by the bank's message id, the first action of the write,
//! `NotExists`, so a duplicate fails there and is acknowledged) together
//! with the decision it causes, if any. An outcome from a bank the payment
//! is not at is recorded and changes nothing (reconciliation reports the
//! bank's side).

use ractor::ActorRef;

use super::commit::WriteError;
use super::retry::{AccountCommand, Attempt};
use super::{AccountMsg, AccountState};
use crate::actors::{BankCallback, CallbackAck, CommandError};
use crate::domain::payment::CallbackEffect;
use crate::store::schema;
use crate::store::{Condition, StoreError, WriteOp};

struct Callback<'a> {
    callback: &'a BankCallback,
}

impl AccountCommand for Callback<'_> {
    type Answer = CallbackAck;

    async fn attempt(
        &mut self,
        state: &mut AccountState,
        myself: &ActorRef<AccountMsg>,
    ) -> Result<Attempt<CallbackAck>, CommandError> {
        let callback = self.callback;
        let name = callback.event.payment_name();
        let current = state
            .payment(&name.payment)
            .await?
            .ok_or_else(|| CommandError::NotFound(format!("payment {name}")))?;
        let now = state.shared.clock.now();
        let effect = current.value.on_bank_callback(
            &callback.bank,
            &callback.event,
            now,
            &state.shared.policy,
        )?;
        let decision = match effect {
            CallbackEffect::Applies(decision) => Some(*decision),
            CallbackEffect::Ignored => None,
            CallbackEffect::FromAnotherBank => {
                tracing::error!(payment = %name, bank = %callback.bank, at = ?current.value.current_bank(), "outcome from a bank the payment is not at; ignored");
                None
            }
        };
        let applied = decision.is_some();
        let mut staging = state.staging()?;
        let mut inbox = schema::inbox_item(&schema::InboxRecord {
            bank: callback.bank.clone(),
            message_id: callback.message_id.clone(),
            payment: name.clone(),
            kind: callback.kind.clone(),
            received_at: now,
            applied,
        });
        let mut condition = Condition::NotExists;
        if crate::mutations::planted(crate::mutations::Mutation::CallbackWithoutInboxDedupe) {
            let recorded = state.shared.store.get(inbox.key.clone()).await?;
            if let Some(recorded) = recorded {
                condition = Condition::VersionIs(recorded.version);
                inbox.version = recorded.version + 1;
            }
        }
        staging.ops.push(WriteOp::Put {
            item: inbox,
            condition,
        });
        if let Some(decision) = decision {
            let trace = callback.trace.clone();
            state.stage(&mut staging, decision, Some(current.version), None, trace)?;
        }
        match state.write(&staging).await {
            Ok(()) => {
                state.apply_written(myself, staging).await;
                Ok(Attempt::Done(if applied {
                    CallbackAck::Applied
                } else {
                    CallbackAck::Ignored
                }))
            }
            Err(WriteError::Store(StoreError::ConditionFailed { index: 0, .. })) => {
                Ok(Attempt::Done(CallbackAck::Duplicate))
            }
            Err(WriteError::Store(StoreError::ConditionFailed { .. })) => Ok(Attempt::Stale),
            Err(error) => Err(error.into()),
        }
    }
}

impl AccountState {
    pub(super) async fn on_callback(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        callback: BankCallback,
    ) -> Result<CallbackAck, CommandError> {
        self.retrying(
            myself,
            &mut Callback {
                callback: &callback,
            },
        )
        .await
    }
}
