//! The one mapping from [`CommandError`] to a gRPC status: an AIP-193
//! `google.rpc.Status` with an `ErrorInfo` (reason in UPPER_SNAKE, domain
//! `payvisor.dev`) and, for bad input, a `BadRequest` listing every field.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::actors::CommandError;
use crate::domain::payment::Rejection;
use crate::domain::watch::OperatorRejection;

/// `ErrorInfo.domain` of every payvisor error.
pub const ERROR_DOMAIN: &str = "payvisor.dev";

impl From<CommandError> for Status {
    fn from(error: CommandError) -> Status {
        let message = error.to_string();
        let (code, reason) = match &error {
            CommandError::InvalidArgument { .. } => (Code::InvalidArgument, "INVALID_ARGUMENT"),
            CommandError::NotFound(_) => (Code::NotFound, "NOT_FOUND"),
            CommandError::PaymentAlreadyExists(_) => {
                (Code::AlreadyExists, "PAYMENT_ALREADY_EXISTS")
            }
            CommandError::IdempotencyKeyReused => (Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED"),
            CommandError::Rejected(rejection) => (
                Code::FailedPrecondition,
                match rejection {
                    Rejection::NotRefundable(_) => "PAYMENT_NOT_REFUNDABLE",
                    Rejection::NothingLeftToRefund => "NOTHING_LEFT_TO_REFUND",
                    Rejection::RefundExceedsRemaining { .. } => "REFUND_EXCEEDS_REMAINING",
                    Rejection::TooManyRefunds { .. } => "TOO_MANY_REFUNDS",
                    Rejection::CurrencyMismatch { .. } => "CURRENCY_MISMATCH",
                    Rejection::Ledger(_) => "LEDGER_REJECTED",
                    // Never here: `From<Rejection>` makes it `Internal`.
                    Rejection::Invariant(_) => "INTERNAL",
                },
            ),
            CommandError::OperatorRejected(rejection) => (
                Code::FailedPrecondition,
                match rejection {
                    OperatorRejection::NothingToRetry(_) => "PAYMENT_NOT_RETRYABLE",
                    OperatorRejection::AwaitsReview => "PAYMENT_AWAITS_REVIEW",
                    OperatorRejection::NotFailable(_) => "PAYMENT_NOT_FAILABLE",
                    OperatorRejection::NotInReview(_) => "PAYMENT_NOT_IN_REVIEW",
                },
            ),
            CommandError::InsufficientFunds => (Code::FailedPrecondition, "INSUFFICIENT_FUNDS"),
            CommandError::Conflict => (Code::Aborted, "CONCURRENT_MODIFICATION"),
            CommandError::StreamLagged => (Code::Aborted, "EVENT_STREAM_LAGGED"),
            CommandError::Unavailable(_) => (Code::Unavailable, "UNAVAILABLE"),
            CommandError::Moving(_) => (Code::Unavailable, "ACCOUNT_MOVING"),
            CommandError::Internal(_) => (Code::Internal, "INTERNAL"),
            CommandError::Unauthenticated(_) => (Code::Unauthenticated, "UNAUTHENTICATED"),
            CommandError::PermissionDenied => (Code::PermissionDenied, "PERMISSION_DENIED"),
            CommandError::RateLimited { .. } => (Code::ResourceExhausted, "RATE_LIMITED"),
            CommandError::Malformed(_) => (Code::InvalidArgument, "MALFORMED_REQUEST"),
            CommandError::DataCorrupt(_) => (Code::DataLoss, "STORE_CORRUPT"),
            CommandError::TooLarge(_) => (Code::ResourceExhausted, "REQUEST_TOO_LARGE"),
        };
        if code == Code::Internal || code == Code::DataLoss {
            tracing::error!(%message, "internal error");
        }
        let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new());
        if let CommandError::InvalidArgument { violations } = &error {
            details.set_bad_request(
                violations
                    .iter()
                    .map(|violation| {
                        FieldViolation::new(violation.field.clone(), violation.description.clone())
                    })
                    .collect::<Vec<_>>(),
            );
        }
        if let CommandError::RateLimited { retry_after } = &error {
            details.set_retry_info(Some(*retry_after));
        } else if code == Code::Unavailable {
            // Worth retrying, and when: about one membership round.
            details.set_retry_info(Some(crate::limits::CLUSTER_RETRY_DELAY));
        }
        Status::with_error_details(code, message, details)
    }
}
