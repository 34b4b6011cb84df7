//! The payment item's body and what is nested in it: refunds, history,
//! the watch, the approval rules' evaluation, the review and the routes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    id, invalid, millis, stored_enum, time, Invalid, MoneyBody, PaymentStateBody, RefundStateBody,
    StageBody, Stored,
};
use crate::domain::payment::{
    Departure, NewPayment, Payment, Refund, Review, ReviewVerdict, Route, Transition,
};
use crate::domain::rules::{Action, Evaluation, FiredRule};
use crate::domain::watch::Watch;
use crate::domain::Money;

impl Stored for Payment {
    type Body = PaymentBody;
    const FORMAT: u64 = 1;
}

#[derive(Serialize, Deserialize)]
pub(in crate::store::schema) struct PaymentBody {
    account: String,
    id: String,
    amount: MoneyBody,
    metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payer_country: Option<String>,
    state: PaymentStateBody,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure_reason: Option<String>,
    fee: MoneyBody,
    refunds: Vec<RefundBody>,
    history: Vec<TransitionBody>,
    created_at: i64,
    updated_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    watch: Option<WatchBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    approval: Option<EvaluationBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    review: Option<ReviewBody>,
    #[serde(default)]
    events_emitted: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    routes: Vec<RouteBody>,
    #[serde(default)]
    messages_sent: u64,
}

impl From<&Payment> for PaymentBody {
    fn from(payment: &Payment) -> PaymentBody {
        PaymentBody {
            account: payment.account.to_string(),
            id: payment.id.to_string(),
            amount: payment.amount.into(),
            metadata: payment.metadata.clone(),
            payer_id: payment.payer_id.clone(),
            payer_country: payment.payer_country.clone(),
            state: payment.state.into(),
            failure_reason: payment.failure_reason.clone(),
            fee: payment.fee.into(),
            refunds: payment.refunds.iter().map(RefundBody::from).collect(),
            history: payment.history.iter().map(TransitionBody::from).collect(),
            created_at: millis(payment.created_at),
            updated_at: millis(payment.updated_at),
            watch: payment.watch.as_ref().map(WatchBody::from),
            approval: payment.approval.as_ref().map(EvaluationBody::from),
            review: payment.review.as_ref().map(ReviewBody::from),
            events_emitted: payment.events_emitted,
            routes: payment.routes.iter().map(RouteBody::from).collect(),
            messages_sent: payment.messages_sent,
        }
    }
}

impl TryFrom<PaymentBody> for Payment {
    type Error = Invalid;
    /// Besides what each part checks: the fee and the refunds are in the
    /// payment's currency.
    fn try_from(body: PaymentBody) -> Result<Payment, Invalid> {
        let amount = Money::try_from(body.amount)?;
        let in_currency = |money: MoneyBody| {
            let money = Money::try_from(money)?;
            if money.currency() == amount.currency() {
                Ok(money)
            } else {
                Err(invalid(format!(
                    "{money:?} in a payment of {}",
                    amount.currency()
                )))
            }
        };
        let new = NewPayment {
            account: id(body.account)?,
            id: id(body.id)?,
            amount,
            metadata: body.metadata,
            payer_id: body.payer_id,
            payer_country: body.payer_country,
        };
        let mut payment = Payment::new(new, time(body.created_at));
        payment.state = body.state.into();
        payment.failure_reason = body.failure_reason;
        payment.fee = in_currency(body.fee)?;
        payment.refunds = body
            .refunds
            .into_iter()
            .map(|refund| {
                Ok(Refund {
                    id: refund.id,
                    amount: in_currency(refund.amount)?,
                    reason: refund.reason,
                    state: refund.state.into(),
                    failure_reason: refund.failure_reason,
                    created_at: time(refund.created_at),
                    updated_at: time(refund.updated_at),
                })
            })
            .collect::<Result<_, Invalid>>()?;
        payment.history = body.history.into_iter().map(Transition::from).collect();
        payment.updated_at = time(body.updated_at);
        payment.watch = body.watch.map(Watch::from);
        payment.approval = body.approval.map(Evaluation::from);
        payment.review = body.review.map(Review::from);
        payment.events_emitted = body.events_emitted;
        payment.routes = body.routes.into_iter().map(Route::from).collect();
        payment.messages_sent = body.messages_sent;
        Ok(payment)
    }
}

#[derive(Serialize, Deserialize)]
struct RefundBody {
    id: String,
    amount: MoneyBody,
    reason: String,
    state: RefundStateBody,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure_reason: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl From<&Refund> for RefundBody {
    fn from(refund: &Refund) -> RefundBody {
        RefundBody {
            id: refund.id.clone(),
            amount: refund.amount.into(),
            reason: refund.reason.clone(),
            state: refund.state.into(),
            failure_reason: refund.failure_reason.clone(),
            created_at: millis(refund.created_at),
            updated_at: millis(refund.updated_at),
        }
    }
}

/// One entry of the history; `from` is `null` for the creation.
#[derive(Serialize, Deserialize)]
struct TransitionBody {
    from: Option<PaymentStateBody>,
    to: PaymentStateBody,
    cause: String,
    at: i64,
    /// Absent when no person or tool asked (and in records written before
    /// attribution: they read as no one's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    actor: Option<String>,
}

impl From<&Transition> for TransitionBody {
    fn from(transition: &Transition) -> TransitionBody {
        TransitionBody {
            from: transition.from.map(PaymentStateBody::from),
            to: transition.to.into(),
            cause: transition.cause.clone(),
            at: millis(transition.at),
            actor: transition.actor.clone(),
        }
    }
}

impl From<TransitionBody> for Transition {
    fn from(body: TransitionBody) -> Transition {
        Transition {
            from: body.from.map(Into::into),
            to: body.to.into(),
            cause: body.cause,
            at: time(body.at),
            actor: body.actor,
        }
    }
}

/// The reminder; `due_at` is `null` once on-call was paged.
#[derive(Serialize, Deserialize)]
struct WatchBody {
    stage: StageBody,
    since: i64,
    due_at: Option<i64>,
    redrives: u32,
    paged: bool,
}

impl From<&Watch> for WatchBody {
    fn from(watch: &Watch) -> WatchBody {
        WatchBody {
            stage: watch.stage.into(),
            since: millis(watch.since),
            due_at: watch.due_at.map(millis),
            redrives: watch.redrives,
            paged: watch.paged,
        }
    }
}

impl From<WatchBody> for Watch {
    fn from(body: WatchBody) -> Watch {
        Watch {
            stage: body.stage.into(),
            since: time(body.since),
            due_at: body.due_at.map(time),
            redrives: body.redrives,
            paged: body.paged,
        }
    }
}

stored_enum!(
    /// What an approval rule asks for.
    ActionBody for Action {
        Approve = "approve",
        Review = "review",
        Decline = "decline",
    }
);

#[derive(Serialize, Deserialize)]
struct EvaluationBody {
    action: ActionBody,
    fired: Vec<FiredRuleBody>,
    rules_version: String,
}

#[derive(Serialize, Deserialize)]
struct FiredRuleBody {
    rule: String,
    action: ActionBody,
    detail: String,
}

impl From<&Evaluation> for EvaluationBody {
    fn from(evaluation: &Evaluation) -> EvaluationBody {
        EvaluationBody {
            action: evaluation.action.into(),
            fired: evaluation
                .fired
                .iter()
                .map(|fired| FiredRuleBody {
                    rule: fired.rule.clone(),
                    action: fired.action.into(),
                    detail: fired.detail.clone(),
                })
                .collect(),
            rules_version: evaluation.rules_version.clone(),
        }
    }
}

impl From<EvaluationBody> for Evaluation {
    fn from(body: EvaluationBody) -> Evaluation {
        Evaluation {
            action: body.action.into(),
            fired: body
                .fired
                .into_iter()
                .map(|fired| FiredRule {
                    rule: fired.rule,
                    action: fired.action.into(),
                    detail: fired.detail,
                })
                .collect(),
            rules_version: body.rules_version,
        }
    }
}

stored_enum!(
    /// A reviewer's verdict.
    ReviewVerdictBody for ReviewVerdict {
        Approve = "approve",
        Decline = "decline",
    }
);

#[derive(Serialize, Deserialize)]
struct ReviewBody {
    verdict: ReviewVerdictBody,
    reason: String,
    at: i64,
}

impl From<&Review> for ReviewBody {
    fn from(review: &Review) -> ReviewBody {
        ReviewBody {
            verdict: review.verdict.into(),
            reason: review.reason.clone(),
            at: millis(review.at),
        }
    }
}

impl From<ReviewBody> for Review {
    fn from(body: ReviewBody) -> Review {
        Review {
            verdict: body.verdict.into(),
            reason: body.reason,
            at: time(body.at),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct RouteBody {
    bank: String,
    why: String,
    at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    left: Option<DepartureBody>,
}

/// Why a payment left a bank, tagged: `{"because":"rejected","reason":…}`
/// or `{"because":"unknown"}`.
#[derive(Serialize, Deserialize)]
#[serde(tag = "because")]
enum DepartureBody {
    #[serde(rename = "rejected")]
    Rejected { reason: String },
    #[serde(rename = "unknown")]
    Unknown,
}

impl From<&Route> for RouteBody {
    fn from(route: &Route) -> RouteBody {
        RouteBody {
            bank: route.bank.clone(),
            why: route.why.clone(),
            at: millis(route.at),
            left: route.left.as_ref().map(|left| match left {
                Departure::Rejected { reason } => DepartureBody::Rejected {
                    reason: reason.clone(),
                },
                Departure::Unknown => DepartureBody::Unknown,
            }),
        }
    }
}

impl From<RouteBody> for Route {
    fn from(body: RouteBody) -> Route {
        Route {
            bank: body.bank,
            why: body.why,
            at: time(body.at),
            left: body.left.map(|left| match left {
                DepartureBody::Rejected { reason } => Departure::Rejected { reason },
                DepartureBody::Unknown => Departure::Unknown,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::super::golden::{check, refused};
    use crate::domain::payment::Payment;

    const EVERY_PART: &str = r#"{"format":1,"account":"acme","id":"pay_1","amount":{"currency":"USD","amount":"12.50"},"metadata":{"order":"o-1"},"payer_id":"payer-7","payer_country":"DE","state":"partially_refunded","failure_reason":"first bank timed out","fee":{"currency":"USD","amount":"0.30"},"refunds":[{"id":"r1","amount":{"currency":"USD","amount":"5.00"},"reason":"damaged","state":"succeeded","created_at":1767225604000,"updated_at":1767225604500},{"id":"r2","amount":{"currency":"USD","amount":"1.00"},"reason":"late","state":"failed","failure_reason":"bank refused","created_at":1767225605000,"updated_at":1767225605500}],"history":[{"from":null,"to":"created","cause":"created","at":1767225600000},{"from":"created","to":"in_review","cause":"rules","at":1767225600000},{"from":"in_review","to":"approved","cause":"review","at":1767225601000,"actor":"reviewer-7"},{"from":"approved","to":"sent","cause":"dispatched","at":1767225601000},{"from":"sent","to":"processed","cause":"bank","at":1767225603000},{"from":"processed","to":"partially_refunded","cause":"refund r1 succeeded","at":1767225604500}],"created_at":1767225600000,"updated_at":1767225605500,"watch":{"stage":"refunding","since":1767225605000,"due_at":null,"redrives":2,"paged":true},"approval":{"action":"review","fired":[{"rule":"big","action":"review","detail":"amount 12.50 USD above 10.00 USD"}],"rules_version":"r1"},"review":{"verdict":"approve","reason":"known customer","at":1767225601000},"events_emitted":9,"routes":[{"bank":"bank-a","why":"cheapest","at":1767225601000,"left":{"because":"rejected","reason":"no USD today"}},{"bank":"bank-b","why":"next cheapest","at":1767225602000,"left":{"because":"unknown"}},{"bank":"bank-c","why":"last","at":1767225602500}],"messages_sent":5}"#;
    const FRESH: &str = r#"{"format":1,"account":"acme","id":"pay_2","amount":{"currency":"JPY","amount":"700"},"metadata":{},"state":"created","fee":{"currency":"JPY","amount":"0"},"refunds":[],"history":[{"from":null,"to":"created","cause":"created","at":1767225600000}],"created_at":1767225600000,"updated_at":1767225600000,"events_emitted":1,"messages_sent":0}"#;
    const WATCHED: &str = r#"{"format":1,"account":"acme","id":"pay_2","amount":{"currency":"JPY","amount":"700"},"metadata":{},"state":"sent","fee":{"currency":"JPY","amount":"0"},"refunds":[],"history":[{"from":null,"to":"created","cause":"created","at":1767225600000}],"created_at":1767225600000,"updated_at":1767225600000,"watch":{"stage":"sent","since":1767225600000,"due_at":1767225630000,"redrives":0,"paged":false},"events_emitted":1,"messages_sent":0}"#;

    #[test]
    fn payments_keep_their_stored_format() {
        check(&fixtures::payment(), EVERY_PART);
        check(&fixtures::fresh_payment(), FRESH);
        check(&fixtures::watched_payment(), WATCHED);
    }

    #[test]
    fn invalid_payments_are_refused() {
        for (bad, good) in [
            (r#""currency":"XXX""#, r#""currency":"JPY""#),
            (r#""amount":"7.5""#, r#""amount":"700""#),
            (r#""id":"pay 2""#, r#""id":"pay_2""#),
            (r#""state":"creating""#, r#""state":"created""#),
        ] {
            refused::<Payment>(&FRESH.replacen(good, bad, 1));
        }
        // A fee in another currency than the payment's.
        refused::<Payment>(&FRESH.replacen(
            r#""fee":{"currency":"JPY","amount":"0"}"#,
            r#""fee":{"currency":"USD","amount":"0.00"}"#,
            1,
        ));
    }
}
