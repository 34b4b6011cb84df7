//! The baseline: a trivial tonic service, served in this process on a free
//! loopback port and driven closed-loop by the same kind of client as the
//! payvisor run. Its rate is what this machine, this transport and this
//! client can do with no work behind the call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Generated code for `payvisor.bench.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("payvisor.bench.v1");
}

use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};

/// Bytes echoed: about the size of an encoded CreatePaymentRequest, so the
/// transport does comparable work per call.
const PAYLOAD_BYTES: usize = 128;

#[derive(Default)]
struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(
        &self,
        request: Request<pb::EchoMessage>,
    ) -> Result<Response<pb::EchoMessage>, Status> {
        Ok(Response::new(request.into_inner()))
    }
}

/// Serves the echo service, then drives it with `concurrency` requests in
/// flight over `connections` connections for `duration`; returns calls/s.
pub async fn baseline(
    concurrency: usize,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(EchoService))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    let mut channels = Vec::with_capacity(connections.max(1));
    for _ in 0..connections.max(1) {
        channels.push(
            Channel::from_shared(format!("http://{address}"))?
                .connect()
                .await?,
        );
    }
    eprintln!("bench: echo baseline for {}s", duration.as_secs());
    let calls = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let mut client = EchoClient::new(channels[worker % channels.len()].clone());
            let calls = Arc::clone(&calls);
            tokio::spawn(async move {
                let payload = vec![0x5a; PAYLOAD_BYTES];
                while Instant::now() < deadline {
                    let message = pb::EchoMessage {
                        payload: payload.clone(),
                    };
                    if client.echo(message).await.is_ok() {
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    let rate = calls.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let _ = stop.send(());
    let _ = server.await;
    Ok(rate)
}
