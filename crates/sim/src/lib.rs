//! `payvisor-sim`: the real orchestrator code, several nodes of it, in one
//! process, against a simulated store, banks, network and node faults, all driven by
//! one seed under virtual time; the invariants are checked on every commit
//! and over the whole store. See ARCHITECTURE.md, "The simulator".
#![forbid(unsafe_code)]

pub mod bank;
pub mod check;
pub mod cluster;
pub mod limits;
pub mod net;
pub mod node;
pub mod run;
pub mod store;
pub mod workload;
pub mod world;
