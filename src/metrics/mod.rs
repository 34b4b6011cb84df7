//! A Prometheus scrape endpoint: `GET /metrics` answers the text exposition
//! format (0.0.4), anything else 404. What to expose is the caller's
//! business: it passes a [`Render`] that builds the whole page per scrape;
//! a node's page is [`NodeMetrics::page`].
//!
//! The text is written by the official client library (`prometheus-client`:
//! format, escapes, a counter's `_total`). Gauges read at scrape time go
//! through [`render_gauge`]'s collector rather than the library's `Family`,
//! which keeps no order: the page lists states in the same order on every
//! scrape.
//!
//! **Boundary:** scrapes are read-only and idempotent, so on shutdown open
//! connections are simply dropped, not drained.

pub mod edges;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::ConstCounter;
pub use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::domain::payment::PaymentState;
use crate::limits;
use crate::shutdown::Shutdown;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Builds the whole exposition text, once per scrape.
pub type Render = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>> + Send + Sync,
>;

/// Serves scrapes on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<crate::tls::ServerTls>>,
    render: Render,
    shutdown: Shutdown,
) {
    let handler: crate::http_server::Handler = Arc::new(move |request| {
        let render = Arc::clone(&render);
        Box::pin(respond(request, render))
    });
    let bounds = crate::http_server::ServerLimits {
        connections_max: limits::METRICS_CONNECTIONS_MAX,
        header_read_timeout: limits::METRICS_HEADER_READ_TIMEOUT,
        body_read_timeout: limits::METRICS_HEADER_READ_TIMEOUT,
        body_bytes_max: limits::METRICS_BODY_BYTES_MAX,
        drain_max: limits::METRICS_DRAIN_MAX,
    };
    crate::http_server::serve_over("metrics", listener, tls, bounds, handler, shutdown).await;
}

async fn respond(request: Request<Full<Bytes>>, render: Render) -> Response<Full<Bytes>> {
    let response = if request.method() == Method::GET && request.uri().path() == "/metrics" {
        Response::builder()
            .header(header::CONTENT_TYPE, CONTENT_TYPE)
            .body(Full::new(Bytes::from(render().await)))
    } else {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from_static(
                b"not found; try GET /metrics\n",
            )))
    };
    response.expect("static headers are valid")
}

/// What a node exposes besides what it reads at scrape time. Cheap to
/// clone: the counter is shared with the task that counts.
#[derive(Clone, Debug, Default)]
pub struct NodeMetrics {
    /// Mismatches found by the periodic reconciliation since start (a
    /// dashboard alerts on any increase).
    pub reconciliation_mismatches: Counter,
    /// Set on a cluster member.
    pub cluster: Option<crate::cluster::ClusterMetrics>,
    /// Calls refused for missing or bad credentials since start.
    pub auth_failures: Counter,
    /// Calls refused since start for going over their key's rate.
    pub rate_limited: Counter,
    /// gRPC calls served.
    pub rpc: RpcMetrics,
    /// Store calls made.
    pub store: StoreMetrics,
    /// Bank calls made.
    pub bank: edges::BankMetrics,
    /// Pages handed to the pager.
    pub pages: edges::PageMetrics,
    /// Webhook deliveries attempted.
    pub webhooks: edges::WebhookMetrics,
    /// Background runs (watchdog, recovery, reconciliation, webhook
    /// dispatch) timed.
    pub sweeps: SweepMetrics,
    /// Spans exported (`None`: no OTLP endpoint configured).
    pub spans: Option<crate::trace::export::SpanMetrics>,
}

/// Upper bounds of the latency buckets, in seconds: from a cached read
/// (sub-millisecond) to a call that waited out its retries (tens of
/// seconds), about ×2.5 apart, so a dashboard's quantiles stay within one
/// step of the truth.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Upper bounds of the background-run buckets, in seconds: from an idle
/// watchdog sweep (milliseconds) to a recovery or a reconciliation of a
/// large store, or a webhook sweep waiting on endpoints that time out
/// (minutes).
const SWEEP_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 60.0, 180.0, 600.0,
];

fn sweep_histogram() -> Histogram {
    Histogram::new(SWEEP_BUCKETS)
}

/// A latency histogram per label set.
pub type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Runs `call` and records how long it took in `family`, under the labels
/// its answer gives: the one timing every metered boundary uses.
async fn timed<L, T, E>(
    family: &LatencyFamily<L>,
    call: impl std::future::Future<Output = Result<T, E>>,
    labels: impl FnOnce(&Result<T, E>) -> L,
) -> Result<T, E>
where
    L: Clone + std::hash::Hash + Eq,
{
    let started = std::time::Instant::now();
    let answer = call.await;
    (family.get_or_create(&labels(&answer))).observe(started.elapsed().as_secs_f64());
    answer
}

fn latency_family<L: Clone + std::hash::Hash + Eq>() -> LatencyFamily<L> {
    Family::new_with_constructor(latency_histogram)
}

/// A gRPC call's labels. Only methods the server serves get their own
/// values (any other path is `other`), so no caller can grow the page.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub grpc_service: &'static str,
    pub grpc_method: &'static str,
    /// The status code as the gRPC spec names it (`OK`, `NOT_FOUND`, ...).
    pub grpc_code: &'static str,
}

/// gRPC calls served, counted and timed (from the request's arrival to the
/// response's last frame: a stream's whole life).
#[derive(Clone, Debug)]
pub struct RpcMetrics {
    pub handled: Family<RpcLabels, Counter>,
    pub handling_seconds: LatencyFamily<RpcLabels>,
}

impl Default for RpcMetrics {
    fn default() -> RpcMetrics {
        RpcMetrics {
            handled: Family::default(),
            handling_seconds: latency_family(),
        }
    }
}

impl RpcMetrics {
    pub fn observe(&self, labels: RpcLabels, seconds: f64) {
        self.handled.get_or_create(&labels).inc();
        self.handling_seconds
            .get_or_create(&labels)
            .observe(seconds);
    }
}

/// A store call's labels: the [`crate::store::Store`] method and how it
/// ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// `transact`, `get`, `query`, `query_index`, `settle`.
    pub operation: &'static str,
    /// `ok`, or the kind of [`crate::store::StoreError`].
    pub outcome: &'static str,
}

/// Store calls timed, by operation and outcome (the count of a histogram
/// is the number of calls: errors are `outcome!="ok"`).
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    pub call_seconds: LatencyFamily<StoreLabels>,
}

impl Default for StoreMetrics {
    fn default() -> StoreMetrics {
        StoreMetrics {
            call_seconds: latency_family(),
        }
    }
}

/// A background run's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SweepLabels {
    /// `watchdog`, `recovery_startup`, `recovery_late`,
    /// `recovery_gained_shards`, `reconciliation`, `webhooks`, `expiry`.
    pub sweep: &'static str,
    /// `ok` or `failed`.
    pub outcome: &'static str,
}

/// Background runs timed, by kind and outcome (the count of a histogram
/// is the number of runs).
#[derive(Clone, Debug)]
pub struct SweepMetrics {
    pub run_seconds: LatencyFamily<SweepLabels>,
}

impl Default for SweepMetrics {
    fn default() -> SweepMetrics {
        let metrics = SweepMetrics {
            run_seconds: Family::new_with_constructor(sweep_histogram),
        };
        // Failures exist at zero from the start (an alert's `increase()`
        // sees the first).
        for sweep in [
            "watchdog",
            "recovery_startup",
            "recovery_late",
            "recovery_gained_shards",
            "reconciliation",
            "webhooks",
            "expiry",
        ] {
            let outcome = "failed";
            let _zero = metrics
                .run_seconds
                .get_or_create(&SweepLabels { sweep, outcome });
        }
        metrics
    }
}

impl SweepMetrics {
    /// Runs `run`, timed as a `sweep` that failed if it returned `Err`.
    pub async fn time<T, E>(
        &self,
        sweep: &'static str,
        run: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        timed(&self.run_seconds, run, |answer| SweepLabels {
            sweep,
            outcome: if answer.is_ok() { "ok" } else { "failed" },
        })
        .await
    }

    /// Records one run of `sweep` that began at `started`.
    pub fn observe(&self, sweep: &'static str, ok: bool, started: std::time::Instant) {
        let outcome = if ok { "ok" } else { "failed" };
        (self
            .run_seconds
            .get_or_create(&SweepLabels { sweep, outcome }))
        .observe(started.elapsed().as_secs_f64());
    }
}

/// What the kernel says about this process (Linux `/proc/self`), under the
/// names every Prometheus client library uses, so stock dashboards and
/// alerts work.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_memory_bytes: i64,
    pub virtual_memory_bytes: i64,
    pub open_fds: i64,
    pub max_fds: i64,
    pub threads: i64,
    pub start_time_seconds: i64,
}

/// Clock ticks per second in `/proc` times: fixed at 100 by the kernel's
/// user-space ABI (USER_HZ), whatever the kernel's own tick rate.
const USER_HZ: f64 = 100.0;

impl ProcessStats {
    /// Reads them; `None` where there is no `/proc` (not Linux).
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name, field 2, is in parentheses and may hold
        // spaces: count fields after its closing one.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // Fields 3.. of proc(5), so field n is fields[n - 3].
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        let ticks = field(14)? + field(15)?;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|line| line.strip_prefix("btime ")?.trim().parse::<u64>().ok())?;
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()?
            .lines()
            .find(|line| line.starts_with("Max open files"))?
            .split_whitespace()
            .nth(3)?
            .parse::<i64>()
            .unwrap_or(-1);
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as i64;
        // Resident memory in kB as the kernel counts it (no page size to
        // guess).
        let resident_kb = std::fs::read_to_string("/proc/self/status")
            .ok()?
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse::<i64>()
            .ok()?;
        Some(ProcessStats {
            cpu_seconds: ticks as f64 / USER_HZ,
            resident_memory_bytes: resident_kb * 1024,
            virtual_memory_bytes: field(23)? as i64,
            open_fds,
            max_fds,
            threads: field(20)? as i64,
            start_time_seconds: (boot_time as f64 + field(22)? as f64 / USER_HZ) as i64,
        })
    }
}

/// How much work waits in the account actors' queues, at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Messages sent to actors and not yet received, over all actors.
    pub mailbox_messages: u64,
    /// The most any one actor has waiting.
    pub mailbox_messages_max: u64,
    /// Commands waiting in the actors' inboxes (creates and bank outcomes
    /// taken several at a time), over all actors.
    pub inbox_commands: u64,
    pub inbox_commands_max: u64,
}

/// What the process holds at a scrape, for watching leaks (the soak, and
/// dashboards, read these): per node, so `sum` across replicas is right.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Held {
    pub tasks_alive: usize,
    pub accounts_live: usize,
    /// What waits in the account actors' queues.
    pub queues: QueueDepth,
    /// `None` where the kernel does not say (not Linux).
    pub process: Option<ProcessStats>,
    /// Each HTTP bank's circuit breaker, by bank name.
    pub breakers: Vec<(String, crate::connectors::breaker::BreakerState)>,
    /// Webhook deliveries pending, as read from the store now (`None`:
    /// not read: no endpoint configured, or the store did not answer).
    pub webhook_backlog: Option<crate::store::schema::WebhookBacklog>,
}

impl NodeMetrics {
    /// The page of one scrape. `stalled`: payments that missed a stall
    /// deadline, by state name, as read from the store now (`None`: the
    /// store could not be read; every state then shows 0, and
    /// `payvisor_stalled_scan_ok` says so).
    pub fn page(&self, stalled: Option<&BTreeMap<String, u64>>, held: Held) -> String {
        let mut registry = Registry::default();
        registry.register(
            "payvisor_reconciliation_mismatches",
            "Mismatches found by reconciliation with the bank since start",
            self.reconciliation_mismatches.clone(),
        );
        registry.register(
            "payvisor_auth_failures",
            "Calls refused since start for missing, malformed, unknown or expired credentials",
            self.auth_failures.clone(),
        );
        registry.register(
            "payvisor_rate_limited",
            "Calls refused since start because their key or certificate went over its rate",
            self.rate_limited.clone(),
        );
        if let Some(cluster) = &self.cluster {
            registry.register(
                "payvisor_cluster_shards_owned",
                "Shards whose lease this node holds (sum over nodes: every shard once)",
                cluster.shards_owned.clone(),
            );
            registry.register(
                "payvisor_cluster_ownership_changes",
                "Shards this node gained or lost since start",
                cluster.ownership_changes.clone(),
            );
            registry.register(
                "payvisor_cluster_forwarded_calls",
                "Calls this node forwarded to the owner of their account",
                cluster.forwarded_calls.clone(),
            );
            registry.register(
                "payvisor_cluster_fenced_writes",
                "Writes refused because the account was not, or no longer, this node's",
                cluster.fenced_writes.clone(),
            );
        }
        // Every state that can stall, zero included, so a dashboard sees a
        // flat line rather than no data.
        let by_state = PaymentState::ALL
            .iter()
            .filter(|state| !state.is_terminal())
            .map(|state| {
                let count = stalled
                    .and_then(|counts| counts.get(state.as_str()))
                    .copied()
                    .unwrap_or(0);
                ("state", state.as_str(), count as i64)
            })
            .collect::<Vec<_>>();
        registry.register_collector(Box::new(GaugeFamily::new(
            "payvisor_stalled_payments",
            "Payments that missed a stall deadline (being re-driven or paged), by state.",
            &by_state,
        )));
        registry.register_collector(Box::new(GaugeFamily::new(
            "payvisor_stalled_scan_ok",
            "1 if the last count of stalled payments read the store successfully.",
            &[("", "", i64::from(stalled.is_some()))],
        )));
        registry.register_collector(Box::new(GaugeFamily::new(
            "payvisor_runtime_tasks_alive",
            "Tasks alive in this process, actors included: flat under steady load, or something leaks.",
            &[("", "", held.tasks_alive as i64)],
        )));
        registry.register_collector(Box::new(GaugeFamily::new(
            "payvisor_accounts_live",
            "Account actors running on this node (started on first use, stopped when idle).",
            &[("", "", held.accounts_live as i64)],
        )));
        registry.register(
            "payvisor_grpc_server_handled",
            "gRPC calls answered, by service, method and status code",
            self.rpc.handled.clone(),
        );
        registry.register(
            "payvisor_grpc_server_handling_seconds",
            "Time from a gRPC call's arrival to its response's end (a stream's whole life), by service, method and status code",
            self.rpc.handling_seconds.clone(),
        );
        registry.register(
            "payvisor_store_call_seconds",
            "Time of each store call, by operation and outcome",
            self.store.call_seconds.clone(),
        );
        registry.register(
            "payvisor_bank_call_seconds",
            "Time of each call to a bank (its retries included), by bank, operation and outcome",
            self.bank.call_seconds.clone(),
        );
        registry.register(
            "payvisor_pages",
            "Pages handed to the pager (each attempt), by class, action and outcome",
            self.pages.attempts.clone(),
        );
        registry.register(
            "payvisor_webhook_delivery_seconds",
            "Time of each webhook delivery attempt (one event to one endpoint), by endpoint and outcome",
            self.webhooks.delivery_seconds.clone(),
        );
        if let Some(spans) = &self.spans {
            registry.register(
                "payvisor_otlp_spans",
                "Spans handed to the OTLP exporter, by outcome (exported, failed: the collector did not take them, dropped: the queue was full)",
                spans.spans.clone(),
            );
        }
        registry.register(
            "payvisor_sweep_seconds",
            "Time of each background run (watchdog sweep, recovery, reconciliation, webhook dispatch), by kind and outcome",
            self.sweeps.run_seconds.clone(),
        );
        let breakers = held
            .breakers
            .iter()
            .flat_map(|(bank, state)| {
                use crate::connectors::breaker::BreakerState;
                [
                    ("closed", BreakerState::Closed),
                    ("open", BreakerState::Open),
                    ("half_open", BreakerState::HalfOpen),
                ]
                .into_iter()
                .map(move |(name, each)| ((bank.clone(), name), i64::from(*state == each)))
            })
            .collect::<Vec<_>>();
        if !breakers.is_empty() {
            registry.register_collector(Box::new(LabelledGauges {
            name: "payvisor_bank_breaker_state",
            help: "1 for the state each bank's circuit breaker is in (closed, open, half_open), 0 for the others.",
            labels: ("bank", "state"),
            samples: breakers,
            }));
        }
        let queues = held.queues;
        for (name, help, value) in [
            (
                "payvisor_account_mailbox_messages",
                "Messages sent to this node's account actors and not yet received, over all actors.",
                queues.mailbox_messages,
            ),
            (
                "payvisor_account_mailbox_messages_max",
                "The most messages any one account actor of this node has waiting.",
                queues.mailbox_messages_max,
            ),
            (
                "payvisor_account_inbox_commands",
                "Creates and bank outcomes waiting in this node's account inboxes (taken several per write), over all actors.",
                queues.inbox_commands,
            ),
            (
                "payvisor_account_inbox_commands_max",
                "The most commands any one account inbox of this node has waiting.",
                queues.inbox_commands_max,
            ),
        ] {
            registry.register_collector(Box::new(GaugeFamily::new(
                name,
                help,
                &[("", "", value as i64)],
            )));
        }
        if let Some(backlog) = &held.webhook_backlog {
            registry.register_collector(Box::new(GaugeFamily::new(
                "payvisor_webhook_backlog",
                "Event records with a webhook delivery pending, as read from the store (the same on every node: aggregate with max, not sum; counted up to a bound).",
                &[("", "", backlog.pending as i64)],
            )));
            registry.register_collector(Box::new(GaugeFamily::new(
                "payvisor_webhook_overdue_seconds",
                "How long the most overdue pending webhook delivery has been due, as read from the store (0: none overdue; aggregate with max).",
                &[("", "", backlog.overdue_seconds)],
            )));
        }
        registry.register_collector(Box::new(GaugeFamily::new(
            "payvisor_build_info",
            "Always 1; the version of the running build.",
            &[("version", env!("CARGO_PKG_VERSION"), 1)],
        )));
        if let Some(process) = held.process {
            register_process(&mut registry, &process);
        }
        encode(&registry)
    }
}

/// The `process_*` family every Prometheus client library exports.
fn register_process(registry: &mut Registry, process: &ProcessStats) {
    registry.register(
        "process_cpu_seconds",
        "Total user and system CPU time spent in seconds",
        ConstCounter::new(process.cpu_seconds),
    );
    let gauges = [
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            process.resident_memory_bytes,
        ),
        (
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            process.virtual_memory_bytes,
        ),
        (
            "process_open_fds",
            "Number of open file descriptors",
            process.open_fds,
        ),
        (
            "process_max_fds",
            "Maximum number of open file descriptors",
            process.max_fds,
        ),
        ("process_threads", "Number of OS threads", process.threads),
        (
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            process.start_time_seconds,
        ),
    ];
    for (name, help, value) in gauges {
        registry.register(name, help, ConstGauge::new(value));
    }
}

/// One gauge family in the text format: `# HELP`, `# TYPE`, then one line per
/// sample `(label name, label value, value)`, in the order given. An empty
/// label name writes an unlabelled sample.
pub fn render_gauge(name: &str, help: &str, samples: &[(&str, &str, i64)]) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(GaugeFamily::new(name, help, samples)));
    encode(&registry)
}

fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_text::encode(&mut text, registry).expect("writing to a String cannot fail");
    text
}

/// A gauge family with two labels, read at scrape time, encoded in the
/// order of its samples.
#[derive(Debug)]
struct LabelledGauges {
    name: &'static str,
    help: &'static str,
    labels: (&'static str, &'static str),
    samples: Vec<((String, &'static str), i64)>,
}

impl Collector for LabelledGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family =
            encoder.encode_descriptor(self.name, self.help, None, MetricType::Gauge)?;
        for ((first, second), sample) in &self.samples {
            family
                .encode_family(&[(self.labels.0, first.as_str()), (self.labels.1, *second)])?
                .encode_gauge(sample)?;
        }
        Ok(())
    }
}

/// A gauge family read at scrape time, encoded in the order of its samples.
#[derive(Debug)]
struct GaugeFamily {
    name: String,
    /// Written as given (the registry's own metrics get a `.` appended).
    help: String,
    /// `(label name, label value, value)`; no label name: unlabelled.
    samples: Vec<(String, String, i64)>,
}

impl GaugeFamily {
    fn new(name: &str, help: &str, samples: &[(&str, &str, i64)]) -> GaugeFamily {
        debug_assert!(is_metric_name(name), "bad metric name {name:?}");
        GaugeFamily {
            name: name.to_owned(),
            help: help.to_owned(),
            samples: samples
                .iter()
                .map(|(label, value, sample)| {
                    debug_assert!(
                        label.is_empty() || (is_metric_name(label) && !label.contains(':')),
                        "bad label {label:?}"
                    );
                    (label.to_string(), value.to_string(), *sample)
                })
                .collect(),
        }
    }
}

impl Collector for GaugeFamily {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family =
            encoder.encode_descriptor(&self.name, &self.help, None, MetricType::Gauge)?;
        for (label, value, sample) in &self.samples {
            if label.is_empty() {
                family.encode_gauge(sample)?;
            } else {
                family
                    .encode_family(&[(label.as_str(), value.as_str())])?
                    .encode_gauge(sample)?;
            }
        }
        Ok(())
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, the format's metric names (the library
/// writes names as given).
fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn a_gauge_family_has_help_type_and_one_line_per_sample() {
        let text = render_gauge(
            "payvisor_payments_stalled",
            "Payments past their deadline.\nBy state.",
            &[("state", "sent", 3), ("state", "in_review", 0)],
        );
        assert_eq!(
            text,
            "# HELP payvisor_payments_stalled Payments past their deadline.\\nBy state.\n\
             # TYPE payvisor_payments_stalled gauge\n\
             payvisor_payments_stalled{state=\"sent\"} 3\n\
             payvisor_payments_stalled{state=\"in_review\"} 0\n"
        );
    }

    #[test]
    fn label_values_are_escaped_and_unlabelled_samples_allowed() {
        let text = render_gauge("up", "a \\ b", &[("node", "a\"b\\c\nd", -1), ("", "", 7)]);
        assert_eq!(
            text,
            "# HELP up a \\\\ b\n# TYPE up gauge\nup{node=\"a\\\"b\\\\c\\nd\"} -1\nup 7\n"
        );
    }

    #[test]
    fn a_nodes_page_counts_mismatches_and_lists_every_state_that_can_stall() {
        let metrics = NodeMetrics::default();
        metrics.reconciliation_mismatches.inc_by(2);
        metrics.auth_failures.inc();
        let stalled = BTreeMap::from([("sent".to_owned(), 3)]);
        let held = Held {
            tasks_alive: 12,
            accounts_live: 3,
            process: None,
            ..Held::default()
        };
        let page = metrics.page(Some(&stalled), held);
        let mut expected = "# HELP payvisor_reconciliation_mismatches_total Mismatches found by reconciliation with the bank since start.\n\
             # TYPE payvisor_reconciliation_mismatches_total counter\n\
             payvisor_reconciliation_mismatches_total 2\n\
             # HELP payvisor_auth_failures_total Calls refused since start for missing, malformed, unknown or expired credentials.\n\
             # TYPE payvisor_auth_failures_total counter\n\
             payvisor_auth_failures_total 1\n\
             # HELP payvisor_rate_limited_total Calls refused since start because their key or certificate went over its rate.\n\
             # TYPE payvisor_rate_limited_total counter\n\
             payvisor_rate_limited_total 0\n\
             # HELP payvisor_stalled_payments Payments that missed a stall deadline (being re-driven or paged), by state.\n\
             # TYPE payvisor_stalled_payments gauge\n"
            .to_owned();
        for state in PaymentState::ALL
            .iter()
            .filter(|state| !state.is_terminal())
        {
            let count = if *state == PaymentState::Sent { 3 } else { 0 };
            expected.push_str(&format!(
                "payvisor_stalled_payments{{state=\"{}\"}} {count}\n",
                state.as_str()
            ));
        }
        expected.push_str(
            "# HELP payvisor_stalled_scan_ok 1 if the last count of stalled payments read the store successfully.\n\
             # TYPE payvisor_stalled_scan_ok gauge\n\
             payvisor_stalled_scan_ok 1\n\
             # HELP payvisor_runtime_tasks_alive Tasks alive in this process, actors included: flat under steady load, or something leaks.\n\
             # TYPE payvisor_runtime_tasks_alive gauge\n\
             payvisor_runtime_tasks_alive 12\n\
             # HELP payvisor_accounts_live Account actors running on this node (started on first use, stopped when idle).\n\
             # TYPE payvisor_accounts_live gauge\n\
             payvisor_accounts_live 3\n",
        );
        // Families without a sample yet (no call served, no store call
        // made) are left out; the build is always there.
        expected.push_str(&format!(
            "# HELP payvisor_build_info Always 1; the version of the running build.\n\
             # TYPE payvisor_build_info gauge\n\
             payvisor_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        ));
        // The families this test is about, in the page's order (the
        // others, such as the sweeps' zero series and the account queues,
        // have tests of their own).
        let about = [
            "payvisor_reconciliation_mismatches",
            "payvisor_auth_failures",
            "payvisor_rate_limited",
            "payvisor_stalled_",
            "payvisor_runtime_tasks_alive",
            "payvisor_accounts_live",
            "payvisor_build_info",
        ];
        let mut ours = String::new();
        for line in page.lines() {
            let name = line
                .trim_start_matches("# HELP ")
                .trim_start_matches("# TYPE ");
            if about.iter().any(|family| name.starts_with(family)) {
                ours.push_str(line);
                ours.push('\n');
            }
        }
        assert_eq!(ours, expected);

        // The store could not be read: zeros, and the scan says so.
        let page = metrics.page(None, Held::default());
        assert!(
            page.contains("payvisor_stalled_payments{state=\"sent\"} 0\n"),
            "{page}"
        );
        assert!(page.contains("payvisor_stalled_scan_ok 0\n"), "{page}");
        assert!(
            page.contains("payvisor_reconciliation_mismatches_total 2\n"),
            "{page}"
        );
    }

    #[test]
    fn metric_names_follow_the_format() {
        assert!(is_metric_name("payvisor_up:ratio"));
        assert!(!is_metric_name(""));
        assert!(!is_metric_name("9lives"));
        assert!(!is_metric_name("has-dash"));
    }

    /// One request over a fresh connection; the raw response.
    async fn get(address: std::net::SocketAddr, request_line: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!("{request_line}\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_metrics_and_404_elsewhere_until_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let render: Render =
            Arc::new(|| Box::pin(async { render_gauge("up", "Up.", &[("", "", 1)]) }));
        let (stop, shutdown) = crate::shutdown::channel();
        let server = tokio::spawn(serve(listener, None, render, shutdown));

        let metrics = get(address, "GET /metrics HTTP/1.1").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(
            metrics.contains("content-type: text/plain; version=0.0.4"),
            "{metrics}"
        );
        assert!(
            metrics.ends_with("# HELP up Up.\n# TYPE up gauge\nup 1\n"),
            "{metrics}"
        );
        for other in ["GET / HTTP/1.1", "POST /metrics HTTP/1.1"] {
            let response = get(address, other).await;
            assert!(response.starts_with("HTTP/1.1 404"), "{other}: {response}");
        }

        stop.fire();
        server.await.unwrap();
        assert!(tokio::net::TcpStream::connect(address).await.is_err());
    }
}
