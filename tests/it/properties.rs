//! Generative tests of the pure core: random command sequences against
//! several payments of one account. After every step the invariants hold:
//! terminal payments never change, every movement balances, stored balances
//! equal the fold of all movements and what the payments imply, and refunds
//! never exceed a payment's amount. Stall handling joins in (reminders that
//! fall due at random times, operators retrying and failing payments): a
//! payment is watched exactly when it waits for something, and one stall
//! pages at most once and is resolved only after it was triggered.

use std::collections::BTreeMap;

use payvisor::domain::events::{Change, PaymentEvent};
use payvisor::domain::payment::{
    self, BankOutcome, Fee, FeeSchedule, NewPayment, Payment, Policy, RefundOutcome, RefundState,
    ReviewVerdict,
};
use payvisor::domain::rules::{Candidate, RuleSet, VelocityLog};
use payvisor::domain::watch::{PageAction, Stage};
use payvisor::domain::{AccountId, Currency, Money, PaymentId, Timestamp};
use payvisor::ledger::{Balances, Movement};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Command {
    Bank {
        payment: usize,
        processed: bool,
    },
    Refund {
        payment: usize,
        minor_units: Option<i64>,
    },
    RefundOutcome {
        payment: usize,
        refund: usize,
        succeeded: bool,
    },
    /// Time passes by `seconds`, then the payment's reminder is delivered.
    Reminder {
        payment: usize,
        seconds: i64,
    },
    OperatorRetry {
        payment: usize,
    },
    OperatorFail {
        payment: usize,
    },
    /// A reviewer approves or declines.
    Review {
        payment: usize,
        approve: bool,
    },
}

fn command(payments: usize) -> impl Strategy<Value = Command> {
    prop_oneof![
        (0..payments, any::<bool>())
            .prop_map(|(payment, processed)| Command::Bank { payment, processed }),
        (0..payments, prop::option::of(1i64..1_500)).prop_map(|(payment, minor_units)| {
            Command::Refund {
                payment,
                minor_units,
            }
        }),
        (0..payments, 0usize..6, any::<bool>()).prop_map(|(payment, refund, succeeded)| {
            Command::RefundOutcome {
                payment,
                refund,
                succeeded,
            }
        }),
        (0..payments, 0i64..200)
            .prop_map(|(payment, seconds)| Command::Reminder { payment, seconds }),
        (0..payments).prop_map(|payment| Command::OperatorRetry { payment }),
        (0..payments).prop_map(|payment| Command::OperatorFail { payment }),
        (0..payments, any::<bool>())
            .prop_map(|(payment, approve)| Command::Review { payment, approve }),
    ]
}

fn usd(minor: i64) -> Money {
    Money::from_minor(Currency::from_code("USD").unwrap(), minor)
}

/// The account as the actor keeps it: payments, balances, all movements.
struct Model {
    payments: Vec<Payment>,
    balances: Balances,
    movements: Vec<Movement>,
    /// Pages decided so far, by dedup key, in order.
    pages: BTreeMap<String, Vec<PageAction>>,
    /// Events emitted so far, per payment (the event outbox).
    events: BTreeMap<String, Vec<PaymentEvent>>,
}

impl Model {
    /// Applies a decision the way the actor does: ledger first (refusing the
    /// whole decision if it would break an invariant), then the payment.
    fn commit(&mut self, index: usize, decision: payment::Decision) -> bool {
        let mut balances = self.balances.clone();
        for movement in &decision.movements {
            movement
                .check_balanced()
                .expect("every movement balances by construction");
            match balances.apply(movement) {
                Ok(next) => balances = next,
                Err(_) => return false,
            }
        }
        self.balances = balances;
        self.movements.extend(decision.movements);
        self.events
            .entry(decision.payment.name().to_string())
            .or_default()
            .extend(decision.events);
        self.payments[index] = decision.payment;
        if let Some(alert) = decision.alert {
            self.pages
                .entry(alert.dedup_key)
                .or_default()
                .push(alert.action);
        }
        true
    }

    fn check_invariants(&self) {
        self.balances.check_invariants().unwrap();
        assert_eq!(
            Balances::fold(&self.movements).unwrap(),
            self.balances,
            "balances are the fold of movements"
        );
        let books = self.balances.currency(usd(0).currency());
        let (mut pending, mut available, mut refunding, mut fees) = (0, 0, 0, 0);
        for payment in &self.payments {
            assert!(
                payment.committed_to_refunds() <= payment.amount,
                "refunds exceed the amount"
            );
            payment.check_invariants().unwrap();
            use payment::PaymentState::*;
            match payment.state {
                Sent => pending += payment.amount.minor_units(),
                Processed | PartiallyRefunded | Refunded => {
                    available += payment.amount.minor_units() - payment.fee.minor_units();
                    fees += payment.fee.minor_units();
                }
                _ => {}
            }
            for refund in &payment.refunds {
                match refund.state {
                    RefundState::Pending => {
                        available -= refund.amount.minor_units();
                        refunding += refund.amount.minor_units();
                    }
                    RefundState::Succeeded => available -= refund.amount.minor_units(),
                    RefundState::Failed => {}
                }
            }
            assert_eq!(
                payment.state == Refunded,
                payment.refunded() == payment.amount
            );
            assert_eq!(
                payment.watch.as_ref().map(|watch| watch.stage),
                Stage::of(payment),
                "watched exactly while waiting, in the stage it waits in"
            );
            // Events: numbered 1..=n without gaps, as many as the payment
            // says it emitted, and the last one shows its current state.
            let events = &self.events[&payment.name().to_string()];
            let seqs: Vec<u64> = events.iter().map(|event| event.seq).collect();
            assert_eq!(seqs, (1..=payment.events_emitted).collect::<Vec<_>>());
            assert_eq!(events.last().map(|event| event.state), Some(payment.state));
            let state_changes = events
                .iter()
                .filter(|event| matches!(event.change, Change::Payment { .. }))
                .count();
            let transitions = payment
                .history
                .iter()
                .filter(|t| t.from != Some(t.to))
                .count();
            if payment.history.len() < payvisor::limits::HISTORY_ENTRIES_MAX {
                assert_eq!(state_changes, transitions, "one event per state change");
            }
            // Each refund: requested, then (once) its outcome.
            for refund in &payment.refunds {
                let lifecycle: Vec<RefundState> = events
                    .iter()
                    .filter_map(|event| match &event.change {
                        Change::Refund {
                            refund_id, state, ..
                        } if *refund_id == refund.id => Some(*state),
                        _ => None,
                    })
                    .collect();
                let expected = match refund.state {
                    RefundState::Pending => vec![RefundState::Pending],
                    done => vec![RefundState::Pending, done],
                };
                assert_eq!(lifecycle, expected, "events of refund {}", refund.id);
            }
        }
        for (key, actions) in &self.pages {
            assert!(
                matches!(
                    actions[..],
                    [PageAction::Trigger] | [PageAction::Trigger, PageAction::Resolve]
                ),
                "stall {key} paged {actions:?}"
            );
        }
        assert_eq!(books.pending.minor_units(), pending);
        assert_eq!(books.available.minor_units(), available);
        assert_eq!(books.refunding.minor_units(), refunding);
        assert_eq!(books.fees.minor_units(), fees);
        assert!(
            books.total().unwrap().is_zero(),
            "no money created or destroyed"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_every_invariant(
        amounts in prop::collection::vec(1i64..2_000, 1..5),
        basis_points in 0u32..1_000,
        fixed_minor in 0i64..50,
        max_approved in prop::option::of(100i64..2_000),
        redrive_max in 0u32..4,
        commands in prop::collection::vec(command(4), 0..60),
    ) {
        let mut policy = Policy {
            fees: FeeSchedule { default: Fee { basis_points, fixed_minor }, per_currency: BTreeMap::new() },
            ..Policy::default()
        };
        // Payments above the maximum are declined by the approval rules;
        // above half of it they go to review.
        let rules = match max_approved {
            Some(max) => RuleSet::parse(&format!(
                r#"{{"version": "p", "rules": [
                    {{"name": "max", "kind": "amount_above", "currency": "USD", "minor_units": {max}, "action": "decline"}},
                    {{"name": "half", "kind": "amount_above", "currency": "USD", "minor_units": {half}, "action": "review"}}
                ]}}"#,
                half = max / 2
            ))
            .unwrap(),
            None => RuleSet::approve_all(),
        };
        policy.stalls.redrive_max = redrive_max;
        let mut model = Model { payments: Vec::new(), balances: Balances::default(), movements: Vec::new(), pages: BTreeMap::new(), events: BTreeMap::new() };
        let mut now = 1_000;
        for (n, amount) in amounts.iter().enumerate() {
            let new = NewPayment {
                account: AccountId::new("acme").unwrap(),
                id: PaymentId::new(format!("p{n}")).unwrap(),
                amount: usd(*amount),
                metadata: BTreeMap::new(),
                payer_id: None,
                payer_country: None,
            };
            let at = Timestamp::from_unix_millis(now);
            let evaluation = rules.evaluate(
                &Candidate { account: &new.account, amount: new.amount, payer_id: None, payer_country: None, metadata: &new.metadata },
                &VelocityLog::default(),
                at,
            );
            let decision = payment::create(new, Some(evaluation), at, &policy).unwrap();
            model.payments.push(decision.payment.clone());
            let index = model.payments.len() - 1;
            prop_assert!(model.commit(index, decision));
        }
        model.check_invariants();

        for command in commands {
            now += 1;
            if let Command::Reminder { seconds, .. } = &command {
                now += seconds * 1000;
            }
            let at = Timestamp::from_unix_millis(now);
            let index = match &command {
                Command::Bank { payment, .. } | Command::Refund { payment, .. } | Command::RefundOutcome { payment, .. }
                | Command::Reminder { payment, .. } | Command::OperatorRetry { payment } | Command::OperatorFail { payment }
                | Command::Review { payment, .. } => {
                    payment % model.payments.len()
                }
            };
            let before = model.payments[index].clone();
            let decision = match command {
                Command::Bank { processed, .. } => {
                    let outcome = if processed { BankOutcome::Processed } else { BankOutcome::Failed { reason: "no".into() } };
                    before.on_bank_outcome(&outcome, at, &policy).unwrap()
                }
                Command::Refund { minor_units, .. } => before.request_refund(minor_units.map(usd), "why", at, &policy).ok(),
                Command::RefundOutcome { refund, succeeded, .. } => {
                    let outcome = if succeeded { RefundOutcome::Succeeded } else { RefundOutcome::Failed { reason: "no".into() } };
                    let id = format!("r{}", refund + 1);
                    before.on_refund_outcome(&id, &outcome, at, &policy).unwrap()
                }
                Command::Reminder { .. } => before.on_reminder(at, &policy).unwrap(),
                Command::OperatorRetry { .. } => before.operator_retry(at, &policy).ok(),
                Command::OperatorFail { .. } => before.operator_fail("gave up", at, &policy).ok(),
                Command::Review { approve, .. } => {
                    let verdict = if approve { ReviewVerdict::Approve } else { ReviewVerdict::Decline };
                    let decision = before.review(verdict, "reviewed", at, &policy);
                    // Only a payment in review can be reviewed: once.
                    prop_assert_eq!(decision.is_ok(), before.state == payment::PaymentState::InReview);
                    decision.ok()
                }
            };
            if before.state.is_terminal() {
                prop_assert!(decision.is_none(), "a terminal payment produced a decision");
            }
            if let Some(decision) = decision {
                prop_assert!(decision.payment.state == before.state || !before.state.is_terminal());
                model.commit(index, decision);
            }
            if before.state.is_terminal() {
                prop_assert_eq!(&model.payments[index], &before);
            }
            model.check_invariants();
        }
    }
}
