//! Every bound of the load generator (`payvisor-bench`), with its reason.

use std::time::Duration;

/// Requests in flight at most in an open-loop run; beyond
/// this the server is hopelessly behind the rate, and requests are shed
/// (counted) instead of piling up in the client's memory.
pub const IN_FLIGHT_MAX: usize = 20_000;
/// gRPC connections at most (HTTP/2 multiplexes requests;
/// a few connections spread them over the server's reactor threads).
pub const CONNECTIONS_MAX: usize = 8;
/// Closed-loop workers at most.
pub const CONCURRENCY_MAX: usize = 4096;
/// How often a sampled payment is polled for its bank
/// outcome; the end-to-end latency's resolution.
pub const POLL_EVERY: Duration = Duration::from_millis(2);
/// Accounts verified at once after the load.
pub const VERIFY_CONCURRENCY: usize = 32;
/// Largest reply read while verifying (a page of 500
/// payments with their histories).
pub const VERIFY_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Unsettled payments named in a run's report: enough to start looking.
pub const UNSETTLED_EXAMPLES_MAX: usize = 5;

/// The server's own bounds: the largest amount it takes and its largest page.
pub use payvisor::limits::{AMOUNT_MINOR_MAX, PAGE_SIZE_MAX};
