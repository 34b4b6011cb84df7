//! A stand-in for PagerDuty's Events API v2 on loopback: plain HTTP/1.1 on
//! tokio, no HTTP library, so that it checks the client's bytes rather than
//! sharing its assumptions. It validates every request the way PagerDuty
//! does, answers 202 or 400 like it, records what it accepted and refused,
//! and can be told to fail the next requests (500, 429) to exercise retries.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// PagerDuty's bounds on the fields it checks.
const SUMMARY_CHARS_MAX: usize = 1024;
const DEDUP_KEY_CHARS_MAX: usize = 255;
/// Test-receiver bounds: a request larger than this is a client bug.
const HEADER_LINE_BYTES_MAX: usize = 8 * 1024;
const HEADERS_MAX: usize = 64;
const BODY_BYTES_MAX: usize = 512 * 1024;

/// A request the receiver refused, and why.
#[derive(Clone, Debug)]
pub struct Rejection {
    pub status: u16,
    pub reason: String,
    /// The request body as received (lossy UTF-8).
    pub body: String,
}

#[derive(Default)]
struct State {
    routing_key: String,
    /// Accepted events, in arrival order.
    events: Vec<Value>,
    rejections: Vec<Rejection>,
    /// Requests still to be failed with `fail_status`, before validation.
    fail_remaining: u32,
    fail_status: u16,
    /// Every request that reached the handler, failed on purpose or not.
    requests: u32,
}

/// The running receiver; stops (with its open connections) when dropped.
pub struct PagerReceiver {
    address: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

impl PagerReceiver {
    /// Listens on a free loopback port, accepting only `routing_key`.
    pub async fn start(routing_key: &str) -> PagerReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State {
            routing_key: routing_key.to_owned(),
            ..State::default()
        }));
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&state)));
        PagerReceiver {
            address,
            state,
            accept,
        }
    }

    /// The enqueue URL, for `PagerDutySink::new`.
    pub fn url(&self) -> String {
        format!("http://{}/v2/enqueue", self.address)
    }

    /// Every accepted event, in arrival order.
    pub fn events(&self) -> Vec<Value> {
        self.state().events.clone()
    }

    /// The accepted triggers for one `dedup_key`.
    pub fn triggers_for(&self, dedup_key: &str) -> Vec<Value> {
        self.events_for(dedup_key, "trigger")
    }

    /// The accepted resolves for one `dedup_key`.
    pub fn resolves_for(&self, dedup_key: &str) -> Vec<Value> {
        self.events_for(dedup_key, "resolve")
    }

    /// Every refused request, in arrival order (failures ordered by
    /// [`PagerReceiver::fail_next`] are not refusals and are not listed).
    pub fn rejections(&self) -> Vec<Rejection> {
        self.state().rejections.clone()
    }

    /// Requests received so far, including the ones failed on purpose.
    pub fn requests(&self) -> u32 {
        self.state().requests
    }

    /// Answers the next `count` requests with `status` (e.g. 500, 429)
    /// without looking at them, as an overloaded PagerDuty would.
    pub fn fail_next(&self, count: u32, status: u16) {
        let mut state = self.state();
        state.fail_remaining = count;
        state.fail_status = status;
    }

    fn events_for(&self, dedup_key: &str, action: &str) -> Vec<Value> {
        self.state()
            .events
            .iter()
            .filter(|event| event["dedup_key"] == dedup_key && event["event_action"] == action)
            .cloned()
            .collect()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("receiver state")
    }
}

impl Drop for PagerReceiver {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every
        // connection task.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                connections.spawn(serve_connection(stream, Arc::clone(&state)));
            }
        }
    }
}

/// One parsed request.
struct Request {
    method: String,
    path: String,
    content_type: Option<String>,
    body: Vec<u8>,
    /// `Connection: close`, or HTTP/1.0 without keep-alive.
    close: bool,
}

/// Serves requests on one connection until the client closes it, asks to
/// close, or sends something unparseable.
async fn serve_connection(stream: TcpStream, state: Arc<Mutex<State>>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let request = match read_request(&mut reader).await {
            Ok(Some(request)) => request,
            Ok(None) => return, // clean close between requests
            Err(reason) => {
                let body = json!({"status": "invalid request", "message": reason});
                let _ = write_response(&mut write, 400, &body, true).await;
                return;
            }
        };
        let (status, body) = handle(&request, &state);
        if write_response(&mut write, status, &body, request.close)
            .await
            .is_err()
            || request.close
        {
            return;
        }
    }
}

/// Reads one request; `Ok(None)` when the connection closed before one began.
async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Request>, String> {
    let Some(request_line) = read_line(reader).await? else {
        return Ok(None);
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("malformed request line {request_line:?}"));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(format!("unsupported version {version:?}"));
    }
    let mut content_length = None;
    let mut content_type = None;
    let mut connection = None;
    let mut headers = 0;
    loop {
        let line = read_line(reader)
            .await?
            .ok_or("connection closed inside the headers")?;
        if line.is_empty() {
            break;
        }
        headers += 1;
        if headers > HEADERS_MAX {
            return Err("too many headers".into());
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("malformed header {line:?}"))?;
        let value = value.trim().to_owned();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                let length: usize = value
                    .parse()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?;
                if content_length.replace(length).is_some() {
                    return Err("two Content-Length headers".into());
                }
            }
            "transfer-encoding" => return Err("chunked bodies are not supported".into()),
            "content-type" => content_type = Some(value),
            "connection" => connection = Some(value.to_ascii_lowercase()),
            _ => {}
        }
    }
    let length = content_length.unwrap_or(0);
    if length > BODY_BYTES_MAX {
        return Err(format!("body of {length} bytes is too large"));
    }
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("body: {e}"))?;
    let close = match connection.as_deref() {
        Some("close") => true,
        Some("keep-alive") => false,
        _ => version == "HTTP/1.0",
    };
    Ok(Some(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        content_type,
        body,
        close,
    }))
}

/// One CRLF-terminated line without its terminator; `None` at end of stream.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<String>, String> {
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(HEADER_LINE_BYTES_MAX as u64 + 2)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| e.to_string())?;
    if read == 0 {
        return Ok(None);
    }
    let line = line
        .strip_suffix(b"\r\n")
        .ok_or("line not terminated by CRLF (or too long)")?;
    String::from_utf8(line.to_vec())
        .map(Some)
        .map_err(|_| "line is not UTF-8".into())
}

async fn write_response(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    status: u16,
    body: &Value,
    close: bool,
) -> std::io::Result<()> {
    let body = body.to_string();
    let reason = match status {
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Unknown",
    };
    let connection = if close { "close" } else { "keep-alive" };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
        body.len()
    );
    write.write_all(response.as_bytes()).await?;
    write.flush().await
}

/// The status and JSON body PagerDuty would answer, recording the outcome.
fn handle(request: &Request, state: &Mutex<State>) -> (u16, Value) {
    let mut state = state.lock().expect("receiver state");
    state.requests += 1;
    if state.fail_remaining > 0 {
        state.fail_remaining -= 1;
        let status = state.fail_status;
        return (
            status,
            json!({"status": "unavailable", "message": "injected failure"}),
        );
    }
    let (status, outcome) = match validate(request, &state.routing_key) {
        Ok(event) => (202, Ok(event)),
        Err(reason) if request.path != "/v2/enqueue" => (404, Err(reason)),
        Err(reason) => (400, Err(reason)),
    };
    match outcome {
        Ok(event) => {
            let dedup_key = event["dedup_key"].clone();
            state.events.push(event);
            let body = json!({
                "status": "success",
                "message": "Event processed",
                "dedup_key": dedup_key,
            });
            (status, body)
        }
        Err(reason) => {
            state.rejections.push(Rejection {
                status,
                reason: reason.clone(),
                body: String::from_utf8_lossy(&request.body).into_owned(),
            });
            let body = json!({
                "status": "invalid event",
                "message": "Event object is invalid",
                "errors": [reason],
            });
            (status, body)
        }
    }
}

/// The event, if PagerDuty would accept it; else the reason it would not.
fn validate(request: &Request, routing_key: &str) -> Result<Value, String> {
    if request.path != "/v2/enqueue" {
        return Err(format!("no such path {:?}", request.path));
    }
    if request.method != "POST" {
        return Err(format!("method {} is not POST", request.method));
    }
    let content_type = request.content_type.as_deref().unwrap_or_default();
    if content_type.split(';').next().map(str::trim) != Some("application/json") {
        return Err(format!(
            "Content-Type {content_type:?} is not application/json"
        ));
    }
    let event: Value =
        serde_json::from_slice(&request.body).map_err(|e| format!("body is not JSON: {e}"))?;
    let text = |field: &Value, name: &str| -> Result<String, String> {
        field
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{name} is missing or not a string"))
    };
    if text(&event["routing_key"], "routing_key")? != routing_key {
        return Err("Invalid routing key".into());
    }
    let dedup_key = text(&event["dedup_key"], "dedup_key")?;
    if dedup_key.is_empty() || dedup_key.chars().count() > DEDUP_KEY_CHARS_MAX {
        return Err(format!(
            "dedup_key must have 1..={DEDUP_KEY_CHARS_MAX} characters"
        ));
    }
    match text(&event["event_action"], "event_action")?.as_str() {
        "resolve" => Ok(event),
        "trigger" => {
            let payload = &event["payload"];
            let summary = text(&payload["summary"], "payload.summary")?;
            if !(1..=SUMMARY_CHARS_MAX).contains(&summary.chars().count()) {
                return Err(format!(
                    "payload.summary must have 1..={SUMMARY_CHARS_MAX} characters"
                ));
            }
            if text(&payload["source"], "payload.source")?.is_empty() {
                return Err("payload.source is empty".into());
            }
            let severity = text(&payload["severity"], "payload.severity")?;
            if !["critical", "error", "warning", "info"].contains(&severity.as_str()) {
                return Err(format!("payload.severity {severity:?} is not a severity"));
            }
            let timestamp = text(&payload["timestamp"], "payload.timestamp")?;
            if !looks_like_rfc3339(&timestamp) {
                return Err(format!("payload.timestamp {timestamp:?} is not RFC 3339"));
            }
            Ok(event)
        }
        other => Err(format!("event_action {other:?} is not trigger or resolve")),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, with plausible field ranges.
fn looks_like_rfc3339(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = bytes.get(range)?;
        part.iter().all(u8::is_ascii_digit).then(|| {
            part.iter()
                .fold(0, |n, digit| n * 10 + u32::from(digit - b'0'))
        })
    };
    let date_time_ok = (|| {
        let (_, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
        let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
        Some(
            bytes[4] == b'-'
                && bytes[7] == b'-'
                && matches!(bytes[10], b'T' | b't')
                && bytes[13] == b':'
                && bytes[16] == b':'
                && (1..=12).contains(&month)
                && (1..=31).contains(&day)
                && hour < 24
                && minute < 60
                && second <= 60,
        )
    })();
    if date_time_ok != Some(true) {
        return false;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits_len = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits_len == 0 {
            return false;
        }
        rest = &fraction[digits_len..];
    }
    match rest.as_bytes() {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()),
        _ => false,
    }
}
