//! payvisor with a bank over the network: the real binary sends payments to
//! a `payvisor-bank-sim` process over HTTP (`docs/bank-protocol.md`) and
//! takes its signed callbacks, which the bank drops, duplicates and reorders
//! on purpose. payvisor is `kill -9`ed while payments are being dispatched
//! and restarted. Judged by the bank's own record: every payment reached the
//! bank under exactly one key, and payvisor's books match.

use std::process::Command;
use std::time::Duration;

use crate::common::bank_sim::*;
use crate::common::*;
use payvisor::grpc::pb::payment::State;

const SECRET: &str = BANK_SIM_SECRET;
const PAGER_KEY: &str = "R0UT1NGKEYRECONC1LE0000000000000";

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
    let pager = crate::common::pager::PagerReceiver::start(PAGER_KEY).await;
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
        "--pagerduty-url",
        &pager.url(),
        "--pagerduty-routing-key",
        PAGER_KEY,
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
    let reconcile_over = |server: &Server, period: &[&str]| {
        Command::new(BINARY)
            .args(["reconcile", "--bank-name", "bank-a"])
            .args(period)
            .arg("--data-dir")
            .arg(server.data_dir())
            .args(["--bank-url", &bank_url])
            .output()
            .unwrap()
    };
    let reconcile = |server: &Server| reconcile_over(server, &["--period", "1h"]);
    // A period given as RFC 3339 times: the last hour holds everything,
    // a day of 2020 nothing.
    let now = payvisor::domain::Timestamp::from_unix_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    );
    // Written at +01:00: read as UTC they would miss the hour's payments.
    let at_plus_one = |at| payvisor::domain::time::rfc3339_at_offset(at, 3_600);
    let since = at_plus_one(now.plus_millis(-3_600_000));
    let until = at_plus_one(now.plus_millis(60_000));
    assert!(since.ends_with("+01:00"), "{since}");
    let bounded = reconcile_over(&server, &["--since", &since, "--until", &until]);
    let text = String::from_utf8_lossy(&bounded.stdout);
    assert!(bounded.status.success(), "{text}");
    assert!(text.contains("bank entries 36"), "{text}");
    let past = [
        "--since",
        "2020-01-01T00:00:00+01:00",
        "--until",
        "2020-01-02T00:00:00+01:00",
    ];
    let text = String::from_utf8_lossy(&reconcile_over(&server, &past).stdout).into_owned();
    assert!(
        text.contains("bank entries 0") && text.contains("clean"),
        "{text}"
    );
    let refused = reconcile_over(&server, &["--since", "yesterday"]);
    assert!(!refused.status.success());
    let told = String::from_utf8_lossy(&refused.stderr);
    assert!(
        told.contains("--since") && told.contains("RFC 3339"),
        "{told}"
    );
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
    // the server's own periodic run, which pages it (through a pager outage).
    pager.fail_next(2, 503);
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
    let paged = || -> std::collections::BTreeSet<String> {
        (pager.events().iter())
            .filter(|event| event["event_action"] == "trigger")
            .filter(|event| event["payload"]["class"] == "reconciliation_mismatch")
            .map(|event| event["dedup_key"].as_str().unwrap().to_owned())
            .collect()
    };
    let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
    while paged().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            pager.events()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first = paged().into_iter().next().unwrap();
    assert!(first.starts_with("payvisor/reconcile/bank-a/"), "{first}");
    let trigger = &pager.triggers_for(&first)[0];
    let details = &trigger["payload"]["custom_details"];
    assert!(
        details["mismatch_00"]
            .as_str()
            .unwrap()
            .starts_with("amount_differs"),
        "{trigger}"
    );
    assert!(
        details["period_from"].as_str().unwrap().ends_with('Z'),
        "{trigger}"
    );
    assert!(
        trigger["links"][0]["href"]
            .as_str()
            .unwrap()
            .ends_with("/reconciliation-mismatch.md"),
        "{trigger}"
    );

    // The bank's reports agree again: each period paged is run again,
    // found clean, and its page resolved.
    drop(_bank);
    let _bank = BankSim::start(bank_dir.path(), bank_port, &[]);
    let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE * 2;
    loop {
        let unresolved: Vec<String> = paged()
            .into_iter()
            .filter(|key| pager.resolves_for(key).is_empty())
            .collect();
        if unresolved.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never resolved: {unresolved:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The pager's two refusals were retried (refused requests are not
    // recorded as events)...
    assert!(
        pager.requests() as usize >= pager.events().len() + 2,
        "{} requests, {} events",
        pager.requests(),
        pager.events().len()
    );
    // ...and each period paged once all the same.
    for key in paged() {
        assert_eq!(pager.triggers_for(&key).len(), 1, "{key}");
    }
    assert!(pager.rejections().is_empty(), "{:?}", pager.rejections());
}

fn eur(minor_units: i64) -> payvisor::grpc::pb::Money {
    payvisor::grpc::pb::Money {
        currency_code: "EUR".into(),
        minor_units,
    }
}

/// Three banks: `bank-a` is the cheapest and claims USD and EUR, but its
/// simulator takes only USD (a EUR payment is refused for good and must
/// move on); `bank-b` takes USD, `bank-c` EUR. `bank-a` then goes down mid-run:
/// its breaker opens and new payments go to `bank-b`; payments caught at
/// `bank-a` wait until it is known not to have them. The banks' own records
/// are the judge: every payment at exactly one bank.
#[tokio::test(flavor = "multi_thread")]
async fn routing_fails_over_without_ever_sending_a_payment_to_two_banks() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let start = |n: usize, name: &str, currencies: &str| {
        BankSim::named(
            name,
            dirs[n].path(),
            ports[n],
            &["--seed", "3", "--currencies", currencies],
        )
    };
    let banks = [
        start(0, "bank-a", "USD"),
        start(1, "bank-b", "USD"),
        start(2, "bank-c", "EUR"),
    ];
    let config = tempfile::tempdir().unwrap();
    let banks_file = config.path().join("banks.json");
    let entry = |n: usize, name: &str, cost: u32, currencies: &[&str]| {
        serde_json::json!({"name": name, "url": format!("http://127.0.0.1:{}", ports[n]), "secret": SECRET,
            "priority": n, "cost_bps": cost, "currencies": currencies})
    };
    std::fs::write(
        &banks_file,
        serde_json::json!({"banks": [
            entry(0, "bank-a", 10, &["USD", "EUR"]),
            entry(1, "bank-b", 20, &["USD"]),
            entry(2, "bank-c", 30, &["EUR"]),
        ]})
        .to_string(),
    )
    .unwrap();
    let callback_listen = format!("127.0.0.1:{}", free_port());
    let mut server = Server::start(&[
        "--banks",
        banks_file.to_str().unwrap(),
        "--bank-callback-listen",
        &callback_listen,
        "--stall-deadline",
        "sent=2s",
        "--redrive-max",
        "10",
    ]);
    let mut client = server.client().await;

    // USD to the cheapest bank; EUR refused there for good, then to bank-c.
    let usd_first = processed_payment(&mut client, "route", "usd-1", 1_000).await;
    assert_eq!(usd_first.routes.len(), 1);
    assert_eq!(usd_first.routes[0].bank, "bank-a");
    assert!(
        usd_first.routes[0].why.contains("cheapest healthy"),
        "{:?}",
        usd_first.routes
    );
    // (In an account of its own: the balance helper sums one currency.)
    let mut request = create_request("route-eur", "eur-1", 2_000);
    request.payment.as_mut().unwrap().amount = Some(eur(2_000));
    let eur_payment = client.create_payment(request).await.unwrap().into_inner();
    let eur_payment = wait_for(&mut client, &eur_payment.name, |p| {
        state(p) == State::Processed
    })
    .await;
    let hops: Vec<_> = eur_payment
        .routes
        .iter()
        .map(|route| (route.bank.as_str(), route.left.starts_with("rejected")))
        .collect();
    assert_eq!(
        hops,
        [("bank-a", true), ("bank-c", false)],
        "{:?}",
        eur_payment.routes
    );

    // bank-a goes down: its breaker opens, new payments go to bank-b.
    set_outage(&banks[0], true);
    let mut during = Vec::new();
    for n in 0..12 {
        let payment = created_payment(&mut client, "route", &format!("down-{n}"), 3_000 + n).await;
        during.push(payment.name);
    }
    let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
    loop {
        let payment = created_payment(
            &mut client,
            "route",
            &format!("probe-{}", during.len()),
            4_000,
        )
        .await;
        let name = payment.name.clone();
        during.push(name.clone());
        let routed = client
            .get_payment(payvisor::grpc::pb::GetPaymentRequest { name })
            .await
            .unwrap()
            .into_inner();
        if routed
            .routes
            .last()
            .is_some_and(|route| route.bank == "bank-b")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never failed over to bank-b"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // bank-a comes back: what was caught there is found not to be there
    // (its status query says unknown) and routed again; all settle.
    set_outage(&banks[0], false);
    for name in &during {
        wait_for(&mut client, name, |p| state(p) == State::Processed).await;
    }

    // The judge: every payment is at exactly one bank.
    let total: u64 = banks
        .iter()
        .map(|bank| bank.stats()["distinct_payments"].as_u64().unwrap())
        .sum();
    assert_eq!(
        total as usize,
        during.len() + 2,
        "a payment reached two banks"
    );
    for name in &during {
        let payment = client
            .get_payment(payvisor::grpc::pb::GetPaymentRequest { name: name.clone() })
            .await
            .unwrap()
            .into_inner();
        let at: Vec<_> = payment
            .routes
            .iter()
            .filter(|r| r.left.is_empty())
            .collect();
        assert_eq!(at.len(), 1, "{:?}", payment.routes);
        assert!(
            payment
                .routes
                .iter()
                .all(|r| r.left.is_empty() || r.left == "unknown"),
            "{:?}",
            payment.routes
        );
    }
    assert_balances_match_payments(&mut client, "route").await;
    server.verify_ledger(&["route", "route-eur"]);
    // Each bank reconciles clean: its report, payvisor's payments routed to
    // it, every message to it acknowledged (or answered), the ledger.
    for (n, name) in ["bank-a", "bank-b", "bank-c"].into_iter().enumerate() {
        let output = Command::new(BINARY)
            .args([
                "reconcile",
                "--bank-name",
                name,
                "--period",
                "1h",
                "--data-dir",
            ])
            .arg(server.data_dir())
            .args(["--bank-url", &format!("http://127.0.0.1:{}", ports[n])])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{name}: {text}");
        assert!(text.contains("clean"), "{name}: {text}");
    }
}
