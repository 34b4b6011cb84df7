//! The states a payment and a refund can be in: leaf types that the state
//! machine ([`super::payment`]), its events and its watch all name, so they
//! sit below all three.

use serde::Serialize;

/// Serialised in webhook payloads (as part of [`super::events::Change`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentState {
    Created,
    Approved,
    InReview,
    Sent,
    Processed,
    PartiallyRefunded,
    Refunded,
    Declined,
    Failed,
}

impl PaymentState {
    pub const ALL: [PaymentState; 9] = [
        PaymentState::Created,
        PaymentState::Approved,
        PaymentState::InReview,
        PaymentState::Sent,
        PaymentState::Processed,
        PaymentState::PartiallyRefunded,
        PaymentState::Refunded,
        PaymentState::Declined,
        PaymentState::Failed,
    ];

    /// The state's name in logs, metrics and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentState::Created => "created",
            PaymentState::Approved => "approved",
            PaymentState::InReview => "in_review",
            PaymentState::Sent => "sent",
            PaymentState::Processed => "processed",
            PaymentState::PartiallyRefunded => "partially_refunded",
            PaymentState::Refunded => "refunded",
            PaymentState::Declined => "declined",
            PaymentState::Failed => "failed",
        }
    }

    /// The state's name in the gRPC API (`Payment.State`), as logs write
    /// it, so a log line and an API answer read the same.
    pub fn api_name(self) -> &'static str {
        match self {
            PaymentState::Created => "STATE_CREATED",
            PaymentState::Approved => "STATE_APPROVED",
            PaymentState::InReview => "STATE_IN_REVIEW",
            PaymentState::Sent => "STATE_SENT",
            PaymentState::Processed => "STATE_PROCESSED",
            PaymentState::PartiallyRefunded => "STATE_PARTIALLY_REFUNDED",
            PaymentState::Refunded => "STATE_REFUNDED",
            PaymentState::Declined => "STATE_DECLINED",
            PaymentState::Failed => "STATE_FAILED",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            PaymentState::Refunded | PaymentState::Declined | PaymentState::Failed
        )
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundState {
    Pending,
    Succeeded,
    Failed,
}

impl RefundState {
    pub const ALL: [RefundState; 3] = [
        RefundState::Pending,
        RefundState::Succeeded,
        RefundState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefundState::Pending => "pending",
            RefundState::Succeeded => "succeeded",
            RefundState::Failed => "failed",
        }
    }
}
