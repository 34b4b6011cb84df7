//! The layer that counts, times and logs every gRPC call (`/metrics`:
//! `payvisor_grpc_server_handled_total` and
//! `payvisor_grpc_server_handling_seconds`; one log line per call, target
//! `payvisor::rpc`). It sits outside every other layer, so refusals at the
//! edge (no key, bad request) are counted and logged too.
//!
//! The log line carries what the handler learned (account, payment,
//! request id, caller: a [`CallNote`] in the request's extensions) and the
//! call's W3C trace id: the one in its `traceparent` header, or one begun
//! here. The call is a span of that trace (exported over OTLP when
//! configured), written into the `traceparent` header for everything
//! downstream: the handler's commands, a call forwarded to the account's
//! owner (so it is logged under the same trace on both nodes), bank calls.
//!
//! A call's code is where gRPC puts it: in the response headers when the
//! call fails before any message ("trailers only"), else in the trailers
//! after the last message. A response whose body is dropped before its
//! trailers (the client went away) counts as `CANCELLED`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prost::Message;
use tonic::Code;

use crate::metrics::{RpcLabels, RpcMetrics};
use crate::trace::{Span, SpanKind, TraceParent, TRACEPARENT};

/// The layer in front of every gRPC service.
#[derive(Clone)]
pub struct MeteredLayer {
    metrics: RpcMetrics,
}

impl MeteredLayer {
    pub fn new(metrics: RpcMetrics) -> MeteredLayer {
        MeteredLayer { metrics }
    }
}

impl<S> tower_layer::Layer<S> for MeteredLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Metered<S> {
        Metered {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A service behind the [`MeteredLayer`].
#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    metrics: RpcMetrics,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for Metered<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Body<Data = Bytes> + Send + 'static,
    R::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let (grpc_service, grpc_method) = method_labels(request.uri().path());
        // Named as OpenTelemetry names gRPC spans, `service/method`, from
        // the methods served (`other/other` for any other path: a caller
        // does not name spans); only if exported (most nodes pay no
        // allocation for it). Probes and tools are not traced.
        let recorded = !matches!(
            grpc_service,
            "grpc.health.v1.Health"
                | "grpc.reflection.v1.ServerReflection"
                | "grpc.reflection.v1alpha.ServerReflection"
        );
        let span_name = match recorded && crate::trace::exporting() {
            true => format!("{grpc_service}/{grpc_method}"),
            false => String::new(),
        };
        let note = CallNote::default();
        request.extensions_mut().insert(note.clone());
        let call = CallInFlight {
            metrics: self.metrics.clone(),
            grpc_service,
            grpc_method,
            started: Instant::now(),
            counted: false,
            span: Some(call_span(request.headers_mut(), span_name, recorded)),
            note,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let (parts, body) = response.into_parts();
            // Trailers only: the code is already here, and no body follows.
            if let Some(code) = status_code(&parts.headers) {
                call.finish(code);
                return Ok(http::Response::from_parts(
                    parts,
                    tonic::body::Body::new(body),
                ));
            }
            let body = MeteredBody {
                inner: tonic::body::Body::new(body),
                call: Some(call),
            };
            Ok(http::Response::from_parts(
                parts,
                tonic::body::Body::new(body),
            ))
        })
    }
}

/// A call counted once it ends: with its code, or `CANCELLED` if it is
/// dropped first (tonic's own timeout, or a client that reset the stream,
/// drops the call before any response: those are the slow calls an
/// incident is made of, and must not vanish from the figures).
struct CallInFlight {
    metrics: RpcMetrics,
    grpc_service: &'static str,
    grpc_method: &'static str,
    started: Instant,
    counted: bool,
    /// The call's span (taken when it is counted).
    span: Option<Span>,
    /// What the handler learned.
    note: CallNote,
}

impl CallInFlight {
    fn finish(mut self, code: Code) {
        self.count(code);
    }

    fn count(&mut self, code: Code) {
        if std::mem::replace(&mut self.counted, true) {
            return;
        }
        let labels = RpcLabels {
            grpc_service: self.grpc_service,
            grpc_method: self.grpc_method,
            grpc_code: code_name(code),
        };
        let seconds = self.started.elapsed().as_secs_f64();
        (self.metrics).observe(labels, seconds);
        let facts = self.note.take();
        let mut span = self.span.take();
        let trace_id =
            (span.as_ref()).map_or_else(String::new, |span| span.context().trace_id().to_owned());
        // Probes call health every few seconds: their lines at debug.
        macro_rules! call_line {
            ($level:expr) => {
                tracing::event!(
                    target: "payvisor::rpc",
                    $level,
                    service = self.grpc_service,
                    method = self.grpc_method,
                    code = code_name(code),
                    latency_ms = (seconds * 1e6).round() / 1e3,
                    account = facts.account.as_deref(),
                    payment = facts.payment.as_deref(),
                    request_id = facts.request_id.as_deref(),
                    caller = facts.caller.as_deref(),
                    trace_id = %trace_id,
                    "rpc"
                )
            };
        }
        if self.grpc_service == "grpc.health.v1.Health" {
            call_line!(tracing::Level::DEBUG);
        } else {
            call_line!(tracing::Level::INFO);
        }
        if let Some(span) = &mut span {
            end_call_span(span, code, facts);
        }
    }
}

impl Drop for CallInFlight {
    fn drop(&mut self) {
        self.count(Code::Cancelled);
    }
}

/// What a handler learns about its call, for the call's log line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallFacts {
    pub account: Option<String>,
    /// The payment's resource name.
    pub payment: Option<String>,
    /// The client's idempotency key.
    pub request_id: Option<String>,
    /// Who called: the key id or certificate subject.
    pub caller: Option<String>,
}

/// A call's [`CallFacts`], shared by the layer (which logs them when the
/// call ends) and the handler (which fills them in); a request extension.
#[derive(Clone, Debug, Default)]
pub struct CallNote(Arc<Mutex<CallFacts>>);

impl CallNote {
    /// Fills in what `request`'s handler learned (nothing where the layer
    /// is not in front: unit tests, direct calls).
    pub fn record<T>(request: &tonic::Request<T>, fill: impl FnOnce(&mut CallFacts)) {
        if let Some(note) = request.extensions().get::<CallNote>() {
            fill(&mut note.0.lock().unwrap_or_else(|poison| poison.into_inner()));
        }
    }

    fn take(&self) -> CallFacts {
        std::mem::take(&mut self.0.lock().unwrap_or_else(|poison| poison.into_inner()))
    }
}

/// The span of a call: under its `traceparent`, when that is well formed,
/// else the root of a new trace; written into the headers as the parent
/// of everything downstream (the handler's commands, a forwarded call, the
/// bank calls).
fn call_span(headers: &mut http::HeaderMap, name: String, recorded: bool) -> Span {
    let caller = (headers.get(TRACEPARENT))
        .and_then(|value| value.to_str().ok())
        .and_then(TraceParent::parse);
    let span = match recorded {
        true => Span::start(name, SpanKind::Server, caller.as_ref()),
        false => Span::unrecorded(caller.as_ref()),
    };
    if let Ok(value) = http::HeaderValue::try_from(span.context().header()) {
        headers.insert(TRACEPARENT, value);
    }
    span
}

/// Ends a call's span with its code and what the handler learned. The
/// codes OpenTelemetry counts as a server's errors mark it failed; the
/// others are the client's (a bad argument, a missing payment).
fn end_call_span(span: &mut Span, code: Code, facts: CallFacts) {
    if !span.is_recording() {
        return;
    }
    span.set("rpc.system", "grpc");
    span.set("rpc.grpc.status_code", code as i64);
    let fields = [
        ("payvisor.account", facts.account),
        ("payvisor.payment", facts.payment),
        ("payvisor.request_id", facts.request_id),
        ("payvisor.caller", facts.caller),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            span.set(key, value);
        }
    }
    if matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    ) {
        span.fail(code_name(code));
    }
}

/// A response body that finishes its call at the trailers, or at its end
/// without them (dropped before either: the call counts as `CANCELLED`).
struct MeteredBody {
    inner: tonic::body::Body,
    call: Option<CallInFlight>,
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(context);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = status_code(trailers).unwrap_or(Code::Unknown);
                    if let Some(call) = self.call.take() {
                        call.finish(code);
                    }
                }
            }
            Poll::Ready(Some(Err(status))) => {
                if let Some(call) = self.call.take() {
                    call.finish(status.code());
                }
            }
            // Ended without trailers: gRPC always sends a status, so this
            // is a broken response.
            Poll::Ready(None) => {
                if let Some(call) = self.call.take() {
                    call.finish(Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn status_code(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(value))
}

/// The labels of a request path: the service and method for a method the
/// server serves, `other` for anything else.
fn method_labels(path: &str) -> (&'static str, &'static str) {
    static KNOWN: OnceLock<HashMap<String, (&'static str, &'static str)>> = OnceLock::new();
    let known = KNOWN.get_or_init(known_methods);
    known.get(path).copied().unwrap_or(("other", "other"))
}

/// Every method of payvisor's services (from the descriptors the server
/// serves reflection from), of health and of reflection.
fn known_methods() -> HashMap<String, (&'static str, &'static str)> {
    let mut names: Vec<(String, String)> = Vec::new();
    let mut add_file_set = |bytes: &[u8]| {
        let set = prost_types::FileDescriptorSet::decode(bytes).expect("built-in descriptors");
        for file in &set.file {
            for service in &file.service {
                let full = format!("{}.{}", file.package(), service.name());
                for method in &service.method {
                    names.push((full.clone(), method.name().to_owned()));
                }
            }
        }
    };
    add_file_set(super::pb::FILE_DESCRIPTOR_SET);
    add_file_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    for reflection in ["grpc.reflection.v1", "grpc.reflection.v1alpha"] {
        names.push((
            format!("{reflection}.ServerReflection"),
            "ServerReflectionInfo".to_owned(),
        ));
    }
    // Leaked once per process: a few dozen short strings, borrowed by every
    // label set for the life of the process.
    let leak = |text: String| -> &'static str { Box::leak(text.into_boxed_str()) };
    names
        .into_iter()
        .map(|(service, method)| {
            let path = format!("/{service}/{method}");
            (path, (leak(service), leak(method)))
        })
        .collect()
}

/// The code as the gRPC spec names it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_have_their_names_and_anything_else_is_other() {
        assert_eq!(
            method_labels("/payvisor.v1.PaymentService/CreatePayment"),
            ("payvisor.v1.PaymentService", "CreatePayment")
        );
        assert_eq!(
            method_labels("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health", "Check")
        );
        assert_eq!(
            method_labels("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            (
                "grpc.reflection.v1.ServerReflection",
                "ServerReflectionInfo"
            )
        );
        for path in ["/payvisor.v1.PaymentService/Nope", "/x", "", "/a/b/c"] {
            assert_eq!(method_labels(path), ("other", "other"), "{path}");
        }
    }

    #[test]
    fn a_call_is_a_span_of_its_callers_trace_or_of_a_new_one_written_into_its_headers() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let mut headers = http::HeaderMap::new();
        let valid = format!("00-{id}-00f067aa0ba902b7-01");
        headers.insert(TRACEPARENT, valid.parse().unwrap());
        let span = call_span(
            &mut headers,
            "payvisor.v1.PaymentService/GetPayment".into(),
            true,
        );
        assert_eq!(span.context().trace_id(), id);
        assert_ne!(span.context().span_id(), "00f067aa0ba902b7");
        assert_eq!(headers[TRACEPARENT], span.context().header().as_str());
        let mut headers = http::HeaderMap::new();
        headers.insert(TRACEPARENT, "garbage".parse().unwrap());
        let begun = call_span(&mut headers, "x/y".into(), true);
        let written = TraceParent::parse(headers[TRACEPARENT].to_str().unwrap()).unwrap();
        assert_eq!(&written, begun.context());
        let other = call_span(&mut http::HeaderMap::new(), "x/y".into(), false);
        assert_ne!(other.context().trace_id(), begun.context().trace_id());
    }

    #[test]
    fn every_code_has_its_spec_name() {
        for value in 0..=16 {
            let name = code_name(Code::from_i32(value));
            assert!(
                name.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "{name}"
            );
        }
        assert_eq!(code_name(Code::from_i32(99)), "UNKNOWN");
    }
}
