//! Requests the codec could not read, answered as the client's mistake.
//!
//! tonic answers a body that does not decode as the method's message with
//! `INTERNAL` (prost's decode error) and an oversize one with
//! `OUT_OF_RANGE`, both without an `ErrorInfo`, before any handler runs.
//! So that `INTERNAL` means a server fault (and alerts on it mean
//! something), the edge rewrites those answers through the one mapping:
//! `INVALID_ARGUMENT` (`MALFORMED_REQUEST`) and `RESOURCE_EXHAUSTED`
//! (`REQUEST_TOO_LARGE`). Every method of the API has a unary request, so
//! the codec's answer is always trailers-only: the status is in the
//! response's headers, where this reads it.

use tonic::{Code, Status};

use crate::actors::CommandError;
use crate::limits;

/// What tonic and prost say when a request does not decode.
const DECODE_FAILURES: [&str; 2] = [
    "failed to decode Protobuf message",
    "protocol error: received message with invalid compression flag",
];
/// What tonic says when a request is over the size limit.
const TOO_LARGE: &str = "decoded message length too large";

/// The client's mistake in `status`, if the codec made it.
fn client_fault(status: &Status, path: &str) -> Option<CommandError> {
    match status.code() {
        Code::Internal
            if DECODE_FAILURES
                .iter()
                .any(|failure| status.message().starts_with(failure)) =>
        {
            let method = path.rsplit('/').next().unwrap_or_default();
            Some(CommandError::Malformed(format!("{method} request")))
        }
        Code::OutOfRange if status.message().contains(TOO_LARGE) => {
            Some(CommandError::TooLarge(limits::GRPC_MESSAGE_BYTES_MAX))
        }
        _ => None,
    }
}

/// `response` to a call of `path`, with a codec's refusal made the
/// client's error.
pub fn rewrite<R: Default>(path: &str, response: http::Response<R>) -> http::Response<R> {
    let Some(fault) =
        Status::from_header_map(response.headers()).and_then(|status| client_fault(&status, path))
    else {
        return response;
    };
    tracing::info!(method = %path, error = %fault, "request refused: not readable");
    Status::from(fault).into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_refusals_become_the_clients_errors_and_nothing_else_changes() {
        let path = "/payvisor.v1.PaymentService/CreatePayment";
        let decode = Status::internal("failed to decode Protobuf message: invalid wire type");
        let size = Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        );
        let malformed = client_fault(&decode, path).unwrap();
        assert_eq!(
            malformed,
            CommandError::Malformed("CreatePayment request".into())
        );
        assert!(matches!(
            client_fault(&size, path),
            Some(CommandError::TooLarge(_))
        ));
        // A real internal error stays one.
        assert_eq!(client_fault(&Status::internal("store fault"), path), None);
        assert_eq!(client_fault(&Status::not_found("x"), path), None);

        let response: http::Response<String> = decode.into_http();
        let rewritten = rewrite(path, response);
        let status = Status::from_header_map(rewritten.headers()).unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
        let ok: http::Response<String> = http::Response::new("body".into());
        assert_eq!(rewrite(path, ok).into_body(), "body");
    }
}
