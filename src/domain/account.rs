//! An account's book and the whole of what one decision writes, decided
//! without I/O.
//!
//! The payment state machine ([`super::payment`]) decides what happens to a
//! payment. What the account adds around it is decided here too: which bank
//! a payment goes to and why ([`BankChooser`]), the numbering of its
//! messages to banks (the outbox), the ledger movements applied to the
//! account's balances under their sign rules and numbered, the velocity
//! bookkeeping of the approval rules, the idempotency record, the page to
//! deliver and a pending delivery per webhook endpoint. [`AccountBook::stage`]
//! returns all of it as one [`StagedDecision`]; the account actor only
//! writes it (through the store's schema) and then executes it.
//!
//! **Invariant:** a staged decision leaves the book as the write will leave
//! the account item; a decision refused here leaves the book unchanged.

use super::events::PaymentEvent;
use super::ledger::{Balances, Movement};
use super::money::Currency;
use super::payment::{Decision, Effect, Payment, PaymentState, Policy, Rejection};
use super::rules::{Action, VelocityLog};
use super::watch::Alert;
use super::{PaymentId, PaymentName, RequestId, Timestamp};

/// The account item: balances, how many movements have been written, and
/// the approval rules' memory of recent payments.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AccountBook {
    pub balances: Balances,
    /// Movements written so far; the next one gets this sequence number.
    pub movement_count: u64,
    /// Recent accepted payments, for the approval rules' velocity limits.
    pub velocity: VelocityLog,
    /// The lease epoch of the node that last wrote the account (0 on a
    /// single node): a node holding an older epoch may not write it again
    /// ([`super::ownership::fence`]).
    pub owner_epoch: u64,
}

/// What an idempotency key was used for, so a replay can be answered and a
/// reuse with other parameters refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The canonical form of the original request.
    pub fingerprint: String,
    /// The payment the request created or changed.
    pub payment: PaymentId,
    pub created_at: Timestamp,
    /// Kept at least until then (24 h after creation).
    pub expires_at: Timestamp,
}

/// The page to deliver, as recorded (the alert outbox).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertRecord {
    pub payment: PaymentName,
    pub alert: Alert,
    /// Set when the sink acknowledged it; the item then leaves the index.
    pub delivered_at: Option<Timestamp>,
}

/// A decision's events as recorded, with their delivery to each endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// At least one; consecutive numbers of one payment.
    pub events: Vec<PaymentEvent>,
    /// One per webhook endpoint configured when the events were written.
    pub deliveries: Vec<Delivery>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryState {
    /// Being attempted (with back-off) until `retry_until`.
    Pending,
    /// Every event of the record was acknowledged by the endpoint.
    Delivered,
    /// Not acknowledged by `retry_until`: given up until an operator re-sends.
    Failed,
}

/// The delivery of one record's events to one endpoint, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub endpoint: String,
    pub state: DeliveryState,
    /// Events of the record acknowledged so far (they go in order).
    pub acknowledged: usize,
    /// Attempts since the delivery was last (re)started.
    pub attempts: u32,
    pub next_attempt_at: Timestamp,
    pub retry_until: Timestamp,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<Timestamp>,
    /// Who last re-sent the delivery (`ResendPaymentEvent`), when an
    /// identified caller did.
    pub resent_by: Option<String>,
}

impl EventRecord {
    pub fn payment(&self) -> &PaymentName {
        &self.events[0].payment
    }
    pub fn first_seq(&self) -> u64 {
        self.events[0].seq
    }
    /// When the next attempt of any pending delivery is due, if any is.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.deliveries
            .iter()
            .filter(|delivery| delivery.state == DeliveryState::Pending)
            .map(|delivery| delivery.next_attempt_at)
            .min()
    }
}

/// A message to a bank (the outbox): written with the decision that sends
/// it, acknowledged when the bank has accepted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRecord {
    pub payment: PaymentName,
    /// 1, 2, … per payment.
    pub seq: u64,
    pub bank: String,
    /// `None` for the payment itself.
    pub refund_id: Option<String>,
    pub currency: String,
    pub minor_units: i64,
    pub created_at: Timestamp,
    pub acknowledged_at: Option<Timestamp>,
}

/// The node's banks as the core sees them: a choice for a payment, made
/// from the router's current view (health, cost, priority). Injected, so
/// that the decision stays pure and property tests can generate banks.
pub trait BankChooser {
    /// The bank for a payment in `currency`, and why; `None` when no bank
    /// outside `refused` supports the currency.
    fn choose(&self, currency: Currency, refused: &[&str]) -> Option<(String, String)>;
    /// Where a message goes whose effect names no bank (a node with one
    /// bank, or payments from before routing).
    fn default_bank(&self) -> &str;
}

/// Everything a staged decision depends on besides the book and the
/// decision itself.
pub struct StageContext<'a> {
    pub now: Timestamp,
    pub policy: &'a Policy,
    pub banks: &'a dyn BankChooser,
    /// How long the rules in force look back (`0`: no velocity rule, the
    /// log is emptied).
    pub velocity_keep_millis: i64,
    /// The webhook endpoints configured now, by name: each gets a pending
    /// delivery of the decision's events.
    pub webhook_endpoints: &'a [&'a str],
    /// How long a delivery is attempted before it is given up.
    pub webhook_retry_for_millis: i64,
    /// How long an idempotency record is kept.
    pub idempotency_retention_millis: i64,
}

/// An idempotency key to record with a decision.
#[derive(Clone, Debug)]
pub struct NewIdempotency {
    pub request_id: RequestId,
    pub fingerprint: String,
}

/// One decision with everything it writes, in the order it is written.
#[derive(Clone, Debug)]
pub struct StagedDecision {
    /// The decision after routing (its payment carries the route and the
    /// count of messages sent; its effects name their bank).
    pub decision: Decision,
    /// The payment item's version now (`None`: it is created).
    pub base_version: Option<u64>,
    /// First: a duplicate request fails on it and is replayed.
    pub idempotency: Option<(RequestId, IdempotencyRecord)>,
    /// The decision's movements with their sequence numbers in the account.
    pub movements: Vec<(u64, Movement)>,
    pub alert: Option<AlertRecord>,
    pub outbox: Vec<OutboxRecord>,
    pub events: Option<EventRecord>,
    /// Who asked for the decision, and what it did (an attributed one).
    pub audit: Option<AuditRecord>,
}

/// A privileged action, as the audit query lists it: written with the
/// change it made, in the account, by time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    pub payment: PaymentName,
    pub at: Timestamp,
    /// The key id or certificate subject.
    pub actor: String,
    /// The causes of the history entries it made (`refund_r1_requested`,
    /// `review_approved`, `operator_retry`, `operator_failed`, …), or
    /// `event_resent`.
    pub causes: Vec<String>,
    /// The payment's state after it.
    pub state: PaymentState,
    /// The payment's version it wrote (tells two actions apart); for a
    /// re-sent event, the version of the event's record it wrote.
    pub version: u64,
    /// For a re-sent event (cause `event_resent`): its sequence number.
    pub event: Option<u64>,
}

impl StagedDecision {
    /// The payment item's version after the write.
    pub fn version(&self) -> u64 {
        self.base_version.unwrap_or(0) + 1
    }
}

impl AccountBook {
    /// Stages `decision` on top of this book: routes a payment that must go
    /// to a bank (or fails it when none can take it), numbers its messages
    /// to banks, applies its movements under the ledger's sign rules,
    /// counts an accepted new payment towards velocity, and adds the
    /// idempotency record, the page and the events' deliveries. On error
    /// the book is unchanged and nothing is staged.
    pub fn stage(
        &mut self,
        decision: Decision,
        base_version: Option<u64>,
        idempotency: Option<NewIdempotency>,
        context: &StageContext<'_>,
    ) -> Result<StagedDecision, Rejection> {
        let mut decision = route(decision, context)?;
        let outbox = number_outbox(&mut decision, context);
        // Asserted before writing (and after every read into an actor).
        decision
            .payment
            .check_invariants()
            .map_err(Rejection::Invariant)?;
        let mut balances = self.balances.clone();
        for movement in &decision.movements {
            balances = balances.apply(movement)?;
        }
        let now = context.now;
        let idempotency = idempotency.map(|new| {
            let record = IdempotencyRecord {
                fingerprint: new.fingerprint,
                payment: decision.payment.id.clone(),
                created_at: now,
                expires_at: now.plus_millis(context.idempotency_retention_millis),
            };
            (new.request_id, record)
        });
        // Nothing can fail from here on: the book changes.
        self.balances = balances;
        let movements = decision
            .movements
            .iter()
            .map(|movement| {
                let sequence = self.movement_count;
                self.movement_count += 1;
                (sequence, movement.clone())
            })
            .collect();
        // A new payment the rules let through counts towards the account's
        // velocity limits from now on.
        let accepted = base_version.is_none()
            && decision
                .payment
                .approval
                .as_ref()
                .is_some_and(|evaluation| evaluation.action != Action::Decline);
        if accepted {
            if context.velocity_keep_millis > 0 {
                self.velocity
                    .record(now, decision.payment.amount, context.velocity_keep_millis);
            } else {
                self.velocity = VelocityLog::default();
            }
        }
        // The page, in the same write (alert outbox): a stall is marked
        // paged exactly when its page is recorded.
        let alert = decision.alert.as_ref().map(|alert| AlertRecord {
            payment: decision.payment.name(),
            alert: alert.clone(),
            delivered_at: None,
        });
        let events = (!decision.events.is_empty()).then(|| EventRecord {
            events: decision.events.clone(),
            deliveries: context
                .webhook_endpoints
                .iter()
                .map(|endpoint| Delivery {
                    endpoint: (*endpoint).to_owned(),
                    state: DeliveryState::Pending,
                    acknowledged: 0,
                    attempts: 0,
                    next_attempt_at: now,
                    retry_until: now.plus_millis(context.webhook_retry_for_millis),
                    last_error: None,
                    last_attempt_at: None,
                    resent_by: None,
                })
                .collect(),
        });
        let audit = decision.actor.clone().map(|actor| AuditRecord {
            payment: decision.payment.name(),
            at: now,
            causes: decision.acted.clone(),
            actor,
            state: decision.payment.state,
            version: base_version.unwrap_or(0) + 1,
            event: None,
        });
        Ok(StagedDecision {
            decision,
            base_version,
            idempotency,
            movements,
            alert,
            outbox,
            events,
            audit,
        })
    }
}

/// Picks the bank for a decision that sends its payment somewhere new
/// (`SubmitPayment` without a bank) and records the route on the payment,
/// so that where it went, and why, is written before it is sent. No bank
/// left: the payment fails in the same decision.
fn route(mut decision: Decision, context: &StageContext<'_>) -> Result<Decision, Rejection> {
    let unrouted = |effect: &Effect| matches!(effect, Effect::SubmitPayment { bank: None, .. });
    if !decision.effects.iter().any(unrouted) {
        return Ok(decision);
    }
    let now = context.now;
    let currency = decision.payment.amount.currency();
    let refused: Vec<&str> = decision.payment.refused_by().collect();
    match context.banks.choose(currency, &refused) {
        Some((bank, why)) => {
            decision.payment.route_to(&bank, &why, now);
            for effect in &mut decision.effects {
                if let Effect::SubmitPayment { bank: target, .. } = effect {
                    target.get_or_insert_with(|| bank.clone());
                }
            }
            Ok(decision)
        }
        None => {
            let reason = format!("no bank can take a {currency} payment");
            let failed = decision
                .payment
                .fail_unroutable(&reason, now, context.policy)?;
            decision.movements.extend(failed.movements);
            decision.events.extend(failed.events);
            Ok(Decision {
                payment: failed.payment,
                movements: decision.movements,
                effects: Vec::new(),
                alert: failed.alert.or(decision.alert),
                events: decision.events,
                actor: decision.actor,
                acted: decision.acted,
            })
        }
    }
}

/// The decision's messages to banks (submissions of the payment and of
/// refunds), numbered on the payment, to write with it.
fn number_outbox(decision: &mut Decision, context: &StageContext<'_>) -> Vec<OutboxRecord> {
    let payment: &mut Payment = &mut decision.payment;
    let mut records = Vec::new();
    for effect in &decision.effects {
        let (bank, refund_id, amount) = match effect {
            Effect::SubmitPayment { bank, amount, .. } => (bank, None, *amount),
            Effect::SubmitRefund {
                bank,
                refund_id,
                amount,
                ..
            } => (bank, Some(refund_id.clone()), *amount),
            Effect::QueryPayment { .. } => continue,
        };
        payment.messages_sent += 1;
        records.push(OutboxRecord {
            payment: payment.name(),
            seq: payment.messages_sent,
            bank: bank
                .clone()
                .unwrap_or_else(|| context.banks.default_bank().to_owned()),
            refund_id,
            currency: amount.currency().code().to_owned(),
            minor_units: amount.minor_units(),
            created_at: context.now,
            acknowledged_at: None,
        });
    }
    records
}
