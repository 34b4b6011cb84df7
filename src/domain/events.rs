//! Payment events: every state change of a payment (and of each of its
//! refunds) as a value with a stable id, `{payment name}/events/{seq}`,
//! numbered from 1 in the order they happened. The core emits them while it
//! decides; the actor writes them in the same atomic write as the change
//! (the event outbox), and only then are they streamed and delivered.
//!
//! **Invariant:** a payment's events are numbered without gaps, in the order
//! of its changes, and an event never changes once written.

use serde::Serialize;

use super::state::{PaymentState, RefundState};
use super::{parse_payment_name, Money, NameError, PaymentName, Timestamp};

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PaymentEvent {
    pub payment: PaymentName,
    /// 1, 2, … per payment, in the order of its changes.
    pub seq: u64,
    pub at: Timestamp,
    /// The payment's amount and its state once this change was made.
    pub amount: Money,
    pub state: PaymentState,
    pub change: Change,
    /// Who asked for the change (a key id or certificate subject), when a
    /// person or a tool did.
    pub actor: Option<String>,
    /// The W3C `traceparent` of the call that caused the change, when one
    /// did: its webhook deliveries are spans of that trace.
    pub trace: Option<String>,
}

/// What changed. Serialised as the `change` of a webhook's payload (not
/// stored: the store has its own record of it).
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
#[serde(tag = "of", rename_all = "snake_case")]
pub enum Change {
    /// The payment moved to `to` (`from` is `None` for its creation).
    Payment {
        from: Option<PaymentState>,
        to: PaymentState,
        cause: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        failure_reason: Option<String>,
    },
    /// One refund was requested (`Pending`), succeeded or failed.
    Refund {
        refund_id: String,
        amount: Money,
        state: RefundState,
        #[serde(skip_serializing_if = "Option::is_none")]
        failure_reason: Option<String>,
    },
}

impl PaymentEvent {
    /// The event's stable id: `accounts/{a}/payments/{p}/events/{seq}`.
    pub fn name(&self) -> String {
        event_name(&self.payment, self.seq)
    }

    /// `payment.{state}` or `refund.{pending|succeeded|failed}`: what
    /// webhook consumers switch on.
    pub fn event_type(&self) -> String {
        match &self.change {
            Change::Payment { to, .. } => format!("payment.{}", to.as_str()),
            Change::Refund { state, .. } => format!("refund.{}", state.as_str()),
        }
    }
}

/// Every event type there is, as [`PaymentEvent::event_type`] names them
/// (what a webhook endpoint may subscribe to).
pub fn event_types() -> Vec<String> {
    let payments = PaymentState::ALL
        .iter()
        .map(|state| format!("payment.{}", state.as_str()));
    let refunds = (RefundState::ALL.iter()).map(|state| format!("refund.{}", state.as_str()));
    payments.chain(refunds).collect()
}

pub fn event_name(payment: &PaymentName, seq: u64) -> String {
    format!("{payment}/events/{seq}")
}

/// Parses `accounts/{a}/payments/{p}/events/{seq}` (seq ≥ 1).
pub fn parse_event_name(name: &str) -> Result<(PaymentName, u64), NameError> {
    let shape = NameError::Shape {
        expected: "accounts/{account}/payments/{payment}/events/{number}",
    };
    let (payment, seq) = name.rsplit_once("/events/").ok_or(shape.clone())?;
    let seq = seq
        .parse::<u64>()
        .ok()
        .filter(|seq| *seq >= 1 && !seq.to_string().is_empty())
        .ok_or(shape.clone())?;
    Ok((parse_payment_name(payment)?, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_parse_back() {
        let name = parse_payment_name("accounts/a/payments/p").unwrap();
        assert_eq!(
            parse_event_name(&event_name(&name, 7)).unwrap(),
            (name.clone(), 7)
        );
        for bad in [
            "accounts/a/payments/p/events/0",
            "accounts/a/payments/p/events/x",
            "accounts/a/payments/p/events/",
            "accounts/a/payments/p",
            "accounts/a/events/1",
        ] {
            assert!(parse_event_name(bad).is_err(), "{bad}");
        }
    }
}
