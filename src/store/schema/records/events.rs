//! The body of a decision's events with their webhook deliveries, and of
//! the pointer of a pending delivery.

use serde::{Deserialize, Serialize};

use super::{
    invalid, millis, stored_enum, time, Invalid, MoneyBody, NameBody, PaymentStateBody,
    RefundStateBody, Stored,
};
use crate::domain::account::{Delivery, DeliveryState, EventRecord};
use crate::domain::events::{Change, PaymentEvent};
use crate::domain::Money;
use crate::store::schema::WebhookDue;

impl Stored for EventRecord {
    type Body = EventsBody;
    const FORMAT: u64 = 1;
}

impl Stored for WebhookDue {
    type Body = WebhookDueBody;
    const FORMAT: u64 = 1;
}

#[derive(Serialize, Deserialize)]
pub(in crate::store::schema) struct EventsBody {
    events: Vec<EventBody>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    deliveries: Vec<DeliveryBody>,
}

#[derive(Serialize, Deserialize)]
struct EventBody {
    payment: NameBody,
    seq: u64,
    at: i64,
    amount: MoneyBody,
    state: PaymentStateBody,
    change: ChangeBody,
    /// Absent when no person or tool asked (and in older records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    actor: Option<String>,
    /// The `traceparent` of the call that caused it; absent when none did
    /// (and in older records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trace: Option<String>,
}

/// What changed, tagged: `{"of":"payment",…}` or `{"of":"refund",…}`.
#[derive(Serialize, Deserialize)]
#[serde(tag = "of")]
enum ChangeBody {
    #[serde(rename = "payment")]
    Payment {
        from: Option<PaymentStateBody>,
        to: PaymentStateBody,
        cause: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure_reason: Option<String>,
    },
    #[serde(rename = "refund")]
    Refund {
        refund_id: String,
        amount: MoneyBody,
        state: RefundStateBody,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure_reason: Option<String>,
    },
}

stored_enum!(
    /// Where the delivery to one endpoint is.
    DeliveryStateBody for DeliveryState {
        Pending = "pending",
        Delivered = "delivered",
        Failed = "failed",
    }
);

#[derive(Serialize, Deserialize)]
struct DeliveryBody {
    endpoint: String,
    state: DeliveryStateBody,
    acknowledged: usize,
    attempts: u32,
    next_attempt_at: i64,
    retry_until: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_attempt_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resent_by: Option<String>,
}

impl From<&EventRecord> for EventsBody {
    fn from(record: &EventRecord) -> EventsBody {
        EventsBody {
            events: record.events.iter().map(EventBody::from).collect(),
            deliveries: record.deliveries.iter().map(DeliveryBody::from).collect(),
        }
    }
}

impl TryFrom<EventsBody> for EventRecord {
    type Error = Invalid;
    /// Refuses a record without events, or with events that are not
    /// consecutive ones of one payment, or a delivery acknowledging more
    /// events than the record holds.
    fn try_from(body: EventsBody) -> Result<EventRecord, Invalid> {
        let events = body
            .events
            .into_iter()
            .map(PaymentEvent::try_from)
            .collect::<Result<Vec<_>, Invalid>>()?;
        let first = events.first().ok_or_else(|| invalid("no events"))?;
        let consecutive = events
            .iter()
            .zip(first.seq..)
            .all(|(event, seq)| event.payment == first.payment && event.seq == seq);
        if !consecutive {
            return Err(invalid("events are not consecutive ones of one payment"));
        }
        let deliveries: Vec<Delivery> = body.deliveries.into_iter().map(Delivery::from).collect();
        if let Some(delivery) = deliveries
            .iter()
            .find(|delivery| delivery.acknowledged > events.len())
        {
            return Err(invalid(format!(
                "{} acknowledged {} of {} events",
                delivery.endpoint,
                delivery.acknowledged,
                events.len()
            )));
        }
        Ok(EventRecord { events, deliveries })
    }
}

impl From<&PaymentEvent> for EventBody {
    fn from(event: &PaymentEvent) -> EventBody {
        EventBody {
            payment: NameBody::from(&event.payment),
            seq: event.seq,
            at: millis(event.at),
            amount: event.amount.into(),
            state: event.state.into(),
            actor: event.actor.clone(),
            trace: event.trace.clone(),
            change: match &event.change {
                Change::Payment {
                    from,
                    to,
                    cause,
                    failure_reason,
                } => ChangeBody::Payment {
                    from: from.map(Into::into),
                    to: (*to).into(),
                    cause: cause.clone(),
                    failure_reason: failure_reason.clone(),
                },
                Change::Refund {
                    refund_id,
                    amount,
                    state,
                    failure_reason,
                } => ChangeBody::Refund {
                    refund_id: refund_id.clone(),
                    amount: (*amount).into(),
                    state: (*state).into(),
                    failure_reason: failure_reason.clone(),
                },
            },
        }
    }
}

impl TryFrom<EventBody> for PaymentEvent {
    type Error = Invalid;
    fn try_from(body: EventBody) -> Result<PaymentEvent, Invalid> {
        Ok(PaymentEvent {
            payment: body.payment.try_into()?,
            seq: body.seq,
            at: time(body.at),
            amount: Money::try_from(body.amount)?,
            state: body.state.into(),
            actor: body.actor,
            // Best effort: a trace that does not read (a later, stricter
            // reader) is dropped, never a reason to refuse the record.
            trace: (body.trace).filter(|trace| crate::trace::TraceParent::parse(trace).is_some()),
            change: match body.change {
                ChangeBody::Payment {
                    from,
                    to,
                    cause,
                    failure_reason,
                } => Change::Payment {
                    from: from.map(Into::into),
                    to: to.into(),
                    cause,
                    failure_reason,
                },
                ChangeBody::Refund {
                    refund_id,
                    amount,
                    state,
                    failure_reason,
                } => Change::Refund {
                    refund_id,
                    amount: Money::try_from(amount)?,
                    state: state.into(),
                    failure_reason,
                },
            },
        })
    }
}

impl From<&Delivery> for DeliveryBody {
    fn from(delivery: &Delivery) -> DeliveryBody {
        DeliveryBody {
            endpoint: delivery.endpoint.clone(),
            state: delivery.state.into(),
            acknowledged: delivery.acknowledged,
            attempts: delivery.attempts,
            next_attempt_at: millis(delivery.next_attempt_at),
            retry_until: millis(delivery.retry_until),
            last_error: delivery.last_error.clone(),
            last_attempt_at: delivery.last_attempt_at.map(millis),
            resent_by: delivery.resent_by.clone(),
        }
    }
}

impl From<DeliveryBody> for Delivery {
    fn from(body: DeliveryBody) -> Delivery {
        Delivery {
            endpoint: body.endpoint,
            state: body.state.into(),
            acknowledged: body.acknowledged,
            attempts: body.attempts,
            next_attempt_at: time(body.next_attempt_at),
            retry_until: time(body.retry_until),
            last_error: body.last_error,
            last_attempt_at: body.last_attempt_at.map(time),
            resent_by: body.resent_by,
        }
    }
}

/// Where the webhook dispatcher finds a record with a pending delivery.
#[derive(Serialize, Deserialize)]
pub(in crate::store::schema) struct WebhookDueBody {
    payment: NameBody,
    first_seq: u64,
}

impl From<&WebhookDue> for WebhookDueBody {
    fn from(due: &WebhookDue) -> WebhookDueBody {
        WebhookDueBody {
            payment: NameBody::from(&due.payment),
            first_seq: due.first_seq,
        }
    }
}

impl TryFrom<WebhookDueBody> for WebhookDue {
    type Error = Invalid;
    fn try_from(body: WebhookDueBody) -> Result<WebhookDue, Invalid> {
        Ok(WebhookDue {
            payment: body.payment.try_into()?,
            first_seq: body.first_seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::super::golden::{check, refused};
    use crate::domain::account::EventRecord;
    use crate::store::schema::WebhookDue;

    const GOLDEN: &str = r#"{"format":1,"events":[{"payment":{"account":"acme","payment":"pay_1"},"seq":3,"at":1767225603000,"amount":{"currency":"USD","amount":"12.50"},"state":"processed","change":{"of":"payment","from":"sent","to":"processed","cause":"bank"}},{"payment":{"account":"acme","payment":"pay_1"},"seq":4,"at":1767225603000,"amount":{"currency":"USD","amount":"12.50"},"state":"processed","change":{"of":"refund","refund_id":"r1","amount":{"currency":"USD","amount":"5.00"},"state":"failed","failure_reason":"bank refused"}}],"deliveries":[{"endpoint":"shop","state":"pending","acknowledged":1,"attempts":2,"next_attempt_at":1767225607000,"retry_until":1767312003000,"last_error":"HTTP 503","last_attempt_at":1767225605000},{"endpoint":"crm","state":"delivered","acknowledged":2,"attempts":1,"next_attempt_at":1767225603000,"retry_until":1767312003000}]}"#;
    const DUE: &str =
        r#"{"format":1,"payment":{"account":"acme","payment":"pay_1"},"first_seq":3}"#;

    #[test]
    fn event_records_keep_their_stored_format() {
        check(&fixtures::events(), GOLDEN);
        check(
            &WebhookDue {
                payment: fixtures::name(),
                first_seq: 3,
            },
            DUE,
        );
    }

    /// The trace of the call that caused an event is kept, and only written
    /// when there was one; one that does not read is dropped, the record
    /// kept.
    #[test]
    fn the_trace_of_the_call_behind_an_event_is_kept() {
        let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut record = fixtures::events();
        record.events[1].trace = Some(trace.into());
        let golden = GOLDEN.replacen(
            r#""failure_reason":"bank refused"}}"#,
            &format!(r#""failure_reason":"bank refused"}},"trace":"{trace}"}}"#),
            1,
        );
        check(&record, &golden);
        let unreadable =
            super::super::golden::item(&golden.replacen(trace, "00-not-a-trace-01", 1));
        let decoded = crate::store::schema::decode_event_record(&unreadable).unwrap();
        assert_eq!(decoded.value.events[1].trace, None);
    }

    /// Who re-sent a delivery is kept, and only written when known (the
    /// golden above has none).
    #[test]
    fn who_resent_a_delivery_is_kept() {
        let mut record = fixtures::events();
        record.deliveries[0].resent_by = Some("CN=ops,O=Acme".into());
        let golden = GOLDEN.replacen(
            r#""last_attempt_at":1767225605000}"#,
            r#""last_attempt_at":1767225605000,"resent_by":"CN=ops,O=Acme"}"#,
            1,
        );
        check(&record, &golden);
    }

    #[test]
    fn invalid_event_records_are_refused() {
        refused::<EventRecord>(r#"{"format":1,"events":[]}"#);
        // Not consecutive.
        refused::<EventRecord>(&GOLDEN.replacen(r#""seq":4"#, r#""seq":5"#, 1));
        // More acknowledged than held.
        refused::<EventRecord>(&GOLDEN.replacen(r#""acknowledged":2"#, r#""acknowledged":3"#, 1));
        refused::<EventRecord>(&GOLDEN.replacen(r#""of":"refund""#, r#""of":"chargeback""#, 1));
    }
}
