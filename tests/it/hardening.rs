//! Regression tests of the defects found by trying payvisor as an attacker
//! and as a clumsy operator would: each failed before its fix.

use std::process::{Command, Stdio};

use payvisor::grpc::pb;

use crate::common::bank_sim::{free_port, set_outage, BankSim, BANK_SIM_SECRET};
use crate::common::{create_request, state, wait_for, Server, BINARY};

/// A second server on a data directory in use exits at once, naming the
/// process that holds it; the first keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_a_data_directory_is_refused_with_the_holders_pid() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let second = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(server.data_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = second.wait_with_output().unwrap();
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
    let server = Server::start(&[
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
