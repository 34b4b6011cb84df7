//! How many durable payment writes per second the embedded store sustains,
//! against how many fsyncs per second the disk does.
//!
//! `cargo bench --bench durable_writes` measures, in one run:
//! - `fsync`: the raw rate of write + fdatasync on the same filesystem;
//! - `store, 1 writer`: one payment-shaped transaction (idempotency record,
//!   payment, movement, account: 4 items) at a time, each awaited — one
//!   commit per write;
//! - `store, N writers`: N concurrent writers on distinct accounts — group
//!   commit folds their writes into shared commits.
//!
//! Each figure is the median of several runs. Under `cargo test` (no
//! `--bench` argument) it runs a tiny smoke version so it keeps working.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use payvisor::store::sqlite::SqliteStore;
use payvisor::store::{Condition, Item, Key, Store, WriteOp};

struct Settings {
    runs: usize,
    writes_per_run: usize,
    concurrency: Vec<usize>,
}

fn payment_write(account: usize, sequence: usize) -> Vec<WriteOp> {
    let pk = format!("A#bench-{account}");
    let body = vec![b'x'; 600]; // about the size of a JSON payment record
    let put = |sk: String, version: u64, condition: Condition| WriteOp::Put {
        item: Item {
            key: Key::new(pk.clone(), sk),
            version,
            body: body.clone(),
            index: None,
            expires_at: None,
        },
        condition,
    };
    let account_condition = if sequence == 0 {
        Condition::NotExists
    } else {
        Condition::VersionIs(sequence as u64)
    };
    vec![
        put(format!("I#req-{sequence}"), 1, Condition::NotExists),
        put(format!("P#pay-{sequence}"), 1, Condition::NotExists),
        put(format!("M#{sequence:020}"), 1, Condition::NotExists),
        put("ACCOUNT".into(), sequence as u64 + 1, account_condition),
    ]
}

fn fsyncs_per_second(dir: &Path, count: usize) -> f64 {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).unwrap();
    let started = Instant::now();
    for _ in 0..count {
        file.write_all(b"12345678").unwrap();
        file.sync_data().unwrap();
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    std::fs::remove_file(path).unwrap();
    rate
}

/// Durable writes per second, and writes per commit (the group-commit factor).
async fn store_writes_per_second(dir: &Path, writers: usize, writes: usize) -> (f64, f64) {
    let _ = std::fs::remove_dir_all(dir);
    let sqlite = Arc::new(SqliteStore::open(dir).unwrap());
    let store: Arc<dyn Store> = sqlite.clone();
    let per_writer = writes / writers;
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for sequence in 0..per_writer {
                    store
                        .transact(payment_write(writer, sequence))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let written = (per_writer * writers) as f64;
    (
        written / started.elapsed().as_secs_f64(),
        written / sqlite.commit_count().max(1) as f64,
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() {
    let benchmarking = std::env::args().any(|arg| arg == "--bench");
    let settings = if benchmarking {
        Settings {
            runs: 5,
            writes_per_run: 4_000,
            concurrency: vec![1, 16, 64, 256],
        }
    } else {
        Settings {
            runs: 1,
            writes_per_run: 64,
            concurrency: vec![1, 16],
        }
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("durable-writes");
    std::fs::create_dir_all(&dir).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let fsync = median(
        (0..settings.runs)
            .map(|_| fsyncs_per_second(&dir, settings.writes_per_run.min(2_000)))
            .collect(),
    );
    println!("{:<22} {:>12}", "measure", "per second");
    println!("{:<22} {:>12.0}", "fsync", fsync);
    let mut results = Vec::new();
    for &writers in &settings.concurrency {
        // One writer at a time pays one commit per write: fewer writes keep
        // the run short.
        let writes = if writers == 1 {
            settings.writes_per_run / 4
        } else {
            settings.writes_per_run
        };
        let runs: Vec<(f64, f64)> = (0..settings.runs)
            .map(|_| runtime.block_on(store_writes_per_second(&dir.join("store"), writers, writes)))
            .collect();
        let rate = median(runs.iter().map(|run| run.0).collect());
        let per_commit = median(runs.iter().map(|run| run.1).collect());
        println!(
            "{:<22} {:>12.0}   {:>5.2}x fsync   {:>6.1} writes/commit",
            format!("store, {writers} writers"),
            rate,
            rate / fsync,
            per_commit
        );
        results.push((writers, rate));
    }
    let json: Vec<String> = results
        .iter()
        .map(|(writers, rate)| format!("\"writers_{writers}\":{rate:.0}"))
        .collect();
    println!("{{\"fsync_per_sec\":{fsync:.0},{}}}", json.join(","));
    let _ = std::fs::remove_dir_all(&dir);
}
