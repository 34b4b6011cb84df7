//! Pure double-entry bookkeeping for one account.
//!
//! Every event that moves money is one [`Movement`]: a set of postings whose
//! signed amounts sum to zero per currency (credits positive, debits
//! negative), so money is never created or destroyed. [`Balances`] are the
//! running sums per book account, and [`Balances::apply`] refuses any movement
//! that is unbalanced or would break a sign rule:
//!
//! - `pending`, `available`, `refunding` and `fees` are money owed to the
//!   account (or kept by the platform) and can never be negative;
//! - `bank_clearing` is the counterparty, what the banks owe us net of what
//!   we returned: it can never be positive (we cannot have returned more
//!   than we collected).
//!
//! Movements never span accounts (the Nubank lesson: shard by customer), so
//! one account's ledger is checked and written alone.
//!
//! **Invariant:** no I/O, no clock. The actor persists what this decides.

use std::collections::BTreeMap;

use super::{Currency, Money, MoneyError, PaymentId};

/// The book accounts of one payvisor account, per currency.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum BookAccount {
    /// Sent to a bank, outcome unknown.
    Pending,
    /// Collected and spendable: processed minus refunds minus fees.
    Available,
    /// Reserved for refunds sent to a bank, not yet confirmed.
    Refunding,
    /// Fees the platform kept from this account's payments.
    Fees,
    /// The outside world (banks and payers): debited when we claim money,
    /// credited when we give it back.
    BankClearing,
}

impl BookAccount {
    pub const ALL: [BookAccount; 5] = [
        BookAccount::Pending,
        BookAccount::Available,
        BookAccount::Refunding,
        BookAccount::Fees,
        BookAccount::BankClearing,
    ];
}

/// One side of a movement: a signed amount on one book account
/// (positive = credit, negative = debit).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Posting {
    pub book: BookAccount,
    pub amount: Money,
}

/// What caused a movement.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MovementKind {
    PaymentSent,
    PaymentProcessed,
    PaymentFailed,
    RefundRequested,
    RefundSucceeded,
    RefundFailed,
}

/// A balanced set of postings caused by one event on one payment.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Movement {
    pub kind: MovementKind,
    pub payment: PaymentId,
    /// The refund concerned, for refund movements.
    pub refund: Option<String>,
    postings: Vec<Posting>,
}

/// Why the ledger refused a movement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("movement does not balance in {0}")]
    Unbalanced(Currency),
    #[error("movement has fewer than two postings")]
    TooFewPostings,
    #[error("{book:?} would become negative in {currency}")]
    WouldGoNegative {
        book: BookAccount,
        currency: Currency,
    },
    #[error("bank clearing would become positive in {0}: more returned than collected")]
    ClearingWouldGoPositive(Currency),
    #[error(transparent)]
    Money(#[from] MoneyError),
}

impl Movement {
    /// Builds a movement, dropping zero postings; fails unless it balances.
    pub fn new(
        kind: MovementKind,
        payment: PaymentId,
        refund: Option<String>,
        postings: impl IntoIterator<Item = Posting>,
    ) -> Result<Movement, LedgerError> {
        let postings: Vec<Posting> = postings
            .into_iter()
            .filter(|p| !p.amount.is_zero())
            .collect();
        let movement = Movement {
            kind,
            payment,
            refund,
            postings,
        };
        movement.check_balanced()?;
        Ok(movement)
    }

    pub fn postings(&self) -> &[Posting] {
        &self.postings
    }

    /// Debits equal credits in every currency.
    pub fn check_balanced(&self) -> Result<(), LedgerError> {
        if self.postings.len() < 2 {
            return Err(LedgerError::TooFewPostings);
        }
        let mut sums: BTreeMap<Currency, Money> = BTreeMap::new();
        for posting in &self.postings {
            let currency = posting.amount.currency();
            let sum = sums
                .entry(currency)
                .or_insert_with(|| Money::zero(currency));
            *sum = sum.checked_add(posting.amount)?;
        }
        match sums.into_iter().find(|(_, sum)| !sum.is_zero()) {
            Some((currency, _)) => Err(LedgerError::Unbalanced(currency)),
            None => Ok(()),
        }
    }

    /// `amount` moves from book `from` (debited) to book `to` (credited):
    /// the shape of every movement but processing.
    fn transfer(
        kind: MovementKind,
        payment: PaymentId,
        refund: Option<&str>,
        from: BookAccount,
        to: BookAccount,
        amount: Money,
    ) -> Result<Movement, LedgerError> {
        Movement::new(
            kind,
            payment,
            refund.map(str::to_owned),
            [
                Posting {
                    book: from,
                    amount: amount.negate(),
                },
                Posting { book: to, amount },
            ],
        )
    }

    /// A payment handed to a bank: we claim `amount` from the outside world
    /// and owe it to the account as pending.
    pub fn payment_sent(payment: PaymentId, amount: Money) -> Result<Movement, LedgerError> {
        use BookAccount::*;
        Movement::transfer(
            MovementKind::PaymentSent,
            payment,
            None,
            BankClearing,
            Pending,
            amount,
        )
    }

    /// The bank collected: pending becomes available, less the fee.
    pub fn payment_processed(
        payment: PaymentId,
        amount: Money,
        fee: Money,
    ) -> Result<Movement, LedgerError> {
        Movement::new(
            MovementKind::PaymentProcessed,
            payment,
            None,
            [
                Posting {
                    book: BookAccount::Pending,
                    amount: amount.negate(),
                },
                Posting {
                    book: BookAccount::Available,
                    amount: amount.checked_sub(fee)?,
                },
                Posting {
                    book: BookAccount::Fees,
                    amount: fee,
                },
            ],
        )
    }

    /// The bank refused: the claim is withdrawn.
    pub fn payment_failed(payment: PaymentId, amount: Money) -> Result<Movement, LedgerError> {
        use BookAccount::*;
        Movement::transfer(
            MovementKind::PaymentFailed,
            payment,
            None,
            Pending,
            BankClearing,
            amount,
        )
    }

    /// A refund is reserved out of the available balance.
    pub fn refund_requested(
        payment: PaymentId,
        refund: &str,
        amount: Money,
    ) -> Result<Movement, LedgerError> {
        use BookAccount::*;
        Movement::transfer(
            MovementKind::RefundRequested,
            payment,
            Some(refund),
            Available,
            Refunding,
            amount,
        )
    }

    /// The bank returned the money to the payer.
    pub fn refund_succeeded(
        payment: PaymentId,
        refund: &str,
        amount: Money,
    ) -> Result<Movement, LedgerError> {
        use BookAccount::*;
        Movement::transfer(
            MovementKind::RefundSucceeded,
            payment,
            Some(refund),
            Refunding,
            BankClearing,
            amount,
        )
    }

    /// The bank refused the refund: the reservation is released.
    pub fn refund_failed(
        payment: PaymentId,
        refund: &str,
        amount: Money,
    ) -> Result<Movement, LedgerError> {
        use BookAccount::*;
        Movement::transfer(
            MovementKind::RefundFailed,
            payment,
            Some(refund),
            Refunding,
            Available,
            amount,
        )
    }
}

/// One currency's balances on every book account.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CurrencyBalances {
    pub pending: Money,
    pub available: Money,
    pub refunding: Money,
    pub fees: Money,
    pub bank_clearing: Money,
}

impl CurrencyBalances {
    pub fn zero(currency: Currency) -> CurrencyBalances {
        let zero = Money::zero(currency);
        CurrencyBalances {
            pending: zero,
            available: zero,
            refunding: zero,
            fees: zero,
            bank_clearing: zero,
        }
    }

    pub fn get(&self, book: BookAccount) -> Money {
        match book {
            BookAccount::Pending => self.pending,
            BookAccount::Available => self.available,
            BookAccount::Refunding => self.refunding,
            BookAccount::Fees => self.fees,
            BookAccount::BankClearing => self.bank_clearing,
        }
    }

    fn get_mut(&mut self, book: BookAccount) -> &mut Money {
        match book {
            BookAccount::Pending => &mut self.pending,
            BookAccount::Available => &mut self.available,
            BookAccount::Refunding => &mut self.refunding,
            BookAccount::Fees => &mut self.fees,
            BookAccount::BankClearing => &mut self.bank_clearing,
        }
    }

    /// Sum of every book: zero when no money was created or destroyed.
    pub fn total(&self) -> Result<Money, MoneyError> {
        BookAccount::ALL
            .iter()
            .try_fold(Money::zero(self.pending.currency()), |sum, book| {
                sum.checked_add(self.get(*book))
            })
    }
}

/// An account's balances: the fold of all its movements.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Balances {
    per_currency: BTreeMap<Currency, CurrencyBalances>,
}

impl Balances {
    /// The balances after `movement`, or why the movement is refused. Checks
    /// the movement before applying it and the sign rules after: the pair of
    /// assertions TigerBeetle recommends.
    pub fn apply(&self, movement: &Movement) -> Result<Balances, LedgerError> {
        movement.check_balanced()?;
        let mut next = self.clone();
        for posting in movement.postings() {
            let currency = posting.amount.currency();
            let balances = next
                .per_currency
                .entry(currency)
                .or_insert_with(|| CurrencyBalances::zero(currency));
            let slot = balances.get_mut(posting.book);
            *slot = slot.checked_add(posting.amount)?;
        }
        next.check_invariants()?;
        Ok(next)
    }

    /// Balances as stored, per currency: each currency's books in that
    /// currency, under the sign rules, summing to zero (what every fold of
    /// movements leaves).
    pub fn from_currencies(
        per_currency: BTreeMap<Currency, CurrencyBalances>,
    ) -> Result<Balances, LedgerError> {
        for (currency, balances) in &per_currency {
            for book in BookAccount::ALL {
                let found = balances.get(book).currency();
                if found != *currency {
                    return Err(MoneyError::CurrencyMismatch(*currency, found).into());
                }
            }
        }
        let balances = Balances { per_currency };
        balances.check_invariants()?;
        Ok(balances)
    }

    /// Applies movements in order.
    pub fn fold<'a>(
        movements: impl IntoIterator<Item = &'a Movement>,
    ) -> Result<Balances, LedgerError> {
        movements
            .into_iter()
            .try_fold(Balances::default(), |balances, movement| {
                balances.apply(movement)
            })
    }

    /// Every sign rule, and that the books of each currency sum to zero.
    pub fn check_invariants(&self) -> Result<(), LedgerError> {
        for (currency, balances) in &self.per_currency {
            for book in [
                BookAccount::Pending,
                BookAccount::Available,
                BookAccount::Refunding,
                BookAccount::Fees,
            ] {
                if balances.get(book).is_negative() {
                    return Err(LedgerError::WouldGoNegative {
                        book,
                        currency: *currency,
                    });
                }
            }
            if !balances.bank_clearing.is_negative() && !balances.bank_clearing.is_zero() {
                return Err(LedgerError::ClearingWouldGoPositive(*currency));
            }
            if !balances.total()?.is_zero() {
                return Err(LedgerError::Unbalanced(*currency));
            }
        }
        Ok(())
    }

    pub fn currency(&self, currency: Currency) -> CurrencyBalances {
        self.per_currency
            .get(&currency)
            .copied()
            .unwrap_or_else(|| CurrencyBalances::zero(currency))
    }

    /// Currencies seen, in code order.
    pub fn iter(&self) -> impl Iterator<Item = (&Currency, &CurrencyBalances)> {
        self.per_currency.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(minor: i64) -> Money {
        Money::from_minor(Currency::from_code("USD").unwrap(), minor)
    }
    fn pay(id: &str) -> PaymentId {
        PaymentId::new(id).unwrap()
    }

    #[test]
    fn a_full_lifecycle_balances_at_every_step() {
        let steps = [
            Movement::payment_sent(pay("p"), usd(1000)).unwrap(),
            Movement::payment_processed(pay("p"), usd(1000), usd(30)).unwrap(),
            Movement::refund_requested(pay("p"), "r1", usd(400)).unwrap(),
            Movement::refund_succeeded(pay("p"), "r1", usd(400)).unwrap(),
        ];
        let balances = Balances::fold(&steps).unwrap();
        let usd_balances = balances.currency(Currency::from_code("USD").unwrap());
        assert_eq!(usd_balances.available, usd(570));
        assert_eq!(usd_balances.fees, usd(30));
        assert_eq!(usd_balances.pending, usd(0));
        assert_eq!(usd_balances.bank_clearing, usd(-600));
        assert!(usd_balances.total().unwrap().is_zero());
    }

    #[test]
    fn unbalanced_movements_are_refused() {
        let result = Movement::new(
            MovementKind::PaymentSent,
            pay("p"),
            None,
            [
                Posting {
                    book: BookAccount::BankClearing,
                    amount: usd(-5),
                },
                Posting {
                    book: BookAccount::Pending,
                    amount: usd(6),
                },
            ],
        );
        assert!(matches!(result, Err(LedgerError::Unbalanced(_))));
    }

    #[test]
    fn a_refund_larger_than_available_is_refused() {
        let balances = Balances::fold(&[
            Movement::payment_sent(pay("p"), usd(100)).unwrap(),
            Movement::payment_processed(pay("p"), usd(100), usd(10)).unwrap(),
        ])
        .unwrap();
        let refund = Movement::refund_requested(pay("p"), "r1", usd(100)).unwrap();
        assert!(matches!(
            balances.apply(&refund),
            Err(LedgerError::WouldGoNegative {
                book: BookAccount::Available,
                ..
            })
        ));
    }

    #[test]
    fn returning_money_never_collected_is_refused() {
        let refund = Movement::refund_succeeded(pay("p"), "r1", usd(1)).unwrap();
        assert!(Balances::default().apply(&refund).is_err());
    }
}
