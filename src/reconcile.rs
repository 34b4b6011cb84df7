//! Reconciliation: payvisor's record against a bank's settlement report for
//! a period, and payvisor's ledger against its payments. Run by `payvisor
//! reconcile` and periodically inside the server; every mismatch is reported
//! with the payment involved.
//!
//! For the period `[from, to)`:
//! - **The bank's report against itself**: its entries must sum to the
//!   totals it states, per currency and kind.
//! - **Bank → payvisor**: every payment and refund the bank settled must be
//!   processed (or succeeded) in payvisor, for the same amount and currency.
//! - **payvisor → bank**: every payment payvisor processed and every refund
//!   it saw succeed in the period (from its event feed) must be in the
//!   bank's report, looked up in a window wider by
//!   [`limits::RECONCILE_EDGE_SLACK`] on each side (the bank settles a
//!   moment before payvisor hears of it, so an item near an edge may fall
//!   on either side).
//! - **Outbox against acknowledgements**: every message to the bank decided
//!   in the period was acknowledged by it, unless the payment no longer
//!   waits there (the bank's outcome arrived, or it moved on).
//! - **Ledger against payments**: every account with activity in the
//!   period passes the audit (`crate::audit`).
//!
//! Boundary: with one bank configured every payment went to it; once
//! payments route across banks, the payvisor side is filtered by the bank
//! recorded on each payment.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::Serialize;

use crate::audit::audit_account;
use crate::connectors::http::{HttpBankConnector, Settlement, SettlementEntry};
use crate::domain::events::Change;
use crate::domain::incidents::{Incidents, Owed, Period};
use crate::domain::payment::{PaymentState, RefundState};
use crate::domain::{parse_payment_name, AccountId, Timestamp};
use crate::limits;
use crate::metrics::Counter;
use crate::shutdown::Shutdown;
use crate::store::schema::{load_incidents, save_incidents};
use crate::store::{schema, Store, StoreError};

/// One disagreement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// `report_inconsistent`, `missing_in_payvisor`, `state_differs`,
    /// `amount_differs`, `missing_at_bank` or `ledger_off`.
    pub kind: &'static str,
    /// The payment (or refund, `…/refunds/{id}`), or the account.
    pub subject: String,
    pub detail: String,
}

/// The outcome of one reconciliation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub bank: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub bank_entries: usize,
    pub payvisor_items: usize,
    pub accounts_audited: usize,
    /// All of them are counted here; at most
    /// [`limits::RECONCILE_MISMATCHES_LISTED_MAX`] are listed.
    pub mismatch_count: usize,
    pub mismatches: Vec<Mismatch>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.mismatch_count == 0
    }

    fn add(&mut self, kind: &'static str, subject: String, detail: String) {
        self.mismatch_count += 1;
        if self.mismatches.len() < limits::RECONCILE_MISMATCHES_LISTED_MAX {
            self.mismatches.push(Mismatch {
                kind,
                subject,
                detail,
            });
        }
    }
}

/// What payvisor says it settled, by key (`payment` or `payment/refunds/id`).
struct Settled {
    currency: String,
    minor_units: i64,
}

fn key(entry: &SettlementEntry) -> String {
    match &entry.refund_id {
        Some(refund) => format!("{}/refunds/{refund}", entry.payment_id),
        None => entry.payment_id.clone(),
    }
}

/// Reconciles `[from, to)`. `period` is the bank's report for it, `wide`
/// its report for the period widened by the edge slack.
pub async fn reconcile(
    store: &dyn Store,
    bank: &str,
    from: Timestamp,
    to: Timestamp,
    period: &Settlement,
    wide: &Settlement,
) -> Result<Report, StoreError> {
    let mut report = Report {
        bank: bank.to_owned(),
        from_ms: from.unix_millis(),
        to_ms: to.unix_millis(),
        bank_entries: period.entries.len(),
        ..Report::default()
    };
    check_totals(bank, period, &mut report);
    let mut accounts = BTreeSet::new();
    match_bank_entries(store, bank, period, &mut report, &mut accounts).await?;
    let settled = settled_by_payvisor(store, from, to, &mut accounts).await?;
    match_payvisor_settlements(store, bank, from, to, settled, wide, &mut report).await?;
    report_unacknowledged(store, bank, from, to, &mut report).await?;
    // The ledger against the payments, for every account involved.
    for account in &accounts {
        let audit = audit_account(store, account).await?;
        for problem in audit.problems {
            report.add("ledger_off", format!("accounts/{account}"), problem);
        }
    }
    report.accounts_audited = accounts.len();
    Ok(report)
}

/// The report against itself: its entries sum to its stated totals.
fn check_totals(bank: &str, period: &Settlement, report: &mut Report) {
    let mut sums: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for entry in &period.entries {
        let sum = sums.entry(entry.currency_code.as_str()).or_default();
        if entry.refund_id.is_some() {
            sum.1 = sum.1.saturating_add(entry.minor_units);
        } else {
            sum.0 = sum.0.saturating_add(entry.minor_units);
        }
    }
    for total in &period.totals {
        let (payments, refunds) = sums
            .get(total.currency_code.as_str())
            .copied()
            .unwrap_or_default();
        if (payments, refunds) != (total.payments_minor_units, total.refunds_minor_units) {
            report.add(
                "report_inconsistent",
                format!("{bank} totals {}", total.currency_code),
                format!(
                    "the report states payments {} and refunds {}; its entries sum to {payments} and {refunds}",
                    total.payments_minor_units, total.refunds_minor_units
                ),
            );
        }
    }
}

/// Bank → payvisor: each settled entry exists in payvisor, at this bank, in
/// a settled state, with the same amount. The accounts seen are audited.
async fn match_bank_entries(
    store: &dyn Store,
    bank: &str,
    period: &Settlement,
    report: &mut Report,
    accounts: &mut BTreeSet<AccountId>,
) -> Result<(), StoreError> {
    for entry in &period.entries {
        let subject = key(entry);
        let Ok(name) = parse_payment_name(&entry.payment_id) else {
            report.add(
                "missing_in_payvisor",
                subject,
                "not a payvisor payment name".into(),
            );
            continue;
        };
        accounts.insert(name.account.clone());
        let Some(payment) = schema::load_payment(store, &name).await? else {
            report.add(
                "missing_in_payvisor",
                subject,
                "payvisor has no such payment".into(),
            );
            continue;
        };
        let payment = payment.value;
        // Sent to another bank: this bank should not have settled it.
        if let Some(at) = payment.routes.last().map(|route| route.bank.as_str()) {
            if at != bank {
                report.add(
                    "routed_elsewhere",
                    subject,
                    format!("{bank} settled it; payvisor sent it to {at}"),
                );
                continue;
            }
        }
        let (state_ok, amount, state) = match &entry.refund_id {
            None => (
                matches!(
                    payment.state,
                    PaymentState::Processed
                        | PaymentState::PartiallyRefunded
                        | PaymentState::Refunded
                ),
                Some(payment.amount),
                payment.state.as_str().to_owned(),
            ),
            Some(refund_id) => match payment.refunds.iter().find(|r| &r.id == refund_id) {
                None => {
                    report.add(
                        "missing_in_payvisor",
                        subject,
                        "payvisor has no such refund".into(),
                    );
                    continue;
                }
                Some(refund) => (
                    refund.state == RefundState::Succeeded,
                    Some(refund.amount),
                    format!("refund {}", refund.state.as_str()),
                ),
            },
        };
        if !state_ok {
            report.add(
                "state_differs",
                subject.clone(),
                format!("the bank settled it; payvisor has it {state}"),
            );
        }
        if let Some(amount) = amount {
            if amount.currency().code() != entry.currency_code
                || amount.minor_units() != entry.minor_units
            {
                report.add(
                    "amount_differs",
                    subject,
                    format!(
                        "the bank settled {} {}; payvisor has {} {}",
                        entry.minor_units,
                        entry.currency_code,
                        amount.minor_units(),
                        amount.currency().code()
                    ),
                );
            }
        }
    }
    Ok(())
}

/// payvisor → bank, first half: what the event feed says payvisor settled
/// in the period (read from a little before it, for events near the edge).
async fn settled_by_payvisor(
    store: &dyn Store,
    from: Timestamp,
    to: Timestamp,
    accounts: &mut BTreeSet<AccountId>,
) -> Result<BTreeMap<String, Settled>, StoreError> {
    let mut settled: BTreeMap<String, Settled> = BTreeMap::new();
    let slack = limits::RECONCILE_EDGE_SLACK.as_millis() as i64;
    let mut position = Some(schema::FeedPosition::before(from.plus_millis(-slack)));
    'feed: loop {
        let records =
            schema::feed_after(store, position.as_ref(), limits::EVENT_REPLAY_PAGE).await?;
        for record in &records {
            position = Some(schema::FeedPosition::after(record));
            for event in &record.events {
                if event.at >= to.plus_millis(slack) {
                    break 'feed;
                }
                if event.at < from || event.at >= to {
                    continue;
                }
                accounts.insert(event.payment.account.clone());
                let (subject, amount) = match &event.change {
                    Change::Payment {
                        to: PaymentState::Processed,
                        ..
                    } => (event.payment.to_string(), event.amount),
                    Change::Refund {
                        refund_id,
                        amount,
                        state: RefundState::Succeeded,
                        ..
                    } => (format!("{}/refunds/{refund_id}", event.payment), *amount),
                    _ => continue,
                };
                settled.insert(
                    subject,
                    Settled {
                        currency: amount.currency().code().to_owned(),
                        minor_units: amount.minor_units(),
                    },
                );
            }
        }
        if records.len() < limits::EVENT_REPLAY_PAGE {
            break;
        }
    }
    Ok(settled)
}

/// payvisor → bank, second half: each of payvisor's settlements at this
/// bank is in the bank's report (widened at the edges), for the same amount.
async fn match_payvisor_settlements(
    store: &dyn Store,
    bank: &str,
    from: Timestamp,
    to: Timestamp,
    settled: BTreeMap<String, Settled>,
    wide: &Settlement,
    report: &mut Report,
) -> Result<(), StoreError> {
    let at_bank: HashMap<String, &SettlementEntry> = wide
        .entries
        .iter()
        .map(|entry| (key(entry), entry))
        .collect();
    // Only what was sent to this bank (payments recorded before routing
    // existed have no route: they went to the only bank there was).
    let mut at_this_bank = BTreeMap::new();
    for (subject, ours) in settled {
        let name = subject.split("/refunds/").next().unwrap_or(&subject);
        let Ok(name) = parse_payment_name(name) else {
            continue;
        };
        let routed = schema::load_payment(store, &name)
            .await?
            .and_then(|payment| payment.value.routes.last().map(|route| route.bank.clone()));
        if routed.is_none_or(|routed| routed == bank) {
            at_this_bank.insert(subject, ours);
        }
    }
    report.payvisor_items = at_this_bank.len();
    for (subject, ours) in &at_this_bank {
        match at_bank.get(subject) {
            None => report.add(
                "missing_at_bank",
                subject.clone(),
                format!(
                    "payvisor settled {} {}; the bank's report has no such entry",
                    ours.minor_units, ours.currency
                ),
            ),
            Some(entry)
                if entry.minor_units != ours.minor_units
                    || entry.currency_code != ours.currency =>
            {
                // Reported from the bank's side above when inside the period.
                if entry.settled_at_ms < from.unix_millis()
                    || entry.settled_at_ms >= to.unix_millis()
                {
                    report.add(
                        "amount_differs",
                        subject.clone(),
                        format!(
                            "payvisor settled {} {}; the bank {} {}",
                            ours.minor_units, ours.currency, entry.minor_units, entry.currency_code
                        ),
                    );
                }
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The outbox against the bank's acknowledgements: a message decided in the
/// period, never acknowledged, whose payment (or refund) still waits at this
/// bank. (One the bank's outcome answered, or that left the bank, needs
/// nothing more.)
async fn report_unacknowledged(
    store: &dyn Store,
    bank: &str,
    from: Timestamp,
    to: Timestamp,
    report: &mut Report,
) -> Result<(), StoreError> {
    for record in
        schema::unacknowledged_before(store, to, limits::RECONCILE_UNACKNOWLEDGED_PER_SHARD).await?
    {
        if record.bank != bank || record.created_at < from {
            continue;
        }
        let Some(payment) = schema::load_payment(store, &record.payment).await? else {
            continue;
        };
        let payment = payment.value;
        let waiting = payment.current_bank().is_none_or(|at| at == bank)
            && match &record.refund_id {
                None => payment.state == PaymentState::Sent,
                Some(refund_id) => payment
                    .refunds
                    .iter()
                    .any(|refund| &refund.id == refund_id && refund.state == RefundState::Pending),
            };
        if waiting {
            let subject = match &record.refund_id {
                Some(refund_id) => format!("{}/refunds/{refund_id}", record.payment),
                None => record.payment.to_string(),
            };
            report.add(
                "unacknowledged",
                subject,
                format!(
                    "message {} to {bank} decided at {} ms was never acknowledged",
                    record.seq,
                    record.created_at.unix_millis()
                ),
            );
        }
    }
    Ok(())
}

/// Fetches the bank's reports for `[from, to)` (and the widened window) and
/// reconciles.
pub async fn run(
    store: &dyn Store,
    bank: &HttpBankConnector,
    from: Timestamp,
    to: Timestamp,
) -> Result<Report, String> {
    let slack = limits::RECONCILE_EDGE_SLACK.as_millis() as i64;
    let period = bank
        .settlement(from.unix_millis(), to.unix_millis())
        .await
        .map_err(|error| format!("settlement report of {}: {error}", bank.name()))?;
    let wide = bank
        .settlement(from.unix_millis() - slack, to.unix_millis() + slack)
        .await
        .map_err(|error| format!("settlement report of {}: {error}", bank.name()))?;
    reconcile(store, bank.name(), from, to, &period, &wide)
        .await
        .map_err(|error| error.to_string())
}

/// Reconciles each period of `every` with the bank, once it is `lag` old
/// (outcomes have reached payvisor, through callbacks or the watchdog's
/// status queries, and the bank has settled); a failed run is
/// tried again on the next tick for the same period. Mismatches are logged
/// one by one and counted in `found`; each period that disagrees is paged
/// once (retried until the pager takes it), run again on later ticks, and
/// its page resolved when a run finds it clean.
pub struct Periodic {
    /// Where payvisor's side is read.
    pub store: Arc<dyn Store>,
    /// The bank whose settlement reports are reconciled.
    pub bank: Arc<HttpBankConnector>,
    /// Says where the periods end.
    pub clock: Arc<dyn crate::clock::Clock>,
    /// Where a period with mismatches is paged.
    pub sink: Arc<dyn crate::alerts::AlertSink>,
    /// This node, as the source of its pages.
    pub node_name: String,
    /// Length of a period, and time between two runs.
    pub every: std::time::Duration,
    /// Age a period must reach before it is reconciled.
    pub lag: std::time::Duration,
    /// Runs timed (the metric).
    pub sweeps: crate::metrics::SweepMetrics,
    /// Mismatches found since start (the metric).
    pub found: Counter,
    /// In a cluster, only the node that owns shard 0 reconciles (one run
    /// per period cluster-wide); the others skip their turn.
    pub ownership: crate::cluster::AccountOwnership,
    /// Turns taken: which open periods run again this turn.
    pub turns: std::sync::atomic::AtomicUsize,
}

impl Periodic {
    /// Runs until `shutdown` fires; a run in progress finishes first.
    pub async fn run(self, shutdown: Shutdown) {
        let (every_ms, lag_ms) = (self.every.as_millis() as i64, self.lag.as_millis() as i64);
        let mut from = self.clock.now().plus_millis(-lag_ms - every_ms);
        loop {
            tokio::select! {
                biased;
                () = shutdown.signalled() => return,
                () = tokio::time::sleep(self.every) => {}
            }
            let to = self.clock.now().plus_millis(-lag_ms);
            if !self.ownership.leads() {
                from = to.max(from); // the leader reconciles this period
                continue;
            }
            let started = std::time::Instant::now();
            let reconciled = self.tick(from, to).await;
            self.sweeps.observe("reconciliation", reconciled, started);
            if reconciled {
                from = to.max(from);
            }
        }
    }

    /// One turn: reconciles the new period `[from, to)` (when it is not
    /// empty), runs open periods again, records what it found, then
    /// delivers the pages owed. Whether the new period was reconciled and
    /// recorded (if not, the next turn tries it again).
    async fn tick(&self, from: Timestamp, to: Timestamp) -> bool {
        let bank = self.bank.name();
        let (mut incidents, mut version) = match load_incidents(self.store.as_ref(), bank).await {
            Ok(Some(stored)) => (stored.value, Some(stored.version)),
            Ok(None) => (Incidents::default(), None),
            Err(error) => {
                tracing::warn!(%error, "reconciliation incidents not read; retrying next tick");
                return false;
            }
        };
        let before = incidents.clone();
        let new = Period { from, to };
        let mut found = 0;
        let mut reconciled = to <= from;
        if to > from {
            match run(self.store.as_ref(), &self.bank, from, to).await {
                Ok(report) => {
                    if report.is_clean() {
                        tracing::info!(
                            bank,
                            from = report.from_ms,
                            to = report.to_ms,
                            entries = report.bank_entries,
                            "reconciliation clean"
                        );
                    }
                    for mismatch in &report.mismatches {
                        tracing::error!(bank, kind = mismatch.kind, subject = %mismatch.subject, detail = %mismatch.detail, "reconciliation mismatch");
                    }
                    found = report.mismatch_count as u64;
                    incidents.record_run(new, found, &lines(&report));
                    reconciled = true;
                }
                Err(error) => tracing::warn!(%error, "reconciliation failed; retrying next tick"),
            }
        }
        // Periods that disagreed, again: a fix (or a late outcome) shows as
        // a clean run, which resolves the period's page.
        let turn = (self.turns).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for period in incidents.to_recheck(limits::RECONCILE_RECHECKS_PER_TURN, turn) {
            if period == new {
                continue;
            }
            match run(self.store.as_ref(), &self.bank, period.from, period.to).await {
                Ok(report) => {
                    if report.is_clean() {
                        tracing::info!(
                            bank,
                            from = report.from_ms,
                            to = report.to_ms,
                            "a period that disagreed agrees again"
                        );
                    }
                    incidents.record_run(period, report.mismatch_count as u64, &lines(&report));
                }
                // The others still run: a period whose report the bank no
                // longer serves holds up no other.
                Err(error) => {
                    tracing::warn!(%error, from = period.from.unix_millis(), to = period.to.unix_millis(), "reconciliation of an open period failed; retrying on a later turn");
                }
            }
        }
        // Recorded before any page goes out (the record is the outbox).
        if incidents != before {
            match save_incidents(self.store.as_ref(), bank, version, &incidents).await {
                Ok(saved) => version = Some(saved),
                Err(error) => {
                    tracing::warn!(%error, "reconciliation incidents not recorded; retrying next tick");
                    return false;
                }
            }
        }
        self.found.inc_by(found);
        let mut delivered = false;
        for owed in incidents.owed() {
            match self.sink.send(&self.page(&owed)).await {
                Ok(()) => {
                    incidents.delivered(&owed);
                    delivered = true;
                }
                // Refused for good (a bad routing key): sending it again
                // cannot help; logged loudly, as the watchdog does.
                Err(error @ crate::alerts::AlertError::Rejected(_)) => {
                    tracing::error!(%error, "reconciliation page refused by the pager; not sent again");
                    incidents.delivered(&owed);
                    delivered = true;
                }
                Err(error) => {
                    tracing::error!(%error, "reconciliation page not delivered; retrying next tick");
                }
            }
        }
        if delivered {
            // Not recorded: the pages go again next tick, under the same
            // keys (the pager deduplicates).
            if let Err(error) = save_incidents(self.store.as_ref(), bank, version, &incidents).await
            {
                tracing::warn!(%error, "delivered reconciliation pages not recorded");
            }
        }
        reconciled
    }

    /// The page of what `owed` is: a period's trigger or resolve, keyed by
    /// bank and period.
    fn page(&self, owed: &Owed) -> crate::alerts::Page {
        use crate::alerts::{Page, PageAction, PageClass, Severity};
        use crate::domain::time::rfc3339;
        let bank = self.bank.name();
        let (action, period) = match owed {
            Owed::Trigger(open) => (PageAction::Trigger, open.period),
            Owed::Resolve(period) => (PageAction::Resolve, *period),
        };
        let span = format!("{}..{}", rfc3339(period.from), rfc3339(period.to));
        let mut custom_details = BTreeMap::from([
            ("bank".to_owned(), bank.to_owned()),
            ("period_from".to_owned(), rfc3339(period.from)),
            ("period_to".to_owned(), rfc3339(period.to)),
        ]);
        let summary = match owed {
            Owed::Trigger(open) => {
                custom_details.insert("mismatches".to_owned(), open.mismatches.to_string());
                for (n, line) in open.lines.iter().enumerate() {
                    custom_details.insert(format!("mismatch_{n:02}"), line.clone());
                }
                format!(
                    "{} reconciliation mismatches with {bank} for {span}",
                    open.mismatches
                )
            }
            Owed::Resolve(_) => format!("reconciliation with {bank} for {span} agrees again"),
        };
        Page {
            action,
            class: PageClass::ReconciliationMismatch,
            dedup_key: format!(
                "payvisor/reconcile/{bank}/{}-{}",
                period.from.unix_millis(),
                period.to.unix_millis()
            ),
            summary,
            source: self.node_name.clone(),
            severity: Severity::Error,
            timestamp: self.clock.now(),
            custom_details,
            links: Vec::new(),
            client_url: None,
        }
    }
}

/// A report's first mismatches, one line each, for a page.
fn lines(report: &Report) -> Vec<String> {
    (report.mismatches.iter())
        .take(crate::domain::incidents::LINES_KEPT)
        .map(|m| format!("{} {} {}", m.kind, m.subject, m.detail))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::payment::{self, NewPayment, Policy};
    use crate::domain::{AccountId, Currency, Money, PaymentId};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{Condition, WriteOp};

    fn empty_report() -> Settlement {
        Settlement {
            bank: "bank-a".into(),
            entries: Vec::new(),
            totals: Vec::new(),
        }
    }

    /// A message to the bank never acknowledged while its payment still
    /// waits there is reported; acknowledged, it is not.
    #[tokio::test]
    async fn an_unacknowledged_message_to_the_bank_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let at = Timestamp::from_unix_millis(1_800_000_000_000);
        let new = NewPayment {
            account: AccountId::new("acme").unwrap(),
            id: PaymentId::new("p1").unwrap(),
            amount: Money::from_minor(Currency::from_code("USD").unwrap(), 500),
            metadata: BTreeMap::new(),
            payer_id: None,
            payer_country: None,
        };
        let mut sent = payment::create(new, None, at, &Policy::default())
            .unwrap()
            .payment;
        sent.route_to("bank-a", "cheapest", at);
        let mut record = schema::OutboxRecord {
            payment: sent.name(),
            seq: 1,
            bank: "bank-a".into(),
            refund_id: None,
            currency: "USD".into(),
            minor_units: 500,
            created_at: at,
            acknowledged_at: None,
        };
        store
            .transact(vec![
                WriteOp::Put {
                    item: schema::payment_item(&sent, 1),
                    condition: Condition::NotExists,
                },
                WriteOp::Put {
                    item: schema::outbox_item(&record),
                    condition: Condition::NotExists,
                },
            ])
            .await
            .unwrap();
        let (from, to) = (at.plus_millis(-1_000), at.plus_millis(1_000));
        let report = reconcile(&store, "bank-a", from, to, &empty_report(), &empty_report())
            .await
            .unwrap();
        let kinds: Vec<_> = report.mismatches.iter().map(|m| m.kind).collect();
        assert_eq!(kinds, ["unacknowledged"], "{report:?}");
        assert_eq!(report.mismatches[0].subject, "accounts/acme/payments/p1");
        // Another bank's reconciliation does not see it.
        let other = reconcile(&store, "bank-b", from, to, &empty_report(), &empty_report())
            .await
            .unwrap();
        assert!(other.is_clean(), "{other:?}");

        record.acknowledged_at = Some(at);
        store
            .transact(vec![WriteOp::Put {
                item: schema::outbox_item(&record),
                condition: Condition::VersionIs(1),
            }])
            .await
            .unwrap();
        let report = reconcile(&store, "bank-a", from, to, &empty_report(), &empty_report())
            .await
            .unwrap();
        assert!(report.is_clean(), "{report:?}");
    }
}
