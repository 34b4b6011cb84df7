//! `payvisor-soak`: minutes of steady load on one `payvisor serve` (the
//! embedded store, a `payvisor-bank-sim` over HTTP, both started from
//! beside this binary) while faults cycle: the bank goes down, the store
//! stalls (another process holds SQLite's write lock), the server is paused
//! (SIGSTOP, SIGCONT) and killed (`kill -9`, restarted on the same data
//! directory and port).
//!
//! Every few seconds it samples the server's resident memory, open file
//! descriptors and threads (from `/proc`) and, from `/metrics`, the tasks
//! alive and account actors live. It prints one row per cycle, sampled at
//! the same point of each cycle (before its faults), and says whether those
//! stayed flat. At the end every acknowledged payment must be there once,
//! everything must settle, and the ledger must verify; the exit status is
//! non-zero otherwise, or if something grew.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use payvisor::grpc::pb;
use payvisor::grpc::pb::payment_service_client::PaymentServiceClient;
use payvisor_bench::processes::{beside_me, free_port, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

#[derive(Clone, Parser)]
#[command(
    name = "payvisor-soak",
    about = "Steady load on one server while the bank flaps, the store stalls and the server is paused and killed; reports memory, file descriptors, threads and tasks per cycle."
)]
struct Cli {
    /// How long the load runs, in minutes.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Creates per second (open loop); about one in ten also refunds.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Accounts the load spreads over.
    #[arg(long, default_value_t = 50)]
    accounts: u32,
    /// Every this many cycles (of 60 s) the server is killed with SIGKILL.
    #[arg(long, default_value_t = 2)]
    kill_every: u64,
}

/// One fault cycle: a steady stretch, then each fault in turn. The sample
/// compared across cycles is taken at `SAMPLE_AT`, before the faults, when
/// the previous cycle's have been over for at least 15 s.
const CYCLE: Duration = Duration::from_secs(60);
const SAMPLE_AT: Duration = Duration::from_secs(8);
const BANK_DOWN_AT: Duration = Duration::from_secs(10);
const BANK_DOWN_FOR: Duration = Duration::from_secs(15);
const STORE_STALL_AT: Duration = Duration::from_secs(30);
/// Longer than the server's SQLite busy timeout (5 s): writes fail, and are
/// retried, rather than only wait.
const STORE_STALL_FOR: Duration = Duration::from_secs(8);
const PAUSE_AT: Duration = Duration::from_secs(42);
const PAUSE_FOR: Duration = Duration::from_secs(5);
const KILL_AT: Duration = Duration::from_secs(50);
/// How often the server's holdings are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Requests the client keeps in flight at most; beyond it a tick is shed
/// (counted), so a paused server does not grow the client without bound.
const IN_FLIGHT_MAX: u64 = 2_000;
/// A request is sent again (same request id) on an answer that says "try
/// again" until this long after the load ends.
const RETRY_AFTER_LOAD: Duration = Duration::from_secs(120);
/// How long the payments may take to settle once the faults stop: a
/// submission the bank refused during its outage is re-sent at its stall
/// deadline, and a refund's is the longest (the server's defaults).
const SETTLE_WITHIN: Duration =
    Duration::from_secs(payvisor::limits::STALL_DEADLINE_REFUNDING_DEFAULT.as_secs() + 120);
/// What "flat" allows between the first compared cycle and any later one:
/// memory may grow with the database's page cache and allocator slack, a
/// few descriptors come and go with connections, tasks with in-flight
/// requests.
const RSS_GROWTH_MAX: f64 = 1.5;
const RSS_SLACK_KIB: u64 = 32 * 1024;
const FDS_SLACK: u64 = 32;
const TASKS_GROWTH_MAX: f64 = 1.5;
const TASKS_SLACK: u64 = 64;
/// Threads: the runtime's workers and its bounded blocking pool, the
/// store's writer and checkpointer; a few more come and go.
const THREADS_SLACK: u64 = 8;

/// How many requests back a refund reaches.
const REFUND_BEHIND: u64 = 500;

const SECRET: &str = "soak-bank-secret-0123456789abcdef";

#[derive(Clone, Copy, Debug, Default)]
struct Held {
    rss_kib: u64,
    threads: u64,
    fds: u64,
    tasks: Option<u64>,
    actors: Option<u64>,
}

struct Server {
    payvisor: PathBuf,
    args: Vec<String>,
    process: Child,
    address: String,
    metrics: String,
    incarnation: u64,
}

impl Server {
    fn start(payvisor: PathBuf, data_dir: &Path, bank_url: &str) -> anyhow::Result<Server> {
        let address = format!("127.0.0.1:{}", free_port()?);
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let callbacks = format!("127.0.0.1:{}", free_port()?);
        let args: Vec<String> = [
            "serve",
            "--data-dir",
            &data_dir.display().to_string(),
            "--listen",
            &address,
            "--metrics-listen",
            &metrics,
            "--bank-url",
            bank_url,
            "--bank-name",
            "bank-a",
            "--bank-secret",
            SECRET,
            "--bank-callback-listen",
            &callbacks,
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        let process = Server::spawn(&payvisor, &args)?;
        Ok(Server {
            payvisor,
            args,
            process,
            address,
            metrics,
            incarnation: 1,
        })
    }

    fn spawn(payvisor: &Path, args: &[String]) -> anyhow::Result<Child> {
        let mut command = Command::new(payvisor);
        command.args(args);
        Ok(start(command, "payvisor listening on ")?.0)
    }

    fn pid(&self) -> u32 {
        self.process.id()
    }

    fn kill9_and_restart(&mut self) -> anyhow::Result<()> {
        self.process.kill()?;
        self.process.wait()?;
        self.process = Server::spawn(&self.payvisor, &self.args)?;
        self.incarnation += 1;
        Ok(())
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill {signal} failed");
        Ok(())
    }
}

/// What the process holds now, from `/proc` and its `/metrics`.
async fn held(pid: u32, metrics: &str) -> Option<Held> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let page = tokio::time::timeout(Duration::from_secs(1), http_get(metrics, "/metrics"))
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let sample = |name: &str| {
        page.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|value| value.trim().parse().ok())
    };
    Some(Held {
        rss_kib: field("VmRSS:")?,
        threads: field("Threads:")?,
        fds,
        tasks: sample("payvisor_runtime_tasks_alive"),
        actors: sample("payvisor_accounts_live"),
    })
}

async fn http_get(address: &str, path: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok()?;
    Some(answer)
}

async fn post(address: &str, path: &str, body: &str) -> anyhow::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    anyhow::ensure!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
    Ok(())
}

/// Holds SQLite's write lock on the server's database for `length`, as a
/// stuck writer or a stalled disk would: the server's writes wait out their
/// busy timeout and fail as "unavailable".
fn stall_the_store(data_dir: &Path, length: Duration) -> anyhow::Result<()> {
    let connection = rusqlite::Connection::open(data_dir.join("payvisor.db"))?;
    connection.busy_timeout(Duration::from_secs(30))?;
    connection.execute_batch("BEGIN EXCLUSIVE")?;
    std::thread::sleep(length);
    connection.execute_batch("COMMIT")?;
    Ok(())
}

/// Answers a client sends again with the same request id.
fn worth_retrying(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown // the connection broke (the kill)
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted
    )
}

#[derive(Default)]
struct Tally {
    /// Acknowledged creates: amount (unique per request) → payment name.
    acked: Mutex<HashMap<i64, String>>,
    refunds_acked: AtomicU64,
    /// The last request's sequence number (requests are 1..=sent).
    sent: AtomicU64,
    retries: AtomicU64,
    shed: AtomicU64,
    in_flight: AtomicU64,
    /// Answers that were neither success nor "try again", by code.
    refused: Mutex<HashMap<String, u64>>,
}

async fn with_retries<T, F, Fut>(
    tally: &Tally,
    give_up_at: Instant,
    mut call: F,
) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    loop {
        let answer = tokio::time::timeout(Duration::from_secs(10), call()).await;
        let status = match answer {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) => status,
            Err(_) => tonic::Status::deadline_exceeded("no answer in 10 s"),
        };
        if !worth_retrying(status.code()) || Instant::now() > give_up_at {
            return Err(status);
        }
        tally.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn create_request(account: u32, sequence: u64) -> pb::CreatePaymentRequest {
    pb::CreatePaymentRequest {
        parent: format!("accounts/soak-{account}"),
        payment: Some(pb::Payment {
            amount: Some(pb::Money {
                currency_code: "USD".into(),
                minor_units: amount_of(sequence),
            }),
            ..Default::default()
        }),
        request_id: format!("soak-{sequence}"),
        payment_id: String::new(),
    }
}

/// Unique per request, so each stored payment maps back to one request.
fn amount_of(sequence: u64) -> i64 {
    10_000 + sequence as i64
}

async fn load(
    cli: &Cli,
    client: PaymentServiceClient<Channel>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    give_up_at: Instant,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / cli.rate.max(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = Vec::new();
    let mut sequence = 0u64;
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        sequence += 1;
        tally.sent.store(sequence, Ordering::Relaxed);
        if tally.in_flight.load(Ordering::Relaxed) >= IN_FLIGHT_MAX {
            tally.shed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        tally.in_flight.fetch_add(1, Ordering::Relaxed);
        let (client, tally) = (client.clone(), tally.clone());
        let account = (sequence % u64::from(cli.accounts.max(1))) as u32;
        tasks.push(tokio::spawn(async move {
            let request = create_request(account, sequence);
            let created = with_retries(&tally, give_up_at, || {
                let (mut client, request) = (client.clone(), request.clone());
                async move { client.create_payment(request).await }
            })
            .await;
            match created {
                Ok(payment) => {
                    tally
                        .acked
                        .lock()
                        .unwrap()
                        .insert(amount_of(sequence), payment.name);
                }
                Err(status) => refused(&tally, &status),
            }
            // One in ten refunds part of an earlier payment (by now
            // processed, unless a fault held it up).
            if sequence.is_multiple_of(10) && sequence > REFUND_BEHIND {
                let earlier = amount_of(sequence - REFUND_BEHIND);
                let target = tally.acked.lock().unwrap().get(&earlier).cloned();
                if let Some(name) = target {
                    let request = pb::RefundPaymentRequest {
                        name,
                        amount: Some(pb::Money {
                            currency_code: "USD".into(),
                            minor_units: 100,
                        }),
                        request_id: format!("soak-refund-{sequence}"),
                        reason: "soak".into(),
                    };
                    let refunded = with_retries(&tally, give_up_at, || {
                        let (mut client, request) = (client.clone(), request.clone());
                        async move { client.refund_payment(request).await }
                    })
                    .await;
                    match refunded {
                        Ok(_) => {
                            tally.refunds_acked.fetch_add(1, Ordering::Relaxed);
                        }
                        // Not processed yet, or its account is busy: a clean refusal.
                        Err(status) if status.code() == Code::FailedPrecondition => {}
                        Err(status) => refused(&tally, &status),
                    }
                }
            }
            tally.in_flight.fetch_sub(1, Ordering::Relaxed);
        }));
        tasks.retain(|task| !task.is_finished());
    }
    tasks
}

fn refused(tally: &Tally, status: &tonic::Status) {
    let key = format!("{:?}: {}", status.code(), status.message());
    *tally.refused.lock().unwrap().entry(key).or_default() += 1;
}

fn settled(payment: &pb::Payment) -> bool {
    use pb::payment::State;
    let state = pb::payment::State::try_from(payment.state).unwrap_or(State::Unspecified);
    !matches!(
        state,
        State::Created | State::Approved | State::Sent | State::Unspecified
    ) && payment
        .refunds
        .iter()
        .all(|refund| refund.state != pb::refund::State::Pending as i32)
}

struct Verdict {
    payments: usize,
    lost: usize,
    doubled: usize,
    strangers: usize,
    unsettled: usize,
    /// The unsettled, by state and pending refunds, with an example each.
    unsettled_by_state: HashMap<String, (usize, String)>,
}

async fn verify(
    client: &mut PaymentServiceClient<Channel>,
    accounts: u32,
    tally: &Tally,
) -> anyhow::Result<Verdict> {
    let deadline = Instant::now() + SETTLE_WITHIN;
    loop {
        let mut all = Vec::new();
        for account in 0..accounts {
            all.extend(
                payvisor_bench::list_all(client, &format!("accounts/soak-{account}")).await?,
            );
        }
        let unsettled = all.iter().filter(|payment| !settled(payment)).count();
        if unsettled == 0 || Instant::now() > deadline {
            let mut by_amount: HashMap<i64, usize> = HashMap::new();
            for payment in &all {
                *by_amount
                    .entry(payment.amount.as_ref().map_or(0, |m| m.minor_units))
                    .or_default() += 1;
            }
            let mut unsettled_by_state: HashMap<String, (usize, String)> = HashMap::new();
            for payment in all.iter().filter(|payment| !settled(payment)) {
                let pending = (payment.refunds.iter())
                    .filter(|refund| refund.state == pb::refund::State::Pending as i32)
                    .count();
                let state = pb::payment::State::try_from(payment.state)
                    .map_or("?".to_owned(), |state| state.as_str_name().to_owned());
                let entry = unsettled_by_state
                    .entry(format!("{state}, {pending} refunds pending"))
                    .or_insert((0, payment.name.clone()));
                entry.0 += 1;
            }
            let acked = tally.acked.lock().unwrap();
            return Ok(Verdict {
                payments: all.len(),
                lost: acked
                    .keys()
                    .filter(|amount| !by_amount.contains_key(amount))
                    .count(),
                doubled: by_amount.values().filter(|count| **count > 1).count(),
                strangers: by_amount
                    .keys()
                    .filter(|amount| {
                        !(amount_of(1)..=amount_of(tally.sent.load(Ordering::Relaxed)))
                            .contains(*amount)
                    })
                    .count(),
                unsettled,
                unsettled_by_state,
            });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn row(cycle: u64, incarnation: u64, held: &Held, acked: usize) -> String {
    let optional = |value: Option<u64>| value.map_or("-".to_owned(), |value| value.to_string());
    format!(
        "{cycle:>5} {incarnation:>11} {:>8.1} {:>5} {:>7} {:>6} {:>6} {acked:>7}",
        held.rss_kib as f64 / 1024.0,
        held.fds,
        held.threads,
        optional(held.tasks),
        optional(held.actors),
    )
}

/// Each figure's minimum over `rows`.
fn floor(rows: &[Held]) -> Held {
    let least = |figure: fn(&Held) -> Option<u64>| rows.iter().filter_map(figure).min();
    Held {
        rss_kib: least(|held| Some(held.rss_kib)).unwrap_or(0),
        threads: least(|held| Some(held.threads)).unwrap_or(0),
        fds: least(|held| Some(held.fds)).unwrap_or(0),
        tasks: least(|held| held.tasks),
        actors: least(|held| held.actors),
    }
}

fn grew(first: &Held, later: &Held) -> Vec<String> {
    let mut grown = Vec::new();
    if later.rss_kib as f64 > first.rss_kib as f64 * RSS_GROWTH_MAX + RSS_SLACK_KIB as f64 {
        grown.push(format!("memory {} → {} KiB", first.rss_kib, later.rss_kib));
    }
    if later.threads > first.threads + THREADS_SLACK {
        grown.push(format!("threads {} → {}", first.threads, later.threads));
    }
    if later.fds > first.fds + FDS_SLACK {
        grown.push(format!("descriptors {} → {}", first.fds, later.fds));
    }
    if let (Some(first_tasks), Some(later_tasks)) = (first.tasks, later.tasks) {
        if later_tasks as f64 > first_tasks as f64 * TASKS_GROWTH_MAX + TASKS_SLACK as f64 {
            grown.push(format!("tasks {first_tasks} → {later_tasks}"));
        }
    }
    grown
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(
        cli.minutes >= 3 * cli.kill_every.max(1),
        "--minutes: at least 3 × --kill-every (the first incarnation warms up; each phase of the kill cycle needs a first row and a later one)"
    );
    let temp = std::env::temp_dir().join(format!("payvisor-soak-{}", std::process::id()));
    let data_dir = temp.join("server");
    std::fs::create_dir_all(&data_dir)?;

    let mut bank_command = Command::new(beside_me("payvisor-bank-sim")?);
    bank_command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--name",
            "bank-a",
            "--secret",
            SECRET,
            "--data-dir",
        ])
        .arg(temp.join("bank"));
    let (mut bank, bank_address) = start(bank_command, " listening on ")?;
    let mut server = Server::start(
        beside_me("payvisor")?,
        &data_dir,
        &format!("http://{bank_address}"),
    )?;
    let channel = Endpoint::from_shared(format!("http://{}", server.address))?
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    let client = PaymentServiceClient::new(channel);

    let cycles = cli.minutes * 60 / CYCLE.as_secs();
    eprintln!(
        "payvisor-soak: {} min, {} creates/s over {} accounts, {cycles} cycles of {} s (bank down, store stalled, paused; killed every {} cycles); data in {}",
        cli.minutes, cli.rate, cli.accounts, CYCLE.as_secs(), cli.kill_every, temp.display()
    );
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let give_up_at = began + CYCLE * cycles as u32 + RETRY_AFTER_LOAD;
    let load = {
        let (tally, stop, client, cli) = (tally.clone(), stop.clone(), client.clone(), cli.clone());
        tokio::spawn(async move {
            for task in load(&cli, client, tally, stop, give_up_at).await {
                let _ = task.await;
            }
        })
    };

    let pid = Arc::new(AtomicU64::new(u64::from(server.pid())));
    let samples = Arc::new(Mutex::new(Vec::<(Duration, Held)>::new()));
    let sampler = {
        let (pid, samples, metrics, stop) = (
            pid.clone(),
            samples.clone(),
            server.metrics.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(held) = held(pid.load(Ordering::Relaxed) as u32, &metrics).await {
                    samples.lock().unwrap().push((began.elapsed(), held));
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        })
    };

    println!("cycle incarnation  rss_MiB   fds threads  tasks actors   acked");
    let mut rows = Vec::new();
    let at = |cycle: u64, offset: Duration| began + CYCLE * cycle as u32 + offset;
    for cycle in 0..cycles {
        tokio::time::sleep_until(at(cycle, SAMPLE_AT).into()).await;
        if let Some(held) = held(server.pid(), &server.metrics).await {
            let acked = tally.acked.lock().unwrap().len();
            println!("{}", row(cycle, server.incarnation, &held, acked));
            rows.push((cycle, held));
        }
        tokio::time::sleep_until(at(cycle, BANK_DOWN_AT).into()).await;
        post(&bank_address, "/admin/outage", "{\"down\": true}").await?;
        tokio::time::sleep(BANK_DOWN_FOR).await;
        post(&bank_address, "/admin/outage", "{\"down\": false}").await?;
        tokio::time::sleep_until(at(cycle, STORE_STALL_AT).into()).await;
        let stalled_dir = data_dir.clone();
        tokio::task::spawn_blocking(move || stall_the_store(&stalled_dir, STORE_STALL_FOR))
            .await??;
        tokio::time::sleep_until(at(cycle, PAUSE_AT).into()).await;
        server.signal("-STOP")?;
        tokio::time::sleep(PAUSE_FOR).await;
        server.signal("-CONT")?;
        if (cycle + 1).is_multiple_of(cli.kill_every.max(1)) {
            tokio::time::sleep_until(at(cycle, KILL_AT).into()).await;
            server.kill9_and_restart()?;
            pid.store(u64::from(server.pid()), Ordering::Relaxed);
        }
    }
    tokio::time::sleep_until(at(cycles, Duration::ZERO).into()).await;
    stop.store(true, Ordering::Relaxed);
    load.await?;
    sampler.await?;

    let mut verifier = client.clone();
    let verdict = verify(&mut verifier, cli.accounts, &tally).await?;
    // A graceful stop, then the books from the data directory.
    server.signal("-TERM")?;
    let stopped = server.process.wait()?;
    let mut ledger = Command::new(&server.payvisor);
    ledger
        .args(["ledger", "verify", "--data-dir"])
        .arg(&data_dir);
    for account in 0..cli.accounts {
        ledger.args(["--account", &format!("soak-{account}")]);
    }
    let ledger = ledger.output().context("run ledger verify")?;
    let _ = bank.kill();

    let samples = samples.lock().unwrap();
    let peak = |field: fn(&Held) -> u64| {
        samples
            .iter()
            .map(|(_, held)| field(held))
            .max()
            .unwrap_or(0)
    };
    // Like is compared with like: rows of the same phase of the kill cycle
    // (right after a restart the recovery's re-drives hold more connections
    // and tasks than a cycle later), from the second incarnation on (the
    // first starts on an empty store; every later one on tens of thousands
    // of payments, whose backlog it re-drives at start). A leak raises the
    // floor; a backlog only makes a peak: so the floor (each figure's
    // minimum) of a phase's later half is compared with its earlier half's.
    let kill_every = cli.kill_every.max(1);
    let mut grown = Vec::new();
    for phase in 0..kill_every {
        let held: Vec<Held> = (rows.iter())
            .filter(|(cycle, _)| *cycle >= kill_every && cycle % kill_every == phase)
            .map(|(_, held)| *held)
            .collect();
        if held.len() < 2 {
            grown.push("too few cycles to compare: run for longer".into());
            continue;
        }
        let (earlier, later) = held.split_at(held.len().div_ceil(2));
        grown.extend(
            grew(&floor(earlier), &floor(later))
                .into_iter()
                .map(|what| format!("phase {phase} of the kill cycle: {what}")),
        );
    }
    let refused = tally.refused.lock().unwrap().clone();
    let summary = serde_json::json!({
        "minutes": cli.minutes,
        "rate": cli.rate,
        "accounts": cli.accounts,
        "cycles": cycles,
        "incarnations": server.incarnation,
        "acknowledged": tally.acked.lock().unwrap().len(),
        "refunds_acknowledged": tally.refunds_acked.load(Ordering::Relaxed),
        "retries": tally.retries.load(Ordering::Relaxed),
        "shed": tally.shed.load(Ordering::Relaxed),
        "refused": refused,
        "payments": verdict.payments,
        "lost": verdict.lost,
        "doubled": verdict.doubled,
        "strangers": verdict.strangers,
        "unsettled": verdict.unsettled,
        "unsettled_by_state": verdict.unsettled_by_state,
        "graceful_stop": stopped.success(),
        "ledger_verified": ledger.status.success(),
        "peak_rss_mib": peak(|held| held.rss_kib) as f64 / 1024.0,
        "peak_fds": peak(|held| held.fds),
        "peak_threads": peak(|held| held.threads),
        "peak_tasks": peak(|held| held.tasks.unwrap_or(0)),
        "grew": grown,
    });
    println!("{summary}");
    anyhow::ensure!(
        verdict.lost == 0
            && verdict.doubled == 0
            && verdict.strangers == 0
            && verdict.unsettled == 0,
        "payments lost, doubled, unknown or unsettled"
    );
    anyhow::ensure!(refused.is_empty(), "requests refused: {refused:?}");
    anyhow::ensure!(stopped.success(), "the server did not stop cleanly");
    anyhow::ensure!(
        ledger.status.success(),
        "ledger verify failed: {}",
        String::from_utf8_lossy(&ledger.stdout)
    );
    anyhow::ensure!(grown.is_empty(), "held resources grew: {grown:?}");
    // Kept when anything failed, for a look at the data.
    let _ = std::fs::remove_dir_all(&temp);
    Ok(())
}
