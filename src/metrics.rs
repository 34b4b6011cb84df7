//! A Prometheus scrape endpoint: `GET /metrics` answers the text exposition
//! format (0.0.4), anything else 404. What to expose is the caller's
//! business: it passes a [`Render`] that builds the whole page per scrape
//! (with [`render_gauge`] for each family).
//!
//! **Boundary:** scrapes are read-only and idempotent, so on shutdown open
//! connections are simply dropped, not drained.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{header, Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::limits;
use crate::shutdown::Shutdown;
use crate::store::BoxFuture;

// Bounds of this module (to move into `limits.rs`).

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Builds the whole exposition text, once per scrape.
pub type Render = Arc<dyn Fn() -> BoxFuture<'static, String> + Send + Sync>;

/// Serves scrapes on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, render: Render, shutdown: Shutdown) {
    let handler: crate::http_server::Handler = Arc::new(move |request| {
        let render = Arc::clone(&render);
        Box::pin(respond(request, render))
    });
    let bounds = crate::http_server::ServerLimits {
        connections_max: limits::METRICS_CONNECTIONS_MAX,
        header_read_timeout: limits::METRICS_HEADER_READ_TIMEOUT,
        drain_max: limits::METRICS_DRAIN_MAX,
    };
    crate::http_server::serve("metrics", listener, bounds, handler, shutdown).await;
}

async fn respond(request: Request<Incoming>, render: Render) -> Response<Full<Bytes>> {
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

/// One gauge family in the text format: `# HELP`, `# TYPE`, then one line per
/// sample `(label name, label value, value)`. An empty label name writes an
/// unlabelled sample.
pub fn render_gauge(name: &str, help: &str, samples: &[(&str, &str, i64)]) -> String {
    debug_assert!(is_metric_name(name), "bad metric name {name:?}");
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(text, "# HELP {name} {}", escape(help, false));
    let _ = writeln!(text, "# TYPE {name} gauge");
    for (label, value, sample) in samples {
        if label.is_empty() {
            let _ = writeln!(text, "{name} {sample}");
        } else {
            debug_assert!(
                is_metric_name(label) && !label.contains(':'),
                "bad label {label:?}"
            );
            let _ = writeln!(
                text,
                "{name}{{{label}=\"{}\"}} {sample}",
                escape(value, true)
            );
        }
    }
    text
}

/// The format's escapes: backslash and newline everywhere, double quote in
/// label values only.
fn escape(text: &str, label_value: bool) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '"' if label_value => escaped.push_str("\\\""),
            c => escaped.push(c),
        }
    }
    escaped
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, the format's metric names.
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
        let server = tokio::spawn(serve(listener, render, shutdown));

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
