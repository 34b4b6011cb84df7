//! How the command line shows payments, accounts, audits and errors.

use serde_json::{json, Value};
use tonic_types::StatusExt;

use crate::audit::AuditReport;
use crate::domain::{AccountId, Currency, Money};
use crate::grpc::json::to_json;
use crate::grpc::pb;
use crate::out;

/// `message` on one line in the canonical JSON mapping (`--json`).
fn print_json<M: prost::Message + prost::Name>(message: &M) {
    match to_json(message) {
        Ok(value) => out!("{value}"),
        Err(error) => eprintln!("error: {error}"),
    }
}

/// `12.50 USD` for a known currency, the raw minor units otherwise.
fn money(money: Option<&pb::Money>) -> String {
    match money {
        None => "-".into(),
        Some(money) => match Currency::from_code(&money.currency_code) {
            Some(currency) => Money::from_minor(currency, money.minor_units).to_string(),
            None => format!("{} (minor) {}", money.minor_units, money.currency_code),
        },
    }
}

fn state_name(state: i32) -> String {
    pb::payment::State::try_from(state)
        .map(|state| state.as_str_name().trim_start_matches("STATE_").to_owned())
        .unwrap_or_else(|_| format!("UNKNOWN({state})"))
}

fn refund_state_name(state: i32) -> String {
    pb::refund::State::try_from(state)
        .map(|state| state.as_str_name().trim_start_matches("STATE_").to_owned())
        .unwrap_or_else(|_| format!("UNKNOWN({state})"))
}

/// Times are shown in UTC rather than the local zone (`--utc`).
static IN_UTC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Shows every time after this in UTC (`--utc`), not the local zone.
pub fn show_times_in_utc(utc: bool) {
    IN_UTC.store(utc, std::sync::atomic::Ordering::Relaxed);
}

/// A time as a person reads it: RFC 3339 to the millisecond, in this
/// machine's zone (`TZ`, else `/etc/localtime`) with its offset, or in
/// UTC with `--utc`.
pub fn when(unix_millis: i64) -> String {
    use chrono::{Offset, TimeZone};
    let at = crate::domain::Timestamp::from_unix_millis(unix_millis);
    if IN_UTC.load(std::sync::atomic::Ordering::Relaxed) {
        return crate::domain::time::rfc3339(at);
    }
    let offset = chrono::Local
        .timestamp_millis_opt(unix_millis)
        .single()
        .map_or(0, |local| i64::from(local.offset().fix().local_minus_utc()));
    crate::domain::time::rfc3339_at_offset(at, offset)
}

/// A time in a table, for a person ([`when`]).
fn time(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp
        .map(|t| when(t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000)))
        .unwrap_or_default()
}

pub fn payment(as_json: bool, payment: &pb::Payment, request_id: Option<&str>) {
    if as_json {
        // The payment alone on stdout, as the API returns it; the key to
        // retry with goes to stderr.
        print_json(payment);
        if let Some(request_id) = request_id {
            eprintln!("request {request_id}  (reuse with --request-id to retry safely)");
        }
        return;
    }
    out!("payment   {}", payment.name);
    out!("state     {}", state_name(payment.state));
    out!("amount    {}", money(payment.amount.as_ref()));
    out!("refunded  {}", money(payment.refunded_amount.as_ref()));
    out!("fee       {}", money(payment.fee.as_ref()));
    out!("created   {}", time(payment.create_time.as_ref()));
    out!("updated   {}", time(payment.update_time.as_ref()));
    if !payment.failure_reason.is_empty() {
        out!("reason    {}", payment.failure_reason);
    }
    if let Some(approval) = &payment.approval {
        let action = |action: i32| {
            pb::approval::Action::try_from(action)
                .map(|action| {
                    action
                        .as_str_name()
                        .trim_start_matches("ACTION_")
                        .to_lowercase()
                })
                .unwrap_or_else(|_| format!("unknown({action})"))
        };
        out!(
            "approval  {} (rules version {:?})",
            action(approval.action),
            approval.rules_version
        );
        for fired in &approval.fired_rules {
            out!(
                "  rule    {} → {}: {}",
                fired.rule,
                action(fired.action),
                fired.detail
            );
        }
    }
    if let Some(review) = &payment.review {
        out!(
            "review    {} at {}: {}",
            review.verdict,
            time(review.time.as_ref()),
            review.reason
        );
    }
    for route in &payment.routes {
        let left = match route.left.as_str() {
            "" => String::new(),
            left => format!("; left: {left}"),
        };
        out!(
            "route     {} at {}: {}{left}",
            route.bank,
            time(route.time.as_ref()),
            route.why
        );
    }
    for (key, value) in &payment.metadata {
        out!("metadata  {key}={value}");
    }
    for refund in &payment.refunds {
        out!(
            "refund    {:<4} {:<10} {:>16}  {}",
            refund.refund_id,
            refund_state_name(refund.state),
            money(refund.amount.as_ref()),
            refund.reason
        );
    }
    if let Some(watch) = &payment.watch {
        out!(
            "watch     stage {} since {}, {} re-drives, {}",
            watch.stage,
            time(watch.since_time.as_ref()),
            watch.redrives,
            match &watch.due_time {
                Some(due) => format!("next look {}", time(Some(due))),
                None => "paged: waiting for a person".to_owned(),
            }
        );
    }
    if let Some(request_id) = request_id {
        out!("request   {request_id}  (reuse with --request-id to retry safely)");
    }
}

pub fn stalled_list(as_json: bool, payments: &[pb::Payment], next_page_token: &str) {
    if as_json {
        let page = pb::ListStalledPaymentsResponse {
            payments: payments.to_vec(),
            next_page_token: next_page_token.to_owned(),
        };
        print_json(&page);
        return;
    }
    out!(
        "{:<48} {:<12} {:>18} {:<25} {:>8} {:<6}",
        "PAYMENT",
        "STATE",
        "AMOUNT",
        "STALLED SINCE",
        "REDRIVES",
        "PAGED"
    );
    for payment in payments {
        let watch = payment.watch.clone().unwrap_or_default();
        out!(
            "{:<48} {:<12} {:>18} {:<25} {:>8} {:<6}",
            payment.name,
            state_name(payment.state),
            money(payment.amount.as_ref()),
            time(watch.since_time.as_ref()),
            watch.redrives,
            if watch.paged { "yes" } else { "no" }
        );
    }
    out!("({} stalled)", payments.len());
    if !next_page_token.is_empty() {
        out!("more: --page-token {next_page_token}   (or --all)");
    }
}

pub fn payment_list(as_json: bool, payments: &[pb::Payment], next_page_token: &str) {
    if as_json {
        let page = pb::ListPaymentsResponse {
            payments: payments.to_vec(),
            next_page_token: next_page_token.to_owned(),
        };
        print_json(&page);
        return;
    }
    out!(
        "{:<48} {:<29} {:<20} {:>18} {:>18}",
        "PAYMENT",
        "CREATED",
        "STATE",
        "AMOUNT",
        "REFUNDED"
    );
    for payment in payments {
        out!(
            "{:<48} {:<29} {:<20} {:>18} {:>18}",
            payment.name,
            time(payment.create_time.as_ref()),
            state_name(payment.state),
            money(payment.amount.as_ref()),
            money(payment.refunded_amount.as_ref())
        );
    }
    out!("({} payments)", payments.len());
    if !next_page_token.is_empty() {
        out!("more: --page-token {next_page_token}   (or --all)");
    }
}

pub fn review_list(as_json: bool, payments: &[pb::Payment], next_page_token: &str) {
    if as_json {
        return payment_list(true, payments, next_page_token);
    }
    out!(
        "{:<48} {:>18} {:<25} RULES",
        "PAYMENT",
        "AMOUNT",
        "IN REVIEW SINCE"
    );
    for payment in payments {
        let watch = payment.watch.clone().unwrap_or_default();
        let rules = payment
            .approval
            .as_ref()
            .map(|approval| {
                approval
                    .fired_rules
                    .iter()
                    .map(|fired| format!("{} ({})", fired.rule, fired.detail))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        out!(
            "{:<48} {:>18} {:<25} {}",
            payment.name,
            money(payment.amount.as_ref()),
            time(watch.since_time.as_ref()),
            rules
        );
    }
    out!("({} in review)", payments.len());
    if !next_page_token.is_empty() {
        out!("more: --page-token {next_page_token}   (or --all)");
    }
}

/// Audit records: one line each, oldest first.
pub fn audit_records(as_json: bool, records: &[pb::AuditRecord], next_page_token: &str) {
    if as_json {
        let page = pb::ListAuditRecordsResponse {
            records: records.to_vec(),
            next_page_token: next_page_token.to_owned(),
        };
        print_json(&page);
        return;
    }
    out!(
        "{:<25} {:<16} {:<55} {:<20} CAUSES",
        "TIME",
        "BY",
        "PAYMENT",
        "STATE"
    );
    for record in records {
        out!(
            "{:<25} {:<16} {:<55} {:<20} {}",
            time(record.time.as_ref()),
            record.actor,
            record.payment,
            state_name(record.state),
            match record.event.rsplit_once("/events/") {
                Some((_, seq)) => format!("{} (event {seq})", record.causes.join(", ")),
                None => record.causes.join(", "),
            }
        );
    }
}

/// One event of a live stream (`events watch`): a line, or a JSON object.
pub fn event_line(as_json: bool, event: &pb::PaymentEvent) {
    if as_json {
        print_json(event);
        return;
    }
    let by = match event.actor.as_str() {
        "" => String::new(),
        actor => format!("  by {actor}"),
    };
    out!(
        "{}  {:<26} {:<60} {}{by}",
        time(event.time.as_ref()),
        event.r#type,
        event.name,
        money(event.amount.as_ref())
    );
}

/// One page of the live stream (`alerts watch`): a line, or a JSON object.
pub fn alert_line(as_json: bool, alert: &pb::Alert) {
    let action = pb::alert::Action::try_from(alert.action)
        .map(|action| {
            action
                .as_str_name()
                .trim_start_matches("ACTION_")
                .to_lowercase()
        })
        .unwrap_or_default();
    if as_json {
        print_json(alert);
        return;
    }
    if alert.missed > 0 {
        out!(
            "(missed {} pages: see payvisor payments stalled)",
            alert.missed
        );
    }
    out!(
        "{}  {:<8} {:<8} {:<60} {}  {}",
        time(alert.time.as_ref()),
        action,
        alert.severity,
        alert.payment,
        alert.stage,
        alert.summary
    );
}

pub fn events(as_json: bool, events: &[pb::PaymentEvent]) {
    let delivery_state = |state: i32| {
        pb::event_delivery::State::try_from(state)
            .map(|state| {
                state
                    .as_str_name()
                    .trim_start_matches("STATE_")
                    .to_lowercase()
            })
            .unwrap_or_default()
    };
    if as_json {
        let page = pb::ListPaymentEventsResponse {
            events: events.to_vec(),
            next_page_token: String::new(),
        };
        print_json(&page);
        return;
    }
    out!(
        "{:<60} {:<26} {:<25} {:<16} DELIVERIES",
        "EVENT",
        "TYPE",
        "TIME",
        "BY"
    );
    for event in events {
        let deliveries = event
            .deliveries
            .iter()
            .map(|d| {
                let mut text = format!("{}={}", d.endpoint, delivery_state(d.state));
                if d.attempts > 0 {
                    text.push_str(&format!(" ({} failed: {})", d.attempts, d.last_error));
                }
                text
            })
            .collect::<Vec<_>>()
            .join(", ");
        let by = if event.actor.is_empty() {
            "-"
        } else {
            &event.actor
        };
        out!(
            "{:<60} {:<26} {:<25} {:<16} {}",
            event.name,
            event.r#type,
            time(event.time.as_ref()),
            by,
            deliveries
        );
    }
}

pub fn account(as_json: bool, account: &pb::Account) {
    if as_json {
        print_json(account);
        return;
    }
    out!("account {}", account.name);
    out!(
        "{:<8} {:>20} {:>20} {:>20}",
        "CURRENCY",
        "PENDING",
        "AVAILABLE",
        "REFUNDING"
    );
    for balance in &account.balances {
        out!(
            "{:<8} {:>20} {:>20} {:>20}",
            balance.currency_code,
            money(balance.pending.as_ref()),
            money(balance.available.as_ref()),
            money(balance.refunding.as_ref())
        );
    }
}

pub fn cluster_status(as_json: bool, status: &pb::ClusterStatus) {
    if as_json {
        print_json(status);
        return;
    }
    if !status.clustered {
        out!("not a cluster: this server owns every account (run with --cluster on DynamoDB to share them)");
        return;
    }
    let free = status
        .shards
        .iter()
        .filter(|shard| shard.owner.is_empty())
        .count();
    out!(
        "{} nodes, {} shards ({free} without an owner), as seen by node {}",
        status.nodes.len(),
        status.shard_count,
        status.node
    );
    out!(
        "{:<20} {:<24} {:>16} {:>14} {:>7}  STATE",
        "NODE",
        "ADDRESS",
        "STARTED",
        "HEARTBEAT AGE",
        "SHARDS"
    );
    for node in &status.nodes {
        let state = match (node.alive, node.leaving) {
            (_, true) => "leaving",
            (true, false) => "alive",
            (false, false) => "dead",
        };
        let age = if node.heartbeat_age_ms < 0 {
            "-".to_owned()
        } else {
            format!("{} ms", node.heartbeat_age_ms)
        };
        out!(
            "{:<20} {:<24} {:>16} {:>14} {:>7}  {state}",
            node.id,
            node.address,
            time(node.start_time.as_ref()),
            age,
            node.shards_owned
        );
    }
    out!();
    out!("{:>5}  {:<20} {:>6}", "SHARD", "OWNER", "EPOCH");
    for shard in &status.shards {
        let owner = if shard.owner.is_empty() {
            "-"
        } else {
            &shard.owner
        };
        out!("{:>5}  {:<20} {:>6}", shard.shard, owner, shard.epoch);
    }
}

pub fn audit(as_json: bool, reports: &[(AccountId, AuditReport)]) {
    if as_json {
        let value: Vec<Value> = reports
            .iter()
            .map(|(account, report)| {
                json!({
                    "account": format!("accounts/{account}"),
                    "payments": report.payments,
                    "movements": report.movements,
                    "clean": report.is_clean(),
                    "problems": report.problems,
                })
            })
            .collect();
        out!("{}", json!({ "accounts": value }));
        return;
    }
    for (account, report) in reports {
        let verdict = if report.is_clean() {
            "balanced"
        } else {
            "PROBLEMS"
        };
        out!(
            "accounts/{account}: {verdict} ({} payments, {} movements)",
            report.payments,
            report.movements
        );
        for problem in &report.problems {
            out!("  - {problem}");
        }
    }
}

/// Turns a gRPC error into a message for a person: what went wrong, the
/// machine-readable reason, and each bad field.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    let details = status.get_error_details();
    let mut text = status.message().to_owned();
    let reason = details
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default();
    text.push_str(&format!("\n  code: {:?}", status.code()));
    if !reason.is_empty() {
        text.push_str(&format!("  reason: {reason}"));
    }
    if let Some(bad_request) = details.bad_request() {
        for violation in &bad_request.field_violations {
            text.push_str(&format!(
                "\n  - {}: {}",
                violation.field, violation.description
            ));
        }
    }
    if status.code() == tonic::Code::Unavailable {
        text.push_str("\n  (safe to retry with the same --request-id)");
    }
    anyhow::anyhow!(text)
}

pub fn reconciliation(as_json: bool, report: &crate::reconcile::Report) {
    if as_json {
        out!(
            "{}",
            serde_json::to_string(report).expect("a report serialises")
        );
        return;
    }
    out!(
        "bank {}  period {}..{}  bank entries {}  payvisor items {}  accounts audited {}",
        report.bank,
        when(report.from_ms),
        when(report.to_ms),
        report.bank_entries,
        report.payvisor_items,
        report.accounts_audited
    );
    for mismatch in &report.mismatches {
        out!(
            "MISMATCH {:<20} {}  {}",
            mismatch.kind,
            mismatch.subject,
            mismatch.detail
        );
    }
    if report.is_clean() {
        out!("clean");
    } else {
        out!("{} mismatches", report.mismatch_count);
    }
}
