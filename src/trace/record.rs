//! What a span is once it has ended, and where ended spans go: the
//! process's sink, which the exporter installs (`export`) and every span
//! hands itself to when it ends (`span`). Without a sink, spans are not
//! recorded at all.
//!
//! One sink per process, installed once at start: spans end deep in the
//! actors, the connectors and the gRPC layer, where threading a handle
//! through every call would be noise, as it would for the log.

use std::borrow::Cow;
use std::sync::OnceLock;

use tokio::sync::mpsc;

use super::TraceParent;

/// What side of a call a span is (OTLP's span kinds, those payvisor uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// Work inside the node.
    Internal,
    /// A call this node answers (an RPC).
    Server,
    /// A call this node makes (a bank, a webhook endpoint).
    Client,
}

/// An attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Text(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for Value {
    fn from(text: &str) -> Value {
        Value::Text(text.to_owned())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Value {
        Value::Text(text)
    }
}

impl From<i64> for Value {
    fn from(number: i64) -> Value {
        Value::Int(number)
    }
}

impl From<bool> for Value {
    fn from(flag: bool) -> Value {
        Value::Bool(flag)
    }
}

/// A span as it is exported, once it has ended.
#[derive(Clone, Debug, PartialEq)]
pub struct FinishedSpan {
    pub context: TraceParent,
    /// The span id of its parent (`None`: the trace's root).
    pub parent_span_id: Option<String>,
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, Value)>,
    /// Set when the work failed: why.
    pub error: Option<String>,
}

/// Spans handed to the exporter, by outcome: `exported`, `failed` (the
/// collector did not take them, or the stop cut them off) or `dropped`
/// (the queue was full, or the exporter had stopped). Registered on the
/// node's page by `metrics` (which depends on this module, not the other
/// way round).
#[derive(Clone, Debug, Default)]
pub struct SpanMetrics {
    pub spans: prometheus_client::metrics::family::Family<
        SpanLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct SpanLabels {
    pub outcome: &'static str,
}

impl SpanMetrics {
    pub fn count(&self, outcome: &'static str, spans: u64) {
        self.spans
            .get_or_create(&SpanLabels { outcome })
            .inc_by(spans);
    }
}

/// The process's sink, once an exporter installed it.
static SINK: OnceLock<Sink> = OnceLock::new();

/// Where ended spans go (the exporter's queue), and which new traces
/// are sampled.
#[derive(Debug)]
pub(super) struct Sink {
    pub(super) queue: mpsc::Sender<FinishedSpan>,
    pub(super) metrics: SpanMetrics,
    /// A new trace is sampled if its id's last 8 bytes, as a number, are
    /// below this (see [`sampled_by`]).
    pub(super) sample_below: u64,
}

/// Whether spans are exported in this process.
pub(super) fn installed() -> bool {
    SINK.get().is_some()
}

/// Whether a trace begun here with this id is recorded: all of them
/// without an exporter (the flag travels to banks, whose own sampling it
/// then steers), else the configured share, decided by the id alone so
/// that every node decides alike.
pub(super) fn samples_new_trace(trace_id: &[u8]) -> bool {
    SINK.get()
        .is_none_or(|sink| sampled_by(sink.sample_below, trace_id))
}

/// The threshold of a sampling ratio (see [`sampled_by`]).
pub(super) fn sample_below(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else {
        (ratio.max(0.0) * u64::MAX as f64) as u64
    }
}

/// Whether a trace id falls in the sampled share: its last 8 bytes (the
/// random ones: the first byte is made odd), as a number, below the
/// threshold; `u64::MAX` samples all.
pub(super) fn sampled_by(sample_below: u64, trace_id: &[u8]) -> bool {
    let mut last = [0u8; 8];
    last.copy_from_slice(&trace_id[8..16]);
    sample_below == u64::MAX || u64::from_be_bytes(last) < sample_below
}

/// Hands an ended span to the exporter; dropped (and counted) if the
/// queue is full.
pub(super) fn finish(span: FinishedSpan) {
    if let Some(sink) = SINK.get() {
        if sink.queue.try_send(span).is_err() {
            // Full, or the exporter has stopped (after its flush).
            sink.metrics.count("dropped", 1);
        }
    }
}

/// Installs the process's sink (once: `Err` if one is installed already).
pub(super) fn install_sink(sink: Sink) -> Result<(), Sink> {
    SINK.set(sink)
}
