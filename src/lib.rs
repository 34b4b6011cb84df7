//! payvisor: an actor-based payment orchestrator. Persist first, then act.
//!
//! Reading order (see `ARCHITECTURE.md` for the full map):
//! - [`domain`]: the pure core. Money, ids, the payment state
//!   machine, approval, double-entry bookkeeping. No I/O, no clock.
//! - [`store`]: the storage boundary (DynamoDB-shaped) and its backends.
//! - [`connectors`]: the bank boundary, the built-in bank simulator, a bank
//!   over HTTP with its circuit breaker.
//! - [`actors`]: one actor per account supervising one per payment; they
//!   execute what the core decides.
//! - [`approval`], [`webhooks`], [`watchdog`], [`callbacks`]: the rules in
//!   force, merchant notifications, stalled payments, bank callbacks.
//! - [`grpc`]: the API surface, the only place that sees protobuf types.
//! - [`server`], [`config`], [`cli`]: wiring, settings, the command line;
//!   [`shutdown`]: the one signal every task of a node stops on;
//!   [`health`]: what the health service says (the store probed, draining).
//! - [`clock`], [`random`] and [`limits`]: injected time, injected
//!   randomness and ids; every bound.
#![forbid(unsafe_code)]

pub mod actors;
pub mod alerts;
pub mod approval;
pub mod audit;
pub mod auth;
pub mod callbacks;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod connectors;
pub mod domain;
pub mod grpc;
pub mod health;
pub mod http_client;
pub mod http_server;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod mutations;
pub mod random;
pub mod reconcile;
pub mod reload;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod signature;
pub mod store;
pub mod tls;
pub mod trace;
pub mod watchdog;
pub mod webhooks;
