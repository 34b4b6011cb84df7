//! The webhook dispatcher with controlled time: a [`ManualClock`], explicit
//! sweeps and a sink that is told when to fail. Shows that one payment's
//! events go in order (a record still pending holds back the records after
//! it), that failures back off by doubling, that the due index holds only
//! what is due, and that a delivery is given up after its retry period.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use payvisor::clock::{Clock, ManualClock};
use payvisor::domain::events::{Change, PaymentEvent};
use payvisor::domain::payment::PaymentState;
use payvisor::domain::{parse_payment_name, Currency, Money, PaymentName, Timestamp};
use payvisor::store::schema::{self, Delivery, DeliveryState, EventRecord};
use payvisor::store::sqlite::SqliteStore;
use payvisor::store::{BoxFuture, Condition, Store, WriteOp};
use payvisor::webhooks::dispatcher::WebhookDispatcher;
use payvisor::webhooks::{DeliveryError, Endpoint, WebhookSettings, WebhookSink};

const START: i64 = 1_800_000_000_000;

/// Records every attempt; fails them while `down`.
#[derive(Default)]
struct SwitchableSink {
    down: AtomicBool,
    attempts: Mutex<Vec<(String, bool)>>,
}

impl WebhookSink for SwitchableSink {
    fn deliver<'a>(
        &'a self,
        _endpoint: &'a Endpoint,
        event: &'a PaymentEvent,
        _payment: Option<&'a payvisor::domain::payment::Payment>,
        _unix_seconds: i64,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let down = self.down.load(Ordering::SeqCst);
            self.attempts.lock().unwrap().push((event.name(), !down));
            if down {
                Err(DeliveryError("503 Service Unavailable".into()))
            } else {
                Ok(())
            }
        })
    }
}

impl SwitchableSink {
    /// Sequence numbers accepted, in order.
    fn delivered(&self) -> Vec<u64> {
        self.attempted()
            .into_iter()
            .filter(|(_, ok)| *ok)
            .map(|(seq, _)| seq)
            .collect()
    }

    /// Sequence numbers attempted so far, with whether they were accepted.
    fn attempted(&self) -> Vec<(u64, bool)> {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .map(|(name, ok)| (name.rsplit('/').next().unwrap().parse().unwrap(), *ok))
            .collect()
    }
}

fn event(payment: &PaymentName, seq: u64, to: PaymentState) -> PaymentEvent {
    PaymentEvent {
        payment: payment.clone(),
        seq,
        at: Timestamp::from_unix_millis(START),
        amount: Money::from_minor(Currency::from_code("USD").unwrap(), 100),
        state: to,
        change: Change::Payment {
            from: None,
            to,
            cause: "test".into(),
            failure_reason: None,
        },
        actor: None,
        trace: None,
    }
}

/// Writes a record of `events` with a pending delivery to "shop", as the
/// account actor does.
async fn record(store: &dyn Store, events: Vec<PaymentEvent>, retry_for_ms: i64) {
    let now = Timestamp::from_unix_millis(START);
    let record = EventRecord {
        events,
        deliveries: vec![Delivery {
            endpoint: "shop".into(),
            state: DeliveryState::Pending,
            acknowledged: 0,
            attempts: 0,
            next_attempt_at: now,
            retry_until: now.plus_millis(retry_for_ms),
            last_error: None,
            last_attempt_at: None,
            resent_by: None,
        }],
    };
    store
        .transact(vec![
            WriteOp::Put {
                item: schema::event_record_item(&record, 1),
                condition: Condition::NotExists,
            },
            WriteOp::Put {
                item: schema::webhook_due_item(record.payment(), record.first_seq(), now, 1),
                condition: Condition::NotExists,
            },
        ])
        .await
        .unwrap();
}

struct Setup {
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
    sink: Arc<SwitchableSink>,
    dispatcher: WebhookDispatcher,
    payment: PaymentName,
    _dir: tempfile::TempDir,
}

async fn setup(retry_for: Duration) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let clock = Arc::new(ManualClock::starting_at(Timestamp::from_unix_millis(START)));
    let sink = Arc::new(SwitchableSink::default());
    let dispatcher = WebhookDispatcher::new(
        store.clone(),
        sink.clone(),
        clock.clone(),
        WebhookSettings::fixed(
            vec![Endpoint::new("shop", "http://127.0.0.1:9/", "0123456789abcdef").unwrap()],
            retry_for,
        ),
        payvisor::cluster::AccountOwnership::Everything,
    );
    let payment = parse_payment_name("accounts/acme/payments/p1").unwrap();
    // Two decisions: created..sent, then processed.
    let retry_ms = retry_for.as_millis() as i64;
    record(
        store.as_ref(),
        vec![
            event(&payment, 1, PaymentState::Created),
            event(&payment, 2, PaymentState::Approved),
            event(&payment, 3, PaymentState::Sent),
        ],
        retry_ms,
    )
    .await;
    record(
        store.as_ref(),
        vec![event(&payment, 4, PaymentState::Processed)],
        retry_ms,
    )
    .await;
    Setup {
        store,
        clock,
        sink,
        dispatcher,
        payment,
        _dir: dir,
    }
}

async fn deliveries(setup: &Setup) -> Vec<Delivery> {
    schema::payment_event_records(setup.store.as_ref(), &setup.payment)
        .await
        .unwrap()
        .into_iter()
        .map(|record| record.value.deliveries[0].clone())
        .collect()
}

/// Pointers in the due index by the clock's now.
async fn due_now(setup: &Setup) -> usize {
    schema::webhooks_due(setup.store.as_ref(), setup.clock.now(), 100)
        .await
        .unwrap()
        .len()
}

#[tokio::test]
async fn a_payments_events_go_in_order_and_failures_back_off() {
    let setup = setup(Duration::from_secs(3600)).await;
    setup.sink.down.store(true, Ordering::SeqCst);

    // Down: the first record is tried and fails; the second is held back
    // (never tried before the first is through).
    setup.dispatcher.sweep().await.unwrap();
    assert_eq!(setup.sink.attempted(), [(1, false)]);
    let states = deliveries(&setup).await;
    assert_eq!(
        (states[0].attempts, states[0].next_attempt_at.unix_millis()),
        (1, START + 1_000)
    );
    assert_eq!(states[1].attempts, 0);
    assert_eq!(
        states[1].next_attempt_at.unix_millis(),
        START + 1_000,
        "held behind the first"
    );
    assert!(states[0].last_error.as_deref().unwrap().contains("503"));
    // Nothing is due until the back-off ends.
    assert_eq!(due_now(&setup).await, 0);
    setup.dispatcher.sweep().await.unwrap();
    assert_eq!(setup.sink.attempted().len(), 1);

    // Second failure: the wait doubles.
    setup.clock.advance(Duration::from_secs(1));
    assert_eq!(due_now(&setup).await, 2);
    setup.dispatcher.sweep().await.unwrap();
    let states = deliveries(&setup).await;
    assert_eq!(
        (states[0].attempts, states[0].next_attempt_at.unix_millis()),
        (2, START + 3_000)
    );
    assert_eq!(setup.sink.attempted(), [(1, false), (1, false)]);

    // Up again: everything goes, in order, and leaves the due index.
    setup.sink.down.store(false, Ordering::SeqCst);
    setup.clock.advance(Duration::from_secs(2));
    setup.dispatcher.sweep().await.unwrap();
    let delivered = setup.sink.delivered();
    assert_eq!(delivered, [1, 2, 3, 4]);
    let states = deliveries(&setup).await;
    assert!(states.iter().all(|d| d.state == DeliveryState::Delivered));
    setup.clock.advance(Duration::from_secs(86_400));
    assert_eq!(due_now(&setup).await, 0);
    setup.dispatcher.sweep().await.unwrap();
    assert_eq!(setup.sink.attempted().len(), 6, "nothing sent twice");
}

#[tokio::test]
async fn a_delivery_is_given_up_after_its_retry_period_and_resent_on_request() {
    let setup = setup(Duration::from_secs(5)).await;
    setup.sink.down.store(true, Ordering::SeqCst);
    for _ in 0..4 {
        setup.dispatcher.sweep().await.unwrap();
        setup.clock.advance(Duration::from_secs(4));
    }
    let states = deliveries(&setup).await;
    assert!(
        states.iter().all(|d| d.state == DeliveryState::Failed),
        "{states:?}"
    );
    assert_eq!(due_now(&setup).await, 0, "given up: out of the due index");

    // An operator re-sends event 2: 1 (decided with it, never acknowledged)
    // goes first, to keep the order, then 2 and 3.
    setup.sink.down.store(false, Ordering::SeqCst);
    let name = format!("{}/events/2", setup.payment);
    let key = payvisor::domain::RequestId::new("resend-1").unwrap();
    let keyed = || payvisor::webhooks::dispatcher::ResendKey {
        request_id: &key,
        retention: std::time::Duration::from_secs(86_400),
    };
    let resent = (setup.dispatcher)
        .resend(&name, Some("shop"), None, Some(keyed()))
        .await
        .unwrap();
    assert!(!resent.replayed);
    setup.dispatcher.sweep().await.unwrap();
    let delivered = setup.sink.delivered();
    assert_eq!(delivered, [1, 2, 3]);
    // The same key again: answered as the first, nothing sent again; the
    // key for another re-send: refused.
    let again = (setup.dispatcher)
        .resend(&name, Some("shop"), None, Some(keyed()))
        .await
        .unwrap();
    assert!(again.replayed);
    let elsewhere = (setup.dispatcher)
        .resend(&name, None, None, Some(keyed()))
        .await;
    assert!(matches!(
        elsewhere,
        Err(payvisor::webhooks::dispatcher::ResendError::KeyReused)
    ));
    setup.dispatcher.sweep().await.unwrap();
    assert_eq!(setup.sink.delivered(), [1, 2, 3], "nothing re-sent twice");
    let states = deliveries(&setup).await;
    assert_eq!(states[0].state, DeliveryState::Delivered);
    assert_eq!(
        states[1].state,
        DeliveryState::Failed,
        "only what was re-sent"
    );
}

/// Holds every delivery until opened; says when one arrived.
struct GatedSink {
    arrived: tokio::sync::Notify,
    /// No permits until opened.
    gate: tokio::sync::Semaphore,
}

impl Default for GatedSink {
    fn default() -> Self {
        GatedSink {
            arrived: tokio::sync::Notify::new(),
            gate: tokio::sync::Semaphore::new(0),
        }
    }
}

impl WebhookSink for GatedSink {
    fn deliver<'a>(
        &'a self,
        _endpoint: &'a Endpoint,
        _event: &'a PaymentEvent,
        _payment: Option<&'a payvisor::domain::payment::Payment>,
        _unix_seconds: i64,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            self.arrived.notify_one();
            let _pass = self.gate.acquire().await.unwrap();
            Ok(())
        })
    }
}

/// The dispatcher's loop holds the node's shutdown: it returns once the
/// signal fires, but a sweep in progress finishes first, so the delivery it
/// was making is recorded (not sent again after the restart).
#[tokio::test]
async fn the_dispatcher_returns_on_shutdown_after_recording_the_sweep_in_progress() {
    let setup = setup(Duration::from_secs(3600)).await;
    let sink = Arc::new(GatedSink::default());
    let dispatcher = WebhookDispatcher::new(
        setup.store.clone(),
        sink.clone(),
        setup.clock.clone(),
        setup.dispatcher.settings().clone(),
        payvisor::cluster::AccountOwnership::Everything,
    );
    let (trigger, shutdown) = payvisor::shutdown::channel();
    // Without the signal it would sweep again in an hour, and on every wake.
    let running = tokio::spawn(async move {
        dispatcher
            .run_until(Duration::from_secs(3600), |_, _| {}, shutdown)
            .await
    });
    sink.arrived.notified().await;
    trigger.fire();
    assert!(
        !running.is_finished(),
        "the sweep in progress is not cut off"
    );

    sink.gate.add_permits(tokio::sync::Semaphore::MAX_PERMITS);
    tokio::time::timeout(crate::common::PROGRESS_DEADLINE, running)
        .await
        .expect("the dispatcher returns once the signal fired")
        .unwrap();
    let states = deliveries(&setup).await;
    assert!(
        states.iter().all(|d| d.state == DeliveryState::Delivered),
        "{states:?}"
    );
}
