//! A `payvisor-bank-sim` process (the HTTP bank of `docs/bank-protocol.md`)
//! for tests that run payvisor against a bank over the network, and the
//! small HTTP reads tests make of it and of `/metrics`.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};

use super::workspace_binary;

/// The secret `bank-a` signs its callbacks with.
pub const BANK_SIM_SECRET: &str = "bank-a-secret-0123456789";

pub struct BankSim {
    process: Child,
    pub address: String,
}

impl BankSim {
    /// `bank-a` (seed 7) on `port`, its durable record in `dir`.
    pub fn start(dir: &std::path::Path, port: u16, extra: &[&str]) -> BankSim {
        let seeded = [&["--seed", "7"][..], extra].concat();
        BankSim::named("bank-a", dir, port, &seeded)
    }

    /// Bank `name` on `port`, its durable record in `dir`.
    pub fn named(name: &str, dir: &std::path::Path, port: u16, extra: &[&str]) -> BankSim {
        let mut process = Command::new(workspace_binary("payvisor-bank-sim"))
            .args(["--name", name])
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir)
            .args(["--secret", BANK_SIM_SECRET])
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
    pub fn stats(&self) -> serde_json::Value {
        let answer = http_get(&self.address, "/admin/stats");
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

/// A loopback port nothing listens on, for a process the test starts.
///
/// Taken below the kernel's ephemeral range (32768 and up on Linux), and
/// never the same twice in one test run: a port the kernel picked for
/// `bind(0)` is free again the moment the probe closes, and the kernel may
/// hand it to one of the many outgoing connections the tests make before
/// the started process binds it (CI saw a node exit before listening).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // Test binaries run one after another, but two at once (by hand)
    // start at different places.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() % 64) * (SPAN / 64);
    for _ in 0..SPAN {
        let port = (FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {FIRST} and {}", FIRST + SPAN);
}

/// The whole HTTP/1.1 answer (status line, headers, body) to a GET.
pub fn http_get(address: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// One unlabelled sample from a node's `/metrics` at `listen`.
pub fn metric(listen: &str, name: &str) -> i64 {
    let answer = http_get(listen, "/metrics");
    answer
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in {answer}"))
}

/// Takes the bank down (every call answered 503) or brings it back.
pub fn set_outage(bank: &BankSim, down: bool) {
    use std::io::{Read, Write};
    let body = format!("{{\"down\": {down}}}");
    let mut stream = std::net::TcpStream::connect(&bank.address).unwrap();
    write!(
        stream,
        "POST /admin/outage HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A bank simulator in `dir` (`bank-a` to the server) and a webhook
/// endpoint nothing listens on (every delivery fails, and waits), with the
/// server flags that use both.
pub fn bank_and_unreachable_webhook(dir: &std::path::Path) -> (BankSim, Vec<String>) {
    let bank = BankSim::start(dir, free_port(), &[]);
    let hooks = dir.join("webhooks.json");
    let nowhere = format!("http://127.0.0.1:{}/hooks", free_port());
    std::fs::write(
        &hooks,
        serde_json::json!({"endpoints": [{"name": "shop", "url": nowhere, "secret": "whsec-0123456789abcdef"}]})
            .to_string(),
    )
    .unwrap();
    let flags = [
        "--bank-url",
        &format!("http://{}", bank.address),
        "--bank-name",
        "bank-a",
        "--bank-secret",
        BANK_SIM_SECRET,
        "--bank-callback-listen",
        &format!("127.0.0.1:{}", free_port()),
        "--webhooks",
        hooks.to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec();
    (bank, flags)
}
