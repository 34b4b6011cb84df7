//! Spans: a stretch of work under a trace (an RPC, an account's decision,
//! its write, a bank call, a webhook). Every span has an id, so the calls
//! it makes name it as their parent; it is timed and handed to the OTLP
//! exporter only while one is installed and its trace is sampled, so with
//! export off a span costs its id and nothing else (no clock read).

use std::borrow::Cow;

use super::record::{self, FinishedSpan, SpanKind, Value};
use super::TraceParent;

/// A moment, in Unix nanoseconds, read only while spans are exported
/// (`None` otherwise): the start of a span begun later, such as an account
/// decision known to be one only once it is staged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp(Option<u64>);

impl Stamp {
    /// Now, if spans are exported.
    pub fn now() -> Stamp {
        Stamp(record::installed().then(unix_nanos))
    }
}

/// A span in progress: exported when dropped (or ended), if recorded.
#[derive(Debug)]
pub struct Span {
    context: TraceParent,
    recording: Option<Box<FinishedSpan>>,
}

impl Span {
    /// A span under `parent` (a new trace without one), from now.
    pub fn start(
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: Option<&TraceParent>,
    ) -> Span {
        Span::start_at(name, kind, parent, Stamp::now())
    }

    /// A span under `parent` (a new trace without one) that began at
    /// `since` (now, if that was not read).
    pub fn start_at(
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: Option<&TraceParent>,
        since: Stamp,
    ) -> Span {
        let context = parent.map_or_else(TraceParent::begin, TraceParent::child);
        let recording = (record::installed() && context.sampled()).then(|| {
            let start = since.0.unwrap_or_else(unix_nanos);
            Box::new(FinishedSpan {
                context: context.clone(),
                parent_span_id: parent.map(|parent| parent.span_id().to_owned()),
                name: name.into(),
                kind,
                start_unix_nanos: start,
                end_unix_nanos: start,
                attributes: Vec::new(),
                error: None,
            })
        });
        Span { context, recording }
    }

    /// A span that is never exported: a context for what follows, and
    /// nothing else (calls too frequent or dull to trace: health probes).
    pub fn unrecorded(parent: Option<&TraceParent>) -> Span {
        let context = parent.map_or_else(TraceParent::begin, TraceParent::child);
        Span {
            context,
            recording: None,
        }
    }

    /// This span, as the calls it makes name their parent.
    pub fn context(&self) -> &TraceParent {
        &self.context
    }

    /// Whether this span will be exported (attributes worth computing).
    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(recording) = &mut self.recording {
            recording.attributes.push((key, value.into()));
        }
    }

    /// Marks the work failed, with why (never a secret: exported as is).
    pub fn fail(&mut self, why: impl Into<String>) {
        if let Some(recording) = &mut self.recording {
            recording.error = Some(why.into());
        }
    }

    /// Ends the span now (as dropping it does).
    pub fn end(self) {}
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(mut finished) = self.recording.take() {
            finished.end_unix_nanos = unix_nanos().max(finished.start_unix_nanos);
            record::finish(*finished);
        }
    }
}

/// Spans of the same work done for several traces at once: an account's
/// batch of commands decided, written and acted on together is part of
/// each command's trace. Empty (free) when none of them is recorded.
#[derive(Debug, Default)]
pub struct SpanSet(Vec<Span>);

impl SpanSet {
    /// One span under each parent that is recorded, from `since`.
    pub fn start_at<'a>(
        name: &'static str,
        parents: impl IntoIterator<Item = Option<&'a TraceParent>>,
        since: Stamp,
    ) -> SpanSet {
        if !record::installed() {
            return SpanSet::default();
        }
        let spans = (parents.into_iter().flatten())
            .filter(|parent| parent.sampled())
            .map(|parent| Span::start_at(name, SpanKind::Internal, Some(parent), since))
            .collect();
        SpanSet(spans)
    }

    /// A span under each of these (a step of the work each was doing).
    pub fn children(&self, name: &'static str, kind: SpanKind) -> SpanSet {
        let spans = (self.0.iter())
            .map(|span| Span::start(name, kind, Some(span.context())))
            .collect();
        SpanSet(spans)
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Value> + Clone) {
        for span in &mut self.0 {
            span.set(key, value.clone());
        }
    }

    pub fn fail(&mut self, why: &str) {
        for span in &mut self.0 {
            span.fail(why);
        }
    }
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}
