//! `payvisor-bench`: a load generator that drives a running server over real
//! gRPC and checks, afterwards, that nothing was lost or doubled.
//!
//! - **Open loop** (`--rate N`): requests are started on a fixed schedule,
//!   whatever the server's latency, and each latency is measured from the
//!   moment the request *should* have started. A slow server cannot slow the
//!   arrivals down and hide its own queueing (no coordinated omission).
//! - **Closed loop** (`--rate max`): `--concurrency` workers send one request
//!   after another, to find the maximum.
//! - **Baseline in the same run**: the same client against a trivial tonic
//!   echo service ([`echo`]) on this machine, closed loop; throughput is also
//!   given as a ratio to it, which survives a noisy machine.
//! - **Verification**: every acknowledged payment exists exactly once and is
//!   terminal, and every account's balances equal what its payments imply.
//!
//! Latencies go into HDR histograms (microseconds, 3 significant digits).
#![forbid(unsafe_code)]

pub mod counters;
pub mod echo;
pub mod limits;
pub mod processes;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::json;
use tonic::transport::Channel;

use payvisor::grpc::pb;
use payvisor::grpc::pb::payment_service_client::PaymentServiceClient;
use payvisor::random::{Random, SeededRandom};

/// Metadata key carrying the bench's request number on every payment, so
/// verification can map payments back to requests.
const SEQUENCE_KEY: &str = "bench_seq";

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// The payvisor server to load (host:port or URL), as every other
    /// command names it (`--target` still works). Not read from
    /// `PAYVISOR_SERVER`: that may name a production node, and a load test
    /// must be pointed at its target on purpose.
    #[arg(long, alias = "target", default_value = "127.0.0.1:50051")]
    pub server: String,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Payments per second (open loop), or `max` (closed loop).
    #[arg(long, default_value = "max")]
    pub rate: String,
    /// Accounts the payments spread over (1 = one hot account).
    #[arg(long, default_value_t = 1000)]
    pub accounts: u32,
    /// Closed loop: concurrent requests in flight. Open loop: gRPC
    /// connections the requests spread over.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Amounts in minor units, uniform in `MIN..MAX`.
    #[arg(long, default_value = "100..100000")]
    pub amount_minor: String,
    /// Share of payments refunded once processed, in thousandths.
    #[arg(long, default_value_t = 100)]
    pub refund_per_mille: u32,
    /// Share of payments followed to PROCESSED for the end-to-end latency,
    /// in thousandths (each is polled every few milliseconds).
    #[arg(long, default_value_t = 10)]
    pub e2e_sample_per_mille: u32,
    /// Seconds of echo baseline (0: skip).
    #[arg(long, default_value_t = 5)]
    pub echo_duration: u64,
    /// Seconds to wait for every payment to settle before verifying.
    #[arg(long, default_value_t = 120)]
    pub settle_timeout: u64,
    /// Seed of the amount and account mix.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The server's process id, when it runs on this machine: the summary
    /// then gives its CPU time and bytes written to disk per payment over
    /// the load phase (from `/proc`).
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// What a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub mode: String,
    pub duration_secs: f64,
    pub accounts: u32,
    pub requested: u64,
    pub acknowledged: u64,
    pub payments_per_sec: f64,
    pub create_p50_ms: f64,
    pub create_p99_ms: f64,
    pub create_max_ms: f64,
    pub e2e_samples: u64,
    pub e2e_p50_ms: f64,
    pub e2e_p99_ms: f64,
    pub refunds: u64,
    pub echo_rps: f64,
    pub ratio_to_echo: f64,
    /// Payments per second over the first and the last fifth of the load
    /// phase's whole seconds: a store that slows as it grows shows here.
    pub first_fifth_per_sec: f64,
    pub last_fifth_per_sec: f64,
    /// The server's CPU time (user + system) per acknowledged payment over
    /// the load phase, in microseconds (`--server-pid`).
    pub server_cpu_us_per_payment: Option<f64>,
    /// Bytes the server wrote to disk per acknowledged payment over the
    /// load phase (`--server-pid`).
    pub server_write_bytes_per_payment: Option<f64>,
    /// This load generator's own CPU time per request sent, in
    /// microseconds: what it took from the machine it shares (where
    /// `/proc` gives it).
    pub client_cpu_us_per_request: Option<f64>,
    pub errors: u64,
    /// Open loop: requests not started because too many were in flight.
    pub shed: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub unsettled: u64,
    pub ledger_mismatches: u64,
}

enum Rate {
    Open(u64),
    Max,
}

/// Shared counters and histograms of one load phase.
struct Recorder {
    create: Mutex<Histogram<u64>>,
    e2e: Mutex<Histogram<u64>>,
    acknowledged: AtomicU64,
    errors: AtomicU64,
    refunds: AtomicU64,
    /// Acknowledged payments: request number → payment name.
    acked: Mutex<HashMap<u64, String>>,
    first_error: Mutex<Option<String>>,
    /// Payments acknowledged in each whole second of the load phase.
    per_second: Mutex<Vec<u64>>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min at 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            create: Mutex::new(histogram()),
            e2e: Mutex::new(histogram()),
            acknowledged: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            refunds: AtomicU64::new(0),
            acked: Mutex::new(HashMap::new()),
            per_second: Mutex::new(Vec::new()),
            first_error: Mutex::new(None),
        }
    }

    fn record(histogram: &Mutex<Histogram<u64>>, since: Instant) {
        let micros = since.elapsed().as_micros().max(1) as u64;
        lock(histogram).saturating_record(micros);
    }

    fn error(&self, error: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        lock(&self.first_error).get_or_insert_with(|| error.to_string());
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn millis(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

/// How requests are made: the run's fixed parameters.
struct Plan {
    run: String,
    accounts: u32,
    amount_min: i64,
    amount_max: i64,
    refund_per_mille: u32,
    e2e_sample_per_mille: u32,
    random: SeededRandom,
    next_sequence: AtomicU64,
}

impl Plan {
    fn account(&self, n: u64) -> String {
        format!("bench-{}-{n}", self.run)
    }

    fn request(&self) -> (u64, pb::CreatePaymentRequest) {
        let sequence = self.next_sequence.fetch_add(1, Ordering::Relaxed);
        let account = self.random.below(u64::from(self.accounts));
        let spread = (self.amount_max - self.amount_min).max(1) as u64;
        let minor_units = self.amount_min + self.random.below(spread) as i64;
        let request = pb::CreatePaymentRequest {
            parent: format!("accounts/{}", self.account(account)),
            payment: Some(pb::Payment {
                amount: Some(pb::Money {
                    currency_code: "USD".into(),
                    minor_units,
                }),
                metadata: [(SEQUENCE_KEY.to_owned(), sequence.to_string())].into(),
                ..Default::default()
            }),
            request_id: format!("bench-{}-{sequence}", self.run),
            payment_id: String::new(),
        };
        (sequence, request)
    }

    fn chance(&self, per_mille: u32) -> bool {
        self.random.below(1000) < u64::from(per_mille)
    }
}

/// A payment acknowledged by the server, and what to do with it next.
struct Acknowledged {
    sequence: u64,
    name: String,
    intended: Instant,
    /// Followed to its bank outcome for the end-to-end latency.
    follow: bool,
    /// Refunded once processed.
    refund: bool,
}

/// One create, measured from when it was meant to start.
async fn create(
    client: &mut PaymentServiceClient<Channel>,
    plan: &Plan,
    recorder: &Recorder,
    intended: Instant,
) -> Option<Acknowledged> {
    let (sequence, request) = plan.request();
    let follow = plan.chance(plan.e2e_sample_per_mille);
    let refund = plan.chance(plan.refund_per_mille);
    let payment = match client.create_payment(request).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => {
            recorder.error(format!("create: {status}"));
            return None;
        }
    };
    Recorder::record(&recorder.create, intended);
    recorder.acknowledged.fetch_add(1, Ordering::Relaxed);
    lock(&recorder.acked).insert(sequence, payment.name.clone());
    Some(Acknowledged {
        sequence,
        name: payment.name,
        intended,
        follow,
        refund,
    })
}

/// What follows an acknowledgement: polling a sample to its bank outcome
/// (end-to-end latency), refunding a share.
async fn follow_up(
    mut client: PaymentServiceClient<Channel>,
    plan: Arc<Plan>,
    recorder: Arc<Recorder>,
    payment: Acknowledged,
) {
    if !(payment.follow || payment.refund) {
        return;
    }
    let outcome = loop {
        match client
            .get_payment(pb::GetPaymentRequest {
                name: payment.name.clone(),
            })
            .await
        {
            Ok(reply) if reply.get_ref().state == pb::payment::State::Sent as i32 => {
                tokio::time::sleep(limits::POLL_EVERY).await;
            }
            Ok(reply) => break reply.into_inner(),
            Err(status) => return recorder.error(format!("get: {status}")),
        }
    };
    if payment.follow {
        Recorder::record(&recorder.e2e, payment.intended);
    }
    if payment.refund && outcome.state == pb::payment::State::Processed as i32 {
        let request = pb::RefundPaymentRequest {
            name: payment.name.clone(),
            amount: None,
            reason: "bench".into(),
            request_id: format!("bench-{}-{}-refund", plan.run, payment.sequence),
        };
        match client.refund_payment(request).await {
            Ok(_) => {
                recorder.refunds.fetch_add(1, Ordering::Relaxed);
            }
            Err(status) => recorder.error(format!("refund: {status}")),
        }
    }
}

async fn connect(target: &str) -> anyhow::Result<Channel> {
    let url = if target.starts_with("http") {
        target.to_owned()
    } else {
        format!("http://{target}")
    };
    Channel::from_shared(url.clone())
        .with_context(|| format!("bad --server {target:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot reach payvisor at {url}"))
}

/// Runs the whole benchmark: load, baseline, verification. Prints progress
/// to stderr, a readable summary and a final one-line JSON to stdout.
pub async fn run(args: BenchArgs) -> anyhow::Result<Summary> {
    let rate = match args.rate.as_str() {
        "max" => Rate::Max,
        number => Rate::Open(
            number
                .parse()
                .ok()
                .filter(|rate| *rate > 0)
                .context("--rate must be a positive number or `max`")?,
        ),
    };
    let (amount_min, amount_max) = args
        .amount_minor
        .split_once("..")
        .and_then(|(min, max)| Some((min.parse::<i64>().ok()?, max.parse::<i64>().ok()?)))
        .filter(|(min, max)| *min > 0 && min <= max && *max <= limits::AMOUNT_MINOR_MAX)
        .context("--amount-minor must be MIN..MAX with 0 < MIN <= MAX")?;
    anyhow::ensure!(args.accounts > 0, "--accounts must be positive");
    anyhow::ensure!(
        args.concurrency > 0 && args.concurrency <= limits::CONCURRENCY_MAX,
        "--concurrency must be 1..={}",
        limits::CONCURRENCY_MAX
    );
    let random = SeededRandom::new(args.seed);
    let plan = Arc::new(Plan {
        run: format!("{:08x}", SeededRandom::from_entropy().next_u64() as u32),
        accounts: args.accounts,
        amount_min,
        amount_max,
        refund_per_mille: args.refund_per_mille.min(1000),
        e2e_sample_per_mille: args.e2e_sample_per_mille.min(1000),
        random,
        next_sequence: AtomicU64::new(0),
    });
    let connections = args.concurrency.min(limits::CONNECTIONS_MAX);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(connect(&args.server).await?);
    }
    let recorder = Arc::new(Recorder::new());
    let duration = Duration::from_secs(args.duration);
    eprintln!(
        "bench: run {} against {} for {}s, {} accounts, rate {}",
        plan.run, args.server, args.duration, args.accounts, args.rate
    );
    let server_before = args.server_pid.map(counters::read).transpose()?;
    // Best effort: the load itself does not need `/proc`.
    let client_before = counters::cpu_of_self().ok();
    let started = Instant::now();
    let progress = tokio::spawn(progress_lines(Arc::clone(&recorder), started));
    let shed = match rate {
        Rate::Max => {
            closed_loop(&channels, &plan, &recorder, args.concurrency, duration).await;
            0
        }
        Rate::Open(rate) => open_loop(&channels, &plan, &recorder, rate, duration).await,
    };
    // The load phase's length, not the wait for the last follow-ups: every
    // create was started within it (the few in flight at the end add at
    // most `concurrency` to a count of many thousands).
    let elapsed = started.elapsed().min(duration).as_secs_f64().max(0.001);
    progress.abort();
    let requested = plan.next_sequence.load(Ordering::Relaxed);
    let acknowledged = recorder.acknowledged.load(Ordering::Relaxed);
    let client_cpu = client_before
        .zip(counters::cpu_of_self().ok())
        .map(|(before, after)| after.saturating_sub(before));
    let server = match (server_before, args.server_pid) {
        (Some(before), Some(pid)) => Some(counters::between(before, counters::read(pid)?)),
        _ => None,
    };
    let per_payment = |value: f64| value / acknowledged.max(1) as f64;
    // The whole seconds of the load phase only: the progress task also
    // counts the seconds spent waiting for the last follow-ups.
    let (first_fifth_per_sec, last_fifth_per_sec) = {
        let seconds = lock(&recorder.per_second);
        fifths(&seconds[..seconds.len().min(args.duration as usize)])
    };

    let echo_rps = if args.echo_duration > 0 {
        echo::baseline(
            args.concurrency,
            connections,
            Duration::from_secs(args.echo_duration),
        )
        .await?
    } else {
        0.0
    };

    let verdict = verify(
        &channels,
        &plan,
        &recorder,
        Duration::from_secs(args.settle_timeout),
    )
    .await?;
    let payments_per_sec = acknowledged as f64 / elapsed;
    let create = lock(&recorder.create).clone();
    let e2e = lock(&recorder.e2e).clone();
    let summary = Summary {
        mode: match rate {
            Rate::Max => format!("closed loop, {} in flight", args.concurrency),
            Rate::Open(rate) => format!("open loop, {rate}/s"),
        },
        duration_secs: elapsed,
        accounts: args.accounts,
        requested,
        acknowledged,
        payments_per_sec,
        create_p50_ms: millis(&create, 0.50),
        create_p99_ms: millis(&create, 0.99),
        create_max_ms: millis(&create, 1.0),
        e2e_samples: e2e.len(),
        e2e_p50_ms: millis(&e2e, 0.50),
        e2e_p99_ms: millis(&e2e, 0.99),
        refunds: recorder.refunds.load(Ordering::Relaxed),
        echo_rps,
        ratio_to_echo: if echo_rps > 0.0 {
            payments_per_sec / echo_rps
        } else {
            0.0
        },
        first_fifth_per_sec,
        last_fifth_per_sec,
        server_cpu_us_per_payment: server.map(|cost| per_payment(cost.cpu.as_secs_f64() * 1e6)),
        server_write_bytes_per_payment: server.map(|cost| per_payment(cost.write_bytes as f64)),
        client_cpu_us_per_request: client_cpu
            .map(|cpu| cpu.as_secs_f64() * 1e6 / requested.max(1) as f64),
        errors: recorder.errors.load(Ordering::Relaxed),
        shed,
        lost: verdict.lost,
        duplicated: verdict.duplicated,
        unsettled: verdict.unsettled,
        ledger_mismatches: verdict.ledger_mismatches,
    };
    if let Some(error) = lock(&recorder.first_error).as_ref() {
        eprintln!("bench: first error: {error}");
    }
    print_summary(&summary);
    Ok(summary)
}

/// The mean of the first and of the last fifth of `seconds` (at least one
/// second each; zeros when there is none).
fn fifths(seconds: &[u64]) -> (f64, f64) {
    if seconds.is_empty() {
        return (0.0, 0.0);
    }
    let fifth = (seconds.len() / 5).max(1);
    let mean = |part: &[u64]| part.iter().sum::<u64>() as f64 / part.len() as f64;
    (
        mean(&seconds[..fifth]),
        mean(&seconds[seconds.len() - fifth..]),
    )
}

async fn progress_lines(recorder: Arc<Recorder>, started: Instant) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.tick().await;
    let mut last = 0;
    loop {
        ticks.tick().await;
        let acknowledged = recorder.acknowledged.load(Ordering::Relaxed);
        let p99 = millis(&lock(&recorder.create), 0.99);
        eprintln!(
            "bench: {:>4.0}s  {:>8} acked  {:>7}/s  create p99 {:>7.2} ms  errors {}",
            started.elapsed().as_secs_f64(),
            acknowledged,
            acknowledged - last,
            p99,
            recorder.errors.load(Ordering::Relaxed)
        );
        lock(&recorder.per_second).push(acknowledged - last);
        last = acknowledged;
    }
}

async fn closed_loop(
    channels: &[Channel],
    plan: &Arc<Plan>,
    recorder: &Arc<Recorder>,
    concurrency: usize,
    duration: Duration,
) {
    let deadline = Instant::now() + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let mut client = PaymentServiceClient::new(channels[worker % channels.len()].clone());
            let (plan, recorder) = (Arc::clone(plan), Arc::clone(recorder));
            tokio::spawn(async move {
                let mut follow_ups = tokio::task::JoinSet::new();
                while Instant::now() < deadline {
                    let intended = Instant::now();
                    if let Some(payment) = create(&mut client, &plan, &recorder, intended).await {
                        // Beside the loop, so polling and refunds do not
                        // lower the create rate being measured.
                        if payment.follow || payment.refund {
                            follow_ups.spawn(follow_up(
                                client.clone(),
                                Arc::clone(&plan),
                                Arc::clone(&recorder),
                                payment,
                            ));
                        }
                    }
                    while follow_ups.try_join_next().is_some() {}
                }
                while follow_ups.join_next().await.is_some() {}
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
}

/// Starts requests on schedule; returns how many were shed because too
/// many were in flight (the server is far behind the rate).
async fn open_loop(
    channels: &[Channel],
    plan: &Arc<Plan>,
    recorder: &Arc<Recorder>,
    rate: u64,
    duration: Duration,
) -> u64 {
    let started = Instant::now();
    let total = rate * duration.as_secs();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(limits::IN_FLIGHT_MAX));
    let mut shed = 0;
    let mut tasks = tokio::task::JoinSet::new();
    let mut started_count: u64 = 0;
    while started_count < total {
        // Start every request whose time has come (timers tick in
        // milliseconds; requests are due every 1/rate s).
        let now = Instant::now();
        let due = ((now - started).as_secs_f64() * rate as f64) as u64 + 1;
        while started_count < due.min(total) {
            let intended = started + Duration::from_secs_f64(started_count as f64 / rate as f64);
            started_count += 1;
            let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
                shed += 1;
                continue;
            };
            let mut client = PaymentServiceClient::new(
                channels[started_count as usize % channels.len()].clone(),
            );
            let (plan, recorder) = (Arc::clone(plan), Arc::clone(recorder));
            tasks.spawn(async move {
                if let Some(payment) = create(&mut client, &plan, &recorder, intended).await {
                    follow_up(client, plan, recorder, payment).await;
                }
                drop(permit);
            });
        }
        while tasks.try_join_next().is_some() {}
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    while tasks.join_next().await.is_some() {}
    shed
}

struct Verdict {
    lost: u64,
    duplicated: u64,
    unsettled: u64,
    ledger_mismatches: u64,
}

fn is_settled(payment: &pb::Payment) -> bool {
    use pb::payment::State;
    let state = payment.state;
    state != State::Sent as i32
        && state != State::Created as i32
        && state != State::Approved as i32
        && payment
            .refunds
            .iter()
            .all(|refund| refund.state != pb::refund::State::Pending as i32)
}

/// One account's part of the verdict.
#[derive(Default)]
struct AccountCheck {
    sequences: Vec<u64>,
    unsettled: u64,
    /// The first few unsettled payments, named with their state, for the
    /// report of a run that did not settle.
    unsettled_examples: Vec<String>,
    ledger_mismatch: bool,
}

/// Lists an account's payments and compares its balances with them.
async fn check_account(
    mut client: PaymentServiceClient<Channel>,
    name: String,
) -> anyhow::Result<AccountCheck> {
    let payments = list_all(&mut client, &name).await?;
    let mut check = AccountCheck::default();
    if payments.is_empty() {
        return Ok(check);
    }
    let amount = |money: &Option<pb::Money>| money.as_ref().map_or(0, |m| m.minor_units);
    let mut available: i64 = 0;
    for payment in &payments {
        if let Some(sequence) = payment
            .metadata
            .get(SEQUENCE_KEY)
            .and_then(|sequence| sequence.parse().ok())
        {
            check.sequences.push(sequence);
        }
        if !is_settled(payment) {
            check.unsettled += 1;
            if check.unsettled_examples.len() < limits::UNSETTLED_EXAMPLES_MAX {
                let refunds: Vec<String> = payment
                    .refunds
                    .iter()
                    .map(|refund| format!("{:?}", refund.state()))
                    .collect();
                check.unsettled_examples.push(format!(
                    "{} {:?} refunds {refunds:?}",
                    payment.name,
                    payment.state()
                ));
            }
        }
        use pb::payment::State;
        if [State::Processed, State::PartiallyRefunded, State::Refunded]
            .iter()
            .any(|state| payment.state == *state as i32)
        {
            available +=
                amount(&payment.amount) - amount(&payment.fee) - amount(&payment.refunded_amount);
        }
    }
    let balances = client
        .get_account(pb::GetAccountRequest { name: name.clone() })
        .await
        .with_context(|| format!("reading {name}"))?
        .into_inner();
    let usd = balances
        .balances
        .iter()
        .find(|balance| balance.currency_code == "USD");
    let stored = |pick: fn(&pb::Balance) -> &Option<pb::Money>| {
        usd.and_then(|balance| pick(balance).as_ref())
            .map_or(0, |money| money.minor_units)
    };
    let settled_books = stored(|b| &b.pending) == 0 && stored(|b| &b.refunding) == 0;
    check.ledger_mismatch =
        check.unsettled == 0 && (stored(|b| &b.available) != available || !settled_books);
    Ok(check)
}

/// Lists every payment of the run's accounts (until all settle or the time
/// is up) and checks them against what was acknowledged, and the balances
/// against the payments.
async fn verify(
    channels: &[Channel],
    plan: &Plan,
    recorder: &Recorder,
    settle_timeout: Duration,
) -> anyhow::Result<Verdict> {
    let deadline = Instant::now() + settle_timeout;
    let acked = lock(&recorder.acked).clone();
    loop {
        let mut checks = tokio::task::JoinSet::new();
        let mut seen: HashMap<u64, u64> = HashMap::new();
        let (mut unsettled, mut ledger_mismatches) = (0, 0);
        let mut examples = Vec::new();
        let mut absorb = |check: AccountCheck| {
            for sequence in check.sequences {
                *seen.entry(sequence).or_insert(0) += 1;
            }
            unsettled += check.unsettled;
            examples.extend(check.unsettled_examples);
            ledger_mismatches += u64::from(check.ledger_mismatch);
        };
        for account in 0..u64::from(plan.accounts) {
            if checks.len() >= limits::VERIFY_CONCURRENCY {
                absorb(checks.join_next().await.expect("a check runs")??);
            }
            let client =
                PaymentServiceClient::new(channels[account as usize % channels.len()].clone())
                    .max_decoding_message_size(limits::VERIFY_MESSAGE_BYTES_MAX);
            checks.spawn(check_account(
                client,
                format!("accounts/{}", plan.account(account)),
            ));
        }
        while let Some(check) = checks.join_next().await {
            absorb(check??);
        }
        let lost = acked
            .keys()
            .filter(|sequence| !seen.contains_key(sequence))
            .count() as u64;
        let duplicated = seen.values().filter(|count| **count > 1).count() as u64;
        if unsettled == 0 || Instant::now() >= deadline {
            for example in examples.iter().take(limits::UNSETTLED_EXAMPLES_MAX) {
                eprintln!("bench: not settled: {example}");
            }
            return Ok(Verdict {
                lost,
                duplicated,
                unsettled,
                ledger_mismatches,
            });
        }
        eprintln!("bench: verifying: {unsettled} payments still settling");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every payment under `parent` (`accounts/…`), following page tokens.
pub async fn list_all(
    client: &mut PaymentServiceClient<Channel>,
    parent: &str,
) -> anyhow::Result<Vec<pb::Payment>> {
    let mut payments = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_payments(pb::ListPaymentsRequest {
                parent: parent.to_owned(),
                page_size: limits::PAGE_SIZE_MAX as i32,
                page_token,
                ..Default::default()
            })
            .await
            .with_context(|| format!("listing {parent}"))?
            .into_inner();
        payments.extend(page.payments);
        if page.next_page_token.is_empty() {
            return Ok(payments);
        }
        page_token = page.next_page_token;
    }
}

fn print_summary(summary: &Summary) {
    println!("payvisor-bench — {}", summary.mode);
    println!(
        "  payments    {} acknowledged of {} requested in {:.1}s: {:.0}/s",
        summary.acknowledged, summary.requested, summary.duration_secs, summary.payments_per_sec
    );
    println!(
        "  create      p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        summary.create_p50_ms, summary.create_p99_ms, summary.create_max_ms
    );
    println!(
        "  to bank outcome (sample of {})  p50 {:.2} ms  p99 {:.2} ms",
        summary.e2e_samples, summary.e2e_p50_ms, summary.e2e_p99_ms
    );
    println!(
        "  echo        {:.0}/s; payvisor at {:.2} of echo",
        summary.echo_rps, summary.ratio_to_echo
    );
    if let (Some(cpu), Some(bytes)) = (
        summary.server_cpu_us_per_payment,
        summary.server_write_bytes_per_payment,
    ) {
        println!("  server      {cpu:.0} µs CPU and {bytes:.0} bytes written to disk per payment");
    }
    if let Some(cpu) = summary.client_cpu_us_per_request {
        println!("  client      {cpu:.1} µs CPU per request");
    }
    println!(
        "  checks      errors {}  shed {}  lost {}  duplicated {}  unsettled {}  ledger mismatches {}",
        summary.errors,
        summary.shed,
        summary.lost,
        summary.duplicated,
        summary.unsettled,
        summary.ledger_mismatches
    );
    println!("{}", json!(summary));
}

#[cfg(test)]
mod tests {
    use super::fifths;

    #[test]
    fn fifths_average_the_first_and_last_fifth_of_the_seconds() {
        assert_eq!(fifths(&[]), (0.0, 0.0));
        assert_eq!(fifths(&[7]), (7.0, 7.0));
        let seconds = [10, 20, 30, 30, 30, 30, 30, 30, 2, 4];
        assert_eq!(fifths(&seconds), (15.0, 3.0));
    }
}
