//! The invariants, each named, checked at the step that could break them
//! (on every commit: what a single write must never do, and the ledger of
//! the account it writes; as a request is acknowledged, a bank records a
//! payment, a callback is answered, a page is sent, a webhook arrives),
//! and over the whole store and the banks' books (every few simulated
//! seconds, and at the end for liveness).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use payvisor::domain::ledger::{Balances, Movement};
use payvisor::domain::payment::{Payment, PaymentState};
use payvisor::domain::state::RefundState;
use payvisor::domain::{AccountId, Money};
use payvisor::store::schema::{self, ACCOUNT_SK, PAYMENT_SK_PREFIX};
use payvisor::store::WriteOp;

use crate::bank::SimBank;
use crate::limits;
use crate::node::{PageLog, WebhookLog};
use crate::store::SimStore;
use crate::workload::Acknowledged;

/// A broken invariant: its name and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

/// What the commit audit remembers between writes.
#[derive(Default)]
pub struct Audit {
    /// Per account: the highest owner epoch written, and who wrote each.
    epochs: BTreeMap<String, (u64, BTreeMap<u64, String>)>,
    /// Payments last seen terminal: what they were then.
    terminal: BTreeMap<String, (PaymentState, String)>,
    /// Per account item key: the movements committed, and their fold.
    ledgers: BTreeMap<String, Ledger>,
    /// Per payment: the bank that first recorded it.
    held_by: BTreeMap<String, String>,
    /// Per account item key: its payments as last committed, by name.
    payments: BTreeMap<String, BTreeMap<String, Payment>>,
    pub violations: Vec<Violation>,
}

/// An account's movements as committed, by sequence number, and their
/// fold (`None` when an overwrite calls for folding them again).
#[derive(Default)]
struct Ledger {
    movements: BTreeMap<u64, Movement>,
    folded: Option<Balances>,
}

impl Ledger {
    /// Adds the movements of one commit; folds on from the last fold if
    /// they come after every movement known.
    fn add(&mut self, committed: Vec<(u64, Movement)>) {
        for (sequence, movement) in committed {
            let appended = (self.movements.keys().next_back()).is_none_or(|last| sequence > *last);
            self.folded = match (self.folded.take(), appended) {
                (Some(folded), true) => folded.apply(&movement).ok(),
                _ => None,
            };
            self.movements.insert(sequence, movement);
        }
    }

    fn folded(&mut self) -> Result<Balances, String> {
        if let Some(folded) = &self.folded {
            return Ok(folded.clone());
        }
        let folded = Balances::fold(self.movements.values()).map_err(|error| error.to_string())?;
        self.folded = Some(folded.clone());
        Ok(folded)
    }
}

fn refunds_summary(payment: &Payment) -> String {
    let refunds: Vec<String> = (payment.refunds.iter())
        .map(|refund| format!("{}:{}:{:?}", refund.id, refund.amount, refund.state))
        .collect();
    format!("{} {}", payment.amount, refunds.join(","))
}

/// Refunds that hold money (pending or paid) must not exceed the payment.
fn refunds_within_amount(payment: &Payment) -> Option<Violation> {
    let mut held = Money::zero(payment.amount.currency());
    for refund in &payment.refunds {
        if refund.state != RefundState::Failed {
            held = held.checked_add(refund.amount).ok()?;
        }
    }
    (held.minor_units() > payment.amount.minor_units()).then(|| Violation {
        invariant: "refunds_within_amount",
        detail: format!(
            "{}: refunds hold {held} of {}",
            payment.name(),
            payment.amount
        ),
    })
}

impl Audit {
    /// Checks one committed write by `writer`, each item decoded once:
    /// the ledger of the account it writes, each payment it writes, the
    /// account's owner epoch.
    pub fn commit(&mut self, writer: Option<&str>, ops: &[WriteOp]) {
        let writer = writer.unwrap_or("the table");
        let mut account = None;
        let mut payments = Vec::new();
        let mut movements = Vec::new();
        for op in ops {
            let WriteOp::Put { item, .. } = op else {
                continue;
            };
            if item.key.sk == ACCOUNT_SK {
                if let Ok(book) = schema::decode_account(item) {
                    account = Some((item.key.pk.as_str(), book.value));
                }
            } else if item.key.sk.starts_with(PAYMENT_SK_PREFIX) {
                if let Ok(payment) = schema::decode_payment(item) {
                    payments.push(payment.value);
                }
            } else if let Some(sequence) = schema::movement_sequence(&item.key) {
                match schema::decode_movement(item) {
                    Ok(movement) => movements.push((sequence, movement)),
                    Err(error) => self.violations.push(Violation {
                        invariant: "stored_data_decodes",
                        detail: format!("{:?}: {error}", item.key),
                    }),
                }
            }
        }
        if let Some((name, book)) = &account {
            self.ledger_after(writer, name, book, movements, &payments);
        }
        // (The account item is the last of an account write.)
        for payment in &payments {
            self.payment_written(payment);
        }
        if let Some((name, book)) = &account {
            self.epoch_written(writer, name, book.owner_epoch);
        }
    }

    /// An account written at `epoch`: epochs never go back, and one
    /// writer per epoch.
    fn epoch_written(&mut self, writer: &str, name: &str, epoch: u64) {
        let (highest, writers) = self.epochs.entry(name.to_owned()).or_default();
        if epoch < *highest {
            self.violations.push(Violation {
                invariant: "no_fenced_write_lands",
                detail: format!("{writer} wrote {name} at epoch {epoch} after epoch {highest}"),
            });
        }
        *highest = (*highest).max(epoch);
        match writers.get(&epoch) {
            Some(first) if *first != writer => self.violations.push(Violation {
                invariant: "one_owner_per_epoch",
                detail: format!("{name} written at epoch {epoch} by {first} and by {writer}"),
            }),
            Some(_) => {}
            None => {
                writers.insert(epoch, writer.to_owned());
            }
        }
    }

    /// A payment written: a terminal one never changes, refunds stay
    /// within its amount, and what waits carries its watch.
    fn payment_written(&mut self, payment: &Payment) {
        let name = payment.name().to_string();
        let now = (payment.state, refunds_summary(payment));
        if let Some(before) = self.terminal.get(&name) {
            if *before != now {
                self.violations.push(Violation {
                    invariant: "terminal_payments_never_change",
                    detail: format!("{name}: was {before:?}, written as {now:?}"),
                });
            }
        }
        if payment.state.is_terminal() {
            self.terminal.insert(name, now);
        }
        self.violations.extend(refunds_within_amount(payment));
        self.violations.extend(unwatched(payment));
    }
}

impl Audit {
    /// A bank records a payment it had not seen: no other bank holds it
    /// (a bank that refused it for good records nothing), and the table
    /// holds it, at the amount sent (`stored`: the table's, read now).
    pub fn bank_records(
        &mut self,
        bank: &str,
        name: &str,
        amount: Money,
        stored: Option<&Payment>,
    ) {
        if let Some(first) = self.held_by.get(name).filter(|first| *first != bank) {
            self.violations.push(Violation {
                invariant: "one_bank_per_payment",
                detail: format!("{name} recorded by bank {bank} after bank {first}"),
            });
        }
        self.held_by
            .entry(name.to_owned())
            .or_insert_with(|| bank.to_owned());
        match stored {
            None => self.violations.push(Violation {
                invariant: "banks_hold_only_stored_payments",
                detail: format!("bank {bank} recorded {name}, which is not stored"),
            }),
            Some(stored) if stored.amount != amount => self.violations.push(Violation {
                invariant: "banks_hold_only_stored_payments",
                detail: format!("{name}: {amount} at bank {bank}, {} stored", stored.amount),
            }),
            Some(_) => {}
        }
    }

    /// The ledger of the account `name` a write commits (`book`, with
    /// `movements` and `payments`): every movement balances, the
    /// account's balances and movement count are the fold and count of
    /// all its movements committed so far, and its balances are what its
    /// payments, as committed, imply.
    fn ledger_after(
        &mut self,
        writer: &str,
        name: &str,
        book: &payvisor::domain::account::AccountBook,
        movements: Vec<(u64, Movement)>,
        payments: &[Payment],
    ) {
        let ledger = self.ledgers.entry(name.to_owned()).or_default();
        ledger.add(movements);
        let count = ledger.movements.len() as u64;
        let mut problems = Vec::new();
        if count != book.movement_count {
            problems.push(format!(
                "{count} movements committed, the account counts {}",
                book.movement_count
            ));
        }
        match ledger.folded() {
            Ok(folded) if folded == book.balances => {}
            Ok(folded) => problems.push(format!(
                "balances {:?}, the committed movements fold to {folded:?}",
                book.balances
            )),
            Err(error) => problems.push(format!("the committed movements do not fold: {error}")),
        }
        if let Err(error) = book.balances.check_invariants() {
            problems.push(error.to_string());
        }
        self.violations
            .extend(problems.into_iter().map(|problem| Violation {
                invariant: "ledger_balances",
                detail: format!("{name} after a write by {writer}: {problem}"),
            }));
        // And what the account's payments, as committed, imply.
        let known = self.payments.entry(name.to_owned()).or_default();
        for payment in payments {
            known.insert(payment.name().to_string(), payment.clone());
        }
        let differences =
            payvisor::audit::differences_from_payments(&book.balances, known.values());
        self.violations
            .extend(differences.into_iter().map(|problem| Violation {
                invariant: "balances_match_payments",
                detail: format!("{name} after a write by {writer}: {problem}"),
            }));
    }
}

/// Installs the audit as the table's commit observer.
pub fn audit_commits(table: &SimStore) -> Arc<Mutex<Audit>> {
    let audit = Arc::new(Mutex::new(Audit::default()));
    let observer = audit.clone();
    table.observe(Box::new(move |writer, ops| {
        observer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .commit(writer, ops)
    }));
    audit
}

/// Every payment of `accounts`, read from the table.
pub async fn all_payments(
    table: &SimStore,
    accounts: &[AccountId],
) -> Result<Vec<Payment>, Violation> {
    let mut payments = Vec::new();
    for account in accounts {
        let mut after = None;
        loop {
            let (page, next) =
                schema::list_payments(table, account, after.as_ref(), limits::CHECK_PAGE)
                    .await
                    .map_err(|error| unreadable(account, error))?;
            payments.extend(page);
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    Ok(payments)
}

fn unreadable(account: &AccountId, error: payvisor::store::StoreError) -> Violation {
    Violation {
        invariant: "stored_data_decodes",
        detail: format!("{account}: {error}"),
    }
}

/// The invariants over the store and the banks now. `settled`: the faults
/// have stopped and the bound has passed, so nothing may still be on its way.
pub async fn check_store(
    table: &SimStore,
    banks: &[Arc<SimBank>],
    accounts: &[AccountId],
    acknowledged: &Acknowledged,
    settled: bool,
) -> Vec<Violation> {
    let mut found = Vec::new();
    let payments = match all_payments(table, accounts).await {
        Ok(payments) => payments,
        Err(violation) => return vec![violation],
    };
    let by_name: BTreeMap<String, &Payment> = (payments.iter())
        .map(|payment| (payment.name().to_string(), payment))
        .collect();

    // Every acknowledged create exists, exactly once per request.
    let mut per_request: BTreeMap<&str, u32> = BTreeMap::new();
    for payment in &payments {
        if let Some(request) = payment.metadata.get("request") {
            *per_request.entry(request.as_str()).or_default() += 1;
        }
    }
    for (request, count) in &per_request {
        if *count > 1 {
            found.push(Violation {
                invariant: "acknowledged_exactly_once",
                detail: format!("request {request} created {count} payments"),
            });
        }
    }
    for (request, name) in &acknowledged.creates {
        if !by_name.contains_key(&name.to_string()) {
            found.push(Violation {
                invariant: "acknowledged_exactly_once",
                detail: format!("{name} (request {request}) was acknowledged but is not stored"),
            });
        }
    }
    for (request, name, refund) in &acknowledged.refunds {
        let known = (by_name.get(&name.to_string()))
            .is_some_and(|payment| payment.refunds.iter().any(|stored| stored.id == *refund));
        if !known {
            found.push(Violation {
                invariant: "acknowledged_exactly_once",
                detail: format!(
                    "refund {refund} of {name} (request {request}) acknowledged but not stored"
                ),
            });
        }
    }

    // The ledger: every account's balances are the fold of its movements.
    for account in accounts {
        let book = match schema::load_account(table, account).await {
            Ok(Some(book)) => book.value,
            Ok(None) => continue,
            Err(error) => {
                found.push(unreadable(account, error));
                continue;
            }
        };
        let mut movements = Vec::new();
        loop {
            let from = movements.len() as u64;
            match schema::list_movements(table, account, from, limits::CHECK_PAGE).await {
                Ok(page) if page.is_empty() => break,
                Ok(page) => movements.extend(page),
                Err(error) => {
                    found.push(unreadable(account, error));
                    break;
                }
            }
        }
        if movements.len() as u64 != book.movement_count {
            found.push(Violation {
                invariant: "ledger_balances",
                detail: format!(
                    "{account}: {} movements stored, the account counts {}",
                    movements.len(),
                    book.movement_count
                ),
            });
        }
        match Balances::fold(&movements) {
            Ok(folded) if folded == book.balances => {}
            Ok(folded) => found.push(Violation {
                invariant: "ledger_balances",
                detail: format!(
                    "{account}: balances {:?}, movements fold to {folded:?}",
                    book.balances
                ),
            }),
            Err(error) => found.push(Violation {
                invariant: "ledger_balances",
                detail: format!("{account}: the movements do not fold: {error}"),
            }),
        }
        if let Err(error) = book.balances.check_invariants() {
            found.push(Violation {
                invariant: "ledger_balances",
                detail: format!("{account}: {error}"),
            });
        }
        // The books from the payments' side: `payvisor audit`'s sums of
        // the stored payments, which share nothing with the decisions that
        // posted the movements.
        match payvisor::audit::audit_account(table, account).await {
            Ok(report) => found.extend(report.problems.into_iter().map(|problem| Violation {
                invariant: "balances_match_payments",
                detail: format!("{account}: {problem}"),
            })),
            Err(error) => found.push(unreadable(account, error)),
        }
    }

    // The banks: a payment at two banks, money collected or paid out
    // beyond what the store says.
    let mut holders: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut paid_out: BTreeMap<String, i64> = BTreeMap::new();
    for bank in banks {
        let books = bank.books.lock().unwrap_or_else(|p| p.into_inner());
        for (name, at_bank) in &books.payments {
            holders.entry(name.clone()).or_default().push(&bank.name);
            match by_name.get(name) {
                None => found.push(Violation {
                    invariant: "banks_hold_only_stored_payments",
                    detail: format!("bank {} has {name}, which is not stored", bank.name),
                }),
                Some(stored) if stored.amount != at_bank.amount => found.push(Violation {
                    invariant: "banks_hold_only_stored_payments",
                    detail: format!(
                        "{name}: {} at bank {}, {} stored",
                        at_bank.amount, bank.name, stored.amount
                    ),
                }),
                Some(_) => {}
            }
        }
        for (key, amount) in &books.refunds {
            let name = key.rsplit_once('/').map(|(name, _)| name).unwrap_or(key);
            *paid_out.entry(name.to_owned()).or_default() += amount.minor_units();
        }
    }
    for (name, banks) in &holders {
        if banks.len() > 1 {
            found.push(Violation {
                invariant: "one_bank_per_payment",
                detail: format!("{name} is at banks {banks:?}"),
            });
        }
    }
    for (name, minor) in &paid_out {
        let amount = by_name
            .get(name)
            .map(|payment| payment.amount.minor_units());
        if amount.is_none_or(|amount| *minor > amount) {
            found.push(Violation {
                invariant: "refunds_within_amount",
                detail: format!(
                    "{name}: banks paid out {minor} minor units, payment is {amount:?}"
                ),
            });
        }
    }
    for payment in &payments {
        found.extend(refunds_within_amount(payment));
        found.extend(unwatched(payment));
    }
    for bank in banks {
        let books = bank.books.lock().unwrap_or_else(|p| p.into_inner());
        for (message, decided) in &books.decided {
            if *decided > 1 {
                found.push(Violation {
                    invariant: "callbacks_decided_once",
                    detail: format!("callback {message} was applied or ignored {decided} times"),
                });
            }
        }
    }

    if settled {
        found.extend(unsettled(&payments, banks));
    }
    found
}

/// Every payment that waits for something carries its watch (the
/// watchdog's durable reminder).
fn unwatched(payment: &Payment) -> Option<Violation> {
    let waits = matches!(
        payment.state,
        PaymentState::Created
            | PaymentState::Approved
            | PaymentState::Sent
            | PaymentState::InReview
    ) || (payment.refunds.iter()).any(|refund| refund.state == RefundState::Pending);
    (waits && payment.watch.is_none()).then(|| Violation {
        invariant: "waiting_payments_watched",
        detail: format!(
            "{} waits ({:?}) without a watch",
            payment.name(),
            payment.state
        ),
    })
}

/// Every stall is paged once: its trigger reaches the sink once, or again
/// only where recording its delivery failed (a few times at most; the
/// sink merges them by their dedup key). Checked as each page is sent:
/// the triggers of `key` so far.
pub fn paged_once(pages: &PageLog, key: &str) -> Option<Violation> {
    if key.starts_with("payvisor/watchdog/") {
        return None;
    }
    let pages = pages.pages.lock().unwrap_or_else(|p| p.into_inner());
    let sent = (pages.iter())
        .filter(|(action, paged)| action == "Trigger" && paged == key)
        .count();
    (sent > limits::PAGE_SENDS_PER_STALL_MAX).then(|| Violation {
        invariant: "every_stall_paged_once",
        detail: format!("{key} was sent {sent} times"),
    })
}

/// Liveness: once the faults stop, every payment comes to rest, and what
/// the store says agrees with the banks.
fn unsettled(payments: &[Payment], banks: &[Arc<SimBank>]) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut outcomes: BTreeMap<String, bool> = BTreeMap::new();
    let mut refunds: BTreeSet<String> = BTreeSet::new();
    for bank in banks {
        let books = bank.books.lock().unwrap_or_else(|p| p.into_inner());
        for (name, at_bank) in &books.payments {
            if let Some(outcome) = &at_bank.outcome {
                outcomes.insert(
                    name.clone(),
                    matches!(outcome, payvisor::domain::payment::BankOutcome::Processed),
                );
            }
        }
        refunds.extend(books.refunds.keys().cloned());
    }
    for payment in payments {
        let name = payment.name().to_string();
        let waiting = matches!(
            payment.state,
            PaymentState::Created | PaymentState::Approved | PaymentState::Sent
        ) || payment
            .refunds
            .iter()
            .any(|refund| refund.state == RefundState::Pending);
        if waiting {
            found.push(Violation {
                invariant: "everything_settles",
                detail: format!(
                    "{name} still {:?} with refunds {}",
                    payment.state,
                    refunds_summary(payment)
                ),
            });
        }
        let collected = matches!(
            payment.state,
            PaymentState::Processed | PaymentState::PartiallyRefunded | PaymentState::Refunded
        );
        if collected && outcomes.get(&name) != Some(&true) {
            found.push(Violation {
                invariant: "store_agrees_with_banks",
                detail: format!("{name} is {:?}; no bank processed it", payment.state),
            });
        }
        if payment.state == PaymentState::Failed && outcomes.get(&name) == Some(&true) {
            found.push(Violation {
                invariant: "store_agrees_with_banks",
                detail: format!("{name} is FAILED; a bank collected it"),
            });
        }
        for refund in &payment.refunds {
            let paid = refunds.contains(&format!("{name}/{}", refund.id));
            if (refund.state == RefundState::Succeeded) != paid {
                found.push(Violation {
                    invariant: "store_agrees_with_banks",
                    detail: format!(
                        "{name} refund {} is {:?}; paid out by a bank: {paid}",
                        refund.id, refund.state
                    ),
                });
            }
        }
    }
    found
}

/// One delivery to an endpoint, checked as it arrives: the first
/// delivery of an event comes after the first of every earlier event of
/// its payment (again is fine: at least once).
pub fn delivered_in_order(
    log: &WebhookLog,
    (endpoint, payment, seq): &(String, String, u64),
) -> Option<Violation> {
    let mut seen = log.seen.lock().unwrap_or_else(|p| p.into_inner());
    let seen = seen.entry((endpoint.clone(), payment.clone())).or_default();
    let first = seen.insert(*seq);
    let gap = (1..*seq).find(|earlier| !seen.contains(earlier));
    match (first, gap) {
        (true, Some(earlier)) => Some(Violation {
            invariant: "webhooks_in_order",
            detail: format!("{endpoint} got event {seq} of {payment} before event {earlier}"),
        }),
        _ => None,
    }
}

/// Webhooks, once settled: every committed event has reached every
/// endpoint (their order is checked as they arrive, `delivered_in_order`).
pub async fn check_webhooks(
    table: &SimStore,
    accounts: &[AccountId],
    webhooks: &WebhookLog,
    settled: bool,
) -> Vec<Violation> {
    let mut found = Vec::new();
    if !settled {
        return found;
    }
    let payments = match all_payments(table, accounts).await {
        Ok(payments) => payments,
        Err(violation) => return vec![violation],
    };
    for payment in &payments {
        let name = payment.name();
        let records = match payvisor::store::schema::payment_event_records(table, &name).await {
            Ok(records) => records,
            Err(error) => {
                found.push(unreadable(&payment.account, error));
                continue;
            }
        };
        let committed =
            (records.iter()).flat_map(|record| record.value.events.iter().map(|event| event.seq));
        for seq in committed {
            for endpoint in limits::WEBHOOK_ENDPOINTS {
                let got = (webhooks.seen.lock().unwrap_or_else(|p| p.into_inner()))
                    .get(&(endpoint.to_owned(), name.to_string()))
                    .is_some_and(|seen| seen.contains(&seq));
                if !got {
                    found.push(Violation {
                        invariant: "webhooks_delivered",
                        detail: format!("event {seq} of {name} never reached {endpoint}"),
                    });
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliver(log: &WebhookLog, seq: u64) -> Option<Violation> {
        delivered_in_order(
            log,
            &("merchant-a".into(), "accounts/a/payments/p".into(), seq),
        )
    }

    #[test]
    fn an_event_delivered_before_an_earlier_one_is_out_of_order_and_again_is_fine() {
        let log = WebhookLog::default();
        assert_eq!(deliver(&log, 1), None);
        assert_eq!(deliver(&log, 1), None, "again: at least once");
        assert_eq!(
            deliver(&log, 3).map(|violation| violation.invariant),
            Some("webhooks_in_order")
        );
        assert_eq!(deliver(&log, 2), None);
    }

    #[test]
    fn a_payment_recorded_by_a_second_bank_or_not_stored_breaks_an_invariant() {
        let mut audit = Audit::default();
        let eur = payvisor::domain::Currency::from_code("EUR").unwrap();
        let amount = Money::from_minor(eur, 100);
        audit.bank_records("alpha", "p", amount, None);
        audit.bank_records("alpha", "q", amount, None);
        let found: Vec<_> = audit.violations.iter().map(|v| v.invariant).collect();
        assert_eq!(found, ["banks_hold_only_stored_payments"; 2]);
        audit.violations.clear();
        audit.bank_records("beta", "p", amount, None);
        assert!(audit
            .violations
            .iter()
            .any(|violation| violation.invariant == "one_bank_per_payment"));
    }
}
