//! What `grpc.health.v1.Health` says, and why. A load balancer or an
//! orchestrator reads it to decide whether to send a node traffic, so it
//! must not say `SERVING` when the node cannot do its work:
//!
//! - **readiness** (the overall service `""`, `payvisor.v1.PaymentService`
//!   and `payvisor.v1.ClusterService`): `SERVING` while the store answers a
//!   cheap periodic probe and the node is not draining; `NOT_SERVING` after
//!   [`limits::HEALTH_PROBE_FAILURES`] probes in a row fail, `SERVING` again
//!   at the first one that succeeds, and `NOT_SERVING` for good from the
//!   moment a shutdown starts;
//! - **liveness** (the service name [`LIVENESS`]): `SERVING` while the
//!   process answers at all, draining included. A liveness check must not
//!   fail because the store is down (restarting every node would not bring
//!   the store back, and would drop what they hold in memory).

use std::sync::Arc;

use tonic::server::NamedService;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::grpc::cluster::ClusterApi;
use crate::grpc::pb::cluster_service_server::ClusterServiceServer;
use crate::grpc::pb::payment_service_server::PaymentServiceServer;
use crate::grpc::PaymentApi;
use crate::limits;
use crate::shutdown::Shutdown;
use crate::store::{schema, Store};

/// The health service name that answers liveness: whether the process is
/// up, not whether it can serve.
pub const LIVENESS: &str = "liveness";

/// The services whose status is the node's readiness.
const READINESS: [&str; 3] = [
    "",
    <PaymentServiceServer<PaymentApi> as NamedService>::NAME,
    <ClusterServiceServer<ClusterApi> as NamedService>::NAME,
];

/// The node's health as the health service reports it.
#[derive(Clone)]
pub struct NodeHealth {
    reporter: HealthReporter,
}

impl NodeHealth {
    /// A reporter that says `SERVING` for readiness and liveness: the node
    /// has just reached its store to start.
    pub async fn serving(reporter: HealthReporter) -> NodeHealth {
        let health = NodeHealth { reporter };
        health.set_ready(true).await;
        health
            .reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        health
    }

    /// Sets every readiness service to `SERVING` or `NOT_SERVING`.
    pub async fn set_ready(&self, ready: bool) {
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in READINESS {
            self.reporter.set_service_status(service, status).await;
        }
    }

    /// Probes `store` every [`limits::HEALTH_PROBE_EVERY`] and sets
    /// readiness from what it finds, until `shutdown` fires. The caller
    /// stops this before it says `NOT_SERVING` for the drain, so that a
    /// probe in flight cannot say `SERVING` after it.
    pub async fn probe_store_until(self, store: Arc<dyn Store>, shutdown: Shutdown) {
        let mut ready = true;
        let mut failures_in_a_row = 0;
        loop {
            tokio::select! {
                biased;
                () = shutdown.signalled() => return,
                () = tokio::time::sleep(limits::HEALTH_PROBE_EVERY) => {}
            }
            let answer =
                tokio::time::timeout(limits::HEALTH_PROBE_TIMEOUT, schema::probe(store.as_ref()))
                    .await;
            let failure = match answer {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error.to_string()),
                Err(_) => Some(format!(
                    "no answer within {} ms",
                    limits::HEALTH_PROBE_TIMEOUT.as_millis()
                )),
            };
            match failure {
                None => {
                    failures_in_a_row = 0;
                    if !ready {
                        ready = true;
                        self.set_ready(true).await;
                        tracing::info!("the store answers again: health SERVING");
                    }
                }
                Some(error) => {
                    failures_in_a_row += 1;
                    if ready && failures_in_a_row >= limits::HEALTH_PROBE_FAILURES {
                        ready = false;
                        self.set_ready(false).await;
                        tracing::warn!(%error, "the store does not answer: health NOT_SERVING");
                    }
                }
            }
        }
    }
}
