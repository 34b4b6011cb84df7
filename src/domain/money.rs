//! Money: ISO 4217 currencies with their minor-unit exponents, and amounts as
//! exact decimals. Never floating point.

use std::fmt;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::limits;

/// An ISO 4217 currency payvisor accepts, with its minor-unit exponent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    code: &'static str,
    exponent: u32,
}

/// The currencies payvisor accepts. A short, explicit list beats accepting
/// any three letters: an unknown code is a client bug to reject, not store.
const CURRENCIES: &[(&str, u32)] = &[
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("PLN", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("TND", 3),
    ("USD", 2),
    ("ZAR", 2),
];

impl Currency {
    /// Looks a code up; `None` for anything not in the list (case-sensitive,
    /// as ISO 4217 codes are upper case).
    pub fn from_code(code: &str) -> Option<Currency> {
        CURRENCIES
            .binary_search_by(|(candidate, _)| (*candidate).cmp(code))
            .ok()
            .map(|index| Currency {
                code: CURRENCIES[index].0,
                exponent: CURRENCIES[index].1,
            })
    }
    pub fn code(&self) -> &'static str {
        self.code
    }
    /// Digits after the decimal point in the minor unit (2 for USD, 0 for JPY).
    pub fn exponent(&self) -> u32 {
        self.exponent
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

/// As its code (in webhook payloads).
impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code)
    }
}

/// Why an amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("unknown currency code {0:?} (expected an ISO 4217 code such as USD)")]
    UnknownCurrency(String),
    #[error("amount must be positive")]
    NotPositive,
    #[error("amount exceeds the maximum of {max} minor units")]
    TooLarge { max: i64 },
    #[error("amounts in different currencies ({0} and {1}) cannot be combined")]
    CurrencyMismatch(Currency, Currency),
    #[error("amount overflow")]
    Overflow,
    #[error("{0:?} is not a number")]
    NotANumber(String),
    #[error("{currency} amounts have at most {digits} decimal places")]
    TooPrecise { currency: Currency, digits: u32 },
}

/// An amount in one currency. The decimal always has exactly the currency's
/// number of fractional digits, so it converts to minor units exactly.
/// Serialised in webhook payloads as `{"currency":"USD","amount":"12.50"}`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Money {
    currency: Currency,
    #[serde(with = "rust_decimal::serde::str")]
    amount: Decimal,
}

impl Money {
    /// Any signed amount in minor units (ledger postings can be negative).
    pub fn from_minor(currency: Currency, minor_units: i64) -> Money {
        Money {
            currency,
            amount: Decimal::new(minor_units, currency.exponent),
        }
    }

    /// A positive amount no larger than [`limits::AMOUNT_MINOR_MAX`]: what a
    /// client may ask to pay or refund.
    pub fn positive_from_minor(currency: Currency, minor_units: i64) -> Result<Money, MoneyError> {
        if minor_units <= 0 {
            return Err(MoneyError::NotPositive);
        }
        if minor_units > limits::AMOUNT_MINOR_MAX {
            return Err(MoneyError::TooLarge {
                max: limits::AMOUNT_MINOR_MAX,
            });
        }
        Ok(Money::from_minor(currency, minor_units))
    }

    /// Parses an amount written in major units (`12.50` USD), refusing more
    /// fractional digits than the currency has.
    pub fn parse_major(currency: Currency, text: &str) -> Result<Money, MoneyError> {
        let mut amount: Decimal = text
            .trim()
            .parse()
            .map_err(|_| MoneyError::NotANumber(text.to_owned()))?;
        if amount.scale() > currency.exponent {
            return Err(MoneyError::TooPrecise {
                currency,
                digits: currency.exponent,
            });
        }
        amount.rescale(currency.exponent);
        let minor = i64::try_from(amount.mantissa()).map_err(|_| MoneyError::Overflow)?;
        Money::positive_from_minor(currency, minor)
    }

    pub fn zero(currency: Currency) -> Money {
        Money::from_minor(currency, 0)
    }
    pub fn currency(&self) -> Currency {
        self.currency
    }
    pub fn amount(&self) -> Decimal {
        self.amount
    }

    /// The amount as an integer count of minor units. Exact by construction
    /// (every constructor and operation keeps the currency's scale).
    pub fn minor_units(&self) -> i64 {
        let mut scaled = self.amount;
        scaled.rescale(self.currency.exponent);
        // mantissa is the integer at the currency's scale.
        i64::try_from(scaled.mantissa()).unwrap_or(i64::MAX)
    }

    pub fn is_zero(&self) -> bool {
        self.amount.is_zero()
    }
    pub fn is_negative(&self) -> bool {
        self.amount.is_sign_negative() && !self.amount.is_zero()
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let amount = self
            .amount
            .checked_add(other.amount)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money {
            currency: self.currency,
            amount,
        })
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let amount = self
            .amount
            .checked_sub(other.amount)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money {
            currency: self.currency,
            amount,
        })
    }

    pub fn negate(self) -> Money {
        Money {
            currency: self.currency,
            amount: -self.amount,
        }
    }

    /// `basis_points` / 10,000 of this amount plus `fixed_minor`, rounded half
    /// to even at the currency's scale, never more than the amount itself.
    pub fn fee(self, basis_points: u32, fixed_minor: i64) -> Money {
        let proportional = self.amount * Decimal::from(basis_points) / Decimal::from(10_000);
        let mut fee = proportional + Decimal::new(fixed_minor, self.currency.exponent);
        fee = fee.round_dp_with_strategy(
            self.currency.exponent,
            rust_decimal::RoundingStrategy::MidpointNearestEven,
        );
        fee.rescale(self.currency.exponent);
        let fee = fee.min(self.amount).max(Decimal::ZERO);
        let mut fee = fee;
        fee.rescale(self.currency.exponent);
        Money {
            currency: self.currency,
            amount: fee,
        }
    }

    fn same_currency(&self, other: Money) -> Result<(), MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(self.currency, other.currency));
        }
        Ok(())
    }
}

impl PartialOrd for Money {
    /// Amounts in different currencies are not comparable.
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        (self.currency == other.currency).then(|| self.amount.cmp(&other.amount))
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::from_code("USD").unwrap()
    }

    #[test]
    fn currencies_are_sorted_for_binary_search() {
        assert!(CURRENCIES.windows(2).all(|pair| pair[0].0 < pair[1].0));
    }

    #[test]
    fn exponents_follow_iso_4217() {
        assert_eq!(Currency::from_code("JPY").unwrap().exponent(), 0);
        assert_eq!(Currency::from_code("KWD").unwrap().exponent(), 3);
        assert_eq!(usd().exponent(), 2);
        assert!(Currency::from_code("usd").is_none());
        assert!(Currency::from_code("XXX").is_none());
    }

    #[test]
    fn minor_units_round_trip() {
        for minor in [0, 1, 99, 100, 123_456, -42, limits::AMOUNT_MINOR_MAX] {
            assert_eq!(Money::from_minor(usd(), minor).minor_units(), minor);
        }
        assert_eq!(Money::from_minor(usd(), 1050).to_string(), "10.50 USD");
    }

    #[test]
    fn positive_amounts_are_bounded() {
        assert_eq!(
            Money::positive_from_minor(usd(), 0),
            Err(MoneyError::NotPositive)
        );
        assert_eq!(
            Money::positive_from_minor(usd(), -5),
            Err(MoneyError::NotPositive)
        );
        assert!(matches!(
            Money::positive_from_minor(usd(), limits::AMOUNT_MINOR_MAX + 1),
            Err(MoneyError::TooLarge { .. })
        ));
    }

    #[test]
    fn fees_round_to_the_minor_unit_and_never_exceed_the_amount() {
        let amount = Money::from_minor(usd(), 1001);
        assert_eq!(amount.fee(290, 30).minor_units(), 59); // 29.029 + 30 = 59.029
        assert_eq!(amount.fee(0, 0).minor_units(), 0);
        assert_eq!(Money::from_minor(usd(), 10).fee(0, 500).minor_units(), 10);
    }

    #[test]
    fn major_units_parse_exactly() {
        assert_eq!(
            Money::parse_major(usd(), "12.5").unwrap().minor_units(),
            1250
        );
        assert_eq!(Money::parse_major(usd(), "3").unwrap().minor_units(), 300);
        assert!(matches!(
            Money::parse_major(usd(), "1.001"),
            Err(MoneyError::TooPrecise { .. })
        ));
        assert!(Money::parse_major(usd(), "abc").is_err());
        assert!(Money::parse_major(usd(), "-1").is_err());
    }

    #[test]
    fn mixing_currencies_is_an_error() {
        let eur = Money::from_minor(Currency::from_code("EUR").unwrap(), 1);
        assert!(Money::from_minor(usd(), 1).checked_add(eur).is_err());
    }
}
