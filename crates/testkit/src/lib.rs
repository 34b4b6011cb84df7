//! Test support for payvisor, kept out of the server binary: the one
//! conformance suite per boundary that every implementation passes.
//!
//! - [`store`]: the `Store` contract (conditions, atomic writes, queries,
//!   the sparse index, concurrency), instantiated per backend by
//!   [`store_conformance_tests!`].
//! - [`alerts`]: the `AlertSink` contract, instantiated per sink by
//!   [`alert_sink_conformance_tests!`].
//! - [`faults`]: a `Store` wrapper that injects DynamoDB's failures
//!   (transaction conflicts, throttling, timeouts whose write may land).
#![forbid(unsafe_code)]

pub mod alerts;
pub mod faults;
pub mod store;
