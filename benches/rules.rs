//! What approval costs per payment: `RuleSet::evaluate`, which the account
//! actor runs on every create, on one core.
//!
//! `cargo bench --bench rules` measures, as the median of 5 runs of 200,000
//! evaluations each:
//! - `approve-all`: no rules (the floor: building the `Evaluation`).
//! - `realistic, empty log`: 20 rules (6 amount thresholds, 4 velocity
//!   rules, 8 block lists, one of 10,000 payer ids, 2 account limits) for an
//!   account with no history.
//! - `realistic, full log`: the same rules against a full velocity log (its
//!   cap of 128 entries, all inside the daily windows).
//!
//! The candidate passes every rule (the common case: a rule that fires
//! formats its detail, which costs more); asserted, as a correctness guard.
//! Timings are reported, never asserted. Under `cargo test` (no `--bench`
//! argument) it runs a tiny smoke version so it keeps working.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use payvisor::domain::rules::{Action, Candidate, RuleSet, VelocityLog};
use payvisor::domain::{AccountId, Currency, Money, Timestamp};

/// "Now" for the whole run (2026-01-01T00:00:00Z).
const NOW_MS: i64 = 1_767_225_600_000;
const DAY_MS: i64 = 24 * 60 * 60 * 1000;
/// Payments recorded into the full log: more than its cap, so it is full.
const LOG_PAYMENTS: i64 = 200;

fn main() {
    let bench = std::env::args().any(|arg| arg == "--bench");
    let (calls, runs) = if bench { (200_000, 5) } else { (1_000, 1) };

    let realistic = RuleSet::parse(&realistic_document()).expect("the benchmark's rules parse");
    assert_eq!(realistic.len(), 20);
    let usd = Currency::from_code("USD").expect("USD");
    let eur = Currency::from_code("EUR").expect("EUR");

    let mut full = VelocityLog::default();
    for n in 0..LOG_PAYMENTS {
        // Spread over the last 20 hours, alternating currencies.
        let at = Timestamp::from_unix_millis(NOW_MS - 20 * 60 * 60 * 1000 + n * 6 * 60 * 1000);
        let currency = if n % 2 == 0 { usd } else { eur };
        full.record(
            at,
            Money::from_minor(currency, 2_500),
            realistic.keep_millis(),
        );
    }

    let account = AccountId::new("acme").expect("account id");
    let metadata: BTreeMap<String, String> = [
        ("mcc", "5411"),
        ("ip", "203.0.113.7"),
        ("email_domain", "example.com"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect();
    let candidate = Candidate {
        account: &account,
        amount: Money::from_minor(usd, 2_500),
        payer_id: Some("payer-not-listed-12345"),
        payer_country: Some("US"),
        metadata: &metadata,
    };

    println!(
        "evaluate(): median of {runs} runs x {calls} calls; full log holds {} entries",
        full.len()
    );
    let empty = VelocityLog::default();
    for (name, rules, log) in [
        ("approve-all", &RuleSet::approve_all(), &empty),
        ("realistic, empty log", &realistic, &empty),
        ("realistic, full log", &realistic, &full),
    ] {
        let now = Timestamp::from_unix_millis(NOW_MS);
        let evaluation = rules.evaluate(&candidate, log, now);
        assert_eq!(evaluation.action, Action::Approve, "{name}: {evaluation:?}");
        let mut per_call_ns: Vec<f64> = (0..runs)
            .map(|_| {
                let started = Instant::now();
                for _ in 0..calls {
                    black_box(rules.evaluate(black_box(&candidate), black_box(log), now));
                }
                started.elapsed().as_nanos() as f64 / calls as f64
            })
            .collect();
        per_call_ns.sort_by(f64::total_cmp);
        let median = per_call_ns[per_call_ns.len() / 2];
        println!(
            "{name:<22} {median:>8.1} ns/evaluation {:>14.0} evaluations/s",
            1e9 / median
        );
    }
}

/// About 20 rules of the kinds an operator writes, with one large list.
fn realistic_document() -> String {
    let payer_ids: Vec<String> = (0..10_000).map(|n| format!("\"payer-{n:08}\"")).collect();
    let mule_payers: Vec<String> = (0..500).map(|n| format!("\"mule-{n:05}\"")).collect();
    let accounts: Vec<String> = (0..50).map(|n| format!("\"fraud-{n}\"")).collect();
    let ips: Vec<String> = (0..1_000)
        .map(|n| format!("\"198.51.{}.{}\"", n / 256, n % 256))
        .collect();
    let domains: Vec<String> = (0..200).map(|n| format!("\"spam{n}.example\"")).collect();
    let day_s = DAY_MS / 1000;
    format!(
        r#"{{
  "version": "bench-1",
  "rules": [
    {{"name": "large-usd", "kind": "amount_above", "currency": "USD", "minor_units": 1000000, "action": "review"}},
    {{"name": "huge-usd", "kind": "amount_above", "currency": "USD", "minor_units": 10000000, "action": "decline"}},
    {{"name": "large-eur", "kind": "amount_above", "currency": "EUR", "minor_units": 1000000, "action": "review"}},
    {{"name": "large-gbp", "kind": "amount_above", "currency": "GBP", "minor_units": 800000, "action": "review"}},
    {{"name": "large-jpy", "kind": "amount_above", "currency": "JPY", "minor_units": 1500000, "action": "review"}},
    {{"name": "large-chf", "kind": "amount_above", "currency": "CHF", "minor_units": 900000, "action": "review"}},
    {{"name": "burst", "kind": "velocity", "window_seconds": 3600, "max_count": 50, "action": "review"}},
    {{"name": "daily-count", "kind": "velocity", "window_seconds": {day_s}, "max_count": 1000, "action": "review"}},
    {{"name": "daily-usd", "kind": "velocity", "window_seconds": {day_s}, "currency": "USD", "max_minor_units": 50000000, "action": "decline"}},
    {{"name": "weekly-eur", "kind": "velocity", "window_seconds": {week_s}, "currency": "EUR", "max_minor_units": 200000000, "action": "review"}},
    {{"name": "bad-payers", "kind": "block_list", "field": "payer_id", "values": [{payer_ids}], "action": "decline"}},
    {{"name": "mule-payers", "kind": "block_list", "field": "payer_id", "values": [{mule_payers}], "action": "review"}},
    {{"name": "sanctioned", "kind": "block_list", "field": "payer_country", "values": ["KP", "IR", "SY", "CU"], "action": "decline"}},
    {{"name": "embargo-review", "kind": "block_list", "field": "payer_country", "values": ["RU", "BY"], "action": "review"}},
    {{"name": "bad-accounts", "kind": "block_list", "field": "account", "values": [{accounts}], "action": "decline"}},
    {{"name": "risky-mcc", "kind": "block_list", "field": "metadata.mcc", "values": ["7995", "5967", "6051", "4829"], "action": "review"}},
    {{"name": "bad-ips", "kind": "block_list", "field": "metadata.ip", "values": [{ips}], "action": "decline"}},
    {{"name": "spam-domains", "kind": "block_list", "field": "metadata.email_domain", "values": [{domains}], "action": "review"}},
    {{"name": "acme-cap", "kind": "account_limit", "account": "acme", "currency": "USD", "max_minor_units": 500000, "action": "decline"}},
    {{"name": "acme-daily", "kind": "account_limit", "account": "acme", "currency": "USD", "max_minor_units": 10000000, "window_seconds": {day_s}, "action": "review"}}
  ]
}}"#,
        week_s = 7 * day_s,
        payer_ids = payer_ids.join(","),
        mule_payers = mule_payers.join(","),
        accounts = accounts.join(","),
        ips = ips.join(","),
        domains = domains.join(","),
    )
}
