//! `payvisor-bench` keeps working: a few seconds against a real server, in
//! both modes. Only its own verification is asserted (nothing lost or
//! doubled, every payment settled, the books match) and that it reports
//! what it measures; its timings and costs are not, on purpose.

use std::process::Command;

use crate::common::*;

fn bench(server: &Server, args: &[&str]) -> serde_json::Value {
    let output = Command::new(workspace_binary("payvisor-bench"))
        .args(["--server", &server.address])
        .args(["--server-pid", &server.pid().to_string()])
        .args(args)
        .output()
        .expect("run payvisor-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().expect("a summary line");
    serde_json::from_str(last).expect("the last line is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_open_and_closed_loop_and_verifies_its_payments() {
    let server = Server::start(&[]);
    for args in [
        &[
            "--duration",
            "2",
            "--rate",
            "100",
            "--accounts",
            "7",
            "--echo-duration",
            "1",
        ][..],
        &[
            "--duration",
            "2",
            "--rate",
            "max",
            "--concurrency",
            "8",
            "--accounts",
            "1",
            "--echo-duration",
            "0",
        ],
    ] {
        let summary = bench(&server, args);
        for key in [
            "payments_per_sec",
            "create_p50_ms",
            "create_p99_ms",
            "e2e_p50_ms",
            "e2e_p99_ms",
            "echo_rps",
            "ratio_to_echo",
            "first_fifth_per_sec",
            "last_fifth_per_sec",
            "server_cpu_us_per_payment",
            "server_write_bytes_per_payment",
            "client_cpu_us_per_request",
        ] {
            assert!(summary[key].is_number(), "{key} missing: {summary}");
        }
        assert!(summary["acknowledged"].as_u64().unwrap() > 0, "{summary}");
        // Every payment costs the server some CPU. (Its bytes on disk are
        // only reported: on a tmpfs data directory they are 0.)
        assert!(
            summary["server_cpu_us_per_payment"].as_f64().unwrap() > 0.0,
            "{summary}"
        );
        for zero in [
            "errors",
            "lost",
            "duplicated",
            "unsettled",
            "ledger_mismatches",
        ] {
            assert_eq!(summary[zero], 0, "{zero}: {summary}");
        }
    }
}
