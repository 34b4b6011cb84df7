//! `payvisor-bank-sim`: a simulated bank in its own process, speaking the
//! HTTP bank protocol of `docs/bank-protocol.md` (version 1), so that
//! payvisor's HTTP connector can be tested against a real network peer that
//! crashes, times out, answers twice and calls back late.
//!
//! - `POST /v1/payments`, `POST /v1/refunds`: recorded durably (committed
//!   before the answer), idempotent by key; `202` with the current status,
//!   `409` for the same key with another amount or currency, `422` for a
//!   definite rejection.
//! - `GET /v1/payments/{payment_id}` (URL-encoded) and
//!   `GET /v1/settlements?from_ms=A&to_ms=B`.
//! - Outcomes are decided after `--outcome-delay-ms` (see [`outcome`] for
//!   the `bank_sim` metadata) and announced by callbacks signed with
//!   `Bank-Signature` ([`payvisor::signature`]), re-sent with
//!   doubling back-off until a 2xx, also across restarts.
//!
//! **Boundary:** `POST /admin/outage` (`{"down": true|false}`) and
//! `GET /admin/stats` are test controls, **not part of the protocol**: no
//! bank has them, payvisor never calls them, and they ignore every fault
//! knob (they answer during an outage).
//!
//! Faults, all drawn from one seeded generator (`--seed`): added latency,
//! 503s without recording, answers held until the client times out (after
//! recording), dropped, duplicated and reordered callbacks, scheduled
//! outages, and a corrupted settlement report.
//!
//! Code map: [`limits`] (every bound), [`options`] (flags), [`wire`] (JSON shapes), [`outcome`] (pure
//! decisions), [`record`] (SQLite), `http` (the server and its routes),
//! `decider` (due outcomes → record + message), `callbacks` (delivery),
//! [`stats`].
//!
//! **Invariant:** nothing is answered or sent before it is committed: a
//! submission before its `202`, an outcome and its message before the
//! message is POSTed.
#![forbid(unsafe_code)]

mod callbacks;
mod decider;
mod http;
pub mod limits;
pub mod options;
pub mod outcome;
pub mod record;
pub mod stats;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

pub use options::{BankSimArgs, Options};
pub use record::RecordError;

use payvisor::random::SeededRandom;
use record::Record;
use stats::Stats;

/// Why the bank could not start.
#[derive(Debug, thiserror::Error)]
pub enum BankSimError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("listening on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// The state every part of the running bank shares.
struct Bank {
    options: Options,
    /// The durable record; every read and write goes through it.
    record: Record,
    /// Every random draw (delays, faults), from `--seed`.
    random: SeededRandom,
    /// `--outage` windows count from here.
    started: Instant,
    /// `POST /admin/outage`'s switch.
    forced_down: AtomicBool,
    stats: Stats,
    /// Bounds the answers held back by `--timeout-per-mille`.
    holds: Semaphore,
    /// Wakes the decider: a new submission may be due before its next wake.
    decide_wake: Notify,
    /// Wakes the callback dispatcher: new messages, or a delivery finished.
    deliver_wake: Notify,
}

impl Bank {
    /// Runs blocking record work off the reactor.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Bank) -> Result<T, RecordError> + Send + 'static,
    ) -> Result<T, RecordError> {
        let bank = Arc::clone(self);
        tokio::task::spawn_blocking(move || work(&bank))
            .await
            .map_err(|error| RecordError::Unavailable(error.to_string()))?
    }

    /// In an outage now: switched on, or inside a scheduled window.
    fn is_down(&self) -> bool {
        if self.forced_down.load(Ordering::SeqCst) {
            return true;
        }
        let elapsed = self.started.elapsed();
        self.options
            .faults
            .outages
            .iter()
            .any(|(from, to)| *from <= elapsed && elapsed < *to)
    }
}

/// A bank that is listening but not yet serving.
pub struct BankSim {
    bank: Arc<Bank>,
    listener: TcpListener,
}

impl BankSim {
    /// Opens the record (recovering whatever a previous run left) and binds
    /// the listener.
    pub async fn open(options: Options) -> Result<BankSim, BankSimError> {
        let data_dir = options.data_dir.clone();
        let record = tokio::task::spawn_blocking(move || Record::open(&data_dir))
            .await
            .map_err(|error| RecordError::Unavailable(error.to_string()))??;
        let listener =
            TcpListener::bind(options.listen)
                .await
                .map_err(|source| BankSimError::Listen {
                    address: options.listen,
                    source,
                })?;
        tracing::info!(
            name = %options.name,
            data_dir = %options.data_dir.display(),
            seed = options.seed,
            options = ?options,
            "bank-sim opened"
        );
        Ok(BankSim {
            bank: Arc::new(Bank {
                random: SeededRandom::new(options.seed),
                options,
                record,
                started: Instant::now(),
                forced_down: AtomicBool::new(false),
                stats: Stats::default(),
                holds: Semaphore::new(limits::HOLDS_MAX),
                decide_wake: Notify::new(),
                deliver_wake: Notify::new(),
            }),
            listener,
        })
    }

    /// The address actually bound (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.bank.options.listen)
    }

    pub fn name(&self) -> &str {
        &self.bank.options.name
    }

    /// Serves until `shutdown` completes. Pending outcomes left by a
    /// previous run are decided and undelivered callbacks sent from the
    /// start. Stopping needs no drain: everything answered or sent was
    /// committed first, and the rest is resumed by the next run.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), BankSimError> {
        let decider = tokio::spawn(decider::run(Arc::clone(&self.bank)));
        let dispatcher = tokio::spawn(callbacks::run(Arc::clone(&self.bank)));
        let (trigger, until) = payvisor::shutdown::channel();
        tokio::join!(
            http::serve(self.listener, Arc::clone(&self.bank), until),
            async move {
                shutdown.await;
                trigger.fire();
            }
        );
        decider.abort();
        dispatcher.abort();
        tracing::info!(name = %self.bank.options.name, "bank-sim stopped");
        Ok(())
    }
}

/// Wall-clock time, Unix milliseconds.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}
