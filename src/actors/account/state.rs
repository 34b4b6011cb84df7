//! What the account actor holds of the store: the account item, the
//! payments that still have work, and the reads behind them (each payment
//! asserted against its invariants as it is read).

use super::AccountState;
use crate::actors::CommandError;
use crate::domain::account::AccountBook;
use crate::domain::payment::Payment;
use crate::domain::{PaymentId, PaymentName, RequestId};
use crate::limits;
use crate::store::schema::{self, Versioned};

impl AccountState {
    pub(super) fn name(&self, payment: &PaymentId) -> PaymentName {
        PaymentName {
            account: self.account.clone(),
            payment: payment.clone(),
        }
    }

    pub(super) async fn hydrate(&mut self) -> Result<(), CommandError> {
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
    pub(super) fn invalidate(&mut self) {
        self.record = None;
        self.payments.clear();
    }

    pub(super) async fn payment(
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
    pub(super) fn cache(&mut self, payment: Versioned<Payment>) {
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
    pub(super) async fn replay(
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
}
