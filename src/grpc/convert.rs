//! Protobuf messages to validated domain commands, and domain records back
//! to protobuf. Validation collects every bad field, so a client learns all
//! of its mistakes at once.

use std::collections::BTreeMap;

use super::pb;
use crate::actors::{
    CommandError, CreatePayment, FieldViolation, OperatorAction, OperatorCommand, RefundPayment,
};
use crate::domain::events::{Change, PaymentEvent};
use crate::domain::ledger::Balances;
use crate::domain::payment::{
    Departure, Payment, PaymentState, Refund, RefundState, ReviewVerdict, Transition,
};
use crate::domain::rules::Action;
use crate::domain::watch::PageAction;
use crate::domain::{
    parse_account_name, parse_payment_name, Currency, Money, PaymentId, RequestId, Timestamp,
};
use crate::limits;
use crate::store::schema::{CreatedPosition, CreatedWindow, DeliveryState, EventRecord};
use crate::watchdog::AlertEvent;

/// Accumulates field violations.
#[derive(Default)]
struct Violations(Vec<FieldViolation>);

impl Violations {
    fn add(&mut self, field: &str, description: impl ToString) {
        self.0.push(FieldViolation {
            field: field.to_owned(),
            description: description.to_string(),
        });
    }

    /// Records the error of `result` under `field`, yielding its value.
    fn check<T, E: ToString>(&mut self, field: &str, result: Result<T, E>) -> Option<T> {
        result.map_err(|error| self.add(field, error)).ok()
    }

    fn finish<T>(self, value: Option<T>) -> Result<T, CommandError> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            _ => Err(CommandError::InvalidArgument { violations: self.0 }),
        }
    }
}

fn money(violations: &mut Violations, field: &str, money: &pb::Money) -> Option<Money> {
    let currency = Currency::from_code(&money.currency_code);
    if currency.is_none() {
        violations.add(
            &format!("{field}.currency_code"),
            format!(
                "unknown currency code {:?} (expected an ISO 4217 code such as USD)",
                money.currency_code
            ),
        );
    }
    let amount = currency.and_then(|currency| {
        violations.check(
            &format!("{field}.minor_units"),
            Money::positive_from_minor(currency, money.minor_units),
        )
    });
    if currency.is_none() && money.minor_units <= 0 {
        violations.add(&format!("{field}.minor_units"), "amount must be positive");
    }
    amount
}

fn metadata(
    violations: &mut Violations,
    metadata: &std::collections::HashMap<String, String>,
) -> BTreeMap<String, String> {
    if metadata.len() > limits::METADATA_ENTRIES_MAX {
        violations.add(
            "payment.metadata",
            format!("at most {} entries allowed", limits::METADATA_ENTRIES_MAX),
        );
    }
    for (key, value) in metadata {
        if key.is_empty()
            || key.len() > limits::METADATA_KEY_BYTES_MAX
            || key.chars().any(char::is_control)
        {
            violations.add(
                &format!("payment.metadata[{key:?}]"),
                format!(
                    "keys must be 1..={} bytes without control characters",
                    limits::METADATA_KEY_BYTES_MAX
                ),
            );
        }
        if value.len() > limits::METADATA_VALUE_BYTES_MAX {
            violations.add(
                &format!("payment.metadata[{key:?}]"),
                format!(
                    "values must be at most {} bytes",
                    limits::METADATA_VALUE_BYTES_MAX
                ),
            );
        }
    }
    metadata
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

pub fn create_payment(request: pb::CreatePaymentRequest) -> Result<CreatePayment, CommandError> {
    let mut violations = Violations::default();
    let account = violations.check("parent", parse_account_name(&request.parent));
    let request_id = violations.check("request_id", RequestId::new(request.request_id));
    let payment_id = if request.payment_id.is_empty() {
        Some(None)
    } else {
        violations
            .check("payment_id", PaymentId::new(request.payment_id))
            .map(Some)
    };
    let (amount, metadata, payer_id, payer_country) = match &request.payment {
        None => {
            violations.add("payment", "required");
            (None, BTreeMap::new(), None, None)
        }
        Some(payment) => {
            let amount = match &payment.amount {
                Some(amount) => money(&mut violations, "payment.amount", amount),
                None => {
                    violations.add("payment.amount", "required");
                    None
                }
            };
            let payer_id = Some(payment.payer_id.clone()).filter(|id| !id.is_empty());
            if payer_id.as_ref().is_some_and(|id| {
                id.chars().count() > limits::PAYER_ID_CHARS_MAX
                    || !id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
            }) {
                violations.add(
                    "payment.payer_id",
                    format!(
                        "at most {} characters of [A-Za-z0-9._:-]",
                        limits::PAYER_ID_CHARS_MAX
                    ),
                );
            }
            // Any case; stored (and fingerprinted) upper case.
            let given = Some(payment.payer_country.as_str()).filter(|c| !c.is_empty());
            let payer_country = given.and_then(crate::domain::country::country_code);
            if given.is_some() && payer_country.is_none() {
                violations.add(
                    "payment.payer_country",
                    "an assigned ISO 3166-1 alpha-2 country code, such as DE",
                );
            }
            (
                amount,
                metadata(&mut violations, &payment.metadata),
                payer_id,
                payer_country,
            )
        }
    };
    let command = (|| {
        Some(CreatePayment {
            account: account?,
            payment_id: payment_id?,
            amount: amount?,
            metadata,
            payer_id,
            payer_country,
            request_id: request_id?,
            trace: None,
        })
    })();
    violations.finish(command)
}

pub fn refund_payment(request: pb::RefundPaymentRequest) -> Result<RefundPayment, CommandError> {
    let mut violations = Violations::default();
    let name = violations.check("name", parse_payment_name(&request.name));
    let request_id = violations.check("request_id", RequestId::new(request.request_id));
    let amount = match &request.amount {
        None => Some(None),
        Some(amount) => money(&mut violations, "amount", amount).map(Some),
    };
    if request.reason.trim().is_empty() {
        violations.add("reason", "required: say why the money goes back");
    } else if request.reason.len() > limits::REFUND_REASON_BYTES_MAX {
        violations.add(
            "reason",
            format!("at most {} bytes", limits::REFUND_REASON_BYTES_MAX),
        );
    }
    let reason = request.reason;
    let command = (|| {
        Some(RefundPayment {
            name: name?,
            amount: amount?,
            reason,
            request_id: request_id?,
            actor: None,
            trace: None,
        })
    })();
    violations.finish(command)
}

/// Page tokens are opaque to clients: `v1.` and the last payment id seen.
/// A `ListPayments` page token: where the listing by creation goes on.
pub fn encode_page_token(last: &CreatedPosition) -> String {
    format!("c1.{}", last.as_str())
}

pub fn decode_page_token(token: &str) -> Result<Option<CreatedPosition>, CommandError> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .strip_prefix("c1.")
        .and_then(CreatedPosition::parse)
        .map(Some)
        .ok_or_else(|| CommandError::invalid("page_token", "not a token returned by ListPayments"))
}

/// A `ListPaymentEvents` page token: the sequence number of the last event
/// of the previous page.
pub fn encode_events_token(last: u64) -> String {
    format!("e1.{last}")
}

pub fn decode_events_token(token: &str) -> Result<Option<u64>, CommandError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || CommandError::invalid("page_token", "not a token returned by ListPaymentEvents");
    let last = token.strip_prefix("e1.").ok_or_else(bad)?;
    if last.is_empty() || last.len() > 20 || !last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    last.parse().map(Some).map_err(|_| bad())
}

/// An audit page's token: the last sort key read, after a version tag.
pub fn encode_audit_token(last: &str) -> String {
    format!("a1.{last}")
}

pub fn decode_audit_token(token: &str) -> Result<Option<String>, CommandError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || CommandError::invalid("page_token", "not a token returned by ListAuditRecords");
    let position = token.strip_prefix("a1.").ok_or_else(bad)?;
    let well_formed = position.starts_with("U#")
        && position.len() <= 200
        && position
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'#' | b'-' | b'_'));
    if !well_formed {
        return Err(bad());
    }
    Ok(Some(position.to_owned()))
}

/// `ListPayments`' creation times: `[start_time, end_time)`, either open.
pub fn created_window(
    start_time: Option<prost_types::Timestamp>,
    end_time: Option<prost_types::Timestamp>,
) -> Result<CreatedWindow, CommandError> {
    let since = start_time
        .map(|time| time_from_pb("start_time", &time))
        .transpose()?;
    let until = end_time
        .map(|time| time_from_pb("end_time", &time))
        .transpose()?;
    if let (Some(since), Some(until)) = (since, until) {
        if until <= since {
            return Err(CommandError::invalid(
                "end_time",
                "must be after start_time",
            ));
        }
    }
    Ok(CreatedWindow { since, until })
}

/// A protobuf time as a [`Timestamp`] (to the millisecond).
pub fn time_from_pb(field: &str, time: &prost_types::Timestamp) -> Result<Timestamp, CommandError> {
    if !(0..1_000_000_000).contains(&time.nanos) {
        return Err(CommandError::invalid(field, "nanos must be 0..1e9"));
    }
    let millis = time
        .seconds
        .checked_mul(1000)
        .and_then(|millis| millis.checked_add(i64::from(time.nanos / 1_000_000)))
        .ok_or_else(|| CommandError::invalid(field, "out of range"))?;
    Ok(Timestamp::from_unix_millis(millis))
}

pub fn audit_record_to_pb(record: &crate::domain::account::AuditRecord) -> pb::AuditRecord {
    pb::AuditRecord {
        payment: record.payment.to_string(),
        time: Some(timestamp(record.at)),
        actor: record.actor.clone(),
        causes: record.causes.clone(),
        state: state_to_pb(record.state) as i32,
        event: record
            .event
            .map(|seq| format!("{}/events/{seq}", record.payment))
            .unwrap_or_default(),
    }
}

pub fn page_size(requested: i32) -> Result<usize, CommandError> {
    match requested {
        size if size < 0 => Err(CommandError::invalid("page_size", "must not be negative")),
        0 => Ok(limits::PAGE_SIZE_DEFAULT),
        size => Ok((size as usize).min(limits::PAGE_SIZE_MAX)),
    }
}

pub fn timestamp(at: Timestamp) -> prost_types::Timestamp {
    let millis = at.unix_millis();
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn money_to_pb(money: Money) -> pb::Money {
    pb::Money {
        currency_code: money.currency().code().to_owned(),
        minor_units: money.minor_units(),
    }
}

pub fn state_to_pb(state: PaymentState) -> pb::payment::State {
    use pb::payment::State;
    match state {
        PaymentState::Created => State::Created,
        PaymentState::Approved => State::Approved,
        PaymentState::InReview => State::InReview,
        PaymentState::Sent => State::Sent,
        PaymentState::Processed => State::Processed,
        PaymentState::PartiallyRefunded => State::PartiallyRefunded,
        PaymentState::Refunded => State::Refunded,
        PaymentState::Declined => State::Declined,
        PaymentState::Failed => State::Failed,
    }
}

pub fn state_from_pb(state: i32) -> Result<Option<PaymentState>, CommandError> {
    use pb::payment::State;
    let state = State::try_from(state)
        .map_err(|_| CommandError::invalid("state", format!("unknown state {state}")))?;
    Ok(match state {
        State::Unspecified => None,
        State::Created => Some(PaymentState::Created),
        State::Approved => Some(PaymentState::Approved),
        State::InReview => Some(PaymentState::InReview),
        State::Sent => Some(PaymentState::Sent),
        State::Processed => Some(PaymentState::Processed),
        State::PartiallyRefunded => Some(PaymentState::PartiallyRefunded),
        State::Refunded => Some(PaymentState::Refunded),
        State::Declined => Some(PaymentState::Declined),
        State::Failed => Some(PaymentState::Failed),
    })
}

fn refund_state_to_pb(state: RefundState) -> pb::refund::State {
    use pb::refund::State;
    match state {
        RefundState::Pending => State::Pending,
        RefundState::Succeeded => State::Succeeded,
        RefundState::Failed => State::Failed,
    }
}

fn action_to_pb(action: Action) -> pb::approval::Action {
    match action {
        Action::Approve => pb::approval::Action::Approve,
        Action::Review => pb::approval::Action::Review,
        Action::Decline => pb::approval::Action::Decline,
    }
}

fn refund_to_pb(refund: &Refund) -> pb::Refund {
    pb::Refund {
        refund_id: refund.id.clone(),
        amount: Some(money_to_pb(refund.amount)),
        reason: refund.reason.clone(),
        state: refund_state_to_pb(refund.state) as i32,
        failure_reason: refund.failure_reason.clone().unwrap_or_default(),
        create_time: Some(timestamp(refund.created_at)),
        update_time: Some(timestamp(refund.updated_at)),
    }
}

fn transition_to_pb(transition: &Transition) -> pb::Transition {
    pb::Transition {
        from_state: transition
            .from
            .map(|state| state_to_pb(state) as i32)
            .unwrap_or_default(),
        to_state: state_to_pb(transition.to) as i32,
        cause: transition.cause.clone(),
        time: Some(timestamp(transition.at)),
        actor: transition.actor.clone().unwrap_or_default(),
    }
}

pub fn payment_to_pb(payment: &Payment) -> pb::Payment {
    pb::Payment {
        name: payment.name().to_string(),
        amount: Some(money_to_pb(payment.amount)),
        state: state_to_pb(payment.state) as i32,
        refunded_amount: Some(money_to_pb(payment.refunded())),
        metadata: payment
            .metadata
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        failure_reason: payment.failure_reason.clone().unwrap_or_default(),
        create_time: Some(timestamp(payment.created_at)),
        update_time: Some(timestamp(payment.updated_at)),
        refunds: payment.refunds.iter().map(refund_to_pb).collect(),
        fee: Some(money_to_pb(payment.fee)),
        history: payment.history.iter().map(transition_to_pb).collect(),
        watch: payment.watch.as_ref().map(|watch| pb::Watch {
            stage: watch.stage.to_string(),
            since_time: Some(timestamp(watch.since)),
            due_time: watch.due_at.map(timestamp),
            redrives: watch.redrives as i32,
            paged: watch.paged,
        }),
        payer_id: payment.payer_id.clone().unwrap_or_default(),
        payer_country: payment.payer_country.clone().unwrap_or_default(),
        approval: payment.approval.as_ref().map(|evaluation| pb::Approval {
            action: action_to_pb(evaluation.action) as i32,
            fired_rules: evaluation
                .fired
                .iter()
                .map(|fired| pb::FiredRule {
                    rule: fired.rule.clone(),
                    action: action_to_pb(fired.action) as i32,
                    detail: fired.detail.clone(),
                })
                .collect(),
            rules_version: evaluation.rules_version.clone(),
        }),
        routes: payment
            .routes
            .iter()
            .map(|route| pb::BankRoute {
                bank: route.bank.clone(),
                why: route.why.clone(),
                time: Some(timestamp(route.at)),
                left: match &route.left {
                    None => String::new(),
                    Some(Departure::Rejected { reason }) => format!("rejected: {reason}"),
                    Some(Departure::Unknown) => "unknown".into(),
                },
            })
            .collect(),
        review: payment.review.as_ref().map(|review| pb::PaymentReview {
            verdict: match review.verdict {
                ReviewVerdict::Approve => "approve",
                ReviewVerdict::Decline => "decline",
            }
            .into(),
            reason: review.reason.clone(),
            time: Some(timestamp(review.at)),
        }),
    }
}

/// An event as the API sent it, back into the domain's (what `webhooks
/// listen` forwards, in the body the server's webhooks have). Its trace is
/// not sent, so it has none.
pub fn event_from_pb(event: &pb::PaymentEvent) -> Result<PaymentEvent, CommandError> {
    let invalid = |field: &str, why: String| CommandError::invalid(field, why);
    let (payment, seq) = crate::domain::events::parse_event_name(&event.name)
        .map_err(|error| invalid("name", error.to_string()))?;
    let known_money = |field: &str, money: Option<&pb::Money>| -> Result<Money, CommandError> {
        let money = money.ok_or_else(|| invalid(field, "missing".into()))?;
        let currency = Currency::from_code(&money.currency_code)
            .ok_or_else(|| invalid(field, format!("unknown currency {:?}", money.currency_code)))?;
        Ok(Money::from_minor(currency, money.minor_units))
    };
    let state = state_from_pb(event.state)?.ok_or_else(|| invalid("state", "unset".into()))?;
    let at = match &event.time {
        Some(time) => time_from_pb("time", time)?,
        None => return Err(invalid("time", "missing".into())),
    };
    let failure_reason = Some(event.failure_reason.clone()).filter(|reason| !reason.is_empty());
    let change = match pb::refund::State::try_from(event.refund_state) {
        Err(_) => {
            return Err(invalid(
                "refund_state",
                format!("unknown {}", event.refund_state),
            ))
        }
        Ok(pb::refund::State::Unspecified) => Change::Payment {
            from: state_from_pb(event.from_state)?,
            to: state_from_pb(event.to_state)?
                .ok_or_else(|| invalid("to_state", "unset".into()))?,
            cause: event.cause.clone(),
            failure_reason,
        },
        Ok(refund_state) => Change::Refund {
            refund_id: event.refund_id.clone(),
            amount: known_money("refund_amount", event.refund_amount.as_ref())?,
            state: match refund_state {
                pb::refund::State::Pending => RefundState::Pending,
                pb::refund::State::Succeeded => RefundState::Succeeded,
                _ => RefundState::Failed,
            },
            failure_reason,
        },
    };
    Ok(PaymentEvent {
        payment,
        seq,
        at,
        amount: known_money("amount", event.amount.as_ref())?,
        state,
        change,
        actor: Some(event.actor.clone()).filter(|actor| !actor.is_empty()),
        trace: None,
    })
}

/// One event as the API shows it; `record` adds its delivery state.
pub fn event_to_pb(event: &PaymentEvent, record: Option<&EventRecord>) -> pb::PaymentEvent {
    let mut message = pb::PaymentEvent {
        name: event.name(),
        r#type: event.event_type(),
        payment: event.payment.to_string(),
        sequence: event.seq as i64,
        time: Some(timestamp(event.at)),
        state: state_to_pb(event.state) as i32,
        amount: Some(money_to_pb(event.amount)),
        actor: event.actor.clone().unwrap_or_default(),
        ..Default::default()
    };
    match &event.change {
        Change::Payment {
            from,
            to,
            cause,
            failure_reason,
        } => {
            message.from_state = from.map(|state| state_to_pb(state) as i32).unwrap_or(0);
            message.to_state = state_to_pb(*to) as i32;
            message.cause = cause.clone();
            message.failure_reason = failure_reason.clone().unwrap_or_default();
        }
        Change::Refund {
            refund_id,
            amount,
            state,
            failure_reason,
        } => {
            message.refund_id = refund_id.clone();
            message.refund_state = refund_state_to_pb(*state) as i32;
            message.refund_amount = Some(money_to_pb(*amount));
            message.failure_reason = failure_reason.clone().unwrap_or_default();
        }
    }
    if let Some(record) = record {
        let index = (event.seq - record.first_seq()) as usize;
        message.deliveries = record
            .deliveries
            .iter()
            .map(|delivery| {
                use pb::event_delivery::State;
                let state = if index < delivery.acknowledged {
                    State::Delivered
                } else {
                    match delivery.state {
                        DeliveryState::Pending => State::Pending,
                        DeliveryState::Failed => State::Failed,
                        // Delivered means every event was acknowledged.
                        DeliveryState::Delivered => State::Delivered,
                    }
                };
                let waiting = state != State::Delivered;
                pb::EventDelivery {
                    endpoint: delivery.endpoint.clone(),
                    state: state as i32,
                    attempts: if waiting { delivery.attempts as i32 } else { 0 },
                    last_error: if waiting {
                        delivery.last_error.clone().unwrap_or_default()
                    } else {
                        String::new()
                    },
                    next_attempt_time: (state == State::Pending)
                        .then(|| timestamp(delivery.next_attempt_at)),
                    last_attempt_time: delivery.last_attempt_at.map(timestamp),
                    retry_until: Some(timestamp(delivery.retry_until)),
                    resent_by: delivery.resent_by.clone().unwrap_or_default(),
                }
            })
            .collect();
    }
    message
}

/// A reviewer's reason: required and bounded.
pub fn review_action(
    verdict: ReviewVerdict,
    reason: String,
) -> Result<OperatorAction, FieldViolation> {
    let bad = |description: String| FieldViolation {
        field: "reason".into(),
        description,
    };
    if reason.trim().is_empty() {
        return Err(bad("required: say why, for the audit trail".into()));
    }
    if reason.len() > limits::REVIEW_REASON_BYTES_MAX {
        return Err(bad(format!(
            "at most {} bytes",
            limits::REVIEW_REASON_BYTES_MAX
        )));
    }
    Ok(OperatorAction::Review { verdict, reason })
}

pub fn operator_command(
    name: &str,
    request_id: String,
    action: Result<OperatorAction, FieldViolation>,
) -> Result<OperatorCommand, CommandError> {
    let mut violations = Violations::default();
    let name = violations.check("name", parse_payment_name(name));
    let request_id = violations.check("request_id", RequestId::new(request_id));
    let action = action
        .map_err(|violation| violations.add(&violation.field, violation.description))
        .ok();
    let command = (|| {
        Some(OperatorCommand {
            name: name?,
            action: action?,
            actor: None,
            request_id: request_id?,
            trace: None,
        })
    })();
    violations.finish(command)
}

pub fn fail_reason(reason: String) -> Result<OperatorAction, FieldViolation> {
    let bad = |description: String| FieldViolation {
        field: "reason".into(),
        description,
    };
    if reason.trim().is_empty() {
        return Err(bad("required: say why the payment is given up".into()));
    }
    if reason.len() > limits::REFUND_REASON_BYTES_MAX {
        return Err(bad(format!(
            "at most {} bytes",
            limits::REFUND_REASON_BYTES_MAX
        )));
    }
    Ok(OperatorAction::Fail { reason })
}

pub fn alert_to_pb(event: &AlertEvent) -> pb::Alert {
    pb::Alert {
        payment: event.payment.to_string(),
        action: match event.action {
            PageAction::Trigger => pb::alert::Action::Trigger,
            PageAction::Resolve => pb::alert::Action::Resolve,
        } as i32,
        dedup_key: event.dedup_key.clone(),
        stage: event.stage.to_string(),
        severity: format!("{:?}", event.severity).to_lowercase(),
        summary: event.summary.clone(),
        time: Some(timestamp(event.at)),
        missed: 0,
    }
}

pub fn account_to_pb(name: String, balances: &Balances) -> pb::Account {
    pb::Account {
        name,
        balances: balances
            .iter()
            .map(|(currency, balances)| pb::Balance {
                currency_code: currency.code().to_owned(),
                pending: Some(money_to_pb(balances.pending)),
                available: Some(money_to_pb(balances.available)),
                refunding: Some(money_to_pb(balances.refunding)),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `webhooks listen` forwards is the event the server sent, read
    /// back whole: the same webhook body the server's deliveries have.
    #[test]
    fn an_event_reads_back_from_the_api_as_it_was() {
        let usd = |minor| Money::from_minor(Currency::from_code("USD").unwrap(), minor);
        let payment = crate::domain::PaymentName {
            account: crate::domain::AccountId::new("acme").unwrap(),
            payment: PaymentId::new("pay_1".to_owned()).unwrap(),
        };
        let moved = PaymentEvent {
            payment: payment.clone(),
            seq: 4,
            at: Timestamp::from_unix_millis(1_795_955_100_324),
            amount: usd(1_250),
            state: PaymentState::Failed,
            change: Change::Payment {
                from: Some(PaymentState::Sent),
                to: PaymentState::Failed,
                cause: "bank_failed".into(),
                failure_reason: Some("card declined".into()),
            },
            actor: None,
            trace: None,
        };
        let created = PaymentEvent {
            seq: 1,
            change: Change::Payment {
                from: None,
                to: PaymentState::Created,
                cause: "created".into(),
                failure_reason: None,
            },
            ..moved.clone()
        };
        let refunded = PaymentEvent {
            seq: 6,
            state: PaymentState::PartiallyRefunded,
            change: Change::Refund {
                refund_id: "r1".into(),
                amount: usd(200),
                state: RefundState::Succeeded,
                failure_reason: None,
            },
            actor: Some("key-ops".into()),
            ..moved.clone()
        };
        for event in [moved, created, refunded] {
            let read = event_from_pb(&event_to_pb(&event, None)).unwrap();
            assert_eq!(read, event);
            assert_eq!(
                super::super::json::webhook_body(&read, None),
                super::super::json::webhook_body(&event, None)
            );
        }
    }

    /// Logs name states as the API does.
    #[test]
    fn each_state_logs_under_its_api_name() {
        for state in PaymentState::ALL {
            assert_eq!(state.api_name(), state_to_pb(state).as_str_name());
        }
    }
}
