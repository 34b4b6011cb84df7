//! How long the watchdog takes to find the reminders that fell due, against
//! how many payments are watched: finding them must cost what is due, not the
//! number of payments.
//!
//! `cargo bench --bench due_reminders -- [--pending N,N,N] [--runs R]` fills
//! one embedded store with watched SENT payments, growing it through each
//! size of `--pending` (default 10,000, 100,000 and 1,000,000 payments due
//! in the future), plus the same 10 payments that are already due. At each
//! size it measures:
//! - `indexed`: [`sweep_due`], the watchdog's own sweep: a range read up to
//!   now in each partition of the reminder index. R runs (default 101),
//!   median and p99.
//! - `naive`: what finding them would cost without the time-ordered index
//!   key: page through every watched payment, decode it and keep those due.
//!   Median of fewer runs, since it reads everything (see
//!   [`NAIVE_READS_BUDGET`]).
//!
//! Both must find exactly the 10 due payments: asserted, as a correctness
//! guard (timings are reported, never asserted). Under `cargo test` (no
//! `--bench` argument) it runs a tiny smoke version so it keeps working.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use payvisor::domain::payment::{self, NewPayment, Payment, PaymentState, Policy};
use payvisor::domain::watch::Stage;
use payvisor::domain::{AccountId, Currency, Money, PaymentId, PaymentName, Timestamp};
use payvisor::limits;
use payvisor::store::schema;
use payvisor::store::sqlite::SqliteStore;
use payvisor::store::{Condition, Store, WriteOp};
use payvisor::watchdog::sweep_due;

/// "Now" for the whole run (2026-01-01T00:00:00Z): fixed, so every run
/// writes the same keys.
const NOW_MS: i64 = 1_767_225_600_000;
/// Payments already due at every size: what both searches must find.
const DUE: usize = 10;
/// Pending payment `i` falls due this long after now, plus `i` ms: none is
/// due during the run, and due times spread over the future.
const PENDING_DUE_AFTER_MS: i64 = 60 * 60 * 1000;
/// Loading writes in flight: the store's writer folds them into shared
/// commits (up to `GROUP_COMMIT_TRANSACTIONS_MAX` per fsync), so loading a
/// million payments takes seconds per hundred thousand, not hours.
const LOAD_IN_FLIGHT: usize = 64;
/// The naive scan repeats until it has read about this many payments (at
/// least `NAIVE_RUNS_MIN` times, at most `--runs`): at 1,000,000 payments
/// one scan takes seconds, so it runs 5 times there (an odd count has a
/// true median).
const NAIVE_READS_BUDGET: usize = 6_000_000;
const NAIVE_RUNS_MIN: usize = 3;
/// Untimed sweeps before the timed ones at each size (reader connections
/// and their statement caches warm up).
const WARMUP_SWEEPS: usize = 3;

fn now() -> Timestamp {
    Timestamp::from_unix_millis(NOW_MS)
}

struct Settings {
    /// Sizes measured, ascending: payments watched and not yet due.
    pending: Vec<usize>,
    /// Timed sweeps per size; median and p99 are over these.
    runs: usize,
}

fn usage() -> ! {
    eprintln!("usage: cargo bench --bench due_reminders -- [--pending N,N,N] [--runs R]");
    std::process::exit(2)
}

fn settings() -> Settings {
    let mut benchmarking = false;
    let mut pending = None;
    let mut runs = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => benchmarking = true,
            "--pending" => {
                let sizes = args.next().and_then(|list| {
                    list.split(',')
                        .map(|size| size.trim().replace('_', "").parse::<usize>().ok())
                        .collect::<Option<Vec<_>>>()
                });
                pending = Some(sizes.unwrap_or_else(|| usage()));
            }
            "--runs" => {
                let count = args.next().and_then(|count| count.parse::<usize>().ok());
                runs = Some(count.filter(|&count| count > 0).unwrap_or_else(|| usage()));
            }
            "--help" | "-h" => usage(),
            // Cargo may pass other arguments (a name filter): not ours.
            _ => {}
        }
    }
    let (default_pending, default_runs) = if benchmarking {
        (vec![10_000, 100_000, 1_000_000], 101)
    } else {
        (vec![500, 2_000], 5)
    };
    let mut pending = pending.unwrap_or(default_pending);
    pending.sort_unstable();
    pending.dedup();
    Settings {
        pending,
        runs: runs.unwrap_or(default_runs),
    }
}

/// A payment as the account actor writes it: created, approved and sent in
/// one decision, watched from that moment with the policy's deadline.
fn sent_payment(account: String, id: String, created_at: Timestamp, minor: i64) -> Payment {
    let new = NewPayment {
        account: AccountId::new(account).unwrap(),
        id: PaymentId::new(id).unwrap(),
        amount: Money::from_minor(Currency::from_code("USD").unwrap(), minor),
        metadata: BTreeMap::new(),
        payer_id: None,
        payer_country: None,
    };
    let payment = payment::create(new, None, created_at, &Policy::default())
        .unwrap()
        .payment;
    assert_eq!(payment.state, PaymentState::Sent);
    assert!(payment
        .watch
        .as_ref()
        .is_some_and(|watch| watch.due_at.is_some()));
    payment
}

/// Pending payment `i`: its own account, sent now, due an hour and `i` ms
/// from now (the index partition follows from the hash of account and id).
fn pending_payment(i: usize) -> Payment {
    let mut payment = sent_payment(
        format!("acct-{i:07}"),
        format!("pay-{i:07}"),
        now(),
        1_000 + (i % 100_000) as i64,
    );
    let watch = payment.watch.as_mut().unwrap();
    watch.due_at = Some(now().plus_millis(PENDING_DUE_AFTER_MS + i as i64));
    payment
}

/// Due payment `j`: sent long enough ago that the policy's deadline passed
/// `j` seconds before now.
fn due_payment(j: usize) -> Payment {
    let deadline_ms = Policy::default().stalls.deadline_ms(Stage::Sent);
    let sent_at = now().plus_millis(-(deadline_ms + 1_000 * j as i64));
    let payment = sent_payment(format!("late-{j:02}"), format!("due-{j:02}"), sent_at, 500);
    assert!(payment.watch.as_ref().unwrap().due_at <= Some(now()));
    payment
}

fn put(payment: &Payment) -> WriteOp {
    WriteOp::Put {
        item: schema::payment_item(payment, 1),
        condition: Condition::NotExists,
    }
}

/// Writes pending payments `from..to`, in atomic writes of the store's
/// largest size, `LOAD_IN_FLIGHT` at a time.
async fn load_pending(store: &Arc<dyn Store>, from: usize, to: usize) {
    let mut in_flight = JoinSet::new();
    for start in (from..to).step_by(limits::TRANSACT_ITEMS_MAX) {
        if in_flight.len() >= LOAD_IN_FLIGHT {
            in_flight.join_next().await.unwrap().unwrap();
        }
        let store = Arc::clone(store);
        in_flight.spawn(async move {
            let end = (start + limits::TRANSACT_ITEMS_MAX).min(to);
            let ops = (start..end).map(|i| put(&pending_payment(i))).collect();
            store.transact(ops).await.unwrap();
        });
    }
    while let Some(done) = in_flight.join_next().await {
        done.unwrap();
    }
}

/// One timed sweep: the payments it would wake.
async fn indexed_once(store: &dyn Store) -> (Duration, Vec<PaymentName>) {
    let mut found = Vec::new();
    let started = Instant::now();
    let woken = sweep_due(store, now(), |name| found.push(name))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(woken, found.len());
    (elapsed, found)
}

/// One timed naive search: every watched payment read and decoded, the due
/// ones kept. Also returns how many payments it read.
async fn naive_once(store: &dyn Store) -> (Duration, Vec<PaymentName>, usize) {
    let mut found = Vec::new();
    let mut read = 0;
    let mut token: Option<schema::IndexPosition> = None;
    let started = Instant::now();
    loop {
        let (payments, next) = schema::waiting_payments(
            store,
            schema::WaitingList::Watched,
            token.as_ref(),
            limits::PAGE_SIZE_MAX,
        )
        .await
        .unwrap();
        read += payments.len();
        found.extend(
            payments
                .iter()
                .filter(|payment| {
                    let due_at = payment.watch.as_ref().and_then(|watch| watch.due_at);
                    due_at.is_some_and(|due| due <= now())
                })
                .map(Payment::name),
        );
        match next {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    (started.elapsed(), found, read)
}

/// Nearest-rank percentile of sorted values (`fraction` in 0..=1).
fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn micros(durations: &[Duration]) -> Vec<f64> {
    let mut values: Vec<f64> = durations
        .iter()
        .map(|duration| duration.as_secs_f64() * 1e6)
        .collect();
    values.sort_by(|a, b| a.total_cmp(b));
    values
}

/// What was measured at one size.
struct Measured {
    pending: usize,
    /// Seconds to load the payments added for this size.
    load_s: f64,
    indexed_median_us: f64,
    indexed_p99_us: f64,
    naive_median_us: f64,
    naive_runs: usize,
}

async fn measure(
    store: &Arc<dyn Store>,
    sqlite: &SqliteStore,
    settings: &Settings,
) -> Vec<Measured> {
    let due: Vec<Payment> = (0..DUE).map(due_payment).collect();
    let expected: HashSet<PaymentName> = due.iter().map(Payment::name).collect();
    store.transact(due.iter().map(put).collect()).await.unwrap();
    let found_all = |found: Vec<PaymentName>| {
        assert_eq!(found.len(), DUE, "found {found:?}");
        assert_eq!(found.into_iter().collect::<HashSet<_>>(), expected);
    };

    let mut measured = Vec::new();
    let mut loaded = 0;
    for &pending in &settings.pending {
        let (started, commits) = (Instant::now(), sqlite.commit_count());
        load_pending(store, loaded, pending).await;
        let load_s = started.elapsed().as_secs_f64();
        let writes = pending.div_ceil(limits::TRANSACT_ITEMS_MAX) as f64
            - loaded.div_ceil(limits::TRANSACT_ITEMS_MAX) as f64;
        println!(
            "loaded {} payments ({pending} pending) in {load_s:.1} s: {:.0} payments/s, {:.1} writes of {} per commit",
            pending - loaded,
            (pending - loaded) as f64 / load_s.max(1e-9),
            writes / (sqlite.commit_count() - commits).max(1) as f64,
            limits::TRANSACT_ITEMS_MAX,
        );
        loaded = pending;

        for _ in 0..WARMUP_SWEEPS {
            found_all(indexed_once(store.as_ref()).await.1);
        }
        let mut indexed = Vec::with_capacity(settings.runs);
        for _ in 0..settings.runs {
            let (elapsed, found) = indexed_once(store.as_ref()).await;
            found_all(found);
            indexed.push(elapsed);
        }
        let naive_runs = (NAIVE_READS_BUDGET / (pending + DUE))
            .clamp(NAIVE_RUNS_MIN, settings.runs.max(NAIVE_RUNS_MIN));
        let mut naive = Vec::with_capacity(naive_runs);
        for _ in 0..naive_runs {
            let (elapsed, found, read) = naive_once(store.as_ref()).await;
            assert_eq!(read, pending + DUE, "the naive scan reads every payment");
            found_all(found);
            naive.push(elapsed);
        }
        let (indexed, naive) = (micros(&indexed), micros(&naive));
        measured.push(Measured {
            pending,
            load_s,
            indexed_median_us: percentile(&indexed, 0.5),
            indexed_p99_us: percentile(&indexed, 0.99),
            naive_median_us: percentile(&naive, 0.5),
            naive_runs,
        });
    }
    measured
}

fn main() {
    let settings = settings();
    let base = tempfile::Builder::new()
        .prefix("due-reminders")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sqlite = Arc::new(SqliteStore::open(base.path()).unwrap());
    let store: Arc<dyn Store> = sqlite.clone();
    let started = Instant::now();
    let measured = runtime.block_on(measure(&store, &sqlite, &settings));
    let total_s = started.elapsed().as_secs_f64();

    println!();
    println!(
        "{DUE} due; {} timed sweeps per size (median, p99); naive: median of the runs shown",
        settings.runs
    );
    println!(
        "{:>10} {:>8} {:>13} {:>11} {:>13} {:>6} {:>9}",
        "pending", "load s", "indexed µs", "p99 µs", "naive µs", "runs", "naive/idx"
    );
    for size in &measured {
        println!(
            "{:>10} {:>8.1} {:>13.0} {:>11.0} {:>13.0} {:>6} {:>8.0}x",
            size.pending,
            size.load_s,
            size.indexed_median_us,
            size.indexed_p99_us,
            size.naive_median_us,
            size.naive_runs,
            size.naive_median_us / size.indexed_median_us,
        );
    }
    let (first, last) = (&measured[0], &measured[measured.len() - 1]);
    let indexed_growth = last.indexed_median_us / first.indexed_median_us;
    let naive_growth = last.naive_median_us / first.naive_median_us;
    println!(
        "from {} to {} pending ({:.0}x the payments): indexed median {indexed_growth:.2}x, naive median {naive_growth:.1}x",
        first.pending,
        last.pending,
        last.pending as f64 / first.pending.max(1) as f64,
    );
    let sizes: Vec<serde_json::Value> = measured
        .iter()
        .map(|size| {
            serde_json::json!({
                "pending": size.pending,
                "load_s": (size.load_s * 10.0).round() / 10.0,
                "indexed_median_us": size.indexed_median_us.round(),
                "indexed_p99_us": size.indexed_p99_us.round(),
                "naive_median_us": size.naive_median_us.round(),
                "naive_runs": size.naive_runs,
            })
        })
        .collect();
    let summary = serde_json::json!({
        "due": DUE,
        "runs": settings.runs,
        "sizes": sizes,
        "indexed_growth": (indexed_growth * 100.0).round() / 100.0,
        "naive_growth": (naive_growth * 10.0).round() / 10.0,
        "total_s": total_s.round(),
    });
    println!("{summary}");
    drop(store);
    drop(sqlite);
}
