//! Every bound of the simulator, with its reason, in one place.

use std::time::Duration;

/// Trace lines kept for a failing seed's report: enough to read the
/// commands, faults and bank calls that led to a violation, not the whole
/// run (the digest covers the whole run).
pub const TRACE_TAIL_LINES: usize = 400;
/// Simulated time a seed's workload runs with faults on.
pub const FAULT_PHASE: Duration = Duration::from_secs(120);
/// After the faults stop, everything must settle within this much
/// simulated time (the liveness bound): longer than the watchdog's
/// longest re-drive back-off (refund deadline 5 min, doubling) and a
/// dead node's shards moving (tens of seconds).
pub const SETTLE_BOUND: Duration = Duration::from_secs(30 * 60);
/// How often, in simulated time, the settle phase checks whether all is
/// settled (and reviewers look at what waits for them). Each check reads
/// the whole table: every 5 s, the checks of a seed that waits 15 minutes
/// for a page took three quarters of its wall time.
pub const SETTLE_CHECK_EVERY: Duration = Duration::from_secs(20);
/// Items read per page when the checker reads the store.
pub const CHECK_PAGE: usize = 100;
/// A seed's work, bounded: commands issued over the fault phase.
pub const COMMANDS_MAX: usize = 400;
/// Nodes of the simulated cluster.
pub const NODES: usize = 3;
/// Shards of the simulated cluster (few, so they move often).
pub const SHARDS: u16 = 8;
/// A bank retries an unanswered callback this many times (doubling from
/// 0.5 s), then leaves the payment to payvisor's status queries.
pub const CALLBACK_ATTEMPTS: u32 = 8;
/// Idle account actors stop after this long (short, so passivation and
/// re-activation happen within a run).
pub const PASSIVATE_AFTER: Duration = Duration::from_secs(20);
/// The watchdog pages that its own sweeps fail after this long (the
/// server's default, `--watchdog-page-after`).
pub const WATCHDOG_PAGE_AFTER: Duration = Duration::from_secs(60);
/// Accounts besides the hot one.
pub const COLD_ACCOUNTS: usize = 15;
/// A caller tries a command this many times (doubling back-off from
/// 0.2 s, capped at 6.4 s) before it gives up.
pub const CLIENT_ATTEMPTS: u32 = 12;
/// A caller waits this long for an answer (a gRPC deadline).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often, in simulated time, the invariants over the whole store are
/// checked while the faults run (each commit is checked as it lands).
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// A stall's trigger may reach the sink again when recording its delivery
/// failed (the store faults); more than this many is a page not recorded.
pub const PAGE_SENDS_PER_STALL_MAX: usize = 3;
/// How often, in simulated time, on-call looks at new pages.
pub const ON_CALL_EVERY: Duration = Duration::from_secs(10);
/// The merchants' webhook endpoints every node delivers to (two, so that
/// one endpoint's failures show against the other's progress).
pub const WEBHOOK_ENDPOINTS: [&str; 2] = ["merchant-a", "merchant-b"];
/// How often a node looks again at its ownership and picture while it
/// waits for an account's owner (the server waits on watch channels; see
/// `cluster::route`): well under the cluster's heartbeat period.
pub const ROUTE_POLL_EVERY: Duration = Duration::from_millis(50);
/// A node is cut off from its peers or from the table for up to this
/// long: past the dead timeout (5 s, `payvisor::limits::CLUSTER_DEAD_AFTER`),
/// so that its shards move, and come back.
pub const CUT_MAX_MS: u64 = 15_000;
