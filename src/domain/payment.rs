//! The payment state machine: a pure function from (payment, command, now,
//! policy) to a [`Decision`]: the next payment, the ledger movements the
//! change causes, and the effects (bank calls) to carry out after the
//! decision is durably written.
//!
//! ```text
//! CREATED ─approve─▶ APPROVED ─dispatch─▶ SENT ─bank ok─▶ PROCESSED ─refunds─▶ PARTIALLY_REFUNDED ─▶ REFUNDED
//!    └─decline─▶ DECLINED                  └─bank no─▶ FAILED
//! ```
//! Approval is decided by the rules (see [`super::rules`]) before the
//! payment is created: approve, decline, or `IN_REVIEW`, where it waits for a
//! person ([`Payment::review`]).
//!
//! Every change emits a [`PaymentEvent`], returned with the decision so that
//! the event is written with the change (outbox).
//!
//! **Invariant:** a terminal payment (REFUNDED, DECLINED, FAILED) never
//! changes; a late or duplicate bank outcome yields no decision at all.
//! **Invariant:** pending + succeeded refunds never exceed the amount.

use std::collections::BTreeMap;

use serde::Serialize;

use super::events::{Change, PaymentEvent};
use super::ledger::{LedgerError, Movement};
use super::rules::{Action, Evaluation};
pub use super::state::{PaymentState, RefundState};
use super::watch::{Alert, OperatorRejection, Stage, StallPolicy, Watch};
use super::{AccountId, Currency, Money, PaymentId, PaymentName, Timestamp};
use crate::limits;

/// Which bank a payment was sent to, and why; and, once it left that bank
/// (a definite rejection, or the bank said it never got it), why.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Route {
    pub bank: String,
    /// Why this bank: e.g. `cheapest healthy bank for USD (cost 20 bps)`.
    pub why: String,
    pub at: Timestamp,
    pub left: Option<Departure>,
}

/// Why a payment left a bank. Only these two: a payment moves on only once
/// the bank is known not to have it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Departure {
    /// The bank refused it for good (it will never process it).
    Rejected { reason: String },
    /// Its status query said it never received it.
    Unknown,
}

/// An outcome reported by a bank (by its callback, its answer to a
/// submission, or its status query).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BankEvent {
    Payment {
        name: PaymentName,
        outcome: BankOutcome,
    },
    Refund {
        name: PaymentName,
        refund_id: String,
        outcome: RefundOutcome,
    },
    /// The bank does not have the payment: it refused it for good, or its
    /// status query said it never received it. Routing may move it on.
    NotAtBank {
        name: PaymentName,
        bank: String,
        departure: Departure,
    },
}

impl BankEvent {
    pub fn payment_name(&self) -> &PaymentName {
        match self {
            BankEvent::Payment { name, .. }
            | BankEvent::Refund { name, .. }
            | BankEvent::NotAtBank { name, .. } => name,
        }
    }
}

/// What a bank's callback does to its payment (it is recorded in the inbox
/// in every case).
#[derive(Debug)]
pub enum CallbackEffect {
    /// The payment moves: the decision is written with the inbox record.
    Applies(Box<Decision>),
    /// Nothing: a duplicate meaning, or an outcome the payment no longer
    /// waits for.
    Ignored,
    /// Nothing: the payment is at another bank.
    FromAnotherBank,
}

/// A person's verdict on a payment in review. Serialised in the
/// fingerprint of a review request (see `actors::account::create`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewVerdict {
    Approve,
    Decline,
}

/// The review of a payment, as recorded on it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Review {
    pub verdict: ReviewVerdict,
    pub reason: String,
    pub at: Timestamp,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Refund {
    /// `r1`, `r2`, … in request order: unique within the payment, and the
    /// bank's idempotency key together with the payment name.
    pub id: String,
    pub amount: Money,
    pub reason: String,
    pub state: RefundState,
    pub failure_reason: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// One entry of a payment's history.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Transition {
    /// `None` for the creation itself.
    pub from: Option<PaymentState>,
    pub to: PaymentState,
    pub cause: String,
    pub at: Timestamp,
    /// Who asked for it (a key id or certificate subject), when a person
    /// or a tool did: a refund, a review, an operator's retry or fail.
    pub actor: Option<String>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Payment {
    pub account: AccountId,
    pub id: PaymentId,
    pub amount: Money,
    pub metadata: BTreeMap<String, String>,
    /// Who pays, as the caller knows them (read by block-list rules).
    pub payer_id: Option<String>,
    /// ISO 3166-1 alpha-2, upper case.
    pub payer_country: Option<String>,
    pub state: PaymentState,
    pub failure_reason: Option<String>,
    /// Kept by the platform when processed; zero until then.
    pub fee: Money,
    pub refunds: Vec<Refund>,
    pub history: Vec<Transition>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The durable reminder while the payment waits (see [`super::watch`]).
    pub watch: Option<Watch>,
    /// What the approval rules said, and which fired.
    pub approval: Option<Evaluation>,
    /// A person's verdict, for payments that were in review.
    pub review: Option<Review>,
    /// Events emitted so far; the next one gets this number plus one.
    pub events_emitted: u64,
    /// The banks this payment was sent to, in order; the last one it has
    /// not left is where it is.
    pub routes: Vec<Route>,
    /// Messages to banks recorded so far (the outbox's sequence).
    pub messages_sent: u64,
    /// Events of the decision being made, not yet handed to its `Decision`
    /// (never stored: `Decision::new` takes them out).
    unsaved_events: Vec<PaymentEvent>,
    /// Who asks for the decision being made ([`Payment::acting`]); its
    /// history entries and events carry it. Never stored: `Decision::new`
    /// clears it, so what follows (a bank's answer) is no one's.
    acting: Option<String>,
    /// The causes of the history entries made while acting (never stored).
    acted: Vec<String>,
}

/// A validated request to create a payment.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NewPayment {
    pub account: AccountId,
    pub id: PaymentId,
    pub amount: Money,
    pub metadata: BTreeMap<String, String>,
    pub payer_id: Option<String>,
    pub payer_country: Option<String>,
}

/// Fees: basis points of the amount plus a fixed part, per currency, with a
/// default for currencies not listed. Zero unless configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fee {
    pub basis_points: u32,
    pub fixed_minor: i64,
}

#[derive(Clone, Debug, Default)]
pub struct FeeSchedule {
    pub default: Fee,
    pub per_currency: BTreeMap<Currency, Fee>,
}

impl FeeSchedule {
    pub fn fee_for(&self, amount: Money) -> Money {
        let fee = self
            .per_currency
            .get(&amount.currency())
            .copied()
            .unwrap_or(self.default);
        amount.fee(fee.basis_points, fee.fixed_minor)
    }
}

/// Everything configurable that decisions depend on.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub fees: FeeSchedule,
    pub stalls: StallPolicy,
}

/// What the bank said about a payment.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum BankOutcome {
    Processed,
    Failed { reason: String },
}

/// What the bank said about a refund.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum RefundOutcome {
    Succeeded,
    Failed { reason: String },
}

/// Work to do after a decision is durably written.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Effect {
    /// Hand the payment to a bank. The payment name is the idempotency key:
    /// re-sending after a crash can never collect twice.
    SubmitPayment {
        name: PaymentName,
        amount: Money,
        metadata: BTreeMap<String, String>,
        /// `None`: to be routed (the actor picks the bank and records the
        /// route in the same write, before sending).
        bank: Option<String>,
    },
    /// Re-drive of a sent payment: ask the bank what it knows; apply a known
    /// outcome, re-submit (same key) if the bank never got it.
    QueryPayment {
        name: PaymentName,
        amount: Money,
        metadata: BTreeMap<String, String>,
        bank: Option<String>,
    },
    /// Ask the bank to return `amount`; `(name, refund_id)` is the key.
    SubmitRefund {
        name: PaymentName,
        refund_id: String,
        amount: Money,
        /// The bank that has the payment.
        bank: Option<String>,
    },
}

/// The outcome of applying a command: persist `payment`, `movements` and
/// the `alert` to deliver in one atomic write, then execute `effects`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Decision {
    pub payment: Payment,
    pub movements: Vec<Movement>,
    pub effects: Vec<Effect>,
    /// A page to deliver after commit (the alert outbox).
    pub alert: Option<Alert>,
    /// What changed, in order (the event outbox).
    pub events: Vec<PaymentEvent>,
    /// Who asked for it (a key id or certificate subject), when a person
    /// or a tool did: staged as an audit record with the change.
    pub actor: Option<String>,
    /// The causes of the history entries they asked for, in order.
    pub acted: Vec<String>,
}

impl Decision {
    pub(super) fn new(
        mut payment: Payment,
        movements: Vec<Movement>,
        effects: Vec<Effect>,
        alert: Option<Alert>,
    ) -> Decision {
        let events = std::mem::take(&mut payment.unsaved_events);
        let actor = payment.acting.take();
        let acted = std::mem::take(&mut payment.acted);
        Decision {
            payment,
            movements,
            effects,
            alert,
            events,
            actor,
            acted,
        }
    }

    /// A decision that changed `previous` into `next`: the watch follows the
    /// new stage, and a page of a stall that ended is resolved.
    pub(super) fn decide(
        previous: &Payment,
        mut next: Payment,
        movements: Vec<Movement>,
        effects: Vec<Effect>,
        now: Timestamp,
        stalls: &StallPolicy,
    ) -> Decision {
        let alert = next.rearm(previous, now, stalls);
        Decision::new(next, movements, effects, alert)
    }
}

/// A refund request the payment refuses (a business answer, not a fault).
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum Rejection {
    #[error("payment is {}; only processed payments can be refunded", .0.api_name())]
    NotRefundable(PaymentState),
    #[error("nothing is left to refund")]
    NothingLeftToRefund,
    #[error("refund of {requested} exceeds the {remaining} that remains refundable")]
    RefundExceedsRemaining { requested: Money, remaining: Money },
    #[error("refund currency {got} differs from the payment currency {expected}")]
    CurrencyMismatch { expected: Currency, got: Currency },
    #[error("a payment can have at most {max} refunds")]
    TooManyRefunds { max: usize },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The decision would break one of the payment's own invariants: a
    /// bug, refused before anything is written.
    #[error("a decision would break an invariant: {0}")]
    Invariant(String),
}

impl Payment {
    /// A payment made at `now` from `new`, CREATED, with nothing recorded
    /// yet: [`create`] records and runs it; the store sets the rest of a
    /// stored one (every other field is public).
    pub fn new(new: NewPayment, now: Timestamp) -> Payment {
        Payment {
            account: new.account,
            id: new.id,
            fee: Money::zero(new.amount.currency()),
            amount: new.amount,
            metadata: new.metadata,
            payer_id: new.payer_id,
            payer_country: new.payer_country,
            state: PaymentState::Created,
            failure_reason: None,
            refunds: Vec::new(),
            history: Vec::new(),
            created_at: now,
            updated_at: now,
            watch: None,
            approval: None,
            review: None,
            events_emitted: 0,
            routes: Vec::new(),
            messages_sent: 0,
            unsaved_events: Vec::new(),
            acting: None,
            acted: Vec::new(),
        }
    }

    pub fn name(&self) -> PaymentName {
        PaymentName {
            account: self.account.clone(),
            payment: self.id.clone(),
        }
    }

    /// The bank the payment is at (routed to and not left), if any.
    pub fn current_bank(&self) -> Option<&str> {
        self.routes
            .last()
            .filter(|route| route.left.is_none())
            .map(|route| route.bank.as_str())
    }

    /// Banks that refused this payment for good: never tried again.
    pub fn refused_by(&self) -> impl Iterator<Item = &str> + Clone {
        self.routes
            .iter()
            .filter(|route| matches!(route.left, Some(Departure::Rejected { .. })))
            .map(|route| route.bank.as_str())
    }

    /// Records that the payment goes to `bank` (written with the decision
    /// that sends it; the route carries its time and reason, so the history
    /// is not repeated).
    pub fn route_to(&mut self, bank: &str, why: &str, now: Timestamp) {
        self.routes.push(Route {
            bank: bank.to_owned(),
            why: why.to_owned(),
            at: now,
            left: None,
        });
    }

    /// What a bank's callback does to this payment: an outcome from a bank
    /// the payment is not at changes nothing (reconciliation reports the
    /// bank's side); any other is decided like [`Self::on_bank_event`].
    pub fn on_bank_callback(
        &self,
        bank: &str,
        event: &BankEvent,
        now: Timestamp,
        policy: &Policy,
    ) -> Result<CallbackEffect, Rejection> {
        if self.current_bank().is_some_and(|at| at != bank) {
            return Ok(CallbackEffect::FromAnotherBank);
        }
        Ok(match self.on_bank_event(event, now, policy)? {
            Some(decision) => CallbackEffect::Applies(Box::new(decision)),
            None => CallbackEffect::Ignored,
        })
    }

    /// What a bank outcome means for this payment (`None`: nothing; it was
    /// not waiting for it).
    pub fn on_bank_event(
        &self,
        event: &BankEvent,
        now: Timestamp,
        policy: &Policy,
    ) -> Result<Option<Decision>, Rejection> {
        match event {
            BankEvent::Payment { outcome, .. } => self.on_bank_outcome(outcome, now, policy),
            BankEvent::Refund {
                refund_id, outcome, ..
            } => self.on_refund_outcome(refund_id, outcome, now, policy),
            BankEvent::NotAtBank {
                bank, departure, ..
            } => Ok(self.on_not_at_bank(bank, departure.clone(), now, policy)),
        }
    }

    /// The bank the payment is at says it does not have it: refused for
    /// good, or unknown to its status query. The payment leaves that bank
    /// and is sent again, to be routed (the same bank may be chosen again
    /// after `Unknown`; never after `Rejected`). `None` unless the payment
    /// is SENT and at `bank` (a late or stale answer changes nothing).
    pub fn on_not_at_bank(
        &self,
        bank: &str,
        departure: Departure,
        now: Timestamp,
        policy: &Policy,
    ) -> Option<Decision> {
        if self.state != PaymentState::Sent || self.current_bank() != Some(bank) {
            return None;
        }
        let mut next = self.clone();
        let cause = match &departure {
            Departure::Rejected { .. } => format!("rejected_by_{bank}"),
            Departure::Unknown => format!("unknown_to_{bank}"),
        };
        if let Some(route) = next.routes.last_mut() {
            route.left = Some(departure);
        }
        next.updated_at = now;
        next.record_event(self.state, &cause, now);
        let effect = Effect::SubmitPayment {
            name: self.name(),
            amount: self.amount,
            metadata: self.metadata.clone(),
            bank: None,
        };
        Some(Decision::decide(
            self,
            next,
            Vec::new(),
            vec![effect],
            now,
            &policy.stalls,
        ))
    }

    /// No bank can take this payment (none supports its currency, or every
    /// one refused it): it ends FAILED and its pending funds are released.
    pub fn fail_unroutable(
        &self,
        reason: &str,
        now: Timestamp,
        policy: &Policy,
    ) -> Result<Decision, Rejection> {
        Ok(self.give_up(reason, "no_bank", now, policy)?)
    }

    /// FAILED with `reason` before the bank settled it (`cause` names who
    /// gave up); a SENT payment's pending money goes back to the account.
    pub(super) fn give_up(
        &self,
        reason: &str,
        cause: &str,
        now: Timestamp,
        policy: &Policy,
    ) -> Result<Decision, LedgerError> {
        let movements = if self.state == PaymentState::Sent {
            vec![Movement::payment_failed(self.id.clone(), self.amount)?]
        } else {
            Vec::new()
        };
        let mut next = self.clone();
        next.failure_reason = Some(reason.to_owned());
        next.transition(PaymentState::Failed, cause, now);
        Ok(Decision::decide(
            self,
            next,
            movements,
            Vec::new(),
            now,
            &policy.stalls,
        ))
    }

    /// Money returned to the payer (succeeded refunds).
    pub fn refunded(&self) -> Money {
        self.refund_total(|state| state == RefundState::Succeeded)
    }

    /// Money refunded or reserved for refunds in flight.
    pub fn committed_to_refunds(&self) -> Money {
        self.refund_total(|state| state != RefundState::Failed)
    }

    fn refund_total(&self, include: impl Fn(RefundState) -> bool) -> Money {
        self.refunds
            .iter()
            .filter(|refund| include(refund.state))
            .fold(Money::zero(self.amount.currency()), |sum, refund| {
                // Bounded by the payment amount (checked at request time).
                sum.checked_add(refund.amount).unwrap_or(sum)
            })
    }

    /// The payment's own invariants: refunds (pending and done) within the
    /// amount, `REFUNDED` exactly when everything was returned, the fee
    /// within the amount, amounts in the payment's currency. Checked before
    /// every write and after every read.
    pub fn check_invariants(&self) -> Result<(), String> {
        let currency = self.amount.currency();
        if self
            .refunds
            .iter()
            .any(|refund| refund.amount.currency() != currency)
            || self.fee.currency() != currency
        {
            return Err(format!(
                "payment {}: amounts in a foreign currency",
                self.name()
            ));
        }
        if self.committed_to_refunds() > self.amount {
            return Err(format!(
                "payment {}: refunds exceed the amount",
                self.name()
            ));
        }
        if (self.state == PaymentState::Refunded) != (self.refunded() == self.amount) {
            return Err(format!(
                "payment {}: state {:?} disagrees with its refunds",
                self.name(),
                self.state
            ));
        }
        if self.fee > self.amount || self.fee.is_negative() {
            return Err(format!("payment {}: fee outside 0..=amount", self.name()));
        }
        Ok(())
    }

    /// Whether something is still to happen without a person acting: a bank
    /// outcome or a refund outcome is awaited.
    pub fn has_pending_work(&self) -> bool {
        // Every stage a payment can wait in, except a person's review.
        Stage::of(self).is_some_and(|stage| stage != Stage::InReview)
    }

    /// The effects that carry this payment forward from its persisted state.
    /// Re-executing them is safe (bank calls are idempotent by key); this is
    /// what start-up recovery and supervision restarts run.
    pub fn pending_effects(&self) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.state == PaymentState::Sent {
            effects.push(Effect::SubmitPayment {
                name: self.name(),
                amount: self.amount,
                metadata: self.metadata.clone(),
                bank: self.current_bank().map(str::to_owned),
            });
        }
        for refund in self
            .refunds
            .iter()
            .filter(|refund| refund.state == RefundState::Pending)
        {
            effects.push(Effect::SubmitRefund {
                name: self.name(),
                refund_id: refund.id.clone(),
                amount: refund.amount,
                bank: self.current_bank().map(str::to_owned),
            });
        }
        effects
    }

    pub(super) fn transition(&mut self, to: PaymentState, cause: &str, now: Timestamp) {
        debug_assert!(!self.state.is_terminal(), "terminal payments never change");
        let from = self.state;
        self.state = to;
        self.updated_at = now;
        self.record(Some(from), to, cause, now);
        let failure_reason = self.failure_reason.clone();
        self.emit(
            Change::Payment {
                from: Some(from),
                to,
                cause: cause.to_owned(),
                failure_reason,
            },
            now,
        );
    }

    /// Adds an event to the decision being made.
    fn emit(&mut self, change: Change, at: Timestamp) {
        self.events_emitted += 1;
        self.unsaved_events.push(PaymentEvent {
            payment: self.name(),
            seq: self.events_emitted,
            at,
            amount: self.amount,
            state: self.state,
            change,
            actor: self.acting.clone(),
            trace: None,
        });
    }

    fn emit_refund(&mut self, index: usize, at: Timestamp) {
        let refund = &self.refunds[index];
        let change = Change::Refund {
            refund_id: refund.id.clone(),
            amount: refund.amount,
            state: refund.state,
            failure_reason: refund.failure_reason.clone(),
        };
        self.emit(change, at);
    }

    /// A history entry that is not a state change (a re-drive, a page).
    pub(super) fn record_event(&mut self, state: PaymentState, cause: &str, at: Timestamp) {
        self.record(Some(state), state, cause, at);
    }

    fn record(&mut self, from: Option<PaymentState>, to: PaymentState, cause: &str, at: Timestamp) {
        if self.history.len() >= limits::HISTORY_ENTRIES_MAX {
            // Keep the creation entry; drop the oldest after it.
            self.history.remove(1);
        }
        if self.acting.is_some() {
            self.acted.push(cause.to_owned());
        }
        self.history.push(Transition {
            from,
            to,
            cause: cause.to_owned(),
            at,
            actor: self.acting.clone(),
        });
    }

    /// This payment, with `actor` as who asks for the next decision (a
    /// refund, a review, a retry or a fail): its history entries and
    /// events record them.
    pub fn acting(mut self, actor: Option<String>) -> Payment {
        self.acting = actor;
        self
    }

    /// A bank outcome for the payment. `None` when it changes nothing: the
    /// payment is not waiting for one (late, duplicate or out of order).
    pub fn on_bank_outcome(
        &self,
        outcome: &BankOutcome,
        now: Timestamp,
        policy: &Policy,
    ) -> Result<Option<Decision>, Rejection> {
        if self.state != PaymentState::Sent {
            return Ok(None);
        }
        let mut next = self.clone();
        let movement = match outcome {
            BankOutcome::Processed => {
                next.fee = policy.fees.fee_for(self.amount);
                next.transition(PaymentState::Processed, "bank_processed", now);
                Movement::payment_processed(self.id.clone(), self.amount, next.fee)?
            }
            BankOutcome::Failed { reason } => {
                next.failure_reason = Some(reason.clone());
                next.transition(PaymentState::Failed, "bank_failed", now);
                Movement::payment_failed(self.id.clone(), self.amount)?
            }
        };
        Ok(Some(Decision::decide(
            self,
            next,
            vec![movement],
            Vec::new(),
            now,
            &policy.stalls,
        )))
    }

    /// Reserves a refund of `amount` (all that remains when `None`).
    pub fn request_refund(
        &self,
        amount: Option<Money>,
        reason: &str,
        now: Timestamp,
        policy: &Policy,
    ) -> Result<Decision, Rejection> {
        if !matches!(
            self.state,
            PaymentState::Processed | PaymentState::PartiallyRefunded
        ) {
            return Err(Rejection::NotRefundable(self.state));
        }
        let remaining = self
            .amount
            .checked_sub(self.committed_to_refunds())
            .map_err(LedgerError::from)?;
        let amount = amount.unwrap_or(remaining);
        if amount.currency() != self.amount.currency() {
            return Err(Rejection::CurrencyMismatch {
                expected: self.amount.currency(),
                got: amount.currency(),
            });
        }
        if remaining.is_zero() {
            return Err(Rejection::NothingLeftToRefund);
        }
        if amount > remaining {
            return Err(Rejection::RefundExceedsRemaining {
                requested: amount,
                remaining,
            });
        }
        if self.refunds.len() >= limits::REFUNDS_PER_PAYMENT_MAX {
            return Err(Rejection::TooManyRefunds {
                max: limits::REFUNDS_PER_PAYMENT_MAX,
            });
        }
        let refund_id = format!("r{}", self.refunds.len() + 1);
        let mut next = self.clone();
        next.updated_at = now;
        next.refunds.push(Refund {
            id: refund_id.clone(),
            amount,
            reason: reason.to_owned(),
            state: RefundState::Pending,
            failure_reason: None,
            created_at: now,
            updated_at: now,
        });
        next.emit_refund(next.refunds.len() - 1, now);
        // In the history too: who asked for it (when someone did) goes with it.
        next.record_event(next.state, &format!("refund_{refund_id}_requested"), now);
        let movement = Movement::refund_requested(self.id.clone(), &refund_id, amount)?;
        let effect = Effect::SubmitRefund {
            name: self.name(),
            refund_id,
            amount,
            bank: self.current_bank().map(str::to_owned),
        };
        Ok(Decision::decide(
            self,
            next,
            vec![movement],
            vec![effect],
            now,
            &policy.stalls,
        ))
    }

    /// A bank outcome for one refund. `None` when the refund is unknown or no
    /// longer pending (duplicate or late).
    pub fn on_refund_outcome(
        &self,
        refund_id: &str,
        outcome: &RefundOutcome,
        now: Timestamp,
        policy: &Policy,
    ) -> Result<Option<Decision>, Rejection> {
        let Some(index) = self
            .refunds
            .iter()
            .position(|refund| refund.id == refund_id && refund.state == RefundState::Pending)
        else {
            return Ok(None);
        };
        let mut next = self.clone();
        let amount = next.refunds[index].amount;
        next.updated_at = now;
        next.refunds[index].updated_at = now;
        let movement = match outcome {
            RefundOutcome::Succeeded => {
                next.refunds[index].state = RefundState::Succeeded;
                next.emit_refund(index, now);
                let target = if next.refunded() == next.amount {
                    PaymentState::Refunded
                } else {
                    PaymentState::PartiallyRefunded
                };
                let cause = format!("refund_{refund_id}_succeeded");
                if target != next.state {
                    next.transition(target, &cause, now);
                }
                Movement::refund_succeeded(self.id.clone(), refund_id, amount)?
            }
            RefundOutcome::Failed { reason } => {
                next.refunds[index].state = RefundState::Failed;
                next.refunds[index].failure_reason = Some(reason.clone());
                next.emit_refund(index, now);
                Movement::refund_failed(self.id.clone(), refund_id, amount)?
            }
        };
        Ok(Some(Decision::decide(
            self,
            next,
            vec![movement],
            Vec::new(),
            now,
            &policy.stalls,
        )))
    }

    /// Runs a payment as far as it goes without waiting, from CREATED or
    /// APPROVED: approval, then dispatch to a bank. Every transition is
    /// written in one atomic write before the bank is called.
    pub(super) fn advance(&self, now: Timestamp, policy: &Policy) -> Result<Decision, Rejection> {
        let mut next = self.clone();
        if next.state == PaymentState::Created {
            // Decided by the rules at creation; a payment recorded without
            // an evaluation (none configured) is approved.
            let action = next
                .approval
                .as_ref()
                .map_or(Action::Approve, |evaluation| evaluation.action);
            match action {
                Action::Decline => {
                    let fired = next.approval.as_ref().map(fired_rules).unwrap_or_default();
                    next.failure_reason = Some(format!("declined by rules: {fired}"));
                    next.transition(PaymentState::Declined, "rules_declined", now);
                }
                Action::Review => next.transition(PaymentState::InReview, "rules_review", now),
                Action::Approve => next.transition(PaymentState::Approved, "approved", now),
            }
        }
        if next.state != PaymentState::Approved {
            return Ok(Decision::decide(
                self,
                next,
                Vec::new(),
                Vec::new(),
                now,
                &policy.stalls,
            ));
        }
        next.transition(PaymentState::Sent, "dispatched", now);
        let movement = Movement::payment_sent(next.id.clone(), next.amount)?;
        let effects = next.pending_effects();
        Ok(Decision::decide(
            self,
            next,
            vec![movement],
            effects,
            now,
            &policy.stalls,
        ))
    }
}

/// "Rule a (detail); rule b (detail)".
fn fired_rules(evaluation: &Evaluation) -> String {
    evaluation
        .fired
        .iter()
        .map(|fired| format!("{} ({})", fired.rule, fired.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Payment {
    /// A person's verdict on a payment in review: approved, it is dispatched
    /// to a bank in the same decision; declined, it ends `DECLINED` with the
    /// reason. Only an `IN_REVIEW` payment can be reviewed, so a payment is
    /// never approved twice, nor approved after it was declined.
    pub fn review(
        &self,
        verdict: ReviewVerdict,
        reason: &str,
        now: Timestamp,
        policy: &Policy,
    ) -> Result<Decision, OperatorRejection> {
        if self.state != PaymentState::InReview {
            return Err(OperatorRejection::NotInReview(self.state));
        }
        let mut next = self.clone();
        next.review = Some(Review {
            verdict,
            reason: reason.to_owned(),
            at: now,
        });
        match verdict {
            ReviewVerdict::Approve => {
                next.transition(PaymentState::Approved, "review_approved", now);
                // Dispatch only fails on a ledger overflow, which the amount
                // bounds rule out; report it as the payment's own state.
                let dispatched = next
                    .advance(now, policy)
                    .map_err(|_| OperatorRejection::NotInReview(self.state))?;
                // The watch and page follow the whole step from IN_REVIEW.
                let mut decision = Decision::decide(
                    self,
                    dispatched.payment,
                    dispatched.movements,
                    dispatched.effects,
                    now,
                    &policy.stalls,
                );
                decision.events = dispatched.events;
                decision.actor = dispatched.actor;
                decision.acted = dispatched.acted;
                Ok(decision)
            }
            ReviewVerdict::Decline => {
                next.failure_reason = Some(reason.to_owned());
                next.transition(PaymentState::Declined, "review_declined", now);
                Ok(Decision::decide(
                    self,
                    next,
                    Vec::new(),
                    Vec::new(),
                    now,
                    &policy.stalls,
                ))
            }
        }
    }
}

/// Creates a payment with the approval rules' `evaluation` and runs it as
/// far as it goes without waiting: approval (or review), then dispatch to a
/// bank. All these transitions are written in one atomic write before the
/// bank is called.
pub fn create(
    new: NewPayment,
    evaluation: Option<Evaluation>,
    now: Timestamp,
    policy: &Policy,
) -> Result<Decision, Rejection> {
    let mut payment = Payment::new(new, now);
    payment.approval = evaluation;
    payment.record(None, PaymentState::Created, "created", now);
    payment.emit(
        Change::Payment {
            from: None,
            to: PaymentState::Created,
            cause: "created".into(),
            failure_reason: None,
        },
        now,
    );
    payment.advance(now, policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(minor: i64) -> Money {
        Money::from_minor(Currency::from_code("USD").unwrap(), minor)
    }
    fn at(millis: i64) -> Timestamp {
        Timestamp::from_unix_millis(millis)
    }
    fn new_payment(minor: i64) -> NewPayment {
        NewPayment {
            account: AccountId::new("acme").unwrap(),
            id: PaymentId::new("p1").unwrap(),
            amount: usd(minor),
            metadata: BTreeMap::new(),
            payer_id: None,
            payer_country: None,
        }
    }
    fn create_new(new: NewPayment, now: Timestamp, policy: &Policy) -> Result<Decision, Rejection> {
        create(new, None, now, policy)
    }
    fn processed(minor: i64) -> Payment {
        let sent = create_new(new_payment(minor), at(1), &Policy::default())
            .unwrap()
            .payment;
        sent.on_bank_outcome(&BankOutcome::Processed, at(2), &Policy::default())
            .unwrap()
            .unwrap()
            .payment
    }

    #[test]
    fn creation_runs_to_sent_with_one_bank_call() {
        let decision = create_new(new_payment(500), at(1), &Policy::default()).unwrap();
        assert_eq!(decision.payment.state, PaymentState::Sent);
        let states: Vec<_> = decision.payment.history.iter().map(|t| t.to).collect();
        assert_eq!(
            states,
            [
                PaymentState::Created,
                PaymentState::Approved,
                PaymentState::Sent
            ]
        );
        assert_eq!(decision.effects.len(), 1);
        assert_eq!(decision.movements.len(), 1);
    }

    fn evaluation(action: Action) -> Evaluation {
        Evaluation {
            action,
            fired: vec![crate::domain::rules::FiredRule {
                rule: "big".into(),
                action,
                detail: "amount above 10.00 USD".into(),
            }],
            rules_version: "v1".into(),
        }
    }

    #[test]
    fn a_declining_evaluation_declines_without_moving_money() {
        let decision = create(
            new_payment(1001),
            Some(evaluation(Action::Decline)),
            at(1),
            &Policy::default(),
        )
        .unwrap();
        assert_eq!(decision.payment.state, PaymentState::Declined);
        assert!(decision.movements.is_empty() && decision.effects.is_empty());
        assert_eq!(
            decision.payment.failure_reason.as_deref(),
            Some("declined by rules: big (amount above 10.00 USD)")
        );
        assert_eq!(decision.payment.approval, Some(evaluation(Action::Decline)));
        let types: Vec<_> = decision.events.iter().map(|e| e.event_type()).collect();
        assert_eq!(types, ["payment.created", "payment.declined"]);
    }

    #[test]
    fn who_asked_is_recorded_with_the_change_and_no_further() {
        let policy = Policy::default();
        let in_review = create(
            new_payment(500),
            Some(evaluation(Action::Review)),
            at(1),
            &policy,
        )
        .unwrap()
        .payment;
        assert!(in_review.history.iter().all(|entry| entry.actor.is_none()));
        let approved = in_review
            .acting(Some("reviewer-7".into()))
            .review(ReviewVerdict::Approve, "looks fine", at(2), &policy)
            .unwrap();
        let by_reviewer: Vec<_> = approved
            .payment
            .history
            .iter()
            .filter(|entry| entry.actor.as_deref() == Some("reviewer-7"))
            .map(|entry| entry.to)
            .collect();
        assert_eq!(by_reviewer, [PaymentState::Approved, PaymentState::Sent]);
        assert!(!approved.events.is_empty());
        assert_eq!(approved.actor.as_deref(), Some("reviewer-7"));
        assert_eq!(approved.acted, ["review_approved", "dispatched"]);
        assert!(approved
            .events
            .iter()
            .all(|event| event.actor.as_deref() == Some("reviewer-7")));
        // The bank's answer that follows is no one's.
        let processed = approved
            .payment
            .on_bank_outcome(&BankOutcome::Processed, at(3), &policy)
            .unwrap()
            .unwrap();
        assert_eq!(processed.payment.history.last().unwrap().actor, None);
        assert_eq!((processed.actor, processed.acted.len()), (None, 0));
        assert!(processed.events.iter().all(|event| event.actor.is_none()));
    }

    #[test]
    fn a_payment_in_review_waits_then_is_approved_once_or_declined() {
        let policy = Policy::default();
        let review = create(
            new_payment(500),
            Some(evaluation(Action::Review)),
            at(1),
            &policy,
        )
        .unwrap();
        assert_eq!(review.payment.state, PaymentState::InReview);
        assert!(review.effects.is_empty() && review.movements.is_empty());
        assert_eq!(
            review.payment.watch.as_ref().map(|w| w.stage),
            Some(Stage::InReview)
        );
        let in_review = review.payment;
        let approved = in_review
            .review(ReviewVerdict::Approve, "looks fine", at(2), &policy)
            .unwrap();
        assert_eq!(approved.payment.state, PaymentState::Sent);
        assert_eq!(approved.effects.len(), 1);
        assert_eq!(approved.movements.len(), 1);
        let seqs: Vec<_> = approved
            .events
            .iter()
            .map(|e| (e.seq, e.event_type()))
            .collect();
        assert_eq!(
            seqs,
            [(3, "payment.approved".into()), (4, "payment.sent".into())]
        );
        assert_eq!(
            approved
                .payment
                .review(ReviewVerdict::Approve, "again", at(3), &policy)
                .unwrap_err(),
            OperatorRejection::NotInReview(PaymentState::Sent)
        );
        let declined = in_review
            .review(ReviewVerdict::Decline, "stolen card", at(2), &policy)
            .unwrap();
        assert_eq!(declined.payment.state, PaymentState::Declined);
        assert_eq!(
            declined.payment.failure_reason.as_deref(),
            Some("stolen card")
        );
        assert!(declined.movements.is_empty() && declined.effects.is_empty());
        assert_eq!(declined.payment.watch, None);
        assert!(declined
            .payment
            .review(ReviewVerdict::Approve, "oops", at(3), &policy)
            .is_err());
    }

    #[test]
    fn every_change_emits_one_event_numbered_in_order() {
        let policy = Policy::default();
        let created = create_new(new_payment(1000), at(1), &policy).unwrap();
        let types: Vec<_> = created.events.iter().map(|e| e.event_type()).collect();
        assert_eq!(
            types,
            ["payment.created", "payment.approved", "payment.sent"]
        );
        assert!(created.payment.unsaved_events.is_empty());
        let processed = created
            .payment
            .on_bank_outcome(&BankOutcome::Processed, at(2), &policy)
            .unwrap()
            .unwrap();
        let refunding = processed
            .payment
            .request_refund(None, "r", at(3), &policy)
            .unwrap();
        let refunded = refunding
            .payment
            .on_refund_outcome("r1", &RefundOutcome::Succeeded, at(4), &policy)
            .unwrap()
            .unwrap();
        let later: Vec<_> = [&processed, &refunding, &refunded]
            .iter()
            .flat_map(|d| d.events.iter().map(|e| (e.seq, e.event_type())))
            .collect();
        assert_eq!(
            later,
            [
                (4, "payment.processed".to_string()),
                (5, "refund.pending".into()),
                (6, "refund.succeeded".into()),
                (7, "payment.refunded".into()),
            ]
        );
        assert_eq!(
            refunded.events[1].name(),
            "accounts/acme/payments/p1/events/7"
        );
    }

    #[test]
    fn late_bank_outcomes_never_change_a_terminal_payment() {
        let sent = create_new(new_payment(500), at(1), &Policy::default())
            .unwrap()
            .payment;
        let failed = sent
            .on_bank_outcome(
                &BankOutcome::Failed {
                    reason: "no".into(),
                },
                at(2),
                &Policy::default(),
            )
            .unwrap()
            .unwrap()
            .payment;
        assert_eq!(failed.state, PaymentState::Failed);
        assert_eq!(
            failed.on_bank_outcome(&BankOutcome::Processed, at(3), &Policy::default()),
            Ok(None)
        );
    }

    #[test]
    fn refunds_cannot_exceed_the_amount_together() {
        let payment = processed(1000);
        let first = payment
            .request_refund(Some(usd(600)), "r", at(3), &Policy::default())
            .unwrap()
            .payment;
        assert!(matches!(
            first.request_refund(Some(usd(401)), "r", at(4), &Policy::default()),
            Err(Rejection::RefundExceedsRemaining { .. })
        ));
        let rest = first
            .request_refund(None, "r", at(4), &Policy::default())
            .unwrap();
        assert_eq!(rest.payment.refunds[1].amount, usd(400));
        assert_eq!(
            rest.payment
                .request_refund(None, "r", at(5), &Policy::default()),
            Err(Rejection::NothingLeftToRefund)
        );
    }

    #[test]
    fn refund_outcomes_drive_the_payment_state() {
        let payment = processed(1000);
        let one = payment
            .request_refund(Some(usd(300)), "r", at(3), &Policy::default())
            .unwrap()
            .payment;
        let one = one
            .on_refund_outcome("r1", &RefundOutcome::Succeeded, at(4), &Policy::default())
            .unwrap()
            .unwrap()
            .payment;
        assert_eq!(one.state, PaymentState::PartiallyRefunded);
        let two = one
            .request_refund(None, "r", at(5), &Policy::default())
            .unwrap()
            .payment;
        let failed = two
            .on_refund_outcome(
                "r2",
                &RefundOutcome::Failed { reason: "x".into() },
                at(6),
                &Policy::default(),
            )
            .unwrap()
            .unwrap()
            .payment;
        assert_eq!(failed.state, PaymentState::PartiallyRefunded);
        let three = failed
            .request_refund(None, "r", at(7), &Policy::default())
            .unwrap()
            .payment;
        let done = three
            .on_refund_outcome("r3", &RefundOutcome::Succeeded, at(8), &Policy::default())
            .unwrap()
            .unwrap()
            .payment;
        assert_eq!(done.state, PaymentState::Refunded);
        assert_eq!(done.refunded(), usd(1000));
        assert_eq!(
            done.on_refund_outcome("r3", &RefundOutcome::Succeeded, at(9), &Policy::default()),
            Ok(None)
        );
    }

    #[test]
    fn a_payment_leaves_a_bank_only_when_the_bank_does_not_have_it() {
        let policy = Policy::default();
        let mut sent = create_new(new_payment(500), at(1), &policy)
            .unwrap()
            .payment;
        sent.route_to("bank-a", "cheapest", at(1));
        assert_eq!(sent.current_bank(), Some("bank-a"));
        // Another bank's answer, or one for a settled payment: nothing.
        assert!(sent
            .on_not_at_bank("bank-b", Departure::Unknown, at(2), &policy)
            .is_none());
        let rejected = sent
            .on_not_at_bank(
                "bank-a",
                Departure::Rejected {
                    reason: "no EUR".into(),
                },
                at(2),
                &policy,
            )
            .unwrap();
        assert_eq!(rejected.payment.state, PaymentState::Sent);
        assert_eq!(rejected.payment.current_bank(), None);
        assert!(rejected.movements.is_empty(), "the money stays pending");
        assert!(matches!(
            rejected.effects[..],
            [Effect::SubmitPayment { bank: None, .. }]
        ));
        assert_eq!(
            rejected.payment.refused_by().collect::<Vec<_>>(),
            ["bank-a"]
        );
        let processed = sent
            .on_bank_outcome(&BankOutcome::Processed, at(3), &policy)
            .unwrap()
            .unwrap()
            .payment;
        assert!(processed
            .on_not_at_bank("bank-a", Departure::Unknown, at(4), &policy)
            .is_none());
        // No bank left: FAILED, the pending money released.
        let failed = rejected
            .payment
            .fail_unroutable("no bank can take a EUR payment", at(5), &policy)
            .unwrap();
        assert_eq!(failed.payment.state, PaymentState::Failed);
        assert_eq!(failed.movements.len(), 1);
    }

    #[test]
    fn invariant_checks_catch_a_corrupt_payment() {
        let mut payment = processed(1000);
        assert_eq!(payment.check_invariants(), Ok(()));
        payment.refunds.push(Refund {
            id: "r1".into(),
            amount: usd(1001),
            reason: "r".into(),
            state: RefundState::Pending,
            failure_reason: None,
            created_at: at(3),
            updated_at: at(3),
        });
        assert!(payment.check_invariants().is_err());
        let mut refunded = processed(1000);
        refunded.state = PaymentState::Refunded;
        assert!(refunded.check_invariants().is_err());
    }

    #[test]
    fn unprocessed_payments_cannot_be_refunded() {
        let sent = create_new(new_payment(500), at(1), &Policy::default())
            .unwrap()
            .payment;
        assert_eq!(
            sent.request_refund(None, "r", at(2), &Policy::default()),
            Err(Rejection::NotRefundable(PaymentState::Sent))
        );
    }
}
