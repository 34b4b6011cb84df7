//! Fixed domain values, one or two per item family, that the golden tests
//! encode and decode. Each sets every field it can, so a change to what a
//! family stores shows in its golden body.

use std::collections::BTreeMap;

use crate::domain::account::{
    AccountBook, AlertRecord, Delivery, DeliveryState, EventRecord, IdempotencyRecord, OutboxRecord,
};
use crate::domain::events::{Change, PaymentEvent};
use crate::domain::ledger::{Balances, Movement};
use crate::domain::payment::{
    self, Departure, NewPayment, Payment, PaymentState, Policy, Refund, RefundState, Review,
    ReviewVerdict, Route, Transition,
};
use crate::domain::rules::{Action, Evaluation, FiredRule, VelocityLog};
use crate::domain::watch::{Alert, PageAction, Severity, Stage, Watch};
use crate::domain::{AccountId, Currency, Money, PaymentId, PaymentName, Timestamp};

/// 2026-01-01T00:00:00Z.
pub const T0: i64 = 1_767_225_600_000;

pub fn at(offset_ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(T0 + offset_ms)
}

pub fn usd(minor: i64) -> Money {
    Money::from_minor(Currency::from_code("USD").unwrap(), minor)
}

pub fn jpy(minor: i64) -> Money {
    Money::from_minor(Currency::from_code("JPY").unwrap(), minor)
}

pub fn account() -> AccountId {
    AccountId::new("acme").unwrap()
}

pub fn payment_id() -> PaymentId {
    PaymentId::new("pay_1").unwrap()
}

pub fn name() -> PaymentName {
    PaymentName {
        account: account(),
        payment: payment_id(),
    }
}

fn transition(from: Option<PaymentState>, to: PaymentState, cause: &str, ms: i64) -> Transition {
    Transition {
        from,
        to,
        cause: cause.into(),
        at: at(ms),
        actor: None,
    }
}

/// A payment just created: only what every payment has.
pub fn fresh_payment() -> Payment {
    let new = NewPayment {
        account: account(),
        id: PaymentId::new("pay_2").unwrap(),
        amount: jpy(700),
        metadata: BTreeMap::new(),
        payer_id: None,
        payer_country: None,
    };
    let mut payment = payment::create(new, None, at(0), &Policy::default())
        .unwrap()
        .payment;
    payment.state = PaymentState::Created;
    payment.failure_reason = None;
    payment.fee = jpy(0);
    payment.refunds = Vec::new();
    payment.history = vec![transition(None, PaymentState::Created, "created", 0)];
    payment.created_at = at(0);
    payment.updated_at = at(0);
    payment.watch = None;
    payment.approval = None;
    payment.review = None;
    payment.events_emitted = 1;
    payment.routes = Vec::new();
    payment.messages_sent = 0;
    payment
}

/// A payment with every optional part set.
pub fn payment() -> Payment {
    let mut payment = fresh_payment();
    payment.id = payment_id();
    payment.amount = usd(1250);
    payment.metadata = BTreeMap::from([("order".into(), "o-1".into())]);
    payment.payer_id = Some("payer-7".into());
    payment.payer_country = Some("DE".into());
    payment.state = PaymentState::PartiallyRefunded;
    payment.failure_reason = Some("first bank timed out".into());
    payment.fee = usd(30);
    payment.refunds = vec![
        Refund {
            id: "r1".into(),
            amount: usd(500),
            reason: "damaged".into(),
            state: RefundState::Succeeded,
            failure_reason: None,
            created_at: at(4_000),
            updated_at: at(4_500),
        },
        Refund {
            id: "r2".into(),
            amount: usd(100),
            reason: "late".into(),
            state: RefundState::Failed,
            failure_reason: Some("bank refused".into()),
            created_at: at(5_000),
            updated_at: at(5_500),
        },
    ];
    payment.history = vec![
        transition(None, PaymentState::Created, "created", 0),
        transition(
            Some(PaymentState::Created),
            PaymentState::InReview,
            "rules",
            0,
        ),
        Transition {
            // A person's verdict: attributed.
            actor: Some("reviewer-7".into()),
            ..transition(
                Some(PaymentState::InReview),
                PaymentState::Approved,
                "review",
                1_000,
            )
        },
        transition(
            Some(PaymentState::Approved),
            PaymentState::Sent,
            "dispatched",
            1_000,
        ),
        transition(
            Some(PaymentState::Sent),
            PaymentState::Processed,
            "bank",
            3_000,
        ),
        transition(
            Some(PaymentState::Processed),
            PaymentState::PartiallyRefunded,
            "refund r1 succeeded",
            4_500,
        ),
    ];
    payment.updated_at = at(5_500);
    payment.watch = Some(Watch {
        stage: Stage::Refunding,
        since: at(5_000),
        due_at: None,
        redrives: 2,
        paged: true,
    });
    payment.approval = Some(Evaluation {
        action: Action::Review,
        fired: vec![FiredRule {
            rule: "big".into(),
            action: Action::Review,
            detail: "amount 12.50 USD above 10.00 USD".into(),
        }],
        rules_version: "r1".into(),
    });
    payment.review = Some(Review {
        verdict: ReviewVerdict::Approve,
        reason: "known customer".into(),
        at: at(1_000),
    });
    payment.events_emitted = 9;
    payment.routes = vec![
        Route {
            bank: "bank-a".into(),
            why: "cheapest".into(),
            at: at(1_000),
            left: Some(Departure::Rejected {
                reason: "no USD today".into(),
            }),
        },
        Route {
            bank: "bank-b".into(),
            why: "next cheapest".into(),
            at: at(2_000),
            left: Some(Departure::Unknown),
        },
        Route {
            bank: "bank-c".into(),
            why: "last".into(),
            at: at(2_500),
            left: None,
        },
    ];
    payment.messages_sent = 5;
    payment
}

/// A watched payment: the reminder is due.
pub fn watched_payment() -> Payment {
    let mut payment = fresh_payment();
    payment.state = PaymentState::Sent;
    payment.watch = Some(Watch {
        stage: Stage::Sent,
        since: at(0),
        due_at: Some(at(30_000)),
        redrives: 0,
        paged: false,
    });
    payment
}

pub fn movements() -> Vec<Movement> {
    vec![
        Movement::payment_sent(payment_id(), usd(1250)).unwrap(),
        Movement::payment_processed(payment_id(), usd(1250), usd(30)).unwrap(),
        Movement::refund_requested(payment_id(), "r1", usd(500)).unwrap(),
        Movement::payment_sent(PaymentId::new("pay_2").unwrap(), jpy(700)).unwrap(),
    ]
}

pub fn account_book() -> AccountBook {
    let mut velocity = VelocityLog::default();
    velocity.record(at(0), usd(1250), 86_400_000);
    velocity.record(at(1), jpy(700), 86_400_000);
    AccountBook {
        balances: Balances::fold(&movements()).unwrap(),
        movement_count: 4,
        velocity,
        owner_epoch: 0,
    }
}

pub fn idempotency() -> IdempotencyRecord {
    IdempotencyRecord {
        fingerprint: r#"{"method":"create","currency":"USD","minor_units":1250}"#.into(),
        payment: payment_id(),
        created_at: at(0),
        expires_at: at(86_400_000),
    }
}

pub fn alert() -> AlertRecord {
    AlertRecord {
        payment: name(),
        alert: Alert {
            action: PageAction::Trigger,
            dedup_key: "payvisor/accounts/acme/payments/pay_1/1".into(),
            stage: Stage::Sent,
            stall_since: at(1_000),
            summary: "pay_1 stuck in sent".into(),
            severity: Severity::Critical,
            details: BTreeMap::from([("redrives".into(), "3".into())]),
            at: at(60_000),
        },
        delivered_at: Some(at(61_000)),
    }
}

pub fn events() -> EventRecord {
    EventRecord {
        events: vec![
            PaymentEvent {
                payment: name(),
                seq: 3,
                at: at(3_000),
                amount: usd(1250),
                state: PaymentState::Processed,
                change: Change::Payment {
                    from: Some(PaymentState::Sent),
                    to: PaymentState::Processed,
                    cause: "bank".into(),
                    failure_reason: None,
                },
                actor: None,
                trace: None,
            },
            PaymentEvent {
                payment: name(),
                seq: 4,
                at: at(3_000),
                amount: usd(1250),
                state: PaymentState::Processed,
                change: Change::Refund {
                    refund_id: "r1".into(),
                    amount: usd(500),
                    state: RefundState::Failed,
                    failure_reason: Some("bank refused".into()),
                },
                actor: None,
                trace: None,
            },
        ],
        deliveries: vec![
            Delivery {
                endpoint: "shop".into(),
                state: DeliveryState::Pending,
                acknowledged: 1,
                attempts: 2,
                next_attempt_at: at(7_000),
                retry_until: at(86_403_000),
                last_error: Some("HTTP 503".into()),
                last_attempt_at: Some(at(5_000)),
                resent_by: None,
            },
            Delivery {
                endpoint: "crm".into(),
                state: DeliveryState::Delivered,
                acknowledged: 2,
                attempts: 1,
                next_attempt_at: at(3_000),
                retry_until: at(86_403_000),
                last_error: None,
                last_attempt_at: None,
                resent_by: None,
            },
        ],
    }
}

pub fn outbox() -> OutboxRecord {
    OutboxRecord {
        payment: name(),
        seq: 2,
        bank: "bank-a".into(),
        refund_id: Some("r1".into()),
        currency: "USD".into(),
        minor_units: 500,
        created_at: at(4_000),
        acknowledged_at: Some(at(4_100)),
    }
}

pub fn incidents() -> crate::domain::incidents::Incidents {
    use crate::domain::incidents::{Incidents, OpenPeriod, Period};
    Incidents {
        open: vec![OpenPeriod {
            period: Period {
                from: at(0),
                to: at(3_600_000),
            },
            mismatches: 3,
            lines: vec!["amount_differs pay_1 bank 5.00 USD, payvisor 12.50 USD".into()],
            paged: true,
        }],
        resolves_owed: vec![Period {
            from: at(-3_600_000),
            to: at(0),
        }],
    }
}
