//! The one mapping from [`CommandError`] to a gRPC status: an AIP-193
//! `google.rpc.Status` with an `ErrorInfo` (reason in UPPER_SNAKE, domain
//! `payvisor.dev`) and, for bad input, a `BadRequest` listing every field.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::actors::CommandError;
use crate::domain::payment::Rejection;
use crate::domain::watch::OperatorRejection;

/// True at most once a second (process-wide): for log lines a failing
/// dependency would otherwise repeat for every call.
fn once_a_second() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    now > last
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// `ErrorInfo.domain` of every payvisor error.
pub const ERROR_DOMAIN: &str = "payvisor.dev";

impl From<CommandError> for Status {
    fn from(error: CommandError) -> Status {
        status(error, None)
    }
}

/// The error of a call about `resource` (a payment's, an account's or an
/// event's name): its `ErrorInfo.metadata` names it under `resource`, so a
/// client that sent several calls knows which one failed (AIP-193).
pub fn on_resource(resource: &str) -> impl FnOnce(CommandError) -> Status + '_ {
    move |error| status(error, Some(resource))
}

/// The one mapping from a command's error to the gRPC status.
fn status(error: CommandError, resource: Option<&str>) -> Status {
    // What the caller reads is payvisor's own sentence; the log keeps
    // what the store said (at most one line a second while it fails:
    // an outage must not flood the log).
    match &error {
        CommandError::StoreUnavailable(detail) if once_a_second() => {
            tracing::warn!(%detail, "a call failed: the store is unavailable");
        }
        CommandError::Internal(detail) => tracing::error!(%detail, "internal error"),
        CommandError::DataCorrupt(detail) => {
            tracing::error!(%detail, "stored data is damaged");
        }
        _ => {}
    }
    let message = error.public_message();
    let (code, reason) = match &error {
        CommandError::InvalidArgument { .. } => (Code::InvalidArgument, "INVALID_ARGUMENT"),
        CommandError::NotFound(_) => (Code::NotFound, "NOT_FOUND"),
        CommandError::PaymentAlreadyExists(_) => (Code::AlreadyExists, "PAYMENT_ALREADY_EXISTS"),
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
        CommandError::Unavailable(_) | CommandError::StoreUnavailable(_) => {
            (Code::Unavailable, "UNAVAILABLE")
        }
        CommandError::Moving(_) => (Code::Unavailable, "ACCOUNT_MOVING"),
        CommandError::Internal(_) => (Code::Internal, "INTERNAL"),
        CommandError::Unauthenticated(_) => (Code::Unauthenticated, "UNAUTHENTICATED"),
        CommandError::PermissionDenied => (Code::PermissionDenied, "PERMISSION_DENIED"),
        CommandError::RateLimited { .. } => (Code::ResourceExhausted, "RATE_LIMITED"),
        CommandError::Malformed(_) => (Code::InvalidArgument, "MALFORMED_REQUEST"),
        CommandError::DataCorrupt(_) => (Code::DataLoss, "STORE_CORRUPT"),
        CommandError::TooLarge(_) => (Code::ResourceExhausted, "REQUEST_TOO_LARGE"),
    };
    let metadata = resource
        .map(|resource| HashMap::from([("resource".to_owned(), resource.to_owned())]))
        .unwrap_or_default();
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
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
    // Worth retrying, and when.
    let retry_after = match &error {
        CommandError::RateLimited { retry_after } => Some(*retry_after),
        // About one membership round.
        _ if code == Code::Unavailable => Some(crate::limits::CLUSTER_RETRY_DELAY),
        CommandError::Conflict => Some(crate::limits::CONFLICT_RETRY_DELAY),
        // Subscribe again at once, after the last event received.
        CommandError::StreamLagged => Some(std::time::Duration::ZERO),
        _ => None,
    };
    if let Some(retry_after) = retry_after {
        details.set_retry_info(Some(retry_after));
    }
    Status::with_error_details(code, message, details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    /// What a client reads of a failure it should retry: a code, a reason,
    /// when to retry, and a sentence of ours, never the store's own text.
    #[test]
    fn a_retryable_failure_says_when_to_retry_and_nothing_of_the_store_sdk_or_socket() {
        let sdk =
            "dispatch failure: Some(ConnectorError { kind: Io, source: hyper::Error(Connect, \
                   ConnectError(\"tcp connect error\", 127.0.0.1:15000, Os { code: 111 })) })";
        let status = Status::from(CommandError::from(StoreError::Unavailable(sdk.into())));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.message(),
            "the store is not answering for now; retry (a command with the same request_id)"
        );
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "UNAVAILABLE");
        assert!(details.retry_info().unwrap().retry_delay.is_some());
        let internal = Status::from(CommandError::Internal(format!("bug near {sdk}")));
        assert!(!internal.message().contains("127.0.0.1"), "{internal:?}");
        let corrupt = Status::from(CommandError::DataCorrupt("key acme/x: bad checksum".into()));
        assert!(!corrupt.message().contains("acme/x"), "{corrupt:?}");
        for aborted in [CommandError::Conflict, CommandError::StreamLagged] {
            let status = Status::from(aborted);
            assert_eq!(status.code(), Code::Aborted);
            assert!(
                status.get_error_details().retry_info().is_some(),
                "{status:?}"
            );
        }
    }
}
