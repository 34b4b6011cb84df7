//! payvisor with a bank over the network: the real binary sends payments to
//! a `payvisor bank-sim` process over HTTP (`docs/bank-protocol.md`) and
//! takes its signed callbacks, which the bank drops, duplicates and reorders
//! on purpose. payvisor is `kill -9`ed while payments are being dispatched
//! and restarted. Judged by the bank's own record: every payment reached the
//! bank under exactly one key, and payvisor's books match.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use payvisor::grpc::pb::payment::State;

const SECRET: &str = "bank-a-secret-0123456789";

struct BankSim {
    process: Child,
    address: String,
}

impl BankSim {
    fn start(dir: &std::path::Path, port: u16, extra: &[&str]) -> BankSim {
        let mut process = Command::new(BINARY)
            .args(["bank-sim", "--name", "bank-a"])
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir)
            .args(["--secret", SECRET, "--seed", "7"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start bank-sim");
        let stdout = process.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let address = loop {
            let line = lines.next().expect("bank-sim exited").unwrap();
            if let Some((_, address)) = line.split_once(" listening on ") {
                break address.trim().to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        BankSim { process, address }
    }

    /// `GET /admin/stats` (the simulator's own counts; not protocol).
    fn stats(&self) -> serde_json::Value {
        let mut stream = std::net::TcpStream::connect(&self.address).unwrap();
        write!(
            stream,
            "GET /admin/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        serde_json::from_str(body.trim()).unwrap()
    }
}

impl Drop for BankSim {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn payments_over_http_survive_lost_doubled_reordered_callbacks_and_a_kill_9() {
    let bank_dir = tempfile::tempdir().unwrap();
    let bank_port = free_port();
    let bank = BankSim::start(
        bank_dir.path(),
        bank_port,
        &[
            "--drop-callback-per-mille",
            "150",
            "--duplicate-callback-per-mille",
            "300",
            "--reorder-callbacks",
            "--outcome-delay-ms",
            "5..80",
        ],
    );
    let callback_listen = format!("127.0.0.1:{}", free_port());
    let metrics_listen = format!("127.0.0.1:{}", free_port());
    let bank_url = format!("http://{}", bank.address);
    let mut server = Server::start(&[
        "--bank-url",
        &bank_url,
        "--bank-name",
        "bank-a",
        "--bank-secret",
        SECRET,
        "--bank-callback-listen",
        &callback_listen,
        // Lost callbacks are found by the watchdog's status query.
        "--stall-deadline",
        "sent=2s",
        "--stall-deadline",
        "refunding=2s",
        "--redrive-max",
        "8",
        // Reconcile every second, each second once it is 5 s old (lost
        // callbacks are found after 2 s).
        "--reconcile-every",
        "1s",
        "--reconcile-lag",
        "5s",
        "--metrics-listen",
        &metrics_listen,
    ]);
    let mut client = server.client().await;

    // A first wave, then kill -9 while a second wave is being dispatched.
    let mut names = Vec::new();
    for n in 0..20 {
        let payment = created_payment(
            &mut client,
            &format!("acct{}", n % 4),
            &format!("w1-{n}"),
            1_000 + n,
        )
        .await;
        names.push(payment.name);
    }
    let mut second = Vec::new();
    for n in 0..10 {
        let mut client = client.clone();
        second.push(tokio::spawn(async move {
            client
                .create_payment(create_request(
                    &format!("acct{}", n % 4),
                    &format!("w2-{n}"),
                    2_000 + n,
                ))
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    server.kill9();
    for task in second {
        if let Ok(Ok(payment)) = task.await.unwrap().map(|r| Ok::<_, ()>(r.into_inner())) {
            names.push(payment.name);
        }
    }
    server.restart();
    let mut client = server.client().await;
    // Requests whose answer was lost are retried under the same key: the
    // same payment comes back, never a second one.
    for n in 0..10 {
        let payment = created_payment(
            &mut client,
            &format!("acct{}", n % 4),
            &format!("w2-{n}"),
            2_000 + n,
        )
        .await;
        if !names.contains(&payment.name) {
            names.push(payment.name);
        }
    }
    assert_eq!(names.len(), 30);

    for name in &names {
        wait_for(&mut client, name, |p| state(p) == State::Processed).await;
    }
    // Refunds go to the same bank and come back the same way.
    for (n, name) in names.iter().take(6).enumerate() {
        client
            .refund_payment(refund_request(name, &format!("refund-{n}"), Some(500)))
            .await
            .unwrap();
    }
    for name in names.iter().take(6) {
        wait_for(&mut client, name, |p| {
            state(p) == State::PartiallyRefunded && is_settled(p)
        })
        .await;
    }

    // The bank is the judge: 30 payments, each received under one key.
    let stats = bank.stats();
    eprintln!("bank-sim stats: {stats}");
    assert_eq!(stats["distinct_payments"], 30, "{stats}");
    for account in ["acct0", "acct1", "acct2", "acct3"] {
        assert_balances_match_payments(&mut client, account).await;
    }
    server.verify_ledger(&["acct0", "acct1", "acct2", "acct3"]);

    // Reconciliation: the bank's settlement report, payvisor's payments and
    // its ledger agree...
    let reconcile = |server: &Server| {
        Command::new(BINARY)
            .args([
                "reconcile",
                "--bank-name",
                "bank-a",
                "--period",
                "1h",
                "--data-dir",
            ])
            .arg(server.data_dir())
            .args(["--bank-url", &bank_url])
            .output()
            .unwrap()
    };
    let clean = reconcile(&server);
    let text = String::from_utf8_lossy(&clean.stdout);
    assert!(
        clean.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    assert!(
        text.contains("bank entries 36") && text.contains("clean"),
        "{text}"
    );
    assert_eq!(
        metric(&metrics_listen, "payvisor_reconciliation_mismatches_total"),
        0
    );

    // ...and a corrupted settlement report is caught, by the command and by
    // the server's own periodic run.
    drop(bank);
    let _bank = BankSim::start(bank_dir.path(), bank_port, &["--corrupt-settlement"]);
    let caught = reconcile(&server);
    let text = String::from_utf8_lossy(&caught.stdout);
    assert!(!caught.status.success(), "{text}");
    assert!(text.contains("MISMATCH amount_differs"), "{text}");
    let later = processed_payment(&mut client, "acct0", "after-corruption", 777).await;
    let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
    while metric(&metrics_listen, "payvisor_reconciliation_mismatches_total") < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never caught it ({})",
            later.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One unlabelled gauge from `/metrics`.
fn metric(listen: &str, name: &str) -> i64 {
    let mut stream = std::net::TcpStream::connect(listen).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in {answer}"))
}
