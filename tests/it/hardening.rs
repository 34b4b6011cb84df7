//! Regression tests of the defects found by trying payvisor as an attacker
//! and as a clumsy operator would: each failed before its fix.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use payvisor::grpc::pb;

use crate::common::bank_sim::{free_port, set_outage, BankSim, BANK_SIM_SECRET};
use crate::common::{create_request, state, wait_for, Server, BINARY};

/// Longest a start that must be refused may run: a refusal comes before
/// anything is served, in well under a second.
const REFUSAL_WITHIN: Duration = Duration::from_secs(30);

/// Runs `command` (a `payvisor serve` that must be refused) to its end. One
/// still running after [`REFUSAL_WITHIN`] was not refused: it is killed and
/// the test fails, rather than waiting on a server that serves forever.
fn refused_output(command: &mut Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + REFUSAL_WITHIN;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "still running after {REFUSAL_WITHIN:?}: it was not refused\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A second server on a data directory in use exits at once, naming the
/// process that holds it; the first keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_a_data_directory_is_refused_with_the_holders_pid() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let output = refused_output(
        Command::new(BINARY)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(server.data_dir()),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("listening"),
        "the second process must not serve"
    );
    assert!(
        stderr.contains(&format!(
            "in use by another payvisor process (pid {})",
            server.pid()
        )),
        "{stderr}"
    );
    client
        .create_payment(create_request("lock", "lock-1", 100))
        .await
        .expect("the first server goes on");
}

/// A payment sent while its only bank is down is re-driven, paged, and
/// then (this was the defect) never tried again: it stayed SENT after the
/// bank came back, until a person acted. Now the watchdog keeps asking at
/// the capped back-off after the page, and the payment goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_paged_behind_a_bank_outage_goes_through_when_the_bank_is_back() {
    let bank_dir = tempfile::tempdir().unwrap();
    let bank = BankSim::start(
        bank_dir.path(),
        free_port(),
        &["--outcome-delay-ms", "5..20"],
    );
    set_outage(&bank, true);
    let bank_url = format!("http://{}", bank.address);
    let callbacks = format!("127.0.0.1:{}", free_port());
    let mut server = Server::start(&[
        "--bank-url",
        &bank_url,
        "--bank-name",
        "bank-a",
        "--bank-secret",
        BANK_SIM_SECRET,
        "--bank-callback-listen",
        &callbacks,
        "--stall-deadline",
        "sent=1s",
        "--redrive-max",
        "1",
        "--watchdog-interval",
        "100ms",
    ]);
    let mut client = server.client().await;
    let payment = client
        .create_payment(create_request("outage", "outage-1", 1_200))
        .await
        .expect("accepted while the bank is down")
        .into_inner();
    let paged = wait_for(&mut client, &payment.name, |payment| {
        payment.watch.as_ref().is_some_and(|watch| watch.paged)
    })
    .await;
    assert_eq!(state(&paged), pb::payment::State::Sent, "{paged:?}");
    set_outage(&bank, false);
    // No operator: the next quiet re-drive (4 s after the page, then 8 s)
    // finds the bank back.
    let done = wait_for(&mut client, &payment.name, |payment| {
        state(payment) == pb::payment::State::Processed
    })
    .await;
    assert!(
        !done.watch.as_ref().is_some_and(|watch| watch.paged),
        "the page is resolved: {done:?}"
    );
    server.verify_ledger(&["outage"]);
}

/// Bytes as they are: a codec for sending what a broken client would.
#[derive(Default, Clone)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = bytes::Buf::copy_to_bytes(src, bytes::Buf::remaining(src));
        Ok(Some(bytes.to_vec()))
    }
}

/// Undecodable and oversize requests are the client's errors, with an
/// `ErrorInfo`, not `INTERNAL` or `OUT_OF_RANGE`; nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_requests_are_the_clients_errors_with_a_reason() {
    use tonic_types::StatusExt;
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let send = |body: Vec<u8>, method: &'static str| {
        let channel = channel.clone();
        async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.unwrap();
            let path = http::uri::PathAndQuery::from_static(method);
            grpc.unary(tonic::Request::new(body), path, RawCodec)
                .await
                .unwrap_err()
        }
    };
    const CREATE: &str = "/payvisor.v1.PaymentService/CreatePayment";
    const GET: &str = "/payvisor.v1.PaymentService/GetPayment";
    for (what, body, method) in [
        // Field 1 (parent), a string that is not UTF-8.
        ("bad UTF-8", vec![0x0a, 0x02, 0xff, 0xfe], CREATE),
        // Field 1 with wire type 7, which does not exist.
        ("bad wire type", vec![0x0f, 0x01], CREATE),
        // Field 3 as a varint of eleven bytes.
        (
            "bad varint",
            [vec![0x18], vec![0xff; 10], vec![0x01]].concat(),
            CREATE,
        ),
        // A length past the end of the body.
        ("truncated", vec![0x0a, 0x10, b'a'], GET),
    ] {
        let status = send(body, method).await;
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{what}: {status:?}"
        );
        let info = status.get_error_details().error_info().cloned();
        assert_eq!(
            info.map(|info| info.reason).as_deref(),
            Some("MALFORMED_REQUEST"),
            "{what}: {status:?}"
        );
    }
    let oversize = send(vec![0x0a; 300 * 1024], CREATE).await;
    assert_eq!(
        oversize.code(),
        tonic::Code::ResourceExhausted,
        "{oversize:?}"
    );
    assert_eq!(
        oversize
            .get_error_details()
            .error_info()
            .map(|info| info.reason.as_str()),
        Some("REQUEST_TOO_LARGE")
    );
    // Nothing was created, and the server serves on.
    let listed = client
        .list_payments(pb::ListPaymentsRequest {
            parent: "accounts/acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.payments.is_empty());
    client
        .create_payment(create_request("acme", "after-junk", 100))
        .await
        .expect("a good request after the junk");
}

/// The server's peak resident memory, from `/proc`, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .unwrap();
    kib / 1024
}

/// The stated bound on the server's peak memory under the load below
/// (before: 4.6 GB with 256 such calls).
const LIST_LOAD_RSS_MIB_MAX: u64 = 512;

/// Pages of payments with full metadata fit a default client's 4 MB, and
/// 256 calls for the largest page at once keep the server's memory bounded.
/// Before, one such page was a 9.5 MB message no default client could read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_pages_fit_a_default_client_and_a_burst_of_them_keeps_memory_bounded() {
    let server = Server::start(&[]);
    let client = server.client().await;
    let metadata: std::collections::HashMap<String, String> = (0
        ..payvisor::limits::METADATA_ENTRIES_MAX)
        .map(|key| {
            (
                format!("{key:0>64}"),
                "v".repeat(payvisor::limits::METADATA_VALUE_BYTES_MAX),
            )
        })
        .collect();
    let mut creates = tokio::task::JoinSet::new();
    for n in 0..500 {
        let mut client = client.clone();
        let metadata = metadata.clone();
        creates.spawn(async move {
            let mut request = create_request("wide", &format!("wide-{n}"), 100);
            request.payment.as_mut().unwrap().metadata = metadata;
            client.create_payment(request).await.unwrap();
        });
        if creates.len() >= 16 {
            creates.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(created) = creates.join_next().await {
        created.unwrap();
    }
    // A client with gRPC's default 4 MB message limit pages through all.
    let mut names = std::collections::BTreeSet::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .clone()
            .list_payments(pb::ListPaymentsRequest {
                parent: "accounts/wide".into(),
                page_size: 500,
                page_token,
                ..Default::default()
            })
            .await
            .expect("a page under 4 MB")
            .into_inner();
        pages += 1;
        for payment in page.payments {
            assert!(names.insert(payment.name), "a payment listed twice");
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(names.len(), 500);
    assert!(pages >= 4, "cut by bytes: {pages} pages");
    // 256 of the largest calls at once.
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..256 {
        let mut client = client.clone();
        burst.spawn(async move {
            client
                .list_payments(pb::ListPaymentsRequest {
                    parent: "accounts/wide".into(),
                    page_size: 500,
                    ..Default::default()
                })
                .await
                .map(|page| page.into_inner().payments.len())
        });
    }
    while let Some(listed) = burst.join_next().await {
        let listed = listed
            .unwrap()
            .expect("every call of the burst is answered");
        assert!(listed > 0);
    }
    let peak = peak_rss_mib(server.pid());
    eprintln!("peak RSS after the burst: {peak} MiB");
    assert!(
        peak <= LIST_LOAD_RSS_MIB_MAX,
        "peak RSS {peak} MiB over {LIST_LOAD_RSS_MIB_MAX} MiB"
    );
}

/// `payvisor serve` with `args` in a fresh data directory, expected to
/// refuse to start: its stderr.
fn refused_start(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = refused_output(
        Command::new(BINARY)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(args),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "it started: {stdout}");
    assert!(!stdout.contains("listening"), "{stdout}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The smaller defects: each refused with a clear message, and no secret
/// or stray directory left behind.
#[test]
fn configuration_mistakes_are_named_without_echoing_secrets() {
    let dir = tempfile::tempdir().unwrap();
    // A numeric webhook secret is a type error, told without the number.
    let webhooks = dir.path().join("webhooks.json");
    std::fs::write(
        &webhooks,
        r#"{"endpoints": [{"name": "shop", "url": "https://shop.example/hooks", "secret": 918273645546372819}]}"#,
    )
    .unwrap();
    let stderr = refused_start(&["--webhooks", webhooks.to_str().unwrap()]);
    assert!(stderr.contains("--webhooks"), "{stderr}");
    assert!(
        stderr.contains("invalid type: integer, expected a string"),
        "{stderr}"
    );
    assert!(!stderr.contains("918273645546372819"), "{stderr}");
    // Credentials in a URL are refused, not silently dropped.
    std::fs::write(
        &webhooks,
        r#"{"endpoints": [{"name": "shop", "url": "https://merchant:hunter2hunter2@shop.example/hooks", "secret": "whsec-0123456789abcdef"}]}"#,
    )
    .unwrap();
    let stderr = refused_start(&["--webhooks", webhooks.to_str().unwrap()]);
    assert!(stderr.contains("credentials in the URL"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    // A banks file's mistakes are labelled --banks, not --bank-url.
    let banks = dir.path().join("banks.json");
    std::fs::write(
        &banks,
        r#"{"banks": [{"name": "bank a", "url": "https://bank.example", "secret": "0123456789abcdef"}]}"#,
    )
    .unwrap();
    let stderr = refused_start(&["--banks", banks.to_str().unwrap()]);
    assert!(stderr.contains("--banks"), "{stderr}");
    assert!(!stderr.contains("--bank-url"), "{stderr}");
}

/// `ledger verify` on a mistyped data directory says there is no store,
/// and creates nothing there.
#[test]
fn the_ledger_check_refuses_a_directory_without_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("dtaa");
    let output = Command::new(BINARY)
        .args(["ledger", "verify", "--data-dir"])
        .arg(&typo)
        .args(["--account", "acme"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("no payvisor store"), "{stderr}");
    assert!(!typo.exists(), "a directory was created");
}

/// A clean stop folds the write-ahead log into the database and truncates
/// it (it was left at tens of MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_leaves_no_write_ahead_log_behind() {
    let mut server = Server::start(&[]);
    let mut client = server.client().await;
    for n in 0..50 {
        client
            .create_payment(create_request("wal", &format!("wal-{n}"), 100))
            .await
            .unwrap();
    }
    let wal = server.data_dir().join("payvisor.db-wal");
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "written through the log"
    );
    assert!(server.terminate_async().await.success());
    let left = std::fs::metadata(&wal).map(|meta| meta.len()).unwrap_or(0);
    assert_eq!(left, 0, "{left} bytes of log left");
    // Nothing was lost by it: once every payment is settled, the books
    // balance (the check reads account and movements apart, so it waits
    // for the server to be quiet).
    server.restart();
    let mut client = server.client().await;
    for n in 0..50 {
        let name = client
            .create_payment(create_request("wal", &format!("wal-{n}"), 100))
            .await
            .unwrap()
            .into_inner()
            .name;
        wait_for(&mut client, &name, |payment| {
            state(payment) == pb::payment::State::Processed
        })
        .await;
    }
    server.verify_ledger(&["wal"]);
}

/// A stopped server's data directory with one processed payment in it.
async fn stopped_with_a_payment() -> (Server, pb::Payment) {
    let mut server = Server::start(&[]);
    let mut client = server.client().await;
    let payment = client
        .create_payment(create_request("damage", "damage-1", 1_000))
        .await
        .unwrap()
        .into_inner();
    let payment = wait_for(&mut client, &payment.name, |payment| {
        state(payment) == pb::payment::State::Processed
    })
    .await;
    assert!(server.terminate_async().await.success());
    (server, payment)
}

/// A data directory the server cannot write (a read-only mount behaves
/// the same way for it: every write refused) is refused at start, so it
/// never reports SERVING; and so is a writable directory whose database
/// file can only be read. Root writes through file permissions, so as root
/// the server runs as `nobody` (uid 65534), as a service user would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_be_written_is_refused_at_start() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (mut server, _) = stopped_with_a_payment().await;
    let dir = server.data_dir().to_path_buf();
    let dir = dir.as_path();
    let database = dir.join("payvisor.db");
    let mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let as_root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    let serve = || {
        let mut command = Command::new(BINARY);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir);
        if as_root {
            use std::os::unix::process::CommandExt;
            command.uid(65534).gid(65534);
        }
        let output = refused_output(&mut command);
        assert!(!output.status.success(), "it started on {}", dir.display());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    for entry in std::fs::read_dir(dir).unwrap() {
        mode(&entry.unwrap().path(), 0o444);
    }

    // The directory: not even the lock can be taken.
    mode(dir, 0o555);
    let stderr = serve();
    assert!(
        stderr.contains("cannot be written (this user may not write there)"),
        "{stderr}"
    );

    // The directory writable (the lock file too), the database read-only.
    mode(dir, 0o777);
    mode(&dir.join("payvisor.lock"), 0o666);
    let stderr = serve();
    assert!(
        stderr.contains("can only be read (a read-only file or mount)"),
        "{stderr}"
    );

    // Writable again: it serves, with the payment it had.
    mode(&database, 0o644);
    server.restart();
    let mut client = server.client().await;
    assert_eq!(
        crate::common::list_all(&mut client, "damage", 10)
            .await
            .len(),
        1
    );
    assert!(server.terminate_async().await.success());
}

/// `payvisor serve` on `dir` (expected to refuse): its stderr.
fn refused_on(dir: &std::path::Path) -> String {
    let output = refused_output(
        Command::new(BINARY)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir),
    );
    assert!(!output.status.success(), "it started on {}", dir.display());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `payvisor store check` on `dir`: whether it passed, and its output.
fn store_check(dir: &std::path::Path) -> (bool, String) {
    let output = Command::new(BINARY)
        .args(["store", "check", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// A data directory whose database was emptied or deleted refuses to
/// start, instead of starting a fresh store (the payments and their
/// idempotency keys silently gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_that_lost_its_database_refuses_to_start() {
    let (server, _) = stopped_with_a_payment().await;
    let (passed, output) = store_check(server.data_dir());
    assert!(passed, "{output}");
    let database = server.data_dir().join("payvisor.db");
    std::fs::write(&database, b"").unwrap();
    let stderr = refused_on(server.data_dir());
    assert!(stderr.contains("missing or empty"), "{stderr}");
    assert!(stderr.contains("restore it from a backup"), "{stderr}");
    std::fs::remove_file(&database).unwrap();
    let stderr = refused_on(server.data_dir());
    assert!(stderr.contains("missing or empty"), "{stderr}");
}

/// A changed byte inside a record is found by its checksum: reading it is
/// DATA_LOSS (STORE_CORRUPT), not a retryable UNAVAILABLE, and the check
/// command names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_record_is_reported_as_damage_not_served() {
    let (mut server, payment) = stopped_with_a_payment().await;
    {
        let connection = rusqlite::Connection::open(server.data_dir().join("payvisor.db")).unwrap();
        let (pk, sk, mut body): (String, String, Vec<u8>) = connection
            .query_row(
                "SELECT pk, sk, body FROM items WHERE sk LIKE 'P#%'",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .unwrap();
        // A digit of the amount: still valid JSON, a different payment.
        let text = String::from_utf8(body.clone()).unwrap();
        let at = text.find("\"10.00\"").expect("the amount in the body") + 1;
        body[at] = b'9';
        connection
            .execute(
                "UPDATE items SET body = ?1 WHERE pk = ?2 AND sk = ?3",
                rusqlite::params![body, pk, sk],
            )
            .unwrap();
    }
    let (passed, output) = store_check(server.data_dir());
    assert!(!passed, "{output}");
    assert!(output.contains("does not match its checksum"), "{output}");
    server.restart();
    let mut client = server.client().await;
    let status = client
        .get_payment(pb::GetPaymentRequest {
            name: payment.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
    assert_eq!(crate::common::reason(&status), "STORE_CORRUPT");
}

/// Damage to the database file's structure is found at start, by SQLite's
/// quick check, and the server does not serve from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_file_is_refused_at_start() {
    let (server, _) = stopped_with_a_payment().await;
    let database = server.data_dir().join("payvisor.db");
    let mut bytes = std::fs::read(&database).unwrap();
    let page_size = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    assert!(bytes.len() >= 2 * page_size, "at least two pages");
    // The type byte of page 2's b-tree header: no such page type.
    bytes[page_size] = 0xff;
    std::fs::write(&database, &bytes).unwrap();
    let stderr = refused_on(server.data_dir());
    assert!(stderr.contains("damaged"), "{stderr}");
    let (passed, output) = store_check(server.data_dir());
    assert!(!passed, "{output}");
}
