//! What the simulated bank decides: pure functions of a submission and of
//! random draws passed in. No I/O, no clock.
//!
//! Metadata `bank_sim` steers a payment, like a test card number (the same
//! values as the built-in simulator's):
//!
//! | `bank_sim`      | outcome                                                       |
//! |-----------------|---------------------------------------------------------------|
//! | `succeed`       | processed (never drawn for `--decline-per-mille`)             |
//! | `fail`          | failed, reason `declined by issuer`                           |
//! | `hang`          | stays pending for ever                                        |
//! | `drop_callback` | processed, the callback is never sent (status query sees it) |
//! | anything else   | processed, or declined with `--decline-per-mille`             |
//!
//! Refunds (accepted only for processed payments) always succeed.

use std::time::Duration;

use super::options::PerMille;
use crate::limits;
use payvisor::random::Random;

/// The metadata key that steers the simulated bank.
pub const BEHAVIOUR_KEY: &str = "bank_sim";

/// The reason of every failed payment.
pub const DECLINED: &str = "declined by issuer";

/// A payment's behaviour, read from its metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Default,
    Succeed,
    Fail,
    Hang,
    DropCallback,
}

impl Behaviour {
    pub fn from_metadata(metadata: &serde_json::Map<String, serde_json::Value>) -> Behaviour {
        match metadata.get(BEHAVIOUR_KEY).and_then(|value| value.as_str()) {
            Some("succeed") => Behaviour::Succeed,
            Some("fail") => Behaviour::Fail,
            Some("hang") => Behaviour::Hang,
            Some("drop_callback") => Behaviour::DropCallback,
            _ => Behaviour::Default,
        }
    }
}

/// A payment as the bank records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaymentStatus {
    Pending,
    Processed,
    Failed,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Processed => "processed",
            PaymentStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<PaymentStatus> {
        [
            PaymentStatus::Pending,
            PaymentStatus::Processed,
            PaymentStatus::Failed,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }

    /// The callback's `type` announcing this outcome.
    pub fn callback_type(self) -> &'static str {
        match self {
            PaymentStatus::Failed => "payment.failed",
            PaymentStatus::Processed | PaymentStatus::Pending => "payment.processed",
        }
    }
}

/// A refund as the bank records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefundStatus {
    Pending,
    Succeeded,
    Failed,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Pending => "pending",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<RefundStatus> {
        [
            RefundStatus::Pending,
            RefundStatus::Succeeded,
            RefundStatus::Failed,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }

    pub fn callback_type(self) -> &'static str {
        match self {
            RefundStatus::Failed => "refund.failed",
            RefundStatus::Succeeded | RefundStatus::Pending => "refund.succeeded",
        }
    }
}

/// An outcome and whether its callback is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict<S> {
    pub status: S,
    pub reason: Option<&'static str>,
    /// False: the message is recorded as dropped and never sent.
    pub send_callback: bool,
}

/// True with probability `per_mille`/1000.
pub fn draw(per_mille: PerMille, random: &dyn Random) -> bool {
    per_mille.get() > 0 && random.below(1000) < u64::from(per_mille.get())
}

/// A uniform draw in the inclusive range, at millisecond resolution.
pub fn delay((min, max): (Duration, Duration), random: &dyn Random) -> Duration {
    let (min_ms, max_ms) = (min.as_millis() as u64, max.as_millis() as u64);
    debug_assert!(min_ms <= max_ms);
    Duration::from_millis(min_ms + random.below(max_ms - min_ms + 1))
}

/// When a new payment's outcome is due: `None` for a hung one (never).
pub fn payment_due_in(
    behaviour: Behaviour,
    outcome_delay: (Duration, Duration),
    random: &dyn Random,
) -> Option<Duration> {
    (behaviour != Behaviour::Hang).then(|| delay(outcome_delay, random))
}

/// A due payment's outcome.
pub fn decide_payment(
    behaviour: Behaviour,
    decline: PerMille,
    drop_callback: PerMille,
    random: &dyn Random,
) -> Verdict<PaymentStatus> {
    debug_assert!(behaviour != Behaviour::Hang, "hung payments are never due");
    let failed = match behaviour {
        Behaviour::Fail => true,
        Behaviour::Default => draw(decline, random),
        Behaviour::Succeed | Behaviour::DropCallback | Behaviour::Hang => false,
    };
    Verdict {
        status: if failed {
            PaymentStatus::Failed
        } else {
            PaymentStatus::Processed
        },
        reason: failed.then_some(DECLINED),
        send_callback: behaviour != Behaviour::DropCallback && !draw(drop_callback, random),
    }
}

/// A due refund's outcome: it succeeds (the payment was processed when the
/// refund was accepted, and the amount was within what remained).
pub fn decide_refund(drop_callback: PerMille, random: &dyn Random) -> Verdict<RefundStatus> {
    Verdict {
        status: RefundStatus::Succeeded,
        reason: None,
        send_callback: !draw(drop_callback, random),
    }
}

/// The wait before attempt `attempts + 1` of a callback, after `attempts`
/// (≥ 1) failed ones: doubling from the initial back-off up to the cap.
pub fn callback_backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    limits::CALLBACK_BACKOFF_INITIAL
        .saturating_mul(1 << doublings)
        .min(limits::CALLBACK_BACKOFF_MAX)
}

/// A callback's `message_id`: the bank's name and a sequence number.
pub fn message_id(bank: &str, seq: i64) -> String {
    format!("{bank}-{seq:08}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use payvisor::random::SeededRandom;

    fn behaviour(value: &str) -> Behaviour {
        let metadata = serde_json::json!({ BEHAVIOUR_KEY: value });
        Behaviour::from_metadata(metadata.as_object().unwrap())
    }

    #[test]
    fn metadata_steers_the_outcome() {
        let random = SeededRandom::new(1);
        let always = PerMille::new("x", 1000).unwrap();
        let never = PerMille::default();
        let fail = decide_payment(behaviour("fail"), never, never, &random);
        assert_eq!(
            (fail.status, fail.reason, fail.send_callback),
            (PaymentStatus::Failed, Some(DECLINED), true)
        );
        let succeed = decide_payment(behaviour("succeed"), always, never, &random);
        assert_eq!(succeed.status, PaymentStatus::Processed);
        let dropped = decide_payment(behaviour("drop_callback"), never, never, &random);
        assert_eq!(
            (dropped.status, dropped.send_callback),
            (PaymentStatus::Processed, false)
        );
        let declined = decide_payment(behaviour("other"), always, never, &random);
        assert_eq!(declined.status, PaymentStatus::Failed);
        assert_eq!(
            payment_due_in(behaviour("hang"), (Duration::ZERO, Duration::ZERO), &random),
            None
        );
        assert!(!decide_refund(always, &random).send_callback);
    }

    #[test]
    fn draws_stay_in_their_ranges() {
        let random = SeededRandom::new(7);
        let range = (Duration::from_millis(5), Duration::from_millis(9));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let drawn = delay(range, &random);
            assert!(drawn >= range.0 && drawn <= range.1);
            seen.insert(drawn);
        }
        assert_eq!(seen.len(), 5, "both ends are reachable");
        let half = PerMille::new("x", 500).unwrap();
        let hits = (0..10_000).filter(|_| draw(half, &random)).count();
        assert!((4_000..6_000).contains(&hits), "{hits}");
    }

    #[test]
    fn back_off_doubles_to_its_cap() {
        assert_eq!(callback_backoff(1), Duration::from_millis(200));
        assert_eq!(callback_backoff(2), Duration::from_millis(400));
        assert_eq!(callback_backoff(5), Duration::from_millis(3200));
        assert_eq!(callback_backoff(6), Duration::from_secs(5));
        assert_eq!(callback_backoff(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn statuses_round_trip_and_message_ids_are_padded() {
        for status in [
            PaymentStatus::Pending,
            PaymentStatus::Processed,
            PaymentStatus::Failed,
        ] {
            assert_eq!(PaymentStatus::parse(status.as_str()), Some(status));
        }
        for status in [
            RefundStatus::Pending,
            RefundStatus::Succeeded,
            RefundStatus::Failed,
        ] {
            assert_eq!(RefundStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(message_id("bank-a", 42), "bank-a-00000042");
    }
}
