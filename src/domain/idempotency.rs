//! Idempotency: the canonical form of a request, kept with its key, so that
//! a replay with the same parameters gets the original answer and a reuse
//! of the key for anything else is refused.
//!
//! **Invariant:** a request's fingerprint never changes across versions.
//! It is stored with the key for the retention (`--idempotency-retention`,
//! 24 hours by default); a changed form would refuse every honest replay of
//! a request made before an upgrade. The unit tests pin
//! the form of each method.

use std::collections::BTreeMap;

use serde::Serialize;

use super::payment::ReviewVerdict;
use super::{Money, PaymentId, PaymentName};

/// The parameters of a request that decide what it does.
#[derive(Serialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Fingerprint<'a> {
    Create {
        payment_id: Option<&'a str>,
        currency: &'a str,
        minor_units: i64,
        metadata: &'a BTreeMap<String, String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        payer_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        payer_country: Option<&'a str>,
    },
    Refund {
        payment: String,
        currency: Option<&'a str>,
        minor_units: Option<i64>,
        reason: &'a str,
    },
    Retry {
        payment: String,
    },
    Fail {
        payment: String,
        reason: &'a str,
    },
    Review {
        payment: String,
        verdict: ReviewVerdict,
        reason: &'a str,
    },
    /// An event delivered again (to one endpoint, or all: `None`).
    Resend {
        event: &'a str,
        endpoint: Option<&'a str>,
    },
}

impl<'a> Fingerprint<'a> {
    pub fn create(
        payment_id: Option<&'a PaymentId>,
        amount: Money,
        metadata: &'a BTreeMap<String, String>,
        payer_id: Option<&'a str>,
        payer_country: Option<&'a str>,
    ) -> Fingerprint<'a> {
        Fingerprint::Create {
            payment_id: payment_id.map(PaymentId::as_str),
            currency: amount.currency().code(),
            minor_units: amount.minor_units(),
            metadata,
            payer_id,
            payer_country,
        }
    }

    /// A refund of `amount` (`None`: whatever is left).
    pub fn refund(
        payment: &PaymentName,
        amount: Option<Money>,
        reason: &'a str,
    ) -> Fingerprint<'a> {
        Fingerprint::Refund {
            payment: payment.to_string(),
            currency: amount.map(|amount| amount.currency().code()),
            minor_units: amount.map(|amount| amount.minor_units()),
            reason,
        }
    }

    /// The canonical text, as stored with the key.
    pub fn encode(&self) -> String {
        // Strings, integers and string maps always serialise.
        serde_json::to_string(self).expect("fingerprints serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{parse_payment_name, Currency};

    fn usd(minor_units: i64) -> Money {
        Money::from_minor(Currency::from_code("USD").unwrap(), minor_units)
    }

    /// The stored forms of today's requests: if one of these fails, replays
    /// of requests made before the change would be refused.
    #[test]
    fn each_methods_canonical_form_is_pinned() {
        let id = PaymentId::new("pay_1").unwrap();
        let metadata = BTreeMap::from([("order".to_owned(), "42".to_owned())]);
        let no_metadata = BTreeMap::new();
        let name = parse_payment_name("accounts/acme/payments/pay_1").unwrap();
        let cases = [
            (
                Fingerprint::create(Some(&id), usd(1_500), &metadata, Some("payer-7"), None),
                r#"{"method":"create","payment_id":"pay_1","currency":"USD","minor_units":1500,"metadata":{"order":"42"},"payer_id":"payer-7"}"#,
            ),
            (
                Fingerprint::create(None, usd(1), &no_metadata, None, Some("DE")),
                r#"{"method":"create","payment_id":null,"currency":"USD","minor_units":1,"metadata":{},"payer_country":"DE"}"#,
            ),
            (
                Fingerprint::refund(&name, Some(usd(500)), "damaged"),
                r#"{"method":"refund","payment":"accounts/acme/payments/pay_1","currency":"USD","minor_units":500,"reason":"damaged"}"#,
            ),
            (
                Fingerprint::refund(&name, None, ""),
                r#"{"method":"refund","payment":"accounts/acme/payments/pay_1","currency":null,"minor_units":null,"reason":""}"#,
            ),
            (
                Fingerprint::Retry {
                    payment: name.to_string(),
                },
                r#"{"method":"retry","payment":"accounts/acme/payments/pay_1"}"#,
            ),
            (
                Fingerprint::Fail {
                    payment: name.to_string(),
                    reason: "bank lost it",
                },
                r#"{"method":"fail","payment":"accounts/acme/payments/pay_1","reason":"bank lost it"}"#,
            ),
            (
                Fingerprint::Review {
                    payment: name.to_string(),
                    verdict: ReviewVerdict::Approve,
                    reason: "known customer",
                },
                r#"{"method":"review","payment":"accounts/acme/payments/pay_1","verdict":"approve","reason":"known customer"}"#,
            ),
            (
                Fingerprint::Resend {
                    event: "accounts/acme/payments/pay_1/events/2",
                    endpoint: Some("shop"),
                },
                r#"{"method":"resend","event":"accounts/acme/payments/pay_1/events/2","endpoint":"shop"}"#,
            ),
        ];
        for (fingerprint, stored) in cases {
            assert_eq!(fingerprint.encode(), stored);
        }
    }
}
