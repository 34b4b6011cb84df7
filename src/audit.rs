//! Reconciliation of one account's books against its payments: the check
//! payment teams run constantly, and the judge of the crash tests.
//!
//! It reads the store only (no actor), so it can run beside a live server
//! (WAL readers) or on a stopped one's data directory.

use std::collections::BTreeMap;

use crate::domain::ledger::{Balances, CurrencyBalances};
use crate::domain::payment::{Payment, PaymentState, RefundState};
use crate::domain::{AccountId, Currency};
use crate::limits;
use crate::store::{schema, Store, StoreError};

/// What an audit found.
#[derive(Debug, Clone, Default)]
pub struct AuditReport {
    pub payments: usize,
    pub movements: u64,
    pub balances: Balances,
    /// Every mismatch, in words. Empty means the books are clean.
    pub problems: Vec<String>,
}

impl AuditReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The balances an account's payments imply, per currency.
fn expected_from_payments<'a>(
    payments: impl IntoIterator<Item = &'a Payment>,
) -> Result<BTreeMap<Currency, CurrencyBalances>, crate::domain::MoneyError> {
    let mut expected: BTreeMap<Currency, CurrencyBalances> = BTreeMap::new();
    for payment in payments {
        let currency = payment.amount.currency();
        let books = expected
            .entry(currency)
            .or_insert_with(|| CurrencyBalances::zero(currency));
        match payment.state {
            PaymentState::Sent => books.pending = books.pending.checked_add(payment.amount)?,
            PaymentState::Processed | PaymentState::PartiallyRefunded | PaymentState::Refunded => {
                books.available = books
                    .available
                    .checked_add(payment.amount.checked_sub(payment.fee)?)?;
                books.fees = books.fees.checked_add(payment.fee)?;
            }
            _ => {}
        }
        for refund in &payment.refunds {
            match refund.state {
                RefundState::Pending => {
                    books.available = books.available.checked_sub(refund.amount)?;
                    books.refunding = books.refunding.checked_add(refund.amount)?;
                }
                RefundState::Succeeded => {
                    books.available = books.available.checked_sub(refund.amount)?
                }
                RefundState::Failed => {}
            }
        }
    }
    Ok(expected)
}

/// Checks, for one account: every movement balances and the fold of all
/// movements equals the stored balances; every payment's refunds stay within
/// its amount; and the balances equal what the payments imply.
pub async fn audit_account(
    store: &dyn Store,
    account: &AccountId,
) -> Result<AuditReport, StoreError> {
    let mut report = AuditReport::default();
    let Some(record) = schema::load_account(store, account).await? else {
        report
            .problems
            .push(format!("account {account} has no account item"));
        return Ok(report);
    };

    let mut folded = Balances::default();
    loop {
        let page =
            schema::list_movements(store, account, report.movements, limits::PAGE_SIZE_MAX).await?;
        for movement in &page {
            match folded.apply(movement) {
                Ok(next) => folded = next,
                Err(error) => report
                    .problems
                    .push(format!("movement {}: {error}", report.movements)),
            }
            report.movements += 1;
        }
        if page.len() < limits::PAGE_SIZE_MAX {
            break;
        }
    }
    if report.movements != record.value.movement_count {
        report.problems.push(format!(
            "account says {} movements, store has {}",
            record.value.movement_count, report.movements
        ));
    }
    if folded != record.value.balances {
        report.problems.push(format!(
            "stored balances {:?} differ from the fold of movements {:?}",
            record.value.balances, folded
        ));
    }

    let mut payments = Vec::new();
    let mut start_after = None;
    loop {
        let (page, next) =
            schema::list_payments(store, account, start_after.as_ref(), limits::PAGE_SIZE_MAX)
                .await?;
        payments.extend(page);
        match next {
            Some(next) => start_after = Some(next),
            None => break,
        }
    }
    report.payments = payments.len();
    for payment in &payments {
        if let Err(problem) = payment.check_invariants() {
            report.problems.push(problem);
        }
    }
    (report.problems).extend(differences_from_payments(&record.value.balances, &payments));
    report.balances = record.value.balances;
    Ok(report)
}

/// Where an account's `balances` differ from what its `payments` imply,
/// in words (the simulator checks this after every write of an account).
pub fn differences_from_payments<'a>(
    balances: &Balances,
    payments: impl IntoIterator<Item = &'a Payment>,
) -> Vec<String> {
    let expected = match expected_from_payments(payments) {
        Ok(expected) => expected,
        Err(error) => return vec![format!("summing payments: {error}")],
    };
    let mut problems = Vec::new();
    for (currency, books) in expected {
        let actual = balances.currency(currency);
        let same = [
            books.pending == actual.pending,
            books.available == actual.available,
            books.refunding == actual.refunding,
            books.fees == actual.fees,
        ];
        if same.contains(&false) {
            problems.push(format!(
                "{currency}: balances {actual:?} differ from what the payments imply {books:?}"
            ));
        }
    }
    problems
}
