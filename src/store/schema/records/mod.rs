//! Storage records: the shapes of item bodies, owned by the store.
//!
//! A domain type is never serialised directly. Each item family has a body
//! type here (`PaymentBody`, `AccountBody`, …) with explicit field names and
//! store-owned mirrors of everything nested in it (states, refunds, routes,
//! money, …). A domain value becomes a body with `From<&Domain>`; a body
//! becomes a domain value with `TryFrom<Body>`, which validates (ids,
//! currencies, amounts, balanced movements, the ledger's sign rules) and
//! refuses anything invalid. So renaming a domain field or variant fails to
//! compile here, or fails a golden test, instead of silently changing what
//! is stored.
//!
//! Every body carries its format version, `"format": 1`, written first
//! (see [`super::encode`]); a body of a format this build does not know is
//! refused with [`StoreError::UnsupportedFormat`](crate::store::StoreError).
//! The field names of format 1 are exactly those of the bodies written
//! before formats were versioned, so those bodies (without `format`) decode
//! as format 1. A later format adds a body type for it and upgrades the
//! older ones while decoding.

use std::fmt;

use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::domain::payment::{PaymentState, RefundState};
use crate::domain::watch::Stage;
use crate::domain::{Currency, IdError, Money, PaymentName, Timestamp};

mod account;
mod alert;
mod audit;
mod cluster;
mod created;
mod events;
mod idempotency;
mod inbox;
mod incidents;
mod movement;
mod outbox;
mod payment;
mod secrets;

#[cfg(test)]
pub(super) mod fixtures;

/// A type stored in item bodies, and the storage record that holds it.
pub(super) trait Stored: Sized {
    /// The body, in format [`Self::FORMAT`].
    type Body: Serialize
        + DeserializeOwned
        + for<'a> From<&'a Self>
        + TryInto<Self, Error = Invalid>;
    /// The format written now, and the only one read so far.
    const FORMAT: u64;
}

/// Why a body, well-formed JSON, does not hold a valid value.
#[derive(Debug)]
pub(super) struct Invalid(String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub(super) fn invalid(problem: impl Into<String>) -> Invalid {
    Invalid(problem.into())
}

/// A validated id (`AccountId`, `PaymentId`) from its stored text.
pub(super) fn id<T: TryFrom<String, Error = IdError>>(text: String) -> Result<T, Invalid> {
    let shown = format!("{text:?}");
    T::try_from(text).map_err(|error| invalid(format!("id {shown}: {error}")))
}

pub(super) fn currency(code: &str) -> Result<Currency, Invalid> {
    Currency::from_code(code).ok_or_else(|| invalid(format!("unknown currency {code:?}")))
}

pub(super) fn time(unix_millis: i64) -> Timestamp {
    Timestamp::from_unix_millis(unix_millis)
}

/// Timestamps are stored as milliseconds since the Unix epoch.
pub(super) fn millis(at: Timestamp) -> i64 {
    at.unix_millis()
}

/// An amount: the currency's code and the decimal at its scale, as text
/// (`{"currency":"USD","amount":"12.50"}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MoneyBody {
    #[serde(rename = "currency")]
    currency: String,
    #[serde(rename = "amount")]
    amount: String,
}

impl From<Money> for MoneyBody {
    fn from(money: Money) -> MoneyBody {
        MoneyBody {
            currency: money.currency().code().to_owned(),
            amount: money.amount().to_string(),
        }
    }
}

impl TryFrom<MoneyBody> for Money {
    type Error = Invalid;
    /// Refuses more fractional digits than the currency has (an amount is
    /// exact in minor units), and amounts beyond `i64` minor units.
    fn try_from(body: MoneyBody) -> Result<Money, Invalid> {
        let currency = currency(&body.currency)?;
        let bad = || invalid(format!("amount {:?} {}", body.amount, body.currency));
        let mut amount: Decimal = body.amount.parse().map_err(|_| bad())?;
        if amount.scale() > currency.exponent() {
            return Err(bad());
        }
        amount.rescale(currency.exponent());
        let minor_units = i64::try_from(amount.mantissa()).map_err(|_| bad())?;
        Ok(Money::from_minor(currency, minor_units))
    }
}

/// A payment's name: `{"account":"acme","payment":"pay_1"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct NameBody {
    #[serde(rename = "account")]
    account: String,
    #[serde(rename = "payment")]
    payment: String,
}

impl From<&PaymentName> for NameBody {
    fn from(name: &PaymentName) -> NameBody {
        NameBody {
            account: name.account.to_string(),
            payment: name.payment.to_string(),
        }
    }
}

impl TryFrom<NameBody> for PaymentName {
    type Error = Invalid;
    fn try_from(body: NameBody) -> Result<PaymentName, Invalid> {
        Ok(PaymentName {
            account: id(body.account)?,
            payment: id(body.payment)?,
        })
    }
}

/// A stored mirror of a field-less domain enum: each variant with its
/// stored name, and conversions both ways (exhaustive, so a variant added
/// to the domain does not compile until it has a stored name).
macro_rules! stored_enum {
    ($(#[$doc:meta])* $body:ident for $domain:path { $($variant:ident = $name:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub(in crate::store::schema) enum $body {
            $(#[serde(rename = $name)] $variant,)+
        }

        impl From<$domain> for $body {
            fn from(value: $domain) -> $body {
                use $domain as Domain;
                match value {
                    $(Domain::$variant => $body::$variant,)+
                }
            }
        }

        impl From<$body> for $domain {
            fn from(body: $body) -> $domain {
                use $domain as Domain;
                match body {
                    $($body::$variant => Domain::$variant,)+
                }
            }
        }
    };
}
pub(super) use stored_enum;

stored_enum!(
    /// A payment's state.
    PaymentStateBody for PaymentState {
        Created = "created",
        Approved = "approved",
        InReview = "in_review",
        Sent = "sent",
        Processed = "processed",
        PartiallyRefunded = "partially_refunded",
        Refunded = "refunded",
        Declined = "declined",
        Failed = "failed",
    }
);

stored_enum!(
    /// A refund's state.
    RefundStateBody for RefundState {
        Pending = "pending",
        Succeeded = "succeeded",
        Failed = "failed",
    }
);

stored_enum!(
    /// Where a payment waits (its watch, its pages).
    StageBody for Stage {
        Created = "created",
        Approved = "approved",
        InReview = "in_review",
        Sent = "sent",
        Refunding = "refunding",
    }
);

/// What the golden tests of every family check.
#[cfg(test)]
pub(super) mod golden {
    use std::fmt::Debug;

    use super::Stored;
    use crate::store::schema::{decode, encode};
    use crate::store::{Item, Key, StoreError};

    pub fn item(body: &str) -> Item {
        Item {
            key: Key::new("A#acme#03", "X#golden"),
            version: 1,
            body: body.as_bytes().to_vec(),
            index: None,
            expires_at: None,
        }
    }

    /// `value` encodes to exactly `golden` (format 1, written first), which
    /// decodes back to it; without its `format` field (as bodies were
    /// written before formats were versioned, field for field: the goldens
    /// are those bodies, captured from that build, with `format` added), it
    /// decodes as format 1; and as format 2 it is refused.
    pub fn check<T: Stored + PartialEq + Debug>(value: &T, golden: &str) {
        let body = String::from_utf8(encode(value)).unwrap();
        assert_eq!(body, golden, "the stored format changed");
        assert_eq!(&decode::<T>(&item(golden)).unwrap(), value);
        let unversioned = golden.replacen(r#""format":1,"#, "", 1);
        assert!(!unversioned.contains(r#""format""#));
        assert_eq!(&decode::<T>(&item(&unversioned)).unwrap(), value);
        let newer = golden.replacen(r#""format":1,"#, r#""format":2,"#, 1);
        assert_eq!(
            decode::<T>(&item(&newer)),
            Err(StoreError::UnsupportedFormat {
                key: item(golden).key,
                format: 2
            })
        );
    }

    /// `body` is refused as corrupt, naming the item.
    pub fn refused<T: Stored + Debug>(body: &str) {
        match decode::<T>(&item(body)) {
            Err(StoreError::Corrupt(message)) => {
                assert!(message.starts_with("A#acme#03|X#golden: "), "{message}")
            }
            other => panic!("{body} decoded as {other:?}"),
        }
    }
}
