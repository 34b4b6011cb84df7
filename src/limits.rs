//! Every bound in payvisor, with the reason for it, in one place.
//!
//! A limit that is not written here does not exist: queues, retries, batch
//! sizes, page sizes and message sizes are all bounded, so that overload shows
//! up as a clear error or back-pressure instead of unbounded memory or time.

use std::time::Duration;

/// Largest amount of one payment, in minor units. 10^15 minor units is ten
/// trillion dollars: far above any real payment, and low enough that the sum
/// of a hundred thousand of them still fits in an `i64` without overflow.
pub const AMOUNT_MINOR_MAX: i64 = 1_000_000_000_000_000;

/// Metadata entries per payment. Metadata lives in the payment item, whose
/// size must stay far below DynamoDB's 400 KB item limit.
pub const METADATA_ENTRIES_MAX: usize = 32;
/// Bytes in one metadata key.
pub const METADATA_KEY_BYTES_MAX: usize = 64;
/// Bytes in one metadata value.
pub const METADATA_VALUE_BYTES_MAX: usize = 512;

/// Characters in an idempotency key (`request_id`); Stripe's bound.
pub const REQUEST_ID_CHARS_MAX: usize = 255;
/// Characters in an account or payment id; keeps keys and names short.
pub const RESOURCE_ID_CHARS_MAX: usize = 64;
/// Bytes in a refund reason: a sentence for a person, not a document.
pub const REFUND_REASON_BYTES_MAX: usize = 512;
/// Refunds per payment. Refunds live inside the payment item (one atomic write
/// covers payment and refund); this bound keeps the item small.
pub const REFUNDS_PER_PAYMENT_MAX: usize = 50;
/// History entries kept on a payment (oldest dropped first, `created` kept).
pub const HISTORY_ENTRIES_MAX: usize = 64;

/// Idempotency records are kept this long by default (Stripe keeps 24 h),
/// then deleted (`--idempotency-retention`): at least a day, as long as a
/// client's retries of a lost answer reasonably go on (a retry after the
/// record is gone runs again: a second payment or refund); at most a year,
/// so records do not pile up for ever.
pub const IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
pub const IDEMPOTENCY_RETENTION_MIN: Duration = Duration::from_secs(24 * 60 * 60);
pub const IDEMPOTENCY_RETENTION_MAX: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// How often the embedded store deletes expired records, and how many per
/// read (DynamoDB deletes them itself): every 10 s, up to 20 × 500, keeps
/// up with 1,000 new keys a second (more than the embedded store takes),
/// each delete write at most 100 rows, so the writer queue behind it stays
/// short.
pub const EXPIRY_SWEEP_EVERY: Duration = Duration::from_secs(10);
pub const EXPIRY_SWEEP_BATCH: usize = 500;
/// Batches per sweep: past this the next sweep goes on.
pub const EXPIRY_SWEEP_BATCHES_MAX: usize = 20;

/// Bytes in an index page token (family, shard, last index sort key: ids are
/// at most 64 characters each).
pub const INDEX_TOKEN_BYTES_MAX: usize = 512;

/// Default and largest `page_size` for list calls (AIP-158).
pub const PAGE_SIZE_DEFAULT: usize = 50;
pub const PAGE_SIZE_MAX: usize = 500;
/// Encoded bytes of one list response: a page is cut short (with a
/// `next_page_token`) before it passes this. Under the 4 MB a default
/// gRPC client accepts, with room for the envelope.
pub const RESPONSE_BYTES_MAX: usize = 3 * 1024 * 1024;
/// Payments read from the store at a time while filling a page: a call
/// holds about one response's worth, whatever its `page_size`.
pub const LIST_READ_CHUNK: usize = 50;
/// Payments one list call reads at most (filtered ones included), so a
/// filtered cross-account listing returns, short, instead of reading an
/// index whole.
pub const LIST_SCAN_MAX: usize = 2_000;
/// List calls served at once on a node; others wait their turn. Each holds
/// up to a response's bytes several times over (store rows, domain values,
/// protobuf): 8 × 3 MB keeps a burst of large pages to tens of MB.
pub const LIST_CALLS_CONCURRENT_MAX: usize = 8;

/// Sub-partitions an account's payments, movements and idempotency records
/// are spread over (and shards of the pending-work index), so that one busy
/// account is not capped by one DynamoDB partition (~1,000 write units/s).
/// Part of the stored key layout: changing it needs a data migration.
pub const ACCOUNT_SHARDS: usize = 16;

/// Bytes of a partition key and of a sort key (of an item or of the
/// index): DynamoDB's bounds, kept by every backend so that what one store
/// takes, every store takes.
pub const STORE_PARTITION_KEY_BYTES_MAX: usize = 2048;
pub const STORE_SORT_KEY_BYTES_MAX: usize = 1024;
/// Items in one atomic write: DynamoDB's TransactWriteItems bound.
pub const TRANSACT_ITEMS_MAX: usize = 100;
/// Writes waiting for the embedded store's writer thread. Beyond this,
/// callers wait (back-pressure) instead of queueing without bound.
pub const STORE_WRITE_QUEUE_MAX: usize = 8192;
/// Transactions folded into one group commit (one fsync). Large enough to
/// amortise the fsync, small enough to bound the latency of the first writer.
pub const GROUP_COMMIT_TRANSACTIONS_MAX: usize = 512;
/// How often the embedded store's background thread checkpoints the WAL
/// (copies committed pages into the database file). Often enough that the
/// writer's own auto-checkpoint (a backstop at 16,384 pages) rarely has much
/// left to copy.
pub const STORE_CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// Block cache of the LSM store (`--store lsm`): the recent items of busy
/// accounts stay in memory (64 MiB, as the SQLite writer's page cache).
pub const LSM_CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// Memory table of the LSM store's items, before it is written out as a
/// sorted table: large enough that a table holds many groups' writes
/// (fewer, larger tables to merge), bounded so memory per node is (32 MiB).
pub const LSM_ITEMS_MEMTABLE_BYTES: u64 = 32 * 1024 * 1024;
/// Item records this large or larger are kept in the LSM store's blob
/// files, apart from the tree: merges then move keys and pointers, not
/// the bodies (payments and events are 600–830 bytes of JSON), which is
/// what made bytes written per payment grow with the store.
pub const LSM_SEPARATED_VALUE_BYTES_MIN: u32 = 256;
/// Memory tables of the index and the expiry list, whose entries are keys
/// alone (8 MiB each).
pub const LSM_ENTRIES_MEMTABLE_BYTES: u64 = 8 * 1024 * 1024;
/// Journal of the LSM store kept before its memory tables are written out:
/// what a restart after a crash replays, so it bounds recovery time
/// (128 MiB; fjall's default is 512 MiB).
pub const LSM_JOURNAL_BYTES: u64 = 128 * 1024 * 1024;
/// Background threads that write out and merge the LSM store's tables: one
/// per core of the 2-core machine it is measured on; more would only
/// compete with the server for them.
pub const LSM_WORKER_THREADS: usize = 2;
/// Items read from the SQLite store per page while migrating it (bounds
/// the migration's memory, not its speed).
pub const MIGRATE_PAGE_ITEMS: usize = 10_000;
/// Writes of a migration in flight at once, for the writer to fold into
/// group commits (one fsync per group, not per write).
pub const MIGRATE_WRITES_IN_FLIGHT: usize = 32;
/// Read connections to the embedded store (WAL readers run in parallel).
pub const STORE_READERS_MAX: usize = 4;
/// Threads for blocking work: the embedded store's reads (at most one per
/// read connection at a time) and the occasional file reload. Tokio's
/// default (512) let a burst of reads after a restart leave 60 threads
/// behind (payvisor-soak); more than this only waits.
pub const BLOCKING_THREADS_MAX: usize = 16;
/// Page cache of the embedded store's writer: large, because every commit
/// walks the B-tree to the leaves it changes (64 MiB).
pub const STORE_WRITER_CACHE_KIB: usize = 64 * 1024;
/// Page cache of each reader: small, since the operating system caches the
/// file for all connections and memory per node is bounded (8 MiB each).
pub const STORE_READER_CACHE_KIB: usize = 8 * 1024;

/// Commands of one account folded into one atomic write. One decision
/// writes at most [`DECISION_ITEMS_MAX`] items, plus the account item and
/// (a new account's first write) its creation-order record once: 14
/// commands stay within the 100-item transaction bound.
pub const ACCOUNT_BATCH_COMMANDS_MAX: usize = 14;
/// Items a batched decision (a create, a bank outcome) writes at most:
/// idempotency record, payment, its creation-order pointer (a create), one
/// movement, its events, their webhook pointer, and a page or a message to
/// the bank (outbox).
pub const DECISION_ITEMS_MAX: usize = 7;
// A full batch, with the account item and the creation-order record
// written once with it, fits in one atomic write.
const _: () = assert!(ACCOUNT_BATCH_COMMANDS_MAX * DECISION_ITEMS_MAX + 2 <= TRANSACT_ITEMS_MAX);

/// Times a command is retried from fresh state after losing an optimistic
/// concurrency race (another writer changed the account meanwhile).
pub const CONCURRENCY_RETRIES_MAX: u32 = 3;

/// Payments with pending work an account actor keeps in memory (settled
/// ones are never kept). Beyond this the cache is emptied; the store still
/// has every payment.
pub const ACCOUNT_PAYMENT_CACHE_MAX: usize = 1024;
/// An account actor with no work for this long stops (passivation) and is
/// re-hydrated from the store on its next command (one read of the account
/// item). A live account actor costs about 10 KB; at 15 s, a node that sees
/// 100,000 accounts a minute keeps a quarter of them in memory (measured in
/// BENCHMARKS.md).
pub const ACCOUNT_IDLE_PASSIVATE: Duration = Duration::from_secs(15);
/// How often an account actor checks whether it is idle.
pub const ACCOUNT_IDLE_CHECK: Duration = Duration::from_secs(5);

/// Tries of a bank outcome or resume that failed for a transient reason
/// (store unavailable, conflicts), with doubling back-off from the initial to
/// the maximum delay: about a minute in all, longer than a store failover.
pub const ACTOR_RETRY_ATTEMPTS_MAX: u32 = 12;
pub const ACTOR_RETRY_BACKOFF_INITIAL: Duration = Duration::from_millis(50);
pub const ACTOR_RETRY_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Restarts of one payment actor after panics, per account activation. A
/// payment that keeps crashing its actor is left for the watchdog and logged
/// rather than restarted in a hot loop.
pub const PAYMENT_ACTOR_RESTARTS_MAX: u32 = 5;

/// Attempts to hand one message to a bank before leaving it for re-drive.
pub const BANK_SUBMIT_ATTEMPTS_MAX: u32 = 5;
/// First back-off between bank attempts; doubles each time.
pub const BANK_SUBMIT_BACKOFF_INITIAL: Duration = Duration::from_millis(50);
/// Longest back-off between bank attempts.
pub const BANK_SUBMIT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Bank outcomes waiting to be routed to account actors.
pub const BANK_EVENT_QUEUE_MAX: usize = 65_536;
/// Payments (and, separately, refunds) the built-in simulator remembers for
/// idempotency and status queries; completed ones are forgotten beyond this.
pub const SIMULATOR_PAYMENTS_MAX: usize = 1_000_000;

/// Largest gRPC message accepted, in bytes. Requests are small; this guards
/// the server against a client sending megabytes of metadata.
pub const GRPC_MESSAGE_BYTES_MAX: usize = 256 * 1024;
/// Concurrent requests per gRPC connection.
pub const GRPC_CONCURRENCY_PER_CONNECTION: usize = 1024;
/// Longest a gRPC request may take before it is answered DEADLINE_EXCEEDED.
pub const GRPC_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// On shutdown, in-flight work gets this long to finish and flush, twice:
/// first the requests in progress and the background tasks (a sweep, a
/// delivery, a reconciliation run), then the account actors' mailboxes. What
/// is cut off at a bound is safe to repeat: re-driven on the next start,
/// re-sent by a bank, or delivered again with the same id. Twice this stays
/// below the service manager's stop timeout (`TimeoutStopSec` in
/// `deploy/systemd/payvisor.service`), so the node ends its own shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// Ended spans waiting for export (`--otlp-endpoint`): about two seconds
/// of a busy node's spans (a payment makes about eight). Past it spans are
/// dropped and counted: a collector that is down must not grow memory.
pub const OTLP_QUEUE_SPANS_MAX: usize = 32_768;
/// Spans in one export request: 4,096 spans of under 512 bytes stay far
/// below gRPC's 4 MB message default that collectors keep.
pub const OTLP_BATCH_SPANS_MAX: usize = 4_096;
/// How long a batch may fill before it goes (unless full): spans reach
/// the collector within about a second, in a few requests a second.
pub const OTLP_BATCH_WAIT: Duration = Duration::from_millis(500);
/// One export (and the connection for it) may take this long; a slower
/// collector costs the batch, not the queue behind it.
pub const OTLP_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// On shutdown, the spans of the drain get this long to go out, after the
/// actors have stopped, an export already in flight included (inside the
/// service manager's stop timeout).
pub const OTLP_FLUSH_MAX: Duration = Duration::from_secs(3);
/// The command line's `watch` and `listen` resume a stream the server
/// ended (a restart, a subscriber that fell behind) after this wait, at
/// most this many times in a row without an event between: a server gone
/// for good ends the command with its error.
pub const CLI_STREAM_RESUME_WAIT: Duration = Duration::from_secs(1);
pub const CLI_STREAM_RESUMES_MAX: u32 = 30;
/// Event names `events watch` and `webhooks listen` remember, to skip what
/// a resumed feed replays (it starts up to its overlap before the resume
/// point): 30 s of a node's events at over 3,000 a second.
pub const CLI_STREAM_SEEN_MAX: usize = 100_000;
/// Between saying NOT_SERVING for a drain and closing the gRPC port: long
/// enough for health watchers (load balancers, `Watch` streams) to get the
/// news over the connections still open, short enough not to slow a stop.
pub const DRAIN_NOTICE: Duration = Duration::from_millis(250);
/// The health probe reads one small item from the store this often...
pub const HEALTH_PROBE_EVERY: Duration = Duration::from_secs(2);
/// ...and counts a read that takes longer than this as a failure (the
/// store's own retries would otherwise keep health SERVING for a minute).
pub const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Failed probes in a row before health says NOT_SERVING: one slow read is
/// not an outage, and a load balancer that drains a node on every hiccup
/// moves its load onto the others for nothing. One success is enough to
/// say SERVING again.
pub const HEALTH_PROBE_FAILURES: u32 = 2;
/// Extra wait, beyond the store's late-write bound, before the second
/// recovery sweep on a store that can apply a dead node's in-flight writes.
pub const RECOVERY_LATE_SWEEP_MARGIN: Duration = Duration::from_secs(1);
/// How long start-up rides out a store that throttles or fails (the
/// recovery sweep, the page-token key, joining the cluster): a node
/// restarted during a store hiccup comes up late rather than exiting into a
/// restart loop; a store down for longer ends the start with its error.
pub const STARTUP_STORE_PATIENCE: Duration = Duration::from_secs(120);
/// First and longest wait between start-up attempts on a failing store.
pub const STARTUP_STORE_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
pub const STARTUP_STORE_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Payments re-driven at start-up per page read from the open-payment index.
pub const RECOVERY_PAGE_SIZE: usize = 500;

/// DynamoDB: time to open a connection.
pub const DYNAMODB_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// DynamoDB: one attempt of one call (a transaction of 100 items included).
pub const DYNAMODB_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// DynamoDB: one call with all the SDK's retries; the SDK sets no operation
/// timeout by default, and a request must not wait forever.
pub const DYNAMODB_OPERATION_TIMEOUT: Duration = Duration::from_secs(15);
/// DynamoDB: attempts per call under the SDK's standard retry policy
/// (throttling and transient errors, with jittered back-off).
pub const DYNAMODB_ATTEMPTS_MAX: u32 = 3;
/// Re-sends of a transaction cancelled by a conflict with another
/// transaction on the same items (same client request token, so at most one
/// applies).
pub const DYNAMODB_CONFLICT_RETRIES_MAX: u32 = 5;
pub const DYNAMODB_CONFLICT_BACKOFF_INITIAL: Duration = Duration::from_millis(10);
pub const DYNAMODB_CONFLICT_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Polls while waiting for a new table to become active, and their spacing.
pub const DYNAMODB_TABLE_WAIT_POLLS_MAX: u32 = 120;
pub const DYNAMODB_TABLE_WAIT_POLL: Duration = Duration::from_millis(500);

/// Default stall deadlines per stage. CREATED and APPROVED are passed in
/// microseconds normally (one write takes a payment to SENT): seconds means
/// something broke. A bank answers within seconds; a minute without an
/// answer is worth a status query. Refunds are slower at banks. A person
/// reviews within a working day.
pub const STALL_DEADLINE_CREATED_DEFAULT: Duration = Duration::from_secs(10);
pub const STALL_DEADLINE_SENT_DEFAULT: Duration = Duration::from_secs(60);
pub const STALL_DEADLINE_REFUNDING_DEFAULT: Duration = Duration::from_secs(5 * 60);
pub const STALL_DEADLINE_IN_REVIEW_DEFAULT: Duration = Duration::from_secs(24 * 60 * 60);
/// Re-drives of a stalled step before on-call is paged.
pub const REDRIVES_DEFAULT: u32 = 3;
/// Most re-drives an operator may configure: each doubles the wait, so more
/// would only postpone the page by hours.
pub const REDRIVES_MAX: u32 = 10;
/// Longest wait between two re-drives of one payment.
pub const REDRIVE_BACKOFF_MAX: Duration = Duration::from_secs(10 * 60);
/// How often the watchdog looks for due reminders and undelivered pages.
/// Stall deadlines are seconds at the least, so a second is precise enough.
pub const WATCHDOG_SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Due reminders read per index shard per sweep: a backlog (after an outage)
/// is worked off over several sweeps instead of flooding the actors.
pub const WATCHDOG_DUE_PER_SHARD_MAX: usize = 256;
/// A reminder handed to an account actor is not sent again by later sweeps
/// for this long (the actor is working on it); after it, it is, in case the
/// actor lost it.
pub const REMINDER_IN_HAND_EXPIRY: Duration = Duration::from_secs(30);
/// Pages waiting for delivery in memory; beyond this they wait in the store
/// for the next sweep.
pub const PAGE_QUEUE_MAX: usize = 1024;
/// Attempts to deliver one page before leaving it to the next sweep, with
/// doubling back-off between them.
pub const PAGE_ATTEMPTS_MAX: u32 = 6;
pub const PAGE_BACKOFF_INITIAL: Duration = Duration::from_millis(200);
pub const PAGE_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Alert events buffered per `WatchAlerts` subscriber; a subscriber that
/// falls further behind is told how many it missed.
pub const ALERT_STREAM_BUFFER: usize = 256;
/// Stalled payments counted for the gauge per scrape; beyond this the gauge
/// saturates (something is badly wrong, and pages say so).
pub const STALLED_GAUGE_SCAN_MAX: usize = 100_000;

/// Pending webhook pointers counted per index partition for the backlog
/// gauge, per scrape (each node reads them: up to 16 × 100 small items per
/// scrape): enough to tell a few from a pile-up (the gauge saturates at
/// 1,600), little enough that scrapes do not load the store during one.
pub const WEBHOOK_BACKLOG_GAUGE_PER_SHARD: usize = 100;

/// One send, connect to last response byte. PagerDuty answers in well under
/// a second; past this the dispatcher's retry is a better bet than waiting.
pub const PAGERDUTY_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Characters in `payload.summary`: PagerDuty refuses longer summaries (400),
/// which would turn a page into a permanent rejection.
pub const PAGERDUTY_SUMMARY_CHARS_MAX: usize = 1024;

/// Bytes of a response body read: PagerDuty's answers are a few hundred
/// bytes, and a misbehaving proxy must not make us buffer megabytes.
pub const PAGERDUTY_RESPONSE_BYTES_MAX: usize = 64 * 1024;

/// Characters of a refusal's body kept in `AlertError::Rejected`: enough
/// for PagerDuty's error list, short enough for one log line.
pub const PAGERDUTY_REJECTION_CHARS_MAX: usize = 512;

/// Open scrape connections. Prometheus keeps one per target; a few more
/// cover a person with `curl`. Beyond this, new connections are closed at
/// once instead of each holding a task.
pub const METRICS_CONNECTIONS_MAX: usize = 16;

/// Time a client gets to send its request headers, so that idle or slow
/// connections cannot hold the slots above.
pub const METRICS_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// On shutdown, open scrape connections are dropped at once: a scrape is
/// read-only, and Prometheus scrapes again (another node, or this one after
/// its restart).
pub const METRICS_DRAIN_MAX: Duration = Duration::ZERO;

/// After a failed accept (most often: out of file descriptors), an HTTP
/// server waits this long before accepting again, instead of spinning on
/// the same error; connections being served meanwhile free descriptors.
pub const HTTP_ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// When every connection slot of an HTTP server is taken, a new connection
/// takes the slot of one that has made no progress for at least this long
/// (see `http_server`): a real client sends its request within
/// milliseconds of connecting, so this only ever takes stuck ones.
pub const HTTP_EVICT_IDLE_AFTER: Duration = Duration::from_millis(250);
/// How long a new connection waits for the slot of the one it evicted.
pub const HTTP_EVICT_WAIT: Duration = Duration::from_secs(1);
/// Bytes of a request to the metrics port (a scrape has no body).
pub const METRICS_BODY_BYTES_MAX: usize = 1024;

/// Characters in a webhook endpoint's name (deliveries are recorded under it).
pub const WEBHOOK_ENDPOINT_NAME_CHARS_MAX: usize = 64;
/// Webhook endpoints per node: each is a delivery state in every event item.
pub const WEBHOOK_ENDPOINTS_MAX: usize = 8;
/// Payments of an account of 0.1.0 given their creation-order pointer per
/// batch: one range read, then a write each, then the progress recorded.
pub const CREATION_INDEX_BATCH: usize = 256;
/// ... and per listing call, in payments and in time: the first listing
/// of a large old account answers UNAVAILABLE (retry) until it is indexed,
/// well within the call's deadline (one write per payment: a few thousand
/// a second on the embedded store, fewer on DynamoDB).
pub const CREATION_INDEX_PER_CALL: usize = 20_000;
pub const CREATION_INDEX_CALL_TIME: Duration = Duration::from_secs(5);
/// Payments read at once after their creation-order pointers (a page of
/// a listing): the store's round trips overlap, within a bound.
pub const LIST_READS_IN_FLIGHT: usize = 16;
/// Bytes of a webhooks file: eight endpoints with their subscriptions need
/// a few kilobytes; more is not a webhooks file.
pub const WEBHOOK_FILE_BYTES_MAX: usize = 64 * 1024;
/// How often the webhooks file is checked for changes (reloaded when
/// changed), as often as the rules file.
pub const WEBHOOK_RELOAD_EVERY: Duration = Duration::from_secs(2);
/// Shortest webhook signing secret: 128 bits, as a guessing bound.
pub const WEBHOOK_SECRET_BYTES_MIN: usize = 16;
/// How long one webhook POST may take before it counts as failed (and is
/// retried): long enough for a slow receiver, short enough that one dead
/// endpoint does not hold the dispatcher.
pub const WEBHOOK_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Response bytes read from a webhook endpoint (only for the error message).
pub const WEBHOOK_RESPONSE_BYTES_MAX: usize = 16 * 1024;
/// Characters of an endpoint's error answer kept on the delivery.
pub const WEBHOOK_ERROR_CHARS_MAX: usize = 256;
/// A delivery is retried for this long, then given up (Stripe retries for
/// days; a day covers a merchant's overnight outage).
pub const WEBHOOK_RETRY_FOR_DEFAULT: Duration = Duration::from_secs(24 * 60 * 60);
/// First retry delay of a webhook delivery; each further one doubles.
pub const WEBHOOK_BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// Longest delay between two attempts of one delivery.
pub const WEBHOOK_BACKOFF_MAX: Duration = Duration::from_secs(60 * 60);
/// Due deliveries read per index shard per sweep: bounds one sweep's work.
pub const WEBHOOK_SWEEP_PAGE: usize = 256;
/// Payments whose webhooks are sent at the same time (each payment's own
/// events go one at a time, in order).
pub const WEBHOOK_PAYMENTS_IN_FLIGHT_MAX: usize = 32;
/// How often the webhook dispatcher looks for due deliveries when nothing
/// new was written (new events wake it at once).
pub const WEBHOOK_SWEEP_EVERY: Duration = Duration::from_millis(500);

/// Live events buffered per `WatchPaymentEvents` subscriber; one that falls
/// further behind is told to resume from its last event id.
pub const EVENT_FEED_BUFFER: usize = 4096;
/// How far before the given event a resumed `WatchPaymentEvents` replays.
/// An event's feed position is the time it was decided; it becomes visible
/// when its write commits, which the store's timeouts bound well below this.
/// Events in the overlap may be sent twice (delivery is at least once; the
/// event id is stable), never skipped.
pub const EVENT_REPLAY_OVERLAP: Duration = Duration::from_secs(30);
/// Event records read per page while replaying the feed.
pub const EVENT_REPLAY_PAGE: usize = 128;

/// Rules in one rule set. Every create evaluates every rule in the account
/// actor; a hand-written fraud policy has tens, and 256 keeps evaluation
/// within microseconds.
pub const RULES_MAX: usize = 256;
/// Characters in a rule's name and in a rule set's version: labels a person
/// reads in a payment's approval record, copied into every evaluation.
pub const RULE_NAME_CHARS_MAX: usize = 64;
pub const RULES_VERSION_CHARS_MAX: usize = 64;
/// Values in one block list. Lists are hashed when loaded, so a lookup costs
/// the same at any size; the bound keeps a reload's memory and parse time
/// small (10,000 ids of 64 characters are under 1 MB). Larger lists belong in
/// a screening service, not a file.
pub const BLOCK_LIST_VALUES_MAX: usize = 10_000;
/// Longest velocity or account-limit window (30 days): monthly limits, and
/// no more, since the velocity log keeps history for the longest window.
pub const VELOCITY_WINDOW_MAX: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Largest `max_count` of a velocity rule. A million payments in one window
/// is no check at all; the bound catches a slipped digit.
pub const VELOCITY_COUNT_MAX: u64 = 1_000_000;
/// Entries in an account's velocity log. The log lives in the account item,
/// rewritten on every command of the account: 128 entries of about 40 bytes
/// are 5 KB, far below DynamoDB's 400 KB item limit and cheap to write. The
/// log is exact up to 128 payments in the longest window; beyond, it merges
/// its oldest entries and only ever over-counts. More than the currencies
/// payvisor accepts (27), so a full log always has two entries of one
/// currency to merge.
pub const VELOCITY_LOG_ENTRIES_MAX: usize = 128;
/// Problems listed when a rules document is refused: enough to fix a
/// document in one pass, few enough to read in one log line.
pub const RULES_PROBLEMS_MAX: usize = 100;
/// Bytes of an approval rules file.
pub const RULES_FILE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// How often the rules file is checked for changes (reloaded when changed).
pub const RULES_RELOAD_EVERY: Duration = Duration::from_secs(2);
/// Bytes of an access list (`--auth`): thousands of identities fit in
/// far less; the bound keeps a reload's parse small.
pub const AUTH_FILE_BYTES_MAX: usize = 1024 * 1024;
/// Identities (keys and certificates) in one access list: a lookup is a
/// map search, so the bound is about the reload, not the call.
pub const AUTH_IDENTITIES_MAX: usize = 10_000;
/// Characters of a key id, written into every attributed record.
pub const AUTH_KEY_ID_CHARS_MAX: usize = 64;
/// Characters of a certificate subject in the access list and in records.
pub const AUTH_SUBJECT_CHARS_MAX: usize = 256;
/// Bytes of a presented `authorization` header: a key is about 90; a
/// longer value is refused before any work is spent on it.
pub const AUTH_HEADER_BYTES_MAX: usize = 512;
/// How often the access list is checked for changes: a removed key stops
/// working within this (the acceptance bound is "within seconds").
pub const AUTH_RELOAD_EVERY: Duration = Duration::from_secs(1);
/// How often an open stream (`WatchPaymentEvents`, `WatchAlerts`,
/// `WatchNodeEvents`) checks that its caller's entry in the access list is
/// still there, unchanged and unexpired: a withdrawn key stops receiving
/// within the reload period and this (a map lookup per stream each time).
pub const STREAM_ACCESS_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Bytes of a PEM file (certificate chain, key, CA bundle): a chain of a
/// few certificates is a few KB; a CA bundle of the system's size ~200 KB.
pub const TLS_FILE_BYTES_MAX: usize = 1024 * 1024;
/// How often TLS files are checked for changes: a renewed certificate is
/// served within this.
pub const TLS_RELOAD_EVERY: Duration = Duration::from_secs(5);
/// Time a client gets to complete the TLS handshake: a slow or silent
/// client must not hold a handshake slot.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress on the gRPC port at once: each costs a task
/// and a little memory; beyond this, new connections are closed at once.
pub const TLS_HANDSHAKES_IN_FLIGHT: usize = 256;
/// Calls per second (and in a burst) of one key or certificate when the
/// access list sets no rate: far above what a person or a tool sends, and
/// a ceiling on what one leaked key can do. A gateway that needs more gets
/// its own `rate` in the list.
pub const AUTH_RATE_PER_SECOND_DEFAULT: u32 = 5_000;
pub const AUTH_RATE_BURST_DEFAULT: u32 = 10_000;
/// The largest rate or burst an access list may set.
pub const AUTH_RATE_PER_SECOND_MAX: u32 = 1_000_000;
/// Bytes in a review's reason: a sentence for the audit trail.
pub const REVIEW_REASON_BYTES_MAX: usize = 512;
/// Characters in a payer id.
pub const PAYER_ID_CHARS_MAX: usize = 64;
/// Payments read to fill one page of a state-filtered ListPayments: bounds
/// the work of a page when few payments match (the rest comes with a token).
pub const LIST_FILTER_SCAN_MAX: usize = 5_000;

/// HTTP bank connector: one attempt of one request, connect to last response
/// byte, and also the longest wait for a slot among a bank's requests in
/// flight. A bank answers in well under a second; with the attempts and
/// back-off below, a call gives up within about half a minute, well inside
/// the SENT stall deadline (a minute), so the watchdog's re-drive is never
/// racing a call still retrying.
pub const BANK_REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Attempts of one bank request (same idempotency key, so safe to repeat)
/// before the outcome is reported unknown; the watchdog re-drives later.
pub const BANK_ATTEMPTS_DEFAULT: u32 = 3;
/// Most attempts an operator may configure: beyond this, retrying in the
/// connector only delays the re-drive that would happen anyway.
pub const BANK_ATTEMPTS_MAX: u32 = 10;
/// Full-jitter exponential back-off between attempts: the n-th retry waits a
/// uniform draw in [0, min(cap, base * 2^(n-1))]. The jitter spreads the
/// retries of many payments hit by the same bank blip.
pub const BANK_BACKOFF_BASE: Duration = Duration::from_millis(100);
pub const BANK_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Requests in flight to one bank by default: a bank's API is rate limited,
/// and past this, requests wait (at most the request timeout) for a slot.
pub const BANK_IN_FLIGHT_DEFAULT: usize = 64;
/// Most requests in flight to one bank an operator may configure (each holds
/// a connection and a task).
pub const BANK_IN_FLIGHT_MAX: usize = 4096;
/// Bytes of a bank's response read: its answers are a few hundred bytes, and
/// a misbehaving bank or proxy must not make us buffer megabytes.
pub const BANK_RESPONSE_BYTES_MAX: usize = 64 * 1024;
/// Characters of a bank's error answer kept in a `ConnectorError`: enough
/// for a reason, short enough for one log line.
pub const BANK_ERROR_CHARS_MAX: usize = 256;

/// Per-bank circuit breaker: the last this-many calls are the window whose
/// failure rate opens the breaker. Twenty calls react within a second at
/// normal traffic and smooth over one unlucky timeout.
pub const BREAKER_WINDOW_CALLS_DEFAULT: usize = 20;
/// Largest window an operator may configure (it is kept in memory per bank).
pub const BREAKER_WINDOW_CALLS_MAX: usize = 1024;
/// Calls in the window before the failure rate counts: two failures out of
/// two calls are not an outage.
pub const BREAKER_MIN_CALLS_DEFAULT: usize = 10;
/// Failure rate, in percent of the window, at which the breaker opens (an
/// integer: no floating point in decisions).
pub const BREAKER_FAILURE_PERCENT_DEFAULT: u32 = 50;
/// How long an open breaker refuses calls before letting one probe through:
/// long enough for a bank to restart or shed its load, short enough that
/// traffic returns soon after it recovers.
pub const BREAKER_COOL_DOWN_DEFAULT: Duration = Duration::from_secs(10);

/// Bytes of one bank callback: a few hundred in practice.
pub const BANK_CALLBACK_BYTES_MAX: usize = 16 * 1024;
/// A callback's signature timestamp may differ from our clock by this much;
/// older ones are refused as replays (Stripe's tolerance).
pub const BANK_CALLBACK_REPLAY_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Characters of a bank's message id (part of the inbox key).
pub const BANK_MESSAGE_ID_CHARS_MAX: usize = 128;
/// Open connections to the callback endpoint (banks keep a few each).
pub const BANK_CALLBACK_CONNECTIONS_MAX: usize = 256;
/// Time a bank gets to send a callback's headers.
pub const BANK_CALLBACK_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a bank gets to send a callback's body once its headers are in: a
/// few hundred bytes, sent with the headers in practice.
pub const BANK_CALLBACK_BODY_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// On shutdown, a callback being recorded gets this long to finish, so the
/// bank hears `200` rather than retrying it (a retry would be a harmless
/// duplicate).
pub const BANK_CALLBACK_DRAIN_MAX: Duration = SHUTDOWN_GRACE;

/// Bytes of a bank's settlement report read at most: 100,000 entries of
/// about 160 bytes (the bank simulator's own bound on entries).
pub const BANK_SETTLEMENT_BYTES_MAX: usize = 16 * 1024 * 1024;
/// How far outside the reconciled period payvisor looks for its own side:
/// a bank settles a payment a moment before payvisor hears of it, so one
/// near the edge is on either side of it.
pub const RECONCILE_EDGE_SLACK: Duration = Duration::from_secs(5 * 60);
/// Mismatches listed in one reconciliation report (all are counted).
pub const RECONCILE_MISMATCHES_LISTED_MAX: usize = 1_000;
/// Periods that disagreed run again per reconciliation turn, oldest first
/// (each run reads two settlement reports and the period's payments): a
/// fixed period's page resolves within a few turns, and a pile of open
/// periods cannot make a turn unbounded.
pub const RECONCILE_RECHECKS_PER_TURN: usize = 4;
/// Banks one node routes across (each has a connector, a breaker and a
/// reconciliation run).
pub const BANKS_MAX: usize = 16;
/// Messages to banks per payment: its submissions (one per bank it is
/// routed to) and its refunds' (bounded by `REFUNDS_PER_PAYMENT_MAX`).
pub const OUTBOX_PER_PAYMENT_MAX: usize = 128;
/// Unacknowledged messages listed per index shard by one reconciliation.
pub const RECONCILE_UNACKNOWLEDGED_PER_SHARD: usize = 256;
/// Attempts to record a bank's acknowledgement (a lost one shows as an
/// unacknowledged message in reconciliation; the next re-drive retries).
pub const OUTBOX_ACK_ATTEMPTS_MAX: u32 = 3;

/// Shards a cluster hashes accounts into (recorded in the table once; every
/// node must agree). Many more than nodes, so that an even share ±1 is
/// close to even, and few enough that one node's round reads every lease in
/// one query (a lease item is ~100 bytes: 256 of them are well under the
/// 1 MB a query page returns).
pub const CLUSTER_SHARDS_DEFAULT: u16 = 256;
pub const CLUSTER_SHARDS_MAX: u16 = 4096;
/// How often a node heartbeats and runs a membership round. One write per
/// node per round, whatever the number of shards.
pub const CLUSTER_HEARTBEAT_EVERY: Duration = Duration::from_millis(1000);
/// A node serves its shards until this long after it sent its last
/// acknowledged heartbeat: a missed round and a half.
pub const CLUSTER_SELF_DEMOTE_AFTER: Duration = Duration::from_millis(2500);
/// A peer is judged dead when its heartbeat has not changed for this long on
/// the observer's clock: twice the self-demotion (the margin that makes the
/// dead node stop serving before anyone takes over). With a round every
/// second, a dead node's shards are claimed within ~6 s of its last beat,
/// which keeps failover (kill to the first commit elsewhere) under 10 s.
pub const CLUSTER_DEAD_AFTER: Duration = Duration::from_millis(5000);
/// Shards one node claims or releases per round: a dead node's share of a
/// 256-shard, 3-node cluster moves in one or two rounds, while a joining
/// node takes its share in steps rather than all at once.
pub const CLUSTER_MOVES_PER_ROUND: usize = 64;
/// How long a call for an account whose shard is moving waits for an owner
/// before it is answered UNAVAILABLE with a retry delay: long enough to
/// ride out one round of a graceful hand-over, short next to a client's
/// deadline.
pub const CLUSTER_MOVE_WAIT: Duration = Duration::from_secs(2);
/// The retry delay suggested (`google.rpc.RetryInfo`) while a shard moves
/// or its owner cannot be reached: about one membership round.
pub const CLUSTER_RETRY_DELAY: Duration = Duration::from_millis(1000);
/// What an `ABORTED` for lost optimistic-concurrency races tells the client
/// to wait (`RetryInfo`): the writer it lost to is done within a commit or
/// two, so a short pause lets the retry read its result.
pub const CONFLICT_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Time allowed to connect to a peer when forwarding.
pub const CLUSTER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A forwarded call without a caller deadline gets this one, below the
/// node's own request timeout so the forwarding node can still answer.
pub const CLUSTER_FORWARD_TIMEOUT: Duration = Duration::from_secs(25);
/// How long a leaving node takes to hand its shards over (free its leases)
/// after its actors drained; past it, peers take them once the node is
/// judged dead. Part of the shutdown's bound (see the test below).
pub const CLUSTER_LEAVE_MAX: Duration = Duration::from_secs(10);
/// Lease writes a node has in flight at once (a round's claims, a leaving
/// node's releases): 256 shards in a few round trips, without a burst that
/// would be throttled.
pub const CLUSTER_LEASE_WRITES_IN_FLIGHT: usize = 16;
/// A node reads every lease at least once in this many rounds even when
/// its cluster looks settled (it reads them whenever the members change):
/// a backstop, so a lease changed in a way this node did not foresee is
/// seen within seconds.
pub const CLUSTER_LEASE_REREAD_ROUNDS: u32 = 10;
/// Peers a node keeps connections to (a cluster larger than this is not
/// what one table's leases are designed for).
pub const CLUSTER_NODES_MAX: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    /// The node ends its own shutdown (two phases of `SHUTDOWN_GRACE`, a
    /// cluster member's hand-over, the last spans' export) before the
    /// service manager would kill it.
    #[test]
    fn the_shutdown_fits_in_the_service_stop_timeout() {
        let unit = include_str!("../deploy/systemd/payvisor.service");
        let stop_timeout_s: u64 = unit
            .lines()
            .find_map(|line| line.strip_prefix("TimeoutStopSec="))
            .expect("the unit sets TimeoutStopSec")
            .trim()
            .parse()
            .expect("TimeoutStopSec in seconds");
        let shutdown = 2 * SHUTDOWN_GRACE + CLUSTER_LEAVE_MAX + OTLP_FLUSH_MAX;
        assert!(shutdown < Duration::from_secs(stop_timeout_s));
    }
}
