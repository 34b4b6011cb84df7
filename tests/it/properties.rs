//! Generative tests of the pure core: random command sequences against
//! several payments of one account. After every step the invariants hold:
//! terminal payments never change, every movement balances, stored balances
//! equal the fold of all movements and what the payments imply, and refunds
//! never exceed a payment's amount. Stall handling joins in (reminders that
//! fall due at random times, operators retrying and failing payments): a
//! payment is watched exactly when it waits for something, and one stall
//! pages at most once and is resolved only after it was triggered.
//!
//! Every decision is staged by the account's own core
//! ([`AccountBook::stage`]), as the actor stages it, over generated banks
//! (some do not take the currency, banks refuse payments or lose them): a
//! payment is at one bank at a time and never sent back to a bank that
//! refused it, fails when no bank is left, and its messages to banks are
//! numbered 1, 2, … without gaps, each addressed to the bank it is routed to.

use std::collections::BTreeMap;

use payvisor::domain::account::{AccountBook, BankChooser, OutboxRecord, StageContext};
use payvisor::domain::events::{Change, PaymentEvent};
use payvisor::domain::ledger::{Balances, Movement};
use payvisor::domain::payment::{
    self, BankOutcome, Departure, Effect, Fee, FeeSchedule, NewPayment, Payment, PaymentState,
    Policy, RefundOutcome, RefundState, ReviewVerdict,
};
use payvisor::domain::rules::{Candidate, RuleSet, VelocityLog};
use payvisor::domain::watch::{OperatorRejection, PageAction, Stage};
use payvisor::domain::{AccountId, Currency, Money, PaymentId, Timestamp};
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
    /// The bank the payment is at refuses it for good, or its status query
    /// says it never had it: the payment is routed again.
    NotAtBank {
        payment: usize,
        rejected: bool,
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
        (0..payments, any::<bool>())
            .prop_map(|(payment, rejected)| Command::NotAtBank { payment, rejected }),
    ]
}

/// Generated banks: a name, whether it takes USD, its cost. The choice is
/// the router's rule: the cheapest bank for the currency that has not
/// refused the payment.
#[derive(Clone, Debug)]
struct Banks(Vec<(String, bool, u32)>);

impl BankChooser for Banks {
    fn choose(
        &self,
        currency: payvisor::domain::Currency,
        refused: &[&str],
    ) -> Option<(String, String)> {
        assert_eq!(currency.code(), "USD");
        self.0
            .iter()
            .filter(|(name, usd, _)| *usd && !refused.contains(&name.as_str()))
            .min_by_key(|(name, _, cost)| (*cost, name.clone()))
            .map(|(name, _, cost)| (name.clone(), format!("cost {cost}")))
    }

    fn default_bank(&self) -> &str {
        &self.0[0].0
    }
}

/// One to three banks; the first takes USD in nine cases of ten, so that
/// most sequences get past routing and exercise the rest of the lifecycle,
/// and some have no bank for the currency at all.
fn banks() -> impl Strategy<Value = Banks> {
    (
        (prop::bool::weighted(0.9), 0u32..5),
        prop::collection::vec((any::<bool>(), 0u32..5), 0..3),
    )
        .prop_map(|(first, others)| {
            Banks(
                std::iter::once(first)
                    .chain(others)
                    .enumerate()
                    .map(|(n, (usd, cost))| (format!("bank-{n}"), usd, cost))
                    .collect(),
            )
        })
}

fn usd(minor: i64) -> Money {
    Money::from_minor(Currency::from_code("USD").unwrap(), minor)
}

/// The account as the actor keeps it: payments, the account's book, all
/// movements and messages to banks.
struct Model {
    payments: Vec<Payment>,
    book: AccountBook,
    movements: Vec<Movement>,
    /// Messages to banks written so far, per payment (the outbox).
    outbox: BTreeMap<String, Vec<OutboxRecord>>,
    /// Pages decided so far, by dedup key, in order.
    pages: BTreeMap<String, Vec<PageAction>>,
    /// Events emitted so far, per payment (the event outbox).
    events: BTreeMap<String, Vec<PaymentEvent>>,
}

impl Model {
    /// Stages a decision the way the actor does, through the account's
    /// core (routing, outbox, ledger; refusing the whole decision if it
    /// would break an invariant), then keeps what it writes.
    fn commit(
        &mut self,
        index: Option<usize>,
        decision: payment::Decision,
        context: &StageContext<'_>,
        banks: &Banks,
    ) -> bool {
        for movement in &decision.movements {
            movement
                .check_balanced()
                .expect("every movement balances by construction");
        }
        let before = self.book.clone();
        let refused_before: Vec<String> =
            decision.payment.refused_by().map(str::to_owned).collect();
        let had_unrouted = decision
            .effects
            .iter()
            .any(|effect| matches!(effect, Effect::SubmitPayment { bank: None, .. }));
        let base_version = index.map(|_| 1);
        let staged = match self.book.stage(decision, base_version, None, context) {
            Ok(staged) => staged,
            Err(_) => {
                assert_eq!(
                    self.book, before,
                    "a refused decision leaves the book unchanged"
                );
                return false;
            }
        };
        check_routing(&staged.decision, &refused_before, had_unrouted, banks);
        let decision = staged.decision;
        assert_eq!(
            staged
                .movements
                .iter()
                .map(|(sequence, _)| *sequence)
                .collect::<Vec<_>>(),
            (self.movements.len() as u64..self.book.movement_count).collect::<Vec<_>>(),
            "movements numbered on in the account"
        );
        self.outbox
            .entry(decision.payment.name().to_string())
            .or_default()
            .extend(staged.outbox);
        self.movements.extend(decision.movements);
        let index = index.unwrap_or_else(|| {
            self.payments.push(decision.payment.clone());
            self.payments.len() - 1
        });
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
        self.book.balances.check_invariants().unwrap();
        assert_eq!(
            Balances::fold(&self.movements).unwrap(),
            self.book.balances,
            "balances are the fold of movements"
        );
        assert_eq!(self.book.movement_count, self.movements.len() as u64);
        let books = self.book.balances.currency(usd(0).currency());
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
            // At one bank at a time: every route but the last was left.
            if let Some((_, earlier)) = payment.routes.split_last() {
                assert!(
                    earlier.iter().all(|route| route.left.is_some()),
                    "{:?}",
                    payment.routes
                );
            }
            // Messages to banks: numbered 1..=n without gaps, the payment's
            // own submissions to the bank it was routed to, in route order.
            let outbox = self
                .outbox
                .get(&payment.name().to_string())
                .map(Vec::as_slice)
                .unwrap_or_default();
            assert_eq!(
                outbox.iter().map(|record| record.seq).collect::<Vec<_>>(),
                (1..=payment.messages_sent).collect::<Vec<_>>(),
                "outbox numbered without gaps"
            );
            let submitted: Vec<&str> = outbox
                .iter()
                .filter(|record| record.refund_id.is_none())
                .map(|record| record.bank.as_str())
                .collect();
            let routed: Vec<&str> = payment
                .routes
                .iter()
                .map(|route| route.bank.as_str())
                .collect();
            assert_eq!(
                submitted, routed,
                "one submission per route, to that route's bank"
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
        banks in banks(),
        webhook_endpoints in 0usize..3,
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
        let mut model = Model { payments: Vec::new(), book: AccountBook::default(), movements: Vec::new(), outbox: BTreeMap::new(), pages: BTreeMap::new(), events: BTreeMap::new() };
        let endpoints: Vec<String> = (0..webhook_endpoints).map(|n| format!("hook-{n}")).collect();
        let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
        let context = |now: i64| StageContext {
            now: Timestamp::from_unix_millis(now),
            policy: &policy,
            banks: &banks,
            velocity_keep_millis: rules.keep_millis(),
            webhook_endpoints: &endpoints,
            webhook_retry_for_millis: 60_000,
            idempotency_retention_millis: 86_400_000,
        };
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
            prop_assert!(model.commit(None, decision, &context(now), &banks));
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
                | Command::Review { payment, .. } | Command::NotAtBank { payment, .. } => {
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
                Command::OperatorFail { .. } => {
                    let decision = before.operator_fail("gave up", at, &policy);
                    // What awaits a reviewer is not on-call's to fail.
                    if before.state == payment::PaymentState::InReview {
                        prop_assert_eq!(decision.clone().err(), Some(OperatorRejection::AwaitsReview));
                    }
                    decision.ok()
                }
                Command::Review { approve, .. } => {
                    let verdict = if approve { ReviewVerdict::Approve } else { ReviewVerdict::Decline };
                    let decision = before.review(verdict, "reviewed", at, &policy);
                    // Only a payment in review can be reviewed: once.
                    prop_assert_eq!(decision.is_ok(), before.state == payment::PaymentState::InReview);
                    decision.ok()
                }
                Command::NotAtBank { rejected, .. } => {
                    let departure = if rejected { Departure::Rejected { reason: "no".into() } } else { Departure::Unknown };
                    match before.current_bank() {
                        Some(bank) => before.on_not_at_bank(bank, departure, at, &policy),
                        None => None,
                    }
                }
            };
            if before.state.is_terminal() {
                prop_assert!(decision.is_none(), "a terminal payment produced a decision");
            }
            if let Some(decision) = decision {
                prop_assert!(decision.payment.state == before.state || !before.state.is_terminal());
                model.commit(Some(index), decision, &context(now), &banks);
            }
            if before.state.is_terminal() {
                prop_assert_eq!(&model.payments[index], &before);
            }
            model.check_invariants();
        }
    }
}

/// What routing must have decided for a staged decision: every submission
/// of the payment names a bank that takes its currency and has not refused
/// it, and the payment is at that bank. A decision that sent the payment
/// somewhere new went to the bank the rule picks, or, with none left,
/// failed the payment at once.
fn check_routing(
    decision: &payment::Decision,
    refused_before: &[String],
    had_unrouted: bool,
    banks: &Banks,
) {
    let submissions: Vec<&Option<String>> = decision
        .effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::SubmitPayment { bank, .. } => Some(bank),
            _ => None,
        })
        .collect();
    let refused: Vec<&str> = refused_before.iter().map(String::as_str).collect();
    for bank in &submissions {
        let bank = bank.as_deref().expect("every submission is routed");
        assert!(
            !refused.contains(&bank),
            "sent back to {bank}, which refused it"
        );
        assert!(
            banks.0.iter().any(|(name, usd, _)| name == bank && *usd),
            "{bank} does not take USD"
        );
        assert_eq!(decision.payment.current_bank(), Some(bank));
    }
    if had_unrouted {
        match banks.choose(usd(0).currency(), &refused) {
            Some((bank, _)) => assert_eq!(decision.payment.current_bank(), Some(bank.as_str())),
            None => {
                assert!(submissions.is_empty());
                assert_eq!(
                    decision.payment.state,
                    PaymentState::Failed,
                    "a payment no bank can take fails at once"
                );
            }
        }
    }
}
