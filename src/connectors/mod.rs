//! The bank boundary. A [`Connector`] hands payments and refunds to a bank;
//! the bank's answers arrive later, asynchronously, as `BankEvent`s on the
//! channel the orchestrator reads (like a bank's callbacks).
//!
//! **Boundary:** everything a connector is given carries its idempotency key
//! (the payment name, plus the refund id for refunds). A connector may be
//! called again with the same key after a crash or a retry, and must not
//! collect or return money twice for it.

pub mod breaker;
pub mod built_in_bank;
pub mod http;
pub mod routing;

use std::collections::BTreeMap;

use crate::domain::payment::BankOutcome;
use crate::domain::{Money, PaymentName};
use crate::store::BoxFuture;

/// A payment to collect. `name` is the idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentSubmission {
    pub name: PaymentName,
    pub amount: Money,
    pub metadata: BTreeMap<String, String>,
    /// The trace of the call that caused it: the bank call is a span of it
    /// (`None`: a re-drive; the call begins a trace of its own).
    pub trace: Option<crate::trace::TraceParent>,
}

/// A refund to pay out. `(name, refund_id)` is the idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundSubmission {
    pub name: PaymentName,
    pub refund_id: String,
    pub amount: Money,
    /// As [`PaymentSubmission::trace`].
    pub trace: Option<crate::trace::TraceParent>,
}

/// What a bank knows about a payment, when asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BankStatus {
    /// The bank never received it.
    Unknown,
    /// Received, no outcome yet.
    Pending,
    Done(BankOutcome),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectorError {
    /// The bank definitely refused the submission; it will never process it.
    #[error("bank rejected the request: {0}")]
    Rejected(String),
    /// Timeout, network or bank error: the outcome is unknown; retry with
    /// the same key.
    #[error("bank unavailable: {0}")]
    Transient(String),
}

/// A bank, as payvisor sees it.
pub trait Connector: Send + Sync + 'static {
    /// Hands a payment to the bank. `Ok` means the bank has it; the outcome
    /// follows as a [`BankEvent`].
    fn submit_payment(
        &self,
        submission: PaymentSubmission,
    ) -> BoxFuture<'_, Result<(), ConnectorError>>;
    /// Hands a refund to the bank; the outcome follows as a [`BankEvent`].
    fn submit_refund(
        &self,
        submission: RefundSubmission,
    ) -> BoxFuture<'_, Result<(), ConnectorError>>;
    /// Asks the bank what it knows of a payment (re-drive, reconciliation).
    fn payment_status(
        &self,
        name: PaymentName,
    ) -> BoxFuture<'_, Result<BankStatus, ConnectorError>>;
}
