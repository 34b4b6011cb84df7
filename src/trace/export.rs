//! OTLP export (`--otlp-endpoint`): spans that end go to a bounded queue,
//! and one task sends them in batches to an OpenTelemetry collector over
//! OTLP/gRPC. Export is best effort: a full queue or a collector that does
//! not answer costs spans (counted in `payvisor_otlp_spans_total`), never
//! a payment, and never waits a caller.
//! It installs the process's sink (`record`): the queue it reads.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status, ResourceSpans, ScopeSpans, Status};
use tokio::sync::mpsc;

pub use super::record::SpanMetrics;
use super::record::{self, FinishedSpan, Sink, SpanKind, Value};
use crate::limits;
use crate::shutdown::Shutdown;

/// Where spans go and which traces begun here are kept.
#[derive(Clone, Debug, PartialEq)]
pub struct OtlpConfig {
    /// The collector's OTLP/gRPC address (`http://collector:4317`;
    /// `https://` trusts the system's roots).
    pub endpoint: http::Uri,
    /// The share of traces begun on this node that are recorded (0 to 1).
    /// A call that arrives with a `traceparent` follows its sampled flag.
    pub sample_ratio: f64,
    /// How long a batch may fill before it goes (unless full).
    pub batch_wait: std::time::Duration,
}

/// The task that sends the spans of this process to `config.endpoint`,
/// installed as the process's exporter; it sends what is queued once
/// `stop` fires, then returns. `Err` if an exporter is installed already
/// or the endpoint cannot be used.
pub fn install(
    config: &OtlpConfig,
    node: &str,
    metrics: SpanMetrics,
    stop: Shutdown,
) -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let mut endpoint = tonic::transport::Endpoint::from(config.endpoint.clone())
        .connect_timeout(limits::OTLP_EXPORT_TIMEOUT)
        .timeout(limits::OTLP_EXPORT_TIMEOUT);
    if config.endpoint.scheme_str() == Some("https") {
        endpoint =
            endpoint.tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())?;
    }
    let client = TraceServiceClient::new(endpoint.connect_lazy());
    let (queue, spans) = mpsc::channel(limits::OTLP_QUEUE_SPANS_MAX);
    let sink = Sink {
        queue,
        metrics: metrics.clone(),
        sample_below: record::sample_below(config.sample_ratio),
    };
    record::install_sink(sink)
        .map_err(|_| anyhow::anyhow!("an OTLP exporter is installed already"))?;
    let sending = Sending {
        endpoint: config.endpoint.clone(),
        batch_wait: config.batch_wait,
        client,
        resource: resource(node),
        metrics,
        failing: false,
    };
    Ok(sending.run(spans, stop))
}

/// The receiving side: batches spans and sends them.
struct Sending {
    /// Where (for the log: validated to hold no credentials).
    endpoint: http::Uri,
    batch_wait: std::time::Duration,
    client: TraceServiceClient<tonic::transport::Channel>,
    resource: Resource,
    metrics: SpanMetrics,
    /// The last export failed (logged once until one succeeds).
    failing: bool,
}

impl Sending {
    async fn run(mut self, mut spans: mpsc::Receiver<FinishedSpan>, stop: Shutdown) {
        let mut batch = Vec::with_capacity(limits::OTLP_BATCH_SPANS_MAX);
        loop {
            let mut stopping = false;
            tokio::select! {
                biased;
                received = spans.recv_many(&mut batch, limits::OTLP_BATCH_SPANS_MAX) => {
                    if received == 0 {
                        return;
                    }
                }
                () = stop.signalled() => stopping = true,
            }
            if !stopping {
                // Let a batch fill for a moment, unless it is full: one
                // export a second at most, under steady load.
                let filling = tokio::time::sleep(self.batch_wait);
                tokio::pin!(filling);
                while batch.len() < limits::OTLP_BATCH_SPANS_MAX {
                    let room = limits::OTLP_BATCH_SPANS_MAX - batch.len();
                    tokio::select! {
                        biased;
                        received = spans.recv_many(&mut batch, room) => {
                            if received == 0 { break; }
                        }
                        () = &mut filling => break,
                        () = stop.signalled() => { stopping = true; break; }
                    }
                }
            }
            if stopping {
                // What ended before the stop goes out, within a bound;
                // what does not is counted as failed.
                let mut in_flight = 0;
                let flush = async {
                    loop {
                        while batch.len() < limits::OTLP_BATCH_SPANS_MAX {
                            match spans.try_recv() {
                                Ok(span) => batch.push(span),
                                Err(_) => break,
                            }
                        }
                        if batch.is_empty() {
                            return;
                        }
                        in_flight = batch.len();
                        self.send(std::mem::take(&mut batch)).await;
                        in_flight = 0;
                    }
                };
                if tokio::time::timeout(limits::OTLP_FLUSH_MAX, flush)
                    .await
                    .is_err()
                {
                    let lost = in_flight + spans.len();
                    self.metrics.count("failed", lost as u64);
                    tracing::warn!(spans = lost, "spans not all exported before the stop");
                }
                return;
            }
            self.send(std::mem::take(&mut batch)).await;
        }
    }

    /// Sends one batch, once: a failed export is not retried (spans are
    /// worth less than the queue room they would hold meanwhile).
    async fn send(&mut self, batch: Vec<FinishedSpan>) {
        let count = batch.len() as u64;
        let request = export_request(&self.resource, batch);
        match self.client.export(request).await {
            Ok(_) => {
                self.metrics.count("exported", count);
                if std::mem::replace(&mut self.failing, false) {
                    tracing::info!("spans are exported again");
                }
            }
            Err(status) => {
                self.metrics.count("failed", count);
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(endpoint = %self.endpoint, code = ?status.code(), error = %status.message(), "the OTLP collector did not take spans; they are dropped until it does");
                }
            }
        }
    }
}

/// Who sends the spans: OpenTelemetry's resource attributes.
fn resource(node: &str) -> Resource {
    Resource {
        attributes: vec![
            attribute("service.name", &Value::from("payvisor")),
            attribute("service.version", &Value::from(env!("CARGO_PKG_VERSION"))),
            attribute("service.instance.id", &Value::from(node)),
        ],
        ..Resource::default()
    }
}

/// One OTLP request of `spans`, from `resource`.
pub(crate) fn export_request(
    resource: &Resource,
    spans: Vec<FinishedSpan>,
) -> ExportTraceServiceRequest {
    let spans = spans.into_iter().map(otlp_span).collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "payvisor".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..InstrumentationScope::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn otlp_span(span: FinishedSpan) -> opentelemetry_proto::tonic::trace::v1::Span {
    let kind = match span.kind {
        SpanKind::Internal => span::SpanKind::Internal,
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Client => span::SpanKind::Client,
    };
    let status = match span.error {
        Some(message) => Status {
            message,
            code: status::StatusCode::Error as i32,
        },
        None => Status::default(),
    };
    opentelemetry_proto::tonic::trace::v1::Span {
        trace_id: from_hex(span.context.trace_id()),
        span_id: from_hex(span.context.span_id()),
        trace_state: String::new(),
        parent_span_id: (span.parent_span_id.as_deref()).map_or_else(Vec::new, from_hex),
        flags: u32::from(span.context.sampled()),
        name: span.name.into_owned(),
        kind: kind as i32,
        start_time_unix_nano: span.start_unix_nanos,
        end_time_unix_nano: span.end_unix_nanos,
        attributes: (span.attributes.iter())
            .map(|(key, value)| attribute(key, value))
            .collect(),
        status: Some(status),
        ..opentelemetry_proto::tonic::trace::v1::Span::default()
    }
}

fn attribute(key: &str, value: &Value) -> KeyValue {
    let value = match value {
        Value::Text(text) => any_value::Value::StringValue(text.clone()),
        Value::Int(number) => any_value::Value::IntValue(*number),
        Value::Bool(flag) => any_value::Value::BoolValue(*flag),
    };
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

/// Hex ids (validated when read: lowercase, even length) to bytes.
fn from_hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .filter_map(|at| u8::from_str_radix(&text[at..at + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceParent;

    #[test]
    fn a_sampling_ratio_keeps_about_that_share_of_new_traces() {
        for ratio in [0.001, 0.1, 0.5] {
            let below = record::sample_below(ratio);
            let kept = (0..100_000)
                .filter(|_| {
                    let trace = TraceParent::begin();
                    record::sampled_by(below, &from_hex(trace.trace_id()))
                })
                .count();
            let share = kept as f64 / 100_000.0;
            assert!(
                (share - ratio).abs() < ratio * 0.25 + 0.001,
                "{ratio}: kept {share}"
            );
        }
        assert!(record::sampled_by(record::sample_below(1.0), &[0xff; 16]));
        assert!(!record::sampled_by(record::sample_below(0.0), &[0; 16]));
    }

    #[test]
    fn a_span_is_sent_with_its_ids_parent_times_kind_attributes_and_error() {
        let parent =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let context = parent.child();
        let span = FinishedSpan {
            context: context.clone(),
            parent_span_id: Some(parent.span_id().to_owned()),
            name: "bank.submit".into(),
            kind: SpanKind::Client,
            start_unix_nanos: 1_000,
            end_unix_nanos: 3_500,
            attributes: vec![
                ("payvisor.bank", Value::from("acme")),
                ("retries", Value::Int(2)),
            ],
            error: Some("503: try later".to_owned()),
        };
        let request = export_request(&resource("node-a"), vec![span]);
        let resource_spans = &request.resource_spans[0];
        let resource_keys: Vec<_> = (resource_spans.resource.as_ref().unwrap().attributes.iter())
            .map(|kv| kv.key.as_str())
            .collect();
        assert_eq!(
            resource_keys,
            ["service.name", "service.version", "service.instance.id"]
        );
        let sent = &resource_spans.scope_spans[0].spans[0];
        assert_eq!(sent.trace_id, from_hex("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(sent.trace_id.len(), 16);
        assert_eq!(sent.span_id, from_hex(context.span_id()));
        assert_eq!(sent.span_id.len(), 8);
        assert_eq!(sent.parent_span_id, from_hex("00f067aa0ba902b7"));
        assert_eq!(sent.name, "bank.submit");
        assert_eq!(sent.kind, span::SpanKind::Client as i32);
        assert_eq!(
            (sent.start_time_unix_nano, sent.end_time_unix_nano),
            (1_000, 3_500)
        );
        assert_eq!(sent.flags, 1);
        assert_eq!(sent.attributes.len(), 2);
        assert_eq!(
            sent.attributes[1].value.as_ref().unwrap().value,
            Some(any_value::Value::IntValue(2))
        );
        let status = sent.status.as_ref().unwrap();
        assert_eq!(status.code, status::StatusCode::Error as i32);
        assert_eq!(status.message, "503: try later");
    }
}
