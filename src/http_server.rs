//! The HTTP server for the small endpoints payvisor serves besides gRPC (the
//! Prometheus scrape, bank callbacks; the simulated bank's API too): an
//! HTTP/1.1 accept loop on hyper with a bound on open connections and on the
//! time a client gets to send its headers, so idle or slow clients cannot
//! pile up tasks.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::store::BoxFuture;

/// Answers one request.
pub type Handler =
    Arc<dyn Fn(Request<Incoming>) -> BoxFuture<'static, Response<Full<Bytes>>> + Send + Sync>;

/// Bounds of one server.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Open connections; beyond this, new ones are closed at once.
    pub connections_max: usize,
    /// Time a client gets to send its request headers.
    pub header_read_timeout: Duration,
}

/// Serves `handler` on `listener` until `shutdown` completes. `name` labels
/// the log lines.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    limits: ServerLimits,
    handler: Handler,
    shutdown: impl Future<Output = ()>,
) {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, server = name, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if connections.len() >= limits.connections_max {
                    tracing::warn!(%peer, server = name, "too many connections, closing");
                    continue;
                }
                let handler = Arc::clone(&handler);
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let answer = handler(request);
                        async move { Ok::<_, Infallible>(answer.await) }
                    });
                    let served = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(limits.header_read_timeout)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    if let Err(error) = served {
                        tracing::debug!(%peer, %error, server = name, "connection ended");
                    }
                });
            }
        }
    }
}
