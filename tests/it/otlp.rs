//! Traces over OTLP (`--otlp-endpoint`): a call's spans, and the spans of
//! what it causes (the account's decision, its write, the bank call, the
//! webhook), reach an OpenTelemetry collector under the caller's trace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span};

use crate::common::bank_sim::free_port;
use crate::common::*;
use payvisor::grpc::pb;

/// An OTLP/gRPC collector that keeps what it is sent.
#[derive(Clone, Default)]
struct Collector {
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.requests.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Listens on a free loopback port; returns its address.
    async fn start(&self) -> String {
        let port = free_port();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://127.0.0.1:{port}")
    }

    fn spans(&self) -> Vec<Span> {
        let requests = self.requests.lock().unwrap();
        (requests.iter())
            .flat_map(|request| &request.resource_spans)
            .flat_map(|resource| &resource.scope_spans)
            .flat_map(|scope| scope.spans.clone())
            .collect()
    }

    /// The spans of one trace, once `ready` holds for them (at most 20 s).
    async fn trace_once(&self, trace_id: &str, ready: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let spans: Vec<Span> = (self.spans().into_iter())
                .filter(|span| hex(&span.trace_id) == trace_id)
                .collect();
            if ready(&spans) {
                return spans;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the trace's spans did not arrive: {:#?}",
                summary(&spans)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    (span.attributes.iter())
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn text(span: &Span, key: &str) -> Option<String> {
    match attribute(span, key)? {
        Value::StringValue(text) => Some(text.clone()),
        _ => None,
    }
}

/// Name, span id and parent id of each, for failure messages.
fn summary(spans: &[Span]) -> Vec<(String, String, String)> {
    (spans.iter())
        .map(|span| {
            (
                span.name.clone(),
                hex(&span.span_id),
                hex(&span.parent_span_id),
            )
        })
        .collect()
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|span| span.name == name).collect()
}

fn traced<T>(message: T, traceparent: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    (request.metadata_mut()).insert("traceparent", traceparent.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_and_what_it_causes_are_spans_of_the_callers_trace_at_the_collector() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_bank, flags) = crate::common::bank_sim::bank_and_unreachable_webhook(dir.path());
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "--otlp-endpoint",
        &endpoint,
        "--node-name",
        "node-7",
        "--metrics-listen",
        &metrics,
    ];
    args.extend(flags.iter().map(String::as_str));
    let mut server = Server::start(&args);
    let mut client = server.client().await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let create = traced(
        create_request("acme", "otlp-1", 1_000),
        &format!("00-{trace}-{caller_span}-01"),
    );
    let payment = client.create_payment(create).await.unwrap().into_inner();
    let payment = wait_for(&mut client, &payment.name, |p| {
        state(p) == pb::payment::State::Processed
    })
    .await;

    let spans = collector
        .trace_once(trace, |spans| {
            [
                "payvisor.v1.PaymentService/CreatePayment",
                "account.decide",
                "account.persist",
                "store.transact",
                "account.act",
                "bank.submit_payment",
                "webhook.deliver",
            ]
            .iter()
            .all(|name| !named(spans, name).is_empty())
        })
        .await;
    let all = summary(&spans);
    // The call: a server span under the caller's.
    let call = named(&spans, "payvisor.v1.PaymentService/CreatePayment");
    assert_eq!(call.len(), 1, "{all:?}");
    let call = call[0];
    assert_eq!(call.kind, SpanKind::Server as i32);
    assert_eq!(hex(&call.parent_span_id), caller_span);
    assert_eq!(
        attribute(call, "rpc.grpc.status_code"),
        Some(&Value::IntValue(0))
    );
    assert_eq!(text(call, "payvisor.account").as_deref(), Some("acme"));
    assert_eq!(
        text(call, "payvisor.payment").as_deref(),
        Some(payment.name.as_str())
    );
    assert_eq!(text(call, "payvisor.request_id").as_deref(), Some("otlp-1"));
    assert!(call.end_time_unix_nano >= call.start_time_unix_nano);
    assert_ne!(
        call.status.as_ref().map(|status| status.code),
        Some(StatusCode::Error as i32)
    );
    let call_id = hex(&call.span_id);
    // The account's decision, its write and what followed: under the call.
    for name in ["account.decide", "account.persist", "account.act"] {
        let steps = named(&spans, name);
        assert!(
            steps
                .iter()
                .all(|step| hex(&step.parent_span_id) == call_id),
            "{name}: {all:?}"
        );
    }
    let decide = named(&spans, "account.decide")[0];
    assert_eq!(
        text(decide, "payvisor.payment").as_deref(),
        Some(payment.name.as_str())
    );
    let persists: Vec<String> = (named(&spans, "account.persist").iter())
        .map(|persist| hex(&persist.span_id))
        .collect();
    let store = named(&spans, "store.transact")[0];
    assert!(persists.contains(&hex(&store.parent_span_id)), "{all:?}");
    assert_eq!(store.kind, SpanKind::Client as i32);
    // The bank call: a client span under the call, which succeeded.
    let bank_call = named(&spans, "bank.submit_payment")[0];
    assert_eq!(bank_call.kind, SpanKind::Client as i32);
    assert_eq!(hex(&bank_call.parent_span_id), call_id, "{all:?}");
    assert_eq!(text(bank_call, "payvisor.bank").as_deref(), Some("bank-a"));
    assert_eq!(text(bank_call, "payvisor.outcome").as_deref(), Some("ok"));
    // The created event's webhook: under the call, failed (nothing listens).
    let delivery = named(&spans, "webhook.deliver")[0];
    assert_eq!(hex(&delivery.parent_span_id), call_id, "{all:?}");
    assert_eq!(
        delivery.status.as_ref().map(|status| status.code),
        Some(StatusCode::Error as i32)
    );
    // Who sent them.
    let resource = {
        let requests = collector.requests.lock().unwrap();
        requests[0].resource_spans[0].resource.clone().unwrap()
    };
    let resource_text = |key: &str| {
        (resource.attributes.iter())
            .find(|kv| kv.key == key)
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(text) => Some(text.clone()),
                _ => None,
            })
    };
    assert_eq!(resource_text("service.name").as_deref(), Some("payvisor"));
    assert_eq!(
        resource_text("service.instance.id").as_deref(),
        Some("node-7")
    );

    // A caller that does not sample its trace: none of it is exported.
    let unsampled = "1af7651916cd43dd8448eb211c80319d";
    let get = traced(
        pb::GetPaymentRequest {
            name: payment.name.clone(),
        },
        &format!("00-{unsampled}-b7ad6b7169203332-00"),
    );
    client.get_payment(get).await.unwrap();
    // The bank's outcome came by callback: a trace of its own (the bank
    // simulator sends none), with the decision it caused under it.
    let all_spans = collector.spans();
    let callback = (all_spans.iter())
        .find(|span| span.name == "bank.callback")
        .expect("a bank.callback span");
    assert_eq!(callback.kind, SpanKind::Server as i32);
    assert_eq!(text(callback, "payvisor.bank").as_deref(), Some("bank-a"));
    assert!(
        (all_spans.iter())
            .any(|span| span.name == "account.decide" && span.parent_span_id == callback.span_id),
        "no decision under the callback"
    );
    // A refund under a trace of its own.
    let refund_trace = "2af7651916cd43dd8448eb211c80319e";
    let refund = traced(
        refund_request(&payment.name, "otlp-refund-1", Some(400)),
        &format!("00-{refund_trace}-b7ad6b7169203333-01"),
    );
    client.refund_payment(refund).await.unwrap();
    let refund_spans = collector
        .trace_once(refund_trace, |spans| {
            !named(spans, "payvisor.v1.PaymentService/RefundPayment").is_empty()
                && !named(spans, "bank.submit_refund").is_empty()
        })
        .await;
    let by_id: HashMap<String, &Span> = (refund_spans.iter())
        .map(|span| (hex(&span.span_id), span))
        .collect();
    let bank_refund = named(&refund_spans, "bank.submit_refund")[0];
    assert_eq!(
        by_id[&hex(&bank_refund.parent_span_id)].name,
        "payvisor.v1.PaymentService/RefundPayment"
    );
    assert!(
        (collector.spans().iter()).all(|span| hex(&span.trace_id) != unsampled),
        "an unsampled trace was exported"
    );
    assert!(
        (collector.spans().iter()).all(|span| !span.name.starts_with("grpc.")),
        "health or reflection traced"
    );
    let page = crate::observability::scrape(&metrics);
    let exported = page
        .lines()
        .find_map(|line| line.strip_prefix("payvisor_otlp_spans_total{outcome=\"exported\"} "))
        .and_then(|value| value.parse::<f64>().ok());
    assert!(exported.is_some_and(|count| count >= 7.0), "{page}");
    crate::observability::promtool_check_metrics(&page);
    assert!(server.terminate_async().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spans_waiting_for_their_batch_are_sent_when_the_node_stops() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    // Batches wait far longer than the test: only the stop sends them.
    let mut server = Server::start(&["--otlp-endpoint", &endpoint, "--otlp-batch-wait", "1h"]);
    let mut client = server.client().await;
    let trace = "3af7651916cd43dd8448eb211c80319f";
    let create = traced(
        create_request("acme", "otlp-stop-1", 1_000),
        &format!("00-{trace}-b7ad6b7169203334-01"),
    );
    let payment = client.create_payment(create).await.unwrap().into_inner();
    wait_for(&mut client, &payment.name, |p| {
        state(p) == pb::payment::State::Processed
    })
    .await;
    assert!(collector.spans().is_empty(), "sent before the stop");
    assert!(server.terminate_async().await.success());
    let spans = collector
        .trace_once(trace, |spans| {
            !named(spans, "payvisor.v1.PaymentService/CreatePayment").is_empty()
        })
        .await;
    assert!(
        !named(&spans, "account.persist").is_empty(),
        "{:?}",
        summary(&spans)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_does_not_answer_costs_spans_not_payments() {
    // Takes connections and never says a word.
    let port = free_port();
    let silent = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let nowhere = format!("http://127.0.0.1:{port}");
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut server = Server::start(&["--otlp-endpoint", &nowhere, "--metrics-listen", &metrics]);
    let mut client = server.client().await;
    processed_payment(&mut client, "acme", "otlp-down-1", 1_000).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = crate::observability::scrape(&metrics);
        let failed = page
            .lines()
            .find_map(|line| line.strip_prefix("payvisor_otlp_spans_total{outcome=\"failed\"} "))
            .and_then(|value| value.parse::<f64>().ok());
        if failed.is_some_and(|count| count >= 1.0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Still serving; and the stop does not wait on the collector for long.
    processed_payment(&mut client, "acme", "otlp-down-2", 1_000).await;
    assert!(server.terminate_async().await.success());
}
