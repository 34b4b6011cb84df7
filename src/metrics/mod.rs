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

pub use prometheus_client::metrics::counter::Counter;

use crate::domain::payment::PaymentState;
use crate::limits;
use crate::shutdown::Shutdown;
use crate::store::BoxFuture;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Builds the whole exposition text, once per scrape.
pub type Render = Arc<dyn Fn() -> BoxFuture<'static, String> + Send + Sync>;

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
}

/// What the process holds at a scrape, for watching leaks (the soak, and
/// dashboards, read these): per node, so `sum` across replicas is right.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub tasks_alive: usize,
    pub accounts_live: usize,
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
        encode(&registry)
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
        assert_eq!(page, expected);

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
