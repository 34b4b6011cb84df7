//! The account item's body: balances per currency, the movement counter
//! and the approval rules' velocity log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{currency, invalid, millis, time, Invalid, MoneyBody, Stored};
use crate::domain::account::AccountBook;
use crate::domain::ledger::{Balances, CurrencyBalances};
use crate::domain::rules::{LoggedPayments, VelocityLog};
use crate::domain::Money;

impl Stored for AccountBook {
    type Body = AccountBody;
    const FORMAT: u64 = 1;
}

#[derive(Serialize, Deserialize)]
pub(in crate::store::schema) struct AccountBody {
    balances: BalancesBody,
    movement_count: u64,
    #[serde(default)]
    velocity: Vec<VelocityEntryBody>,
    /// Left out while 0 (a single node), so such bodies read as before.
    #[serde(default, skip_serializing_if = "is_zero")]
    owner_epoch: u64,
}

fn is_zero(epoch: &u64) -> bool {
    *epoch == 0
}

#[derive(Serialize, Deserialize)]
struct BalancesBody {
    /// By currency code.
    per_currency: BTreeMap<String, CurrencyBalancesBody>,
}

#[derive(Serialize, Deserialize)]
struct CurrencyBalancesBody {
    pending: MoneyBody,
    available: MoneyBody,
    refunding: MoneyBody,
    fees: MoneyBody,
    bank_clearing: MoneyBody,
}

/// Written with every command: hence the one-letter names, and the count
/// left out when it is 1, e.g. `{"t":1767225600000,"c":"USD","m":1500}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VelocityEntryBody {
    #[serde(rename = "t")]
    at: i64,
    #[serde(rename = "c")]
    currency: String,
    #[serde(rename = "m")]
    minor_units: i64,
    #[serde(rename = "n", default = "one", skip_serializing_if = "is_one")]
    payments: u32,
}

fn one() -> u32 {
    1
}

fn is_one(payments: &u32) -> bool {
    *payments == 1
}

impl From<&AccountBook> for AccountBody {
    fn from(book: &AccountBook) -> AccountBody {
        AccountBody {
            balances: BalancesBody {
                per_currency: book
                    .balances
                    .iter()
                    .map(|(currency, balances)| {
                        let body = CurrencyBalancesBody {
                            pending: balances.pending.into(),
                            available: balances.available.into(),
                            refunding: balances.refunding.into(),
                            fees: balances.fees.into(),
                            bank_clearing: balances.bank_clearing.into(),
                        };
                        (currency.code().to_owned(), body)
                    })
                    .collect(),
            },
            movement_count: book.movement_count,
            velocity: book
                .velocity
                .entries()
                .map(|entry| VelocityEntryBody {
                    at: millis(entry.at),
                    currency: entry.currency.code().to_owned(),
                    minor_units: entry.minor_units,
                    payments: entry.payments,
                })
                .collect(),
            owner_epoch: book.owner_epoch,
        }
    }
}

impl TryFrom<AccountBody> for AccountBook {
    type Error = Invalid;
    /// Refuses balances that break the ledger's sign rules or do not sum
    /// to zero, and velocity entries the log could not have written.
    fn try_from(body: AccountBody) -> Result<AccountBook, Invalid> {
        let per_currency = body
            .balances
            .per_currency
            .into_iter()
            .map(|(code, books)| {
                let balances = CurrencyBalances {
                    pending: Money::try_from(books.pending)?,
                    available: Money::try_from(books.available)?,
                    refunding: Money::try_from(books.refunding)?,
                    fees: Money::try_from(books.fees)?,
                    bank_clearing: Money::try_from(books.bank_clearing)?,
                };
                Ok((currency(&code)?, balances))
            })
            .collect::<Result<BTreeMap<_, _>, Invalid>>()?;
        let balances = Balances::from_currencies(per_currency)
            .map_err(|error| invalid(format!("balances: {error}")))?;
        let entries = body
            .velocity
            .into_iter()
            .map(|entry| {
                Ok(LoggedPayments {
                    at: time(entry.at),
                    currency: currency(&entry.currency)?,
                    minor_units: entry.minor_units,
                    payments: entry.payments,
                })
            })
            .collect::<Result<Vec<_>, Invalid>>()?;
        let velocity = VelocityLog::from_entries(entries)
            .map_err(|error| invalid(format!("velocity log: {error}")))?;
        Ok(AccountBook {
            balances,
            movement_count: body.movement_count,
            velocity,
            owner_epoch: body.owner_epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::super::golden::{check, item, refused};
    use crate::domain::account::AccountBook;
    use crate::store::schema::{decode, encode};

    const GOLDEN: &str = r#"{"format":1,"balances":{"per_currency":{"JPY":{"pending":{"currency":"JPY","amount":"700"},"available":{"currency":"JPY","amount":"0"},"refunding":{"currency":"JPY","amount":"0"},"fees":{"currency":"JPY","amount":"0"},"bank_clearing":{"currency":"JPY","amount":"-700"}},"USD":{"pending":{"currency":"USD","amount":"0.00"},"available":{"currency":"USD","amount":"7.20"},"refunding":{"currency":"USD","amount":"5.00"},"fees":{"currency":"USD","amount":"0.30"},"bank_clearing":{"currency":"USD","amount":"-12.50"}}}},"movement_count":4,"velocity":[{"t":1767225600000,"c":"USD","m":1250},{"t":1767225600001,"c":"JPY","m":700}]}"#;

    #[test]
    fn the_account_keeps_its_stored_format() {
        check(&fixtures::account_book(), GOLDEN);
        // Written by a cluster member: its lease epoch, at the end.
        let fenced = AccountBook {
            owner_epoch: 7,
            ..fixtures::account_book()
        };
        check(&fenced, &GOLDEN.replacen("]}", r#"],"owner_epoch":7}"#, 1));
    }

    /// A log entry that merged payments carries its count; unsorted entries
    /// are sorted.
    #[test]
    fn merged_and_unsorted_velocity_entries_decode() {
        let body = GOLDEN.replacen(
            r#"[{"t":1767225600000,"c":"USD","m":1250},{"t":1767225600001,"c":"JPY","m":700}]"#,
            r#"[{"t":1767225600001,"c":"JPY","m":700},{"t":1767225600000,"c":"USD","m":1250,"n":3}]"#,
            1,
        );
        let book: AccountBook = decode(&item(&body)).unwrap();
        let entries: Vec<_> = book.velocity.entries().collect();
        assert_eq!(
            entries
                .iter()
                .map(|entry| entry.payments)
                .collect::<Vec<_>>(),
            [3, 1]
        );
        assert!(String::from_utf8(encode(&book))
            .unwrap()
            .contains(r#"{"t":1767225600000,"c":"USD","m":1250,"n":3}"#));
    }

    #[test]
    fn invalid_accounts_are_refused() {
        for (good, bad) in [
            // The books no longer sum to zero.
            (r#""amount":"-12.50""#, r#""amount":"-12.49""#),
            // A sign rule broken on both sides.
            (
                r#""pending":{"currency":"JPY","amount":"700"}"#,
                r#""pending":{"currency":"JPY","amount":"-700"}"#,
            ),
            (r#""JPY":{"#, r#""YEN":{"#),
            (r#""JPY":{"#, r#""EUR":{"#),
            (r#""m":700}"#, r#""m":700,"n":0}"#),
            (r#""m":700}"#, r#""m":-700}"#),
            // A field no entry has (the log refused it before it was a
            // storage record too).
            (r#""m":700}"#, r#""m":700,"x":0}"#),
            (r#""c":"JPY""#, r#""c":"XXX""#),
        ] {
            assert!(GOLDEN.contains(good), "{good}");
            refused::<AccountBook>(&GOLDEN.replacen(good, bad, 1));
        }
    }
}
