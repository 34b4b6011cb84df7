//! What a platform team and an on-call engineer read from outside: health
//! that tells the truth, and `/metrics` that passes `promtool check
//! metrics` and counts what happened.

use crate::common::bank_sim::{free_port, http_get};
use crate::common::*;
use payvisor::grpc::pb;
use tonic::Code;
use tonic_types::StatusExt;

/// The body of a `/metrics` scrape.
pub(crate) fn scrape(listen: &str) -> String {
    let answer = http_get(listen, "/metrics");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The value of the sample written exactly as `series` (name and labels).
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().expect("a number"))
}

/// `promtool check metrics` on `page`: the test command installs promtool
/// and says where (`PROMTOOL`); elsewhere the check is skipped, except under
/// `CI=true`.
pub(crate) fn promtool_check_metrics(page: &str) {
    use std::io::Write;
    let Some(promtool) = std::env::var_os("PROMTOOL") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "PROMTOOL is not set under CI=true; run the tests through `bash tests/run.sh`"
        );
        eprintln!("promtool check metrics: skipped (no PROMTOOL; `bash tests/run.sh` installs it)");
        return;
    };
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool check metrics:\n{said}\n{page}"
    );
    // promtool's lint findings (naming, units) exit 0 but are still findings.
    assert!(said.trim().is_empty(), "promtool check metrics:\n{said}");
}

/// Every gRPC call is counted and timed by service, method and code,
/// refusals at the edge and unknown paths included; store calls by
/// operation and outcome; the process's own figures; and the page passes
/// promtool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_call_by_method_and_code_and_pass_promtool() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let server = Server::start(&["--metrics-listen", &metrics]);
    let mut client = server.client().await;
    processed_payment(&mut client, "acme", "m-1", 1_000).await;
    let missing = client
        .get_payment(pb::GetPaymentRequest {
            name: "accounts/acme/payments/nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let invalid = client
        .create_payment(create_request("acme", "", 1_000))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    // A path nobody serves is counted, under `other`.
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let unknown = grpc
        .unary(
            tonic::Request::new(()),
            "/payvisor.v1.PaymentService/NoSuchMethod".parse().unwrap(),
            tonic_prost::ProstCodec::<(), ()>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unimplemented);

    let page = scrape(&metrics);
    let calls = |method: &str, code: &str| {
        sample(
            &page,
            &format!(
                "payvisor_grpc_server_handled_total{{grpc_service=\"payvisor.v1.PaymentService\",grpc_method=\"{method}\",grpc_code=\"{code}\"}}"
            ),
        )
    };
    assert_eq!(calls("CreatePayment", "OK"), Some(1.0), "{page}");
    assert_eq!(
        calls("CreatePayment", "INVALID_ARGUMENT"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(calls("GetPayment", "NOT_FOUND"), Some(1.0), "{page}");
    assert!(calls("GetPayment", "OK").unwrap_or(0.0) >= 1.0, "{page}");
    assert_eq!(
        sample(
            &page,
            "payvisor_grpc_server_handled_total{grpc_service=\"other\",grpc_method=\"other\",grpc_code=\"UNIMPLEMENTED\"}"
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            "payvisor_grpc_server_handling_seconds_count{grpc_service=\"payvisor.v1.PaymentService\",grpc_method=\"CreatePayment\",grpc_code=\"OK\"}"
        ),
        Some(1.0),
        "{page}"
    );
    assert!(
        page.contains("payvisor_grpc_server_handling_seconds_bucket{le=\"0.005\",grpc_service=\"payvisor.v1.PaymentService\",grpc_method=\"CreatePayment\",grpc_code=\"OK\"}")
            || page.contains("payvisor_grpc_server_handling_seconds_bucket{grpc_service=\"payvisor.v1.PaymentService\",grpc_method=\"CreatePayment\",grpc_code=\"OK\",le=\"0.005\"}"),
        "{page}"
    );
    // The payment was written, so the store's writes were timed, all fine.
    let writes = sample(
        &page,
        "payvisor_store_call_seconds_count{operation=\"transact\",outcome=\"ok\"}",
    );
    assert!(writes.unwrap_or(0.0) >= 2.0, "{page}");
    // The outcomes alerts fire on are there from the start, at zero.
    let failed_calls: Vec<&str> = page
        .lines()
        .filter(|line| line.starts_with("payvisor_store_call_seconds_count{"))
        .filter(|line| !line.contains("outcome=\"ok\"") && !line.ends_with(" 0"))
        .collect();
    assert!(
        failed_calls.is_empty(),
        "store calls failed: {failed_calls:?}"
    );
    assert_eq!(
        sample(
            &page,
            "payvisor_store_call_seconds_count{operation=\"get\",outcome=\"corrupt\"}"
        ),
        Some(0.0),
        "{page}"
    );
    // The process, as every client library names it.
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
        "process_start_time_seconds",
    ] {
        assert!(sample(&page, name).unwrap_or(0.0) > 0.0, "{name}: {page}");
    }
    assert_eq!(
        sample(
            &page,
            &format!(
                "payvisor_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0),
        "{page}"
    );
    promtool_check_metrics(&page);
}

/// Asks `probe` until it answers `Ok` (every 50 ms, for at most 30 s);
/// fails with `what` and the last `Err` it gave.
async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match probe() {
            Ok(value) => return value,
            Err(seen) => assert!(
                std::time::Instant::now() < deadline,
                "never seen: {what}\n{seen}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Scrapes until `ready` holds of the page (bounded), and returns it.
async fn scrape_until(listen: &str, what: &str, ready: impl Fn(&str) -> bool) -> String {
    eventually(what, || {
        let page = scrape(listen);
        if ready(&page) {
            Ok(page)
        } else {
            Err(page)
        }
    })
    .await
}

/// The boundaries beyond the store, on the page: bank calls by bank and
/// outcome, each breaker's state (it opens when the bank goes away),
/// webhook deliveries and the pending backlog with its age, pages by class,
/// background runs timed, and the account actors' queues. The page passes
/// promtool, and every series the alert rules and the dashboard query is on
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banks_breakers_webhooks_pages_sweeps_and_queues_are_measured() {
    let dir = tempfile::tempdir().unwrap();
    let (bank, flags) = crate::common::bank_sim::bank_and_unreachable_webhook(dir.path());
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--metrics-listen", &metrics];
    args.extend(flags.iter().map(String::as_str));
    let server = Server::start(&args);
    let mut client = server.client().await;
    processed_payment(&mut client, "acme", "edge-1", 1_000).await;

    let bank_calls = |page: &str, operation: &str, outcome: &str| {
        sample(
            page,
            &format!("payvisor_bank_call_seconds_count{{bank=\"bank-a\",operation=\"{operation}\",outcome=\"{outcome}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let page = scrape_until(
        &metrics,
        "a failed webhook delivery, a watchdog sweep",
        |page| {
            sample(
                page,
                "payvisor_webhook_delivery_seconds_count{endpoint=\"shop\",outcome=\"failed\"}",
            )
            .unwrap_or(0.0)
                >= 1.0
                && sample(
                    page,
                    "payvisor_sweep_seconds_count{sweep=\"watchdog\",outcome=\"ok\"}",
                )
                .unwrap_or(0.0)
                    >= 1.0
                && sample(
                    page,
                    "payvisor_sweep_seconds_count{sweep=\"webhooks\",outcome=\"ok\"}",
                )
                .unwrap_or(0.0)
                    >= 1.0
        },
    )
    .await;
    assert_eq!(bank_calls(&page, "submit_payment", "ok"), 1.0, "{page}");
    assert_eq!(
        bank_calls(&page, "submit_payment", "unavailable"),
        0.0,
        "{page}"
    );
    for (state, value) in [("closed", 1.0), ("open", 0.0), ("half_open", 0.0)] {
        let series = format!("payvisor_bank_breaker_state{{bank=\"bank-a\",state=\"{state}\"}}");
        assert_eq!(sample(&page, &series), Some(value), "{series}\n{page}");
    }
    // The payment's events wait for the endpoint: created, approved, sent,
    // processed, in one record or several, at least one pending.
    let backlog = sample(&page, "payvisor_webhook_backlog").expect("the backlog gauge");
    assert!(backlog >= 1.0, "{page}");
    assert!(
        sample(&page, "payvisor_webhook_overdue_seconds").is_some(),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            "payvisor_sweep_seconds_count{sweep=\"recovery_startup\",outcome=\"ok\"}"
        ),
        Some(1.0),
        "{page}"
    );
    // Pages by class exist at zero before any is sent (alerts see the first).
    assert_eq!(
        sample(
            &page,
            "payvisor_pages_total{class=\"stalled_payment\",action=\"trigger\",outcome=\"failed\"}"
        ),
        Some(0.0),
        "{page}"
    );
    for gauge in [
        "payvisor_account_mailbox_messages",
        "payvisor_account_mailbox_messages_max",
        "payvisor_account_inbox_commands",
        "payvisor_account_inbox_commands_max",
    ] {
        assert!(sample(&page, gauge).is_some(), "{gauge}: {page}");
    }
    promtool_check_metrics(&page);
    every_series_named_in_deploy_is_on_the_page(&page);

    // The bank goes away: its calls fail, and its breaker opens.
    drop(bank);
    for n in 0..6 {
        created_payment(&mut client, "acme", &format!("edge-down-{n}"), 1_000).await;
    }
    // A call whose retries ran into the opened breaker ends `circuit_open`.
    // Its outcome is counted when its last attempt ends, which can be just
    // after the breaker opened: both are waited for.
    let failed = |page: &str| {
        bank_calls(page, "submit_payment", "unavailable")
            + bank_calls(page, "submit_payment", "circuit_open")
    };
    let page = scrape_until(
        &metrics,
        "bank-a's breaker open, and a failed submission counted",
        |page| {
            sample(
                page,
                "payvisor_bank_breaker_state{bank=\"bank-a\",state=\"open\"}",
            ) == Some(1.0)
                && failed(page) >= 1.0
        },
    )
    .await;
    assert_eq!(
        sample(
            &page,
            "payvisor_bank_breaker_state{bank=\"bank-a\",state=\"closed\"}"
        ),
        Some(0.0),
        "{page}"
    );
}

/// The metric names the alert rules and the dashboard query (identifiers
/// followed by `{`, `[` or `)`, or starting a query), each of which a live
/// page must have, so that a renamed metric cannot leave an alert that
/// never fires. `up` is Prometheus's own; the `payvisor_cluster_*` family
/// is on cluster members' pages (tests/it/cluster_nodes.rs reads it).
fn every_series_named_in_deploy_is_on_the_page(page: &str) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/observability");
    let mut named = std::collections::BTreeSet::new();
    for file in ["alerts.yaml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let mut word = String::new();
        for c in text.chars() {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                word.push(c);
                continue;
            }
            let family = ["payvisor_", "process_"]
                .iter()
                .any(|prefix| word.starts_with(prefix));
            if family && !word.starts_with("payvisor_cluster_") {
                named.insert(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    assert!(named.len() >= 10, "{named:?}");
    for name in &named {
        // A histogram is queried by its series (_bucket, _count, _sum).
        let on_page = page.lines().any(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        });
        assert!(
            on_page,
            "deploy/observability queries {name}, which /metrics does not have:\n{page}"
        );
    }
}

/// `--health-listen`: health alone, in plaintext (for probes that cannot
/// speak TLS), answering readiness and liveness like the main port, and
/// nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_health_port_answers_health_and_nothing_else() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start(&["--health-listen", &listen]);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{listen}"))
        .unwrap()
        .connect()
        .await
        .expect("the health port listens");
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "payvisor.v1.PaymentService", "liveness"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    // No payment service there.
    let mut payments = pb::payment_service_client::PaymentServiceClient::new(channel);
    let refused = payments
        .get_payment(pb::GetPaymentRequest {
            name: "accounts/acme/payments/p".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented);
    drop(server);
}

/// Waits for the next status on each readiness stream; each must be `status`.
async fn readiness_becomes(
    streams: [&mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>; 2],
    status: i32,
) {
    for statuses in streams {
        let next = tokio::time::timeout(PROGRESS_DEADLINE, statuses.message())
            .await
            .unwrap_or_else(|_| panic!("no status {status} within the deadline"));
        assert_eq!(next.unwrap().unwrap().status, status);
    }
}

/// Readiness follows the store: `NOT_SERVING` while every store call fails,
/// `SERVING` again once it answers; liveness stays `SERVING` throughout.
/// The watchdog, which cannot sweep meanwhile, pages that it cannot (to the
/// log sink here), and resolves the page when it sweeps again.
/// The faults are the DynamoDB test server's (the server carries no test
/// tools), so this runs in the DynamoDB phase of tests/run.sh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_not_serving_while_the_store_does_not_answer_and_serving_when_it_does() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let test = "health_says_not_serving_while_the_store_does_not_answer";
    if std::env::var("PAYVISOR_TEST_STORE").as_deref() != Ok("dynamodb") {
        eprintln!("{test}: skipped here; tests/run.sh runs it in its DynamoDB phase (PAYVISOR_TEST_STORE=dynamodb)");
        return;
    }
    assert!(dynamodb::available(test));
    let server = Server::start_logged(&[
        "--dynamodb-attempt-timeout-ms",
        "500",
        "--watchdog-page-after",
        "2s",
    ]);
    let table = server.dynamodb_table().expect("on DynamoDB").to_owned();
    let mut health = HealthClient::new(server.channel().await);
    let watch = |service: &str| {
        let mut health = health.clone();
        let request = HealthCheckRequest {
            service: service.into(),
        };
        async move { health.watch(request).await.unwrap().into_inner() }
    };
    let mut overall = watch("").await;
    let mut payments = watch("payvisor.v1.PaymentService").await;
    let mut liveness = watch("liveness").await;
    let serving = ServingStatus::Serving as i32;
    let not_serving = ServingStatus::NotServing as i32;
    for statuses in [&mut overall, &mut payments, &mut liveness] {
        assert_eq!(statuses.message().await.unwrap().unwrap().status, serving);
    }

    // The first sweep resolves whatever an earlier incarnation paged.
    let resolved = "the watchdog sweeps; its page (if any) resolved";
    server.logged(resolved).await;
    dynamodb::set_faults(&table, serde_json::json!({"seed": 17, "failed": 1.0}));
    let down = tokio::time::Instant::now();
    readiness_becomes([&mut overall, &mut payments], not_serving).await;
    eprintln!(
        "{test}: NOT_SERVING {:?} after the store failed",
        down.elapsed()
    );
    let check = health
        .check(HealthCheckRequest {
            service: "liveness".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        check.into_inner().status,
        serving,
        "liveness while the store fails"
    );
    // A call meanwhile: told to retry, and when, in words of ours (not the
    // SDK's debug text with the store's address).
    let mut client = server.client().await;
    let refused = client
        .create_payment(create_request("acme", "while-down", 100))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(
        refused.message(),
        "the store is not answering for now; retry (a command with the same request_id)"
    );
    assert!(refused.get_error_details().retry_info().is_some());
    server.logged("paged: the watchdog cannot sweep").await;
    assert!(
        server.log().contains("watchdog_failing"),
        "{}",
        server.log()
    );

    dynamodb::set_faults(&table, serde_json::json!({}));
    readiness_becomes([&mut overall, &mut payments], serving).await;
    // Liveness never changed: its stream has nothing new.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(100), liveness.message())
            .await
            .is_err(),
        "liveness changed"
    );
    assert!(server
        .log()
        .contains("the store does not answer: health NOT_SERVING"));
    // After the outage, the watchdog's page is resolved (the log sink
    // writes each resolve).
    let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
    while server.log().matches(resolved).count() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "page never resolved:\n{}",
            server.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Every alert names a runbook that exists, and every runbook says how to
/// confirm, fix and escalate.
#[test]
fn every_alert_has_a_runbook_that_says_how_to_confirm_fix_and_escalate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = std::fs::read_to_string(root.join("deploy/observability/alerts.yaml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .collect();
    let runbooks: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("runbook: "))
        .collect();
    assert!(alerts.len() >= 7, "{alerts:?}");
    assert_eq!(alerts.len(), runbooks.len(), "an alert without a runbook");
    for runbook in runbooks {
        let page = std::fs::read_to_string(root.join(runbook))
            .unwrap_or_else(|error| panic!("{runbook}: {error}"));
        for section in ["## What it means", "## Confirm", "## Fix", "## Escalate"] {
            assert!(page.contains(section), "{runbook} has no {section:?}");
        }
    }
}

/// The log lines of `server` as JSON objects, once `ready` holds of them
/// (bounded wait: a call's line is written when its response ends).
async fn json_log_lines(
    server: &Server,
    ready: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    eventually("the expected log lines", || {
        let log = server.log();
        assert!(
            !log.contains('\u{1b}'),
            "colour codes in a log file:\n{log}"
        );
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|error| panic!("not a JSON line ({error}): {line}"))
            })
            .collect();
        if ready(&lines) {
            Ok(lines)
        } else {
            Err(log)
        }
    })
    .await
}

/// Every call is one log line: method, code, latency, account, payment,
/// request id and trace id, flat beside the message in JSON, the trace the
/// caller's `traceparent` names (or a new one); states read as the API
/// names them; no colour codes when stderr is not a terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_is_one_flat_log_line_with_its_trace_and_no_colour_off_a_terminal() {
    let server = Server::start_logged(&["--log-format", "json"]);
    let mut client = server.client().await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let mut request = tonic::Request::new(create_request("acme", "log-1", 1_000));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-b7ad6b7169203331-01").parse().unwrap(),
    );
    let payment = client.create_payment(request).await.unwrap().into_inner();
    wait_for(&mut client, &payment.name, |p| {
        state(p) == pb::payment::State::Processed
    })
    .await;
    let missing = client
        .get_payment(pb::GetPaymentRequest {
            name: "accounts/acme/payments/nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let calls = |lines: &[serde_json::Value], method: &str| -> Vec<serde_json::Value> {
        lines
            .iter()
            .filter(|line| line["message"] == "rpc" && line["method"] == method)
            .cloned()
            .collect()
    };
    let lines = json_log_lines(&server, |lines| {
        calls(lines, "CreatePayment").len() == 1
            && calls(lines, "GetPayment")
                .iter()
                .any(|line| line["code"] == "NOT_FOUND")
    })
    .await;
    let created = &calls(&lines, "CreatePayment")[0];
    assert_eq!(created["target"], "payvisor::rpc", "{created}");
    assert_eq!(
        created["service"], "payvisor.v1.PaymentService",
        "{created}"
    );
    assert_eq!(created["code"], "OK", "{created}");
    assert_eq!(created["account"], "acme", "{created}");
    assert_eq!(created["payment"], payment.name.as_str(), "{created}");
    assert_eq!(created["request_id"], "log-1", "{created}");
    assert_eq!(created["trace_id"], trace, "{created}");
    assert!(created["latency_ms"].as_f64().unwrap() > 0.0, "{created}");
    assert!(
        created.get("fields").is_none() && created.get("span").is_none(),
        "{created}"
    );
    let refused = calls(&lines, "GetPayment")
        .into_iter()
        .find(|line| line["code"] == "NOT_FOUND")
        .unwrap();
    assert_eq!(
        refused["payment"], "accounts/acme/payments/nope",
        "{refused}"
    );
    let begun = refused["trace_id"].as_str().unwrap();
    assert!(
        begun.len() == 32 && begun.bytes().all(|b| b.is_ascii_hexdigit()) && begun != trace,
        "a call without traceparent gets a trace of its own: {refused}"
    );
    // Payment states as the API names them, wherever a line has one.
    let states: Vec<&str> = lines
        .iter()
        .filter_map(|line| line.get("state")?.as_str())
        .collect();
    assert!(!states.is_empty(), "no line names a state: {lines:?}");
    assert!(
        states.iter().all(|state| state.starts_with("STATE_")),
        "{states:?}"
    );

    // Text lines to a file carry no colour codes either.
    let text = Server::start_logged(&[]);
    let mut client = text.client().await;
    processed_payment(&mut client, "acme", "log-2", 1_000).await;
    let log = eventually("the text line of CreatePayment", || {
        let log = text.log();
        if log.contains("method=\"CreatePayment\"") || log.contains("method=CreatePayment") {
            Ok(log)
        } else {
            Err(log)
        }
    })
    .await;
    assert!(!log.contains('\u{1b}'), "{log}");
}
