//! Every bound of the simulated bank (`payvisor-bank-sim`), with its reason.

use std::time::Duration;

/// Characters in a simulated bank's name: it prefixes every callback's
/// `message_id` and names the bank in settlement reports.
pub const NAME_CHARS_MAX: usize = 64;
/// Bytes of one request body. A submission is a few hundred bytes; the
/// largest legitimate one (32 metadata entries at their own bounds) stays
/// under 20 KiB, so this refuses floods without refusing payments.
pub const REQUEST_BYTES_MAX: usize = 64 * 1024;
/// Characters in a `payment_id` or `refund_id`. payvisor's payment names are
/// at most ~150 (`accounts/{64}/payments/{64}`); the bound keeps keys small.
pub const ID_CHARS_MAX: usize = 256;
/// Bytes of a submission's `callback_url`: a URL, not a document.
pub const CALLBACK_URL_BYTES_MAX: usize = 2048;
/// Open client connections; beyond this new ones are closed at once
/// instead of each holding a task.
pub const CONNECTIONS_MAX: usize = 1024;
/// Time a client gets to send its request headers, so that idle or slow
/// connections cannot hold the slots above.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, open connections are dropped at once: what the bank
/// answered was committed first, and a held answer (up to [`HOLD_MAX`])
/// must not hold up a stop.
pub const DRAIN_MAX: Duration = Duration::ZERO;
/// Answers held back at once by `--timeout-per-mille` (each holds a
/// connection). Beyond this a drawn timeout is skipped and the answer sent:
/// a fault injector must not become the overload it simulates.
pub const HOLDS_MAX: usize = 256;
/// Longest `--hold-ms`: clients time out in seconds; ten minutes outlasts
/// any of them.
pub const HOLD_MAX: Duration = Duration::from_secs(10 * 60);
/// Longest `--latency-ms` added to one answer: a minute is already far past
/// any client's timeout.
pub const LATENCY_MAX: Duration = Duration::from_secs(60);
/// Longest `--outcome-delay-ms`: a day, for tests of payments that settle
/// late (stall deadlines, re-drive) without hanging them for ever.
pub const OUTCOME_DELAY_MAX: Duration = Duration::from_secs(24 * 60 * 60);
/// `--outage` windows: a test script has a handful; 64 keeps the per-request
/// check trivial.
pub const OUTAGES_MAX: usize = 64;
/// Due outcomes decided in one transaction (one fsync). A backlog (after a
/// restart) is worked off in several transactions, so a submission never
/// waits behind one huge write.
pub const DECISIONS_PER_BATCH: usize = 256;
/// Backstop wake-up of the outcome decider and the callback dispatcher when
/// nothing woke them: catches a wake-up lost to a failed write.
pub const IDLE_POLL: Duration = Duration::from_secs(1);
/// Attempts to deliver one callback, counted across restarts: with the
/// back-off below, about eight minutes, enough to outlast a payvisor restart
/// or a test's failing receiver; a receiver gone for good is then given up
/// (the status query still answers).
pub const CALLBACK_ATTEMPTS_MAX: u32 = 100;
/// First wait before re-sending a callback that was not acknowledged; each
/// further wait doubles.
pub const CALLBACK_BACKOFF_INITIAL: Duration = Duration::from_millis(200);
/// Longest wait between two attempts of one callback.
pub const CALLBACK_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// One callback POST, connect to last response byte; a receiver answers
/// after one durable write, far below this.
pub const CALLBACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Response bytes read from a callback receiver (only for the log).
pub const CALLBACK_RESPONSE_BYTES_MAX: usize = 4 * 1024;
/// Callbacks being delivered at once (each a task, possibly sleeping in
/// back-off). More undelivered messages wait in the database.
pub const CALLBACKS_IN_FLIGHT_MAX: usize = 64;
/// Largest random delay `--reorder-callbacks` adds before a callback: long
/// against the default outcome delays (5..50 ms), so callbacks of
/// neighbouring payments overtake each other.
pub const CALLBACK_REORDER_DELAY_MAX: Duration = Duration::from_millis(500);
/// Entries in one settlement report; a longer window is refused (ask for a
/// shorter one), so one report never builds an unbounded answer in memory.
pub const SETTLEMENT_ENTRIES_MAX: usize = 100_000;

/// payvisor's own bounds on what a payment may be: the bank refuses what
/// payvisor could never send, and keeps no more refunds than it may ask for.
pub use payvisor::limits::{AMOUNT_MINOR_MAX, REFUNDS_PER_PAYMENT_MAX, WEBHOOK_SECRET_BYTES_MIN};
