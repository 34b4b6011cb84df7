//! Wiring of a payvisor node: store, bank, actors, gRPC, recovery and
//! graceful shutdown.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;

use crate::actors::{ActorSettings, Orchestrator};
use crate::clock::{SeededRandom, SystemClock};
use crate::config::Config;
use crate::connectors::simulator::BankSimulator;
use crate::grpc::pb::payment_service_server::PaymentServiceServer;
use crate::grpc::{pb, PaymentApi};
use crate::limits;

/// Runs a server until `shutdown` completes, then stops taking requests,
/// lets in-flight work finish (bounded) and returns.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = config.store.open().await?;
    let random = Arc::new(SeededRandom::from_entropy());
    let (bank_events, bank_event_queue) = mpsc::channel(limits::BANK_EVENT_QUEUE_MAX);
    let connector = Arc::new(BankSimulator::new(
        config.simulator,
        random.clone(),
        bank_events,
    ));
    let settings = ActorSettings {
        passivate_after: config.passivate_after,
        ..ActorSettings::default()
    };
    let orchestrator = Orchestrator::start(
        store,
        connector,
        Arc::new(SystemClock),
        random,
        config.policy.clone(),
        settings,
        bank_event_queue,
    );

    let listener = TcpListener::bind(config.listen).await?;
    let local = listener.local_addr()?;
    let resumed = orchestrator.recover().await?;
    if let Some(bound) = config.store.late_write_bound() {
        // A payment written by the previous incarnation after the sweep
        // above (its request was still in flight at the store) would be
        // missed: sweep again once no such write can still land.
        let orchestrator = orchestrator.clone();
        tokio::spawn(async move {
            tokio::time::sleep(bound + limits::RECOVERY_LATE_SWEEP_MARGIN).await;
            match orchestrator.recover().await {
                Ok(resumed) => tracing::info!(resumed, "late recovery sweep done"),
                Err(error) => tracing::error!(%error, "late recovery sweep failed"),
            }
        });
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<PaymentServiceServer<PaymentApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let payments = PaymentServiceServer::new(PaymentApi::new(orchestrator.clone()))
        .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX);

    tracing::info!(listen = %local, store = ?config.store, resumed, "payvisor serving");
    // A line on stdout that scripts and tests wait for (port 0 included).
    println!("payvisor listening on {local}");

    // Graceful stop: on the signal, stop accepting and let in-flight calls
    // finish, but never wait on connections longer than the grace period (a
    // client that keeps its connection open must not hold up the shutdown).
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stopping.send(());
    };
    let serve = tonic::transport::Server::builder()
        .timeout(limits::GRPC_REQUEST_TIMEOUT)
        .concurrency_limit_per_connection(limits::GRPC_CONCURRENCY_PER_CONNECTION)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(payments)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal);
    let grace_expired = async move {
        if stopped.await.is_ok() {
            tokio::time::sleep(limits::SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = serve => served?,
        () = grace_expired => tracing::warn!("connections still open after the grace period; closing them"),
    }

    tracing::info!("gRPC stopped; draining account actors");
    orchestrator.shutdown(limits::SHUTDOWN_GRACE).await;
    tracing::info!("payvisor stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
