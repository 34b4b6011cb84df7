//! W3C trace context: the `traceparent` a call arrives with (or one begun
//! at the edge) travels with the command it causes to the bank calls that
//! carry it out, each a child span of the call, so a bank's logs and
//! payvisor's share the trace id. The spans themselves ([`Span`]) are
//! exported over OTLP when configured ([`export`]).

pub mod export;
mod record;
mod span;

pub use record::{FinishedSpan, SpanKind, SpanMetrics, Value};
pub use span::{Span, SpanSet, Stamp};

/// Whether spans are exported in this process (`--otlp-endpoint`).
pub fn exporting() -> bool {
    record::installed()
}

/// The W3C `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";

/// One span of a trace, as `traceparent` carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lowercase hex digits, not all zero.
    trace_id: String,
    /// 16 lowercase hex digits, not all zero.
    span_id: String,
    /// The `flags` field, as received (`01`: sampled).
    flags: String,
}

impl TraceParent {
    /// A `traceparent` value, if it is one. Version `00` has exactly four
    /// fields; a later version may append more (its first four are read as
    /// version 00's); `ff` is invalid.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let mut parts = value.trim().split('-');
        let (version, trace_id, span_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let known_layout = match version {
            "00" => parts.next().is_none(),
            "ff" => false,
            later => hex(later, 2),
        };
        (known_layout
            && hex(trace_id, 32)
            && !zero(trace_id)
            && hex(span_id, 16)
            && !zero(span_id)
            && hex(flags, 2))
        .then(|| TraceParent {
            trace_id: trace_id.to_owned(),
            span_id: span_id.to_owned(),
            flags: flags.to_owned(),
        })
    }

    /// A new trace, its ids random, sampled as the exporter's ratio says
    /// (always, without an exporter).
    pub fn begin() -> TraceParent {
        let bytes = random_bytes::<24>();
        let sampled = record::samples_new_trace(&bytes[..16]);
        TraceParent {
            trace_id: to_hex(&bytes[..16]),
            span_id: to_hex(&bytes[16..]),
            flags: if sampled { "01" } else { "00" }.to_owned(),
        }
    }

    /// A span of the same trace under this one (a call it makes).
    pub fn child(&self) -> TraceParent {
        TraceParent {
            trace_id: self.trace_id.clone(),
            span_id: to_hex(&random_bytes::<8>()),
            flags: self.flags.clone(),
        }
    }

    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    pub fn span_id(&self) -> &str {
        &self.span_id
    }

    /// The `sampled` flag: whoever began the trace wants it recorded.
    pub fn sampled(&self) -> bool {
        u8::from_str_radix(&self.flags, 16).is_ok_and(|flags| flags & 1 == 1)
    }

    /// The header's value (version 00).
    pub fn header(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

fn hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn zero(text: &str) -> bool {
    text.bytes().all(|b| b == b'0')
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Random bytes whose first byte and last byte are never zero, so that
/// neither the trace id (the first 16 of 24) nor a span id (the last 8)
/// is all zero, which would be invalid.
fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // No randomness from the system: distinct ids still, from the clock.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or(1)
            .to_le_bytes();
        for (at, byte) in bytes.iter_mut().enumerate() {
            *byte = nanos[at % nanos.len()] ^ at as u8;
        }
    }
    bytes[0] |= 1;
    bytes[N - 1] |= 1;
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_traceparent_is_read_and_anything_else_refused() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let valid = format!("00-{id}-00f067aa0ba902b7-01");
        let parsed = TraceParent::parse(&valid).unwrap();
        assert_eq!(parsed.trace_id(), id);
        assert_eq!(parsed.header(), valid);
        // A later version's first four fields are read as version 00's.
        let later = format!("01-{id}-00f067aa0ba902b7-01-what-comes-next");
        assert_eq!(TraceParent::parse(&later).unwrap().trace_id(), id);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_under_a_new_span_and_a_begun_trace_is_new() {
        let parent = TraceParent::begin();
        assert_eq!(TraceParent::parse(&parent.header()), Some(parent.clone()));
        let child = parent.child();
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_ne!(child.header(), parent.header());
        assert_eq!(TraceParent::parse(&child.header()), Some(child));
        assert_ne!(TraceParent::begin().trace_id(), parent.trace_id());
    }
}
