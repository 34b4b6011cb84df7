//! The webhook dispatcher: one per node. Each pass reads the deliveries due
//! by now (the `HOOK` index, a range read per shard), and for each payment
//! concerned sends its pending events to each endpoint in event order,
//! stopping at the first failure of an endpoint so that a later event never
//! overtakes an earlier one. Every outcome is recorded on the event item
//! (conditional on its version) before the next pass.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use super::{WebhookSettings, WebhookSink};
use crate::clock::Clock;
use crate::cluster::AccountOwnership;
use crate::domain::account::IdempotencyRecord;
use crate::domain::events::parse_event_name;
use crate::domain::idempotency::Fingerprint;
use crate::domain::payment::Payment;
use crate::domain::{PaymentName, Timestamp};
use crate::limits;
use crate::shutdown::Shutdown;
use crate::store::schema::{self, Delivery, DeliveryState, EventRecord, Versioned};
use crate::store::{Condition, Store, StoreError, WriteOp};

/// A re-send's idempotency key, and how long it is kept.
#[derive(Clone, Copy, Debug)]
pub struct ResendKey<'a> {
    pub request_id: &'a crate::domain::RequestId,
    pub retention: Duration,
}

/// A re-send's answer: the event's record as it is now, and whether this
/// was a replay of a re-send already made under the same key.
#[derive(Clone, Debug)]
pub struct Resent {
    pub record: EventRecord,
    pub replayed: bool,
}

/// Why an operator's re-send was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResendError {
    #[error("{0}")]
    BadName(String),
    #[error("event {0} not found")]
    NotFound(String),
    #[error("no webhook endpoint named {0:?} is configured")]
    UnknownEndpoint(String),
    /// The endpoint named (or, none named, every endpoint) does not
    /// subscribe to the event's type.
    #[error("no endpoint to re-send it to subscribes to {event_type}")]
    NotSubscribed {
        endpoint: Option<String>,
        event_type: String,
    },
    #[error("the event changed meanwhile; retry")]
    Conflict,
    #[error("request_id was already used for a different request")]
    KeyReused,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct WebhookDispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    sink: Arc<dyn WebhookSink>,
    clock: Arc<dyn Clock>,
    settings: WebhookSettings,
    /// Whose webhooks this node delivers: in a cluster, those of the
    /// accounts it owns (one dispatcher per payment at a time).
    ownership: AccountOwnership,
    wake: Notify,
}

impl WebhookDispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        sink: Arc<dyn WebhookSink>,
        clock: Arc<dyn Clock>,
        settings: WebhookSettings,
        ownership: AccountOwnership,
    ) -> WebhookDispatcher {
        WebhookDispatcher {
            inner: Arc::new(Inner {
                store,
                sink,
                clock,
                settings,
                ownership,
                wake: Notify::new(),
            }),
        }
    }

    pub fn settings(&self) -> &WebhookSettings {
        &self.inner.settings
    }

    /// New events were written: look now rather than at the next tick.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Sweeps every `every`, and whenever woken, until `shutdown` fires; a
    /// sweep in progress finishes first (its deliveries are recorded).
    /// `swept` is told of each sweep: whether it succeeded, and when it
    /// began (the node's metrics time it).
    pub async fn run_until(
        &self,
        every: Duration,
        swept: impl Fn(bool, std::time::Instant),
        shutdown: Shutdown,
    ) {
        loop {
            if self.inner.settings.in_use() {
                let started = std::time::Instant::now();
                swept(self.sweep_logged().await, started);
            }
            tokio::select! {
                biased;
                () = shutdown.signalled() => return,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// One sweep; `false` if it failed (logged).
    async fn sweep_logged(&self) -> bool {
        match self.sweep().await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(%error, "webhook sweep failed; retrying next tick");
                false
            }
        }
    }

    /// One pass: every payment with a delivery due by now gets its pending
    /// events sent, in order. Returns how many payments were handled.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        if !self.inner.settings.in_use() {
            return Ok(0);
        }
        let now = self.inner.clock.now();
        let mut payments = BTreeSet::new();
        let due = schema::webhooks_due(self.inner.store.as_ref(), now, limits::WEBHOOK_SWEEP_PAGE)
            .await?;
        payments.extend(
            due.into_iter()
                .filter(|due| self.inner.ownership.serves(&due.payment.account))
                .map(|due| due.payment.to_string()),
        );
        let handled = payments.len();
        let permits = Arc::new(Semaphore::new(limits::WEBHOOK_PAYMENTS_IN_FLIGHT_MAX));
        let mut tasks = tokio::task::JoinSet::new();
        for payment in payments {
            let Ok(name) = crate::domain::parse_payment_name(&payment) else {
                continue;
            };
            let permit = Arc::clone(&permits).acquire_owned().await;
            let inner = Arc::clone(&self.inner);
            tasks.spawn(async move {
                let _permit = permit;
                if let Err(error) = inner.deliver_payment(&name).await {
                    tracing::warn!(payment = %name, %error, "webhook delivery not recorded; the next sweep retries");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        Ok(handled)
    }

    /// An operator re-sends an event to one endpoint, or to every configured
    /// one: the delivery of its record starts over from that event (or from
    /// an earlier one of the record not yet acknowledged, to keep the
    /// order), with a fresh retry period. When `actor` (who asked) is
    /// known, the deliveries name them and an audit record is written in
    /// the same write.
    pub async fn resend(
        &self,
        event_name: &str,
        endpoint: Option<&str>,
        actor: Option<&str>,
        key: Option<ResendKey<'_>>,
    ) -> Result<Resent, ResendError> {
        let inner = &self.inner;
        let (payment, seq) = parse_event_name(event_name)
            .map_err(|error| ResendError::BadName(error.to_string()))?;
        let in_force = inner.settings.endpoints();
        if let Some(name) = endpoint {
            if in_force.named(name).is_none() {
                return Err(ResendError::UnknownEndpoint(name.to_owned()));
            }
        }
        if in_force.is_empty() {
            return Err(ResendError::UnknownEndpoint(String::new()));
        }
        // With a key: a retry of the same re-send answers as the first did
        // (the event as it is now) and sends nothing again.
        // The event's canonical name: `events/02` is event 2 too.
        let canonical = crate::domain::events::event_name(&payment, seq);
        let fingerprint = Fingerprint::Resend {
            event: &canonical,
            endpoint,
        }
        .encode();
        let recorded = match &key {
            Some(key) => {
                schema::load_idempotency(inner.store.as_ref(), &payment.account, key.request_id)
                    .await?
            }
            None => None,
        };
        if let Some(recorded) = &recorded {
            if recorded.fingerprint != fingerprint {
                return Err(ResendError::KeyReused);
            }
        }
        let records = schema::payment_event_records(inner.store.as_ref(), &payment).await?;
        let Some(current) = records.into_iter().find(|record| {
            let first = record.value.first_seq();
            (first..first + record.value.events.len() as u64).contains(&seq)
        }) else {
            return Err(ResendError::NotFound(event_name.to_owned()));
        };
        if recorded.is_some() {
            return Ok(Resent {
                record: current.value,
                replayed: true,
            });
        }
        let now = inner.clock.now();
        let index = (seq - current.value.first_seq()) as usize;
        // To the endpoints that subscribe to the event's type: the
        // dispatcher would pass it over for any other.
        let event_type = current.value.events[index].event_type();
        let endpoints: Vec<&str> = (in_force.iter())
            .filter(|e| endpoint.is_none_or(|name| e.name == name))
            .filter(|e| e.wants(&event_type))
            .map(|e| e.name.as_str())
            .collect();
        if endpoints.is_empty() {
            return Err(ResendError::NotSubscribed {
                endpoint: endpoint.map(str::to_owned),
                event_type,
            });
        }
        let mut next = current.value.clone();
        for name in endpoints {
            let restarted = Delivery {
                endpoint: name.to_owned(),
                state: DeliveryState::Pending,
                acknowledged: index,
                attempts: 0,
                next_attempt_at: now,
                retry_until: now.plus_millis(inner.settings.retry_for.as_millis() as i64),
                last_error: None,
                last_attempt_at: None,
                resent_by: actor.map(str::to_owned),
            };
            match next.deliveries.iter_mut().find(|d| d.endpoint == name) {
                Some(delivery) => {
                    let acknowledged = delivery.acknowledged.min(index);
                    *delivery = Delivery {
                        acknowledged,
                        last_attempt_at: delivery.last_attempt_at,
                        ..restarted
                    };
                }
                None => next.deliveries.push(restarted),
            }
        }
        let mut audit = Vec::new();
        if let Some(actor) = actor {
            let paid = schema::load_payment(inner.store.as_ref(), &payment)
                .await?
                .ok_or_else(|| ResendError::NotFound(event_name.to_owned()))?;
            audit.push(WriteOp::Put {
                item: schema::audit_item(&schema::AuditRecord {
                    payment: payment.clone(),
                    at: now,
                    actor: actor.to_owned(),
                    causes: vec!["event_resent".into()],
                    state: paid.value.state,
                    // The event record's version this write makes: two
                    // re-sends, even in one millisecond, are two records.
                    version: current.version + 1,
                    event: Some(seq),
                }),
                condition: Condition::NotExists,
            });
        }
        if let Some(key) = &key {
            // In the same write: a concurrent duplicate fails on it (and
            // is answered as a replay when retried).
            audit.push(WriteOp::Put {
                item: schema::idempotency_item(
                    &payment.account,
                    key.request_id,
                    &IdempotencyRecord {
                        fingerprint: fingerprint.clone(),
                        payment: payment.payment.clone(),
                        created_at: now,
                        expires_at: now.plus_millis(key.retention.as_millis() as i64),
                    },
                ),
                condition: Condition::NotExists,
            });
        }
        match inner.write(&current, &next, audit).await {
            Ok(()) => {}
            // A concurrent duplicate with the same key got there first:
            // answered as a replay of it.
            Err(StoreError::ConditionFailed { .. }) if key.is_some() => {
                let key = key.expect("checked");
                let won = schema::load_idempotency(
                    inner.store.as_ref(),
                    &payment.account,
                    key.request_id,
                )
                .await?;
                return match won {
                    Some(won) if won.fingerprint == fingerprint => {
                        let records =
                            schema::payment_event_records(inner.store.as_ref(), &payment).await?;
                        let record = (records.into_iter())
                            .map(|record| record.value)
                            .find(|record| {
                                let first = record.first_seq();
                                (first..first + record.events.len() as u64).contains(&seq)
                            })
                            .ok_or_else(|| ResendError::NotFound(event_name.to_owned()))?;
                        Ok(Resent {
                            record,
                            replayed: true,
                        })
                    }
                    Some(_) => Err(ResendError::KeyReused),
                    None => Err(ResendError::Conflict),
                };
            }
            Err(StoreError::ConditionFailed { .. }) => return Err(ResendError::Conflict),
            Err(other) => return Err(ResendError::Store(other)),
        }
        self.wake();
        Ok(Resent {
            record: next,
            replayed: false,
        })
    }
}

impl Inner {
    fn backoff_ms(attempts: u32) -> i64 {
        let first = limits::WEBHOOK_BACKOFF_FIRST.as_millis() as i64;
        let max = limits::WEBHOOK_BACKOFF_MAX.as_millis() as i64;
        first
            .saturating_mul(1_i64 << attempts.saturating_sub(1).min(30))
            .min(max)
    }

    /// Sends one payment's pending events, record after record; per
    /// endpoint, a record still pending holds back the records after it.
    async fn deliver_payment(&self, payment: &PaymentName) -> Result<(), StoreError> {
        let records = schema::payment_event_records(self.store.as_ref(), payment).await?;
        // The body carries the payment as it is now, read once per pass
        // and only if something is due.
        let mut current_payment: Option<Option<Payment>> = None;
        // The endpoints in force for this pass (the file may be reloaded).
        let endpoints = self.settings.endpoints();
        // Per endpoint: an earlier record is still pending until then.
        let mut held_until: HashMap<String, Timestamp> = HashMap::new();
        for current in records {
            if current.value.next_due().is_none() {
                continue;
            }
            let now = self.clock.now();
            let mut next = current.value.clone();
            for delivery in next
                .deliveries
                .iter_mut()
                .filter(|delivery| delivery.state == DeliveryState::Pending)
            {
                if let Some(until) = held_until.get(&delivery.endpoint) {
                    delivery.next_attempt_at = delivery.next_attempt_at.max(*until);
                    continue;
                }
                if delivery.next_attempt_at > now {
                    held_until.insert(delivery.endpoint.clone(), delivery.next_attempt_at);
                    continue;
                }
                delivery.last_attempt_at = Some(now);
                let failure = match endpoints.named(&delivery.endpoint) {
                    // Not in the webhooks file in force here: an edit in
                    // progress, or a node that has not reloaded it yet.
                    // Retried as an endpoint that does not answer is, and
                    // given up only when its retry period ends, so a
                    // brief removal neither loses events nor reorders them.
                    None => Some(super::DeliveryError(
                        "endpoint not in the webhooks file in force".into(),
                    )),
                    Some(endpoint) => {
                        if current_payment.is_none() {
                            let read = schema::load_payment(self.store.as_ref(), payment).await?;
                            current_payment = Some(read.map(|versioned| versioned.value));
                        }
                        let payment_now = current_payment.as_ref().and_then(Option::as_ref);
                        let mut failure = None;
                        while let Some(event) = next.events.get(delivery.acknowledged) {
                            // An event of a type the endpoint does not
                            // subscribe to (now) is passed over:
                            // acknowledged without a request.
                            if !endpoint.takes_every_type() && !endpoint.wants(&event.event_type())
                            {
                                delivery.acknowledged += 1;
                                continue;
                            }
                            let unix_seconds = self.clock.now().unix_millis().div_euclid(1000);
                            let sent =
                                self.sink
                                    .deliver(endpoint, event, payment_now, unix_seconds);
                            match sent.await {
                                Ok(()) => delivery.acknowledged += 1,
                                Err(error) => {
                                    failure = Some(error);
                                    break;
                                }
                            }
                        }
                        failure
                    }
                };
                match failure {
                    None => {
                        delivery.state = DeliveryState::Delivered;
                        delivery.last_error = None;
                    }
                    Some(error) => {
                        delivery.attempts += 1;
                        delivery.last_error = Some(error.0);
                        if now >= delivery.retry_until {
                            delivery.state = DeliveryState::Failed;
                            tracing::error!(payment = %payment, endpoint = %delivery.endpoint, "webhook delivery given up after its retry period");
                        } else {
                            delivery.next_attempt_at =
                                now.plus_millis(Self::backoff_ms(delivery.attempts));
                            held_until.insert(delivery.endpoint.clone(), delivery.next_attempt_at);
                        }
                    }
                }
            }
            if next != current.value {
                self.write(&current, &next, Vec::new()).await?;
            }
        }
        Ok(())
    }

    /// Writes a record's new delivery state and moves (or removes) its
    /// pointer in the `HOOK` index, in one conditional write. The pointer
    /// exists exactly while a delivery is pending, at the record's version.
    /// Writes `next` over `current` (and its due pointer), with `also`
    /// in the same atomic write.
    async fn write(
        &self,
        current: &Versioned<EventRecord>,
        next: &EventRecord,
        also: Vec<WriteOp>,
    ) -> Result<(), StoreError> {
        let version = current.version + 1;
        let payment = next.payment();
        let first_seq = next.first_seq();
        let pointer_condition = match current.value.next_due() {
            Some(_) => Condition::VersionIs(current.version),
            None => Condition::NotExists,
        };
        let mut ops = vec![WriteOp::Put {
            item: schema::event_record_item(next, version),
            condition: Condition::VersionIs(current.version),
        }];
        match (next.next_due(), pointer_condition) {
            (Some(due), condition) => ops.push(WriteOp::Put {
                item: schema::webhook_due_item(payment, first_seq, due, version),
                condition,
            }),
            (None, Condition::VersionIs(pointer)) => ops.push(WriteOp::Delete {
                key: schema::webhook_due_key(payment, first_seq),
                condition: Condition::VersionIs(pointer),
            }),
            (None, _) => {}
        }
        ops.extend(also);
        self.store.transact(ops).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        assert_eq!(Inner::backoff_ms(1), 1_000);
        assert_eq!(Inner::backoff_ms(2), 2_000);
        assert_eq!(Inner::backoff_ms(5), 16_000);
        assert_eq!(Inner::backoff_ms(40), 3_600_000);
    }
}
