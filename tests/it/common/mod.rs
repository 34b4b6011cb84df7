//! Test harness: runs the real `payvisor` binary on a free loopback port with
//! its own data directory (or, with `PAYVISOR_TEST_STORE=dynamodb`, its own
//! DynamoDB table), and talks to it over real gRPC.
#![allow(dead_code)]

pub mod bank_sim;
pub mod certs;
pub mod dynamodb;
pub mod pager;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use payvisor::grpc::pb;
use payvisor::grpc::pb::payment_service_client::PaymentServiceClient;
use tonic::transport::Channel;
use tonic_types::StatusExt;

pub const BINARY: &str = env!("CARGO_BIN_EXE_payvisor");

/// A binary of another workspace member (`payvisor-bank-sim`,
/// `payvisor-bench`): cargo gives a test only its own package's binaries,
/// so this one is looked up beside `payvisor`, where
/// `cargo build --workspace --bins` (run by `tests/run.sh`) puts it. Build
/// it again after changing that crate, or the test runs the old one.
pub fn workspace_binary(name: &str) -> PathBuf {
    let path = Path::new(BINARY)
        .parent()
        .expect("the target directory")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// An embedded store in a fresh directory (dropped with the directory).
pub fn sqlite_store() -> (
    std::sync::Arc<dyn payvisor::store::Store>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = payvisor::store::sqlite::SqliteStore::open(dir.path()).unwrap();
    (std::sync::Arc::new(store), dir)
}

/// The shutdown signal and background tasks of a node a test assembles in
/// process (as `server::run` would): dropped with the node, which fires the
/// signal and aborts the tasks.
pub struct Background {
    _trigger: payvisor::shutdown::ShutdownTrigger,
    pub shutdown: payvisor::shutdown::Shutdown,
    pub tasks: payvisor::shutdown::Tasks,
}

impl Background {
    pub fn new() -> Background {
        let (trigger, shutdown) = payvisor::shutdown::channel();
        Background {
            _trigger: trigger,
            shutdown,
            tasks: payvisor::shutdown::Tasks::default(),
        }
    }
}

/// How long a test waits for the server to make progress before it fails.
/// A liveness bound, not a performance assertion: generous on purpose.
pub const PROGRESS_DEADLINE: Duration = Duration::from_secs(60);

pub struct Server {
    process: Child,
    pub address: String,
    pub data_dir: PathBuf,
    /// Which store the server uses (`--store …`), shared by `ledger verify`.
    store_args: Vec<String>,
    extra_args: Vec<String>,
    /// Where the server's log goes, when a test reads it (else stderr).
    log: Option<PathBuf>,
    /// Keeps the temporary directory alive for the server's lifetime.
    _temp: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a server on a fresh data directory (and a fresh table, on
    /// DynamoDB).
    pub fn start(extra_args: &[&str]) -> Server {
        Server::launch(extra_args, false)
    }

    /// [`Server::start`], logging (info, payvisor's own at debug) to a file that
    /// [`Server::log`] reads (appended to across restarts).
    pub fn start_logged(extra_args: &[&str]) -> Server {
        Server::launch(extra_args, true)
    }

    fn launch(extra_args: &[&str], logged: bool) -> Server {
        Server::launch_on(store_args(), extra_args, logged)
    }

    fn launch_on(store_args: Vec<String>, extra_args: &[&str], logged: bool) -> Server {
        let temp = tempfile::tempdir().expect("temp dir");
        let data_dir = temp.path().to_path_buf();
        let log = logged.then(|| temp.path().join("server.log"));
        let mut all_args = store_args.clone();
        all_args.extend(extra_args.iter().map(|arg| arg.to_string()));
        let (process, address) = spawn(&data_dir, &all_args, log.as_deref());
        Server {
            process,
            address,
            data_dir,
            store_args,
            extra_args: all_args,
            log,
            _temp: Some(temp),
        }
    }

    /// What the server logged (with [`Server::start_logged`]).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.as_ref().expect("started with start_logged"))
            .unwrap_or_default()
    }

    /// Waits (bounded) until the log holds `text`; panics with the log
    /// otherwise.
    pub async fn logged(&self, text: &str) {
        let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
        while !self.log().contains(text) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never logged {text:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `payvisor ledger verify` on this server's store; panics unless
    /// every account's books are clean. The log-structured store is one
    /// process's at a time (its files are locked while open), so on it the
    /// server is stopped (gracefully) for the check and started again on
    /// the same store.
    pub fn verify_ledger(&mut self, accounts: &[&str]) {
        let exclusive = self.store_args.iter().any(|arg| arg == "lsm")
            && self.process.try_wait().expect("server status").is_none();
        if exclusive {
            assert!(
                self.terminate().success(),
                "graceful stop for ledger verify"
            );
        }
        let mut command = Command::new(BINARY);
        command
            .args(["ledger", "verify", "--data-dir"])
            .arg(&self.data_dir)
            .args(&self.store_args);
        for account in accounts {
            command.args(["--account", account]);
        }
        let output = command.output().expect("run ledger verify");
        assert!(
            output.status.success(),
            "ledger verify failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if exclusive {
            self.restart();
        }
    }

    pub async fn client(&self) -> PaymentServiceClient<Channel> {
        PaymentServiceClient::new(self.channel().await)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.address))
            .unwrap()
            .connect()
            .await
            .expect("connect to payvisor")
    }

    /// `kill -9`: no shutdown hook runs.
    pub fn kill9(&mut self) {
        self.process.kill().expect("SIGKILL");
        self.process.wait().expect("reap");
    }

    /// SIGTERM, then waits for the exit status. Blocks the calling thread:
    /// from async tests use [`Server::terminate_async`], so the test's own
    /// connections can answer the server's GOAWAY meanwhile.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.send_sigterm();
        self.process.wait().expect("wait for payvisor")
    }

    pub async fn terminate_async(&mut self) -> std::process::ExitStatus {
        tokio::task::block_in_place(|| self.terminate())
    }

    /// SIGTERM, without waiting for the exit (see [`Server::exited`]).
    pub fn send_sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.process.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the exit status, polling (so the test's own tasks run
    /// meanwhile), bounded by [`PROGRESS_DEADLINE`]: a liveness bound, well
    /// above the server's own shutdown bound.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
        loop {
            if let Some(status) = self.process.try_wait().expect("wait for payvisor") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "payvisor did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the server again on the same data directory (new port).
    pub fn restart(&mut self) {
        let (process, address) = spawn(&self.data_dir, &self.extra_args, self.log.as_deref());
        self.process = process;
        self.address = address;
    }

    /// The DynamoDB table the server uses, if it runs on DynamoDB.
    pub fn dynamodb_table(&self) -> Option<&str> {
        let flag = self
            .store_args
            .iter()
            .position(|arg| arg == "--dynamodb-table")?;
        self.store_args.get(flag + 1).map(String::as_str)
    }

    /// The (stopped) server's embedded store, opened in this process: the
    /// one its `--store` names.
    pub fn open_embedded_store(&self) -> std::sync::Arc<dyn payvisor::store::Store> {
        if self.store_args.iter().any(|arg| arg == "lsm") {
            std::sync::Arc::new(payvisor::store::lsm::LsmStore::open(&self.data_dir).unwrap())
        } else {
            std::sync::Arc::new(payvisor::store::sqlite::SqliteStore::open(&self.data_dir).unwrap())
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn spawn(data_dir: &Path, extra_args: &[String], log: Option<&Path>) -> (Child, String) {
    let (level, stderr) = match log {
        None => ("warn", Stdio::inherit()),
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("open the server log");
            // payvisor's own debug lines too: a leak test reads them.
            ("info,payvisor=debug", Stdio::from(file))
        }
    };
    let mut process = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(["--bank-latency-ms", "1..10"])
        .args(extra_args)
        .env("RUST_LOG", level)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start payvisor");
    let stdout = process.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("payvisor exited before listening")
            .expect("read stdout");
        if let Some(address) = line.strip_prefix("payvisor listening on ") {
            break address.trim().to_owned();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (process, address)
}

pub fn usd(minor_units: i64) -> pb::Money {
    pb::Money {
        currency_code: "USD".into(),
        minor_units,
    }
}

pub fn create_request(
    account: &str,
    request_id: &str,
    minor_units: i64,
) -> pb::CreatePaymentRequest {
    pb::CreatePaymentRequest {
        parent: format!("accounts/{account}"),
        payment: Some(pb::Payment {
            amount: Some(usd(minor_units)),
            ..Default::default()
        }),
        request_id: request_id.into(),
        payment_id: String::new(),
    }
}

pub fn refund_request(
    name: &str,
    request_id: &str,
    minor_units: Option<i64>,
) -> pb::RefundPaymentRequest {
    pb::RefundPaymentRequest {
        name: name.into(),
        amount: minor_units.map(usd),
        reason: "customer request".into(),
        request_id: request_id.into(),
    }
}

/// The `ErrorInfo.reason` of a status.
pub fn reason(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

/// The fields named by a status's `BadRequest`.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|bad| {
            bad.field_violations
                .iter()
                .map(|v| v.field.clone())
                .collect()
        })
        .unwrap_or_default()
}

pub fn state(payment: &pb::Payment) -> pb::payment::State {
    pb::payment::State::try_from(payment.state).unwrap()
}

/// Whether a payment still waits for a bank answer.
pub fn is_settled(payment: &pb::Payment) -> bool {
    state(payment) != pb::payment::State::Sent
        && payment
            .refunds
            .iter()
            .all(|refund| refund.state != pb::refund::State::Pending as i32)
}

/// Polls a payment until `done` holds (bounded by [`PROGRESS_DEADLINE`]).
pub async fn wait_for(
    client: &mut PaymentServiceClient<Channel>,
    name: &str,
    done: impl Fn(&pb::Payment) -> bool,
) -> pb::Payment {
    let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
    loop {
        let payment = read_retrying(|| {
            let mut client = client.clone();
            async move {
                client
                    .get_payment(pb::GetPaymentRequest { name: name.into() })
                    .await
            }
        })
        .await;
        if done(&payment) {
            return payment;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "payment never got there: {payment:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates a payment (expecting success) and returns it as acknowledged.
pub async fn created_payment(
    client: &mut PaymentServiceClient<Channel>,
    account: &str,
    request_id: &str,
    minor_units: i64,
) -> pb::Payment {
    client
        .create_payment(create_request(account, request_id, minor_units))
        .await
        .expect("create payment")
        .into_inner()
}

/// Creates a payment and waits until the bank has processed it.
pub async fn processed_payment(
    client: &mut PaymentServiceClient<Channel>,
    account: &str,
    request_id: &str,
    minor_units: i64,
) -> pb::Payment {
    let created = created_payment(client, account, request_id, minor_units).await;
    wait_for(client, &created.name, |p| {
        state(p) == pb::payment::State::Processed
    })
    .await
}

/// A read as a client makes it: `UNAVAILABLE` that carries `RetryInfo` (the
/// server says the store failed for now; tests that inject store faults
/// meet it) is read again, a bounded number of times. Any other error
/// fails the test.
pub async fn read_retrying<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut attempts = 0;
    loop {
        match call().await {
            Ok(response) => return response.into_inner(),
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    && retry_info(&status)
                    && attempts < 5 =>
            {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(status) => panic!("read failed: {status:?}"),
        }
    }
}

fn retry_info(status: &tonic::Status) -> bool {
    status.get_error_details().retry_info().is_some()
}

/// Every payment of an account, following page tokens.
pub async fn list_all(
    client: &mut PaymentServiceClient<Channel>,
    account: &str,
    page_size: i32,
) -> Vec<pb::Payment> {
    let mut payments = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListPaymentsRequest {
            parent: format!("accounts/{account}"),
            page_size,
            page_token,
            ..Default::default()
        };
        let page = read_retrying(|| {
            let (mut client, request) = (client.clone(), request.clone());
            async move { client.list_payments(request).await }
        })
        .await;
        assert!(page.payments.len() <= page_size.max(1) as usize);
        payments.extend(page.payments);
        if page.next_page_token.is_empty() {
            return payments;
        }
        page_token = page.next_page_token;
    }
}

/// Checks GetAccount against the payments: available = processed − fees −
/// refunds (pending or done), nothing pending once all payments settled.
pub async fn assert_balances_match_payments(
    client: &mut PaymentServiceClient<Channel>,
    account: &str,
) {
    let payments = list_all(client, account, 100).await;
    let mut collected = 0;
    let mut refunded = 0;
    for payment in &payments {
        use pb::payment::State;
        if matches!(
            state(payment),
            State::Processed | State::PartiallyRefunded | State::Refunded
        ) {
            collected += payment.amount.as_ref().unwrap().minor_units
                - payment.fee.as_ref().unwrap().minor_units;
        }
        refunded += payment.refunded_amount.as_ref().unwrap().minor_units;
        assert!(
            payment.refunded_amount.as_ref().unwrap().minor_units
                <= payment.amount.as_ref().unwrap().minor_units
        );
    }
    let account_view = read_retrying(|| {
        let mut client = client.clone();
        let name = format!("accounts/{account}");
        async move { client.get_account(pb::GetAccountRequest { name }).await }
    })
    .await;
    let usd_balance = account_view
        .balances
        .iter()
        .find(|b| b.currency_code == "USD")
        .expect("USD balance");
    assert_eq!(
        usd_balance.available.as_ref().unwrap().minor_units,
        collected - refunded,
        "available"
    );
    assert_eq!(
        usd_balance.pending.as_ref().unwrap().minor_units,
        0,
        "pending"
    );
    assert_eq!(
        usd_balance.refunding.as_ref().unwrap().minor_units,
        0,
        "refunding"
    );
}

/// The store flags for servers under test: the embedded SQLite store by
/// default, the log-structured one when `PAYVISOR_TEST_STORE=lsm`, a fresh
/// DynamoDB table (created with `payvisor dynamodb create-table`)
/// when `PAYVISOR_TEST_STORE=dynamodb`.
fn store_args() -> Vec<String> {
    match std::env::var("PAYVISOR_TEST_STORE").as_deref() {
        Ok("dynamodb") => {
            assert!(
                dynamodb::available("e2e on dynamodb"),
                "PAYVISOR_TEST_STORE=dynamodb needs AWS_ENDPOINT_URL_DYNAMODB"
            );
            dynamodb_store_args()
        }
        Ok("lsm") => vec!["--store".into(), "lsm".into()],
        Ok("sqlite") | Err(_) => Vec::new(),
        Ok(other) => panic!("PAYVISOR_TEST_STORE={other}: expected sqlite, lsm or dynamodb"),
    }
}

/// `--store dynamodb` on a fresh table, made with `payvisor dynamodb
/// create-table`.
fn dynamodb_store_args() -> Vec<String> {
    let table = dynamodb::created_table("e2e");
    vec![
        "--store".into(),
        "dynamodb".into(),
        "--dynamodb-table".into(),
        table,
    ]
}

/// Runs the command line against `server` (`--json`), expecting success.
pub fn cli(server: &Server, args: &[&str]) -> serde_json::Value {
    let output = cli_output(server, args);
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

/// Runs the command line against `server` (`--json`), whatever the outcome.
pub fn cli_output(server: &Server, args: &[&str]) -> std::process::Output {
    Command::new(BINARY)
        .args(args)
        .args(["--json", "--server", &format!("http://{}", server.address)])
        .output()
        .expect("run the CLI")
}
