//! The HTTP server for the small endpoints payvisor serves besides gRPC (the
//! Prometheus scrape, bank callbacks; the simulated bank's API too): an
//! HTTP/1.1 accept loop on hyper with a bound on open connections, on the
//! time a client gets to send its headers, and on the time and bytes of its
//! body, so idle or slow clients cannot pile up tasks.
//!
//! **Slow clients cannot hold the door shut.** The server reads a request's
//! body itself (bounded in time and size) before the handler sees it, so a
//! handler (a callback's signature check) runs as soon as the body is in.
//! When every connection slot is taken, a new connection takes the slot of
//! the connection that has made no progress for longest (one waiting for
//! its request or reading a body, for at least
//! [`limits::HTTP_EVICT_IDLE_AFTER`]); a connection whose request is being
//! answered is never taken. So a flood of connections that send headers
//! and then nothing (or a byte now and then) only evicts itself, and a
//! client that sends its request at once always gets through.
//!
//! hyper serves each connection (parsing, keep-alive, the header timer,
//! graceful close); what is written here is the accept loop that hyper 1
//! leaves to its users. axum's `serve` would take it over but has neither a
//! connection bound nor a header timeout, and needs axum features that
//! nothing else here builds.
//!
//! On shutdown the listener closes at once (new connections are refused),
//! each open connection finishes the request in progress and closes, and
//! connections still open after the server's drain bound are dropped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::limits;
use crate::shutdown::Shutdown;
use crate::store::BoxFuture;
use crate::tls::ServerTls;

/// Answers one request, its body read in full.
pub type Handler =
    Arc<dyn Fn(Request<Full<Bytes>>) -> BoxFuture<'static, Response<Full<Bytes>>> + Send + Sync>;

/// Bounds of one server.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Open connections; beyond this, new ones are closed at once.
    pub connections_max: usize,
    /// Time a client gets to send its request headers.
    pub header_read_timeout: Duration,
    /// Time a client gets to send a request's body, once its headers are
    /// in (`408` and the connection closed otherwise).
    pub body_read_timeout: Duration,
    /// Bytes of a request's body (`413` otherwise).
    pub body_bytes_max: usize,
    /// Once shutdown starts, how long open connections get to finish the
    /// request in progress; those still open then are dropped. Zero drops
    /// them at once.
    pub drain_max: Duration,
}

/// Serves `handler` on `listener` until `shutdown` fires, then drains (see
/// the module's doc) and returns. `name` labels the log lines.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    limits: ServerLimits,
    handler: Handler,
    shutdown: Shutdown,
) {
    serve_over(name, listener, None, limits, handler, shutdown).await;
}

/// [`serve`], over TLS when `tls` is given (the handshake counts against
/// the header timeout: a client that never completes it is dropped).
pub async fn serve_over(
    name: &'static str,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    limits: ServerLimits,
    handler: Handler,
    shutdown: Shutdown,
) {
    // A permit per open connection, released when its task ends.
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let progress = Arc::new(Progress::default());
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.signalled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, server = name, "accept failed");
                        tokio::time::sleep(limits::HTTP_ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                };
                let slot = match Arc::clone(&slots).try_acquire_owned() {
                    Ok(slot) => Slot::Free(slot),
                    // Full: take the slot of the connection stuck longest.
                    Err(_) if progress.evict_stalled() => Slot::Freed(Arc::clone(&slots)),
                    Err(_) => {
                        tracing::warn!(%peer, server = name, "too many connections, closing");
                        continue;
                    }
                };
                let handler = Arc::clone(&handler);
                let shutdown = shutdown.clone();
                let id = progress.next_id();
                // Stalled until its first request is in.
                progress.set(id, Some(Instant::now()));
                let tracked = Tracked { id, progress: Arc::clone(&progress) };
                let task = match &tls {
                    None => connections.spawn(async move {
                        let Some(slot) = slot.take().await else { return };
                        connection(stream, peer, handler, limits, shutdown, slot, tracked).await;
                    }),
                    Some(tls) => {
                        let tls = Arc::clone(tls);
                        connections.spawn(async move {
                            let Some(slot) = slot.take().await else { return };
                            let handshake = tokio::time::timeout(
                                limits.header_read_timeout,
                                tls.accept(stream),
                            );
                            if let Ok(Some(stream)) = handshake.await {
                                connection(stream, peer, handler, limits, shutdown, slot, tracked).await;
                            }
                        })
                    }
                };
                progress.opened(id, task);
            }
        }
    }
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.drain_max, drained)
        .await
        .is_err()
    {
        tracing::debug!(
            server = name,
            open = connections.len(),
            "connections still open after the drain bound; dropping them"
        );
    }
}

/// A new connection's slot: free now, or being freed by an eviction.
enum Slot {
    Free(OwnedSemaphorePermit),
    Freed(Arc<Semaphore>),
}

impl Slot {
    /// The permit; `None` if the evicted connection did not let go in time.
    async fn take(self) -> Option<OwnedSemaphorePermit> {
        match self {
            Slot::Free(permit) => Some(permit),
            Slot::Freed(slots) => {
                tokio::time::timeout(limits::HTTP_EVICT_WAIT, slots.acquire_owned())
                    .await
                    .ok()?
                    .ok()
            }
        }
    }
}

/// What each open connection is doing, to find the one stuck longest.
#[derive(Default)]
struct Progress {
    next: std::sync::atomic::AtomicU64,
    open: Mutex<HashMap<u64, Connection>>,
}

struct Connection {
    /// Since when it has made no progress (waiting for a request, or
    /// reading one); `None` while a request of it is being answered.
    stalled_since: Option<Instant>,
    task: Option<tokio::task::AbortHandle>,
}

impl Progress {
    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Connection>> {
        self.open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn opened(&self, id: u64, task: tokio::task::AbortHandle) {
        // The task may have ended already (its entry is gone then).
        if let Some(connection) = self.lock().get_mut(&id) {
            connection.task = Some(task);
        }
    }

    fn set(&self, id: u64, stalled_since: Option<Instant>) {
        self.lock()
            .entry(id)
            .or_insert(Connection {
                stalled_since,
                task: None,
            })
            .stalled_since = stalled_since;
    }

    /// Ends the connection stuck longest, if one is stuck long enough.
    fn evict_stalled(&self) -> bool {
        let now = Instant::now();
        let mut open = self.lock();
        let stuck = open
            .iter()
            .filter_map(|(id, connection)| {
                Some((*id, connection.stalled_since?, connection.task.as_ref()?))
            })
            .filter(|(_, since, _)| now.duration_since(*since) >= limits::HTTP_EVICT_IDLE_AFTER)
            .min_by_key(|(_, since, _)| *since)
            .map(|(id, _, task)| (id, task.clone()));
        let Some((id, task)) = stuck else {
            return false;
        };
        task.abort();
        open.remove(&id);
        true
    }
}

/// A connection's entry in [`Progress`], removed when the connection ends.
struct Tracked {
    id: u64,
    progress: Arc<Progress>,
}

impl Tracked {
    fn stalled(&self) {
        self.progress.set(self.id, Some(Instant::now()));
    }
    fn answering(&self) {
        self.progress.set(self.id, None);
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.progress.lock().remove(&self.id);
    }
}

/// A plain-text answer that closes the connection.
fn closing(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONNECTION, "close")
        .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(format!("{text}\n"))))
        .expect("static headers are valid")
}

/// Serves one connection until the client closes it, or, once `shutdown`
/// fires, until the request in progress is answered.
async fn connection<S>(
    stream: S,
    peer: std::net::SocketAddr,
    handler: Handler,
    limits: ServerLimits,
    shutdown: Shutdown,
    _slot: OwnedSemaphorePermit,
    tracked: Tracked,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let tracked = Arc::new(tracked);
    tracked.stalled();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let handler = Arc::clone(&handler);
        let tracked = Arc::clone(&tracked);
        async move {
            let (parts, body) = request.into_parts();
            let too_long = parts
                .headers
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|length| length > limits.body_bytes_max as u64);
            if too_long {
                return Ok::<_, Infallible>(closing(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body too large",
                ));
            }
            let read = Limited::new(body, limits.body_bytes_max).collect();
            let body = match tokio::time::timeout(limits.body_read_timeout, read).await {
                Ok(Ok(body)) => body.to_bytes(),
                Ok(Err(_)) => return Ok(closing(StatusCode::PAYLOAD_TOO_LARGE, "body too large")),
                Err(_) => {
                    return Ok(closing(
                        StatusCode::REQUEST_TIMEOUT,
                        "body not received in time",
                    ))
                }
            };
            tracked.answering();
            let answer = handler(Request::from_parts(parts, Full::new(body))).await;
            tracked.stalled();
            Ok(answer)
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    let ended = tokio::select! {
        biased;
        ended = served.as_mut() => ended,
        () = shutdown.signalled() => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(error) = ended {
        tracing::debug!(%peer, %error, "connection ended");
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    use super::*;

    const LIMITS: ServerLimits = ServerLimits {
        connections_max: 4,
        header_read_timeout: Duration::from_secs(5),
        body_read_timeout: Duration::from_secs(5),
        body_bytes_max: 1024,
        drain_max: Duration::from_secs(60),
    };

    /// Sends a request on a fresh connection that stays open for more.
    async fn send(address: std::net::SocketAddr, path: &str) -> TcpStream {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        stream
    }

    /// Reads until the server closes the connection (a reset included: a
    /// connection closed unread is reset).
    async fn read_all(mut stream: TcpStream) -> String {
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        String::from_utf8(response).unwrap()
    }

    #[tokio::test]
    async fn on_shutdown_new_connections_are_refused_and_the_request_in_progress_is_answered() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (arrived, request_arrived) = oneshot::channel::<()>();
        let (release, released) = oneshot::channel::<()>();
        let hooks = std::sync::Mutex::new(Some((arrived, released)));
        let handler: Handler = Arc::new(move |_request| {
            let hooks = hooks.lock().unwrap().take();
            Box::pin(async move {
                if let Some((arrived, released)) = hooks {
                    let _ = arrived.send(());
                    let _ = released.await;
                }
                Response::new(Full::new(Bytes::from_static(b"answered")))
            })
        });
        let (trigger, shutdown) = crate::shutdown::channel();
        let server = tokio::spawn(serve("test", listener, LIMITS, handler, shutdown));

        let in_progress = send(address, "/slow").await;
        request_arrived.await.unwrap();
        trigger.fire();
        // The listener closes while the request is still being answered.
        while TcpStream::connect(address).await.is_ok() {
            tokio::task::yield_now().await;
        }
        assert!(!server.is_finished());

        release.send(()).unwrap();
        let response = read_all(in_progress).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("answered"), "{response}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_connection_beyond_the_bound_is_closed_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (hold, held) = tokio::sync::watch::channel(false);
        let handler: Handler = Arc::new(move |_request| {
            let mut held = held.clone();
            Box::pin(async move {
                let _ = held.wait_for(|go| *go).await;
                Response::new(Full::new(Bytes::from_static(b"ok")))
            })
        });
        let limits = ServerLimits {
            connections_max: 1,
            ..LIMITS
        };
        let (trigger, shutdown) = crate::shutdown::channel();
        let server = tokio::spawn(serve("test", listener, limits, handler, shutdown));

        let first = send(address, "/").await;
        let refused = read_all(send(address, "/").await).await;
        assert_eq!(refused, "", "closed without an answer");

        hold.send_replace(true);
        trigger.fire();
        assert!(read_all(first).await.starts_with("HTTP/1.1 200"));
        server.await.unwrap();
    }
}
