//! The pure domain: money, identifiers, time values, the payment state
//! machine and approval. Nothing here does I/O, reads the clock or awaits.
//!
//! **Invariant:** this module imports nothing async, nothing from tonic, AWS
//! or the store. Time and ids are passed in; effects are returned as values.

pub mod access;
pub mod account;
pub mod country;
pub mod events;
pub mod idempotency;
pub mod incidents;
pub mod json;
pub mod ledger;
pub mod money;
pub mod ownership;
pub mod payment;
pub mod rules;
pub mod stalls;
pub mod state;
pub mod time;
pub mod watch;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits;

pub use money::{Currency, Money, MoneyError};

/// A point in time, in milliseconds since the Unix epoch (UTC). Serialised
/// (as the number) in pages (`alerts::Page`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn from_unix_millis(millis: i64) -> Timestamp {
        Timestamp(millis)
    }
    pub fn unix_millis(&self) -> i64 {
        self.0
    }
    pub fn plus_millis(&self, millis: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(millis))
    }
}

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters")]
    TooLong { max: usize },
    #[error("must start with a letter or digit and contain only letters, digits, '-' and '_'")]
    BadCharacters,
}

/// Ids of accounts and payments: 1..=64 characters of `[A-Za-z0-9_-]`,
/// starting with a letter or digit. Safe inside resource names and store keys
/// (no `/`, no `#`).
fn validate_resource_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.chars().count() > limits::RESOURCE_ID_CHARS_MAX {
        return Err(IdError::TooLong {
            max: limits::RESOURCE_ID_CHARS_MAX,
        });
    }
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(IdError::BadCharacters);
    }
    Ok(())
}

macro_rules! resource_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
                let id = id.into();
                validate_resource_id(&id)?;
                Ok(Self(id))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(id: String) -> Result<Self, IdError> {
                Self::new(id)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

resource_id!(
    /// The account a payment credits. The unit of ordering and ownership:
    /// one actor per account, and (later) one node owns an account at a time.
    AccountId
);
resource_id!(
    /// A payment, unique within its account.
    PaymentId
);

/// A client-chosen idempotency key: 1..=255 characters of `[A-Za-z0-9._:-]`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct RequestId(String);

impl RequestId {
    pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(IdError::Empty);
        }
        if id.chars().count() > limits::REQUEST_ID_CHARS_MAX {
            return Err(IdError::TooLong {
                max: limits::REQUEST_ID_CHARS_MAX,
            });
        }
        if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
        {
            return Err(IdError::BadCharacters);
        }
        Ok(Self(id))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `accounts/{account}/payments/{payment}`: a payment's full name.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct PaymentName {
    pub account: AccountId,
    pub payment: PaymentId,
}

impl fmt::Display for PaymentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "accounts/{}/payments/{}", self.account, self.payment)
    }
}

/// Why a resource name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must have the form {expected}")]
    Shape { expected: &'static str },
    #[error("account id {0}")]
    Account(IdError),
    #[error("payment id {0}")]
    Payment(IdError),
}

/// Parses `accounts/{account}`.
pub fn parse_account_name(name: &str) -> Result<AccountId, NameError> {
    let shape = NameError::Shape {
        expected: "accounts/{account}",
    };
    let id = name.strip_prefix("accounts/").ok_or(shape.clone())?;
    if id.contains('/') {
        return Err(shape);
    }
    AccountId::new(id).map_err(NameError::Account)
}

/// Parses `accounts/{account}/payments/{payment}`.
pub fn parse_payment_name(name: &str) -> Result<PaymentName, NameError> {
    let shape = NameError::Shape {
        expected: "accounts/{account}/payments/{payment}",
    };
    let rest = name.strip_prefix("accounts/").ok_or(shape.clone())?;
    let (account, payment) = rest.split_once("/payments/").ok_or(shape.clone())?;
    if account.contains('/') || payment.contains('/') {
        return Err(shape);
    }
    Ok(PaymentName {
        account: AccountId::new(account).map_err(NameError::Account)?,
        payment: PaymentId::new(payment).map_err(NameError::Payment)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        let name = parse_payment_name("accounts/acme-1/payments/pay_42").unwrap();
        assert_eq!(name.to_string(), "accounts/acme-1/payments/pay_42");
        assert_eq!(
            parse_account_name("accounts/acme").unwrap().as_str(),
            "acme"
        );
    }

    #[test]
    fn malformed_names_are_refused() {
        for bad in [
            "",
            "acme",
            "accounts/",
            "accounts/a/b",
            "accounts/-a",
            "accounts/a#b",
            "accounts/a b",
        ] {
            assert!(parse_account_name(bad).is_err(), "{bad:?} accepted");
        }
        for bad in [
            "accounts/a/payments/",
            "accounts/a/refunds/p",
            "accounts/a/payments/p/q",
        ] {
            assert!(parse_payment_name(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("accounts/{}", "a".repeat(65));
        assert!(parse_account_name(&long).is_err());
    }

    #[test]
    fn request_ids_are_bounded() {
        assert!(RequestId::new("req-1:retry.2_x").is_ok());
        assert!(RequestId::new("").is_err());
        assert!(RequestId::new("a b").is_err());
        assert!(RequestId::new("x".repeat(256)).is_err());
    }
}
