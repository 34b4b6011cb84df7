//! The server's log: text or JSON lines on stderr, filtered by `RUST_LOG`
//! (default `info`). A cluster member's lines carry its node id, so that
//! the lines of several nodes can be merged and still told apart.
//!
//! JSON lines are flat: the event's fields sit beside `timestamp`,
//! `level`, `target` and `message`, where a log pipeline indexes them
//! without unnesting. Text lines are coloured only when stderr is a
//! terminal (and `NO_COLOR` is not set): escape codes in a file or a
//! collector are noise.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the global subscriber.
pub fn init(json: bool, node: Option<String>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    match (json, node) {
        (false, None) => builder.init(),
        (true, None) => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        (false, Some(node)) => builder
            .event_format(WithNode {
                node,
                json: false,
                inner: tracing_subscriber::fmt::format(),
            })
            .init(),
        (true, Some(node)) => builder
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(WithNode {
                node,
                json: true,
                inner: tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
            })
            .init(),
    }
}

/// A line format with the node id in front: `node=ID ` before a text
/// line, a first `"node"` field in a JSON object.
struct WithNode<F> {
    node: String,
    json: bool,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for WithNode<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if !self.json {
            write!(writer, "node={} ", self.node)?;
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"node\":{},{rest}",
                serde_json::Value::String(self.node.clone())
            ),
            None => writer.write_str(&line),
        }
    }
}
