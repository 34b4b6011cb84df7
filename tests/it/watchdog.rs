//! The watchdog in-process, with controlled time: the orchestrator's clock is
//! a [`ManualClock`] that moves only when a test says so, and each watchdog
//! pass is run explicitly (`sweep_watchdog`), so stall deadlines and re-drive
//! back-off are exercised without sleeping. Each scenario runs on the
//! embedded store and on DynamoDB (the test server `tests/run.sh` starts).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use payvisor::actors::{
    ActorSettings, CommandError, Components, CreatePayment, OperatorAction, OperatorCommand,
    Orchestrator,
};
use payvisor::alerts::{AlertError, AlertSink, Page, PageAction};
use payvisor::clock::{Clock, ManualClock};
use payvisor::connectors::built_in_bank::{BuiltInBank, BuiltInBankConfig, BEHAVIOUR_KEY};
use payvisor::domain::payment::{Payment, PaymentState, Policy};
use payvisor::domain::watch::{OperatorRejection, Stage};
use payvisor::domain::{AccountId, Currency, Money, PaymentName, RequestId, Timestamp};
use payvisor::random::SeededRandom;
use payvisor::store::schema;
use payvisor::store::{BoxFuture, IndexQuery, Page as StorePage, Store, StoreError};
use payvisor::watchdog::Pager;
use tokio::sync::mpsc;

use crate::common::dynamodb as dynamodb_server;

const SENT_DEADLINE: Duration = Duration::from_secs(60);
const REDRIVES: u32 = 2;

/// Records every page; refuses the first `failures` with a retryable error,
/// as PagerDuty does under throttling.
#[derive(Default)]
struct RecordingSink {
    pages: Mutex<Vec<Page>>,
    failures: AtomicU32,
}

impl AlertSink for RecordingSink {
    fn send(&self, page: &Page) -> BoxFuture<'_, Result<(), AlertError>> {
        let page = page.clone();
        Box::pin(async move {
            let failing = self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(1)
                })
                .is_ok();
            if failing {
                return Err(AlertError::Retryable("429 throttled".into()));
            }
            self.pages.lock().unwrap().push(page);
            Ok(())
        })
    }
}

impl RecordingSink {
    fn actions_for(&self, dedup_key: &str) -> Vec<PageAction> {
        let pages = self.pages.lock().unwrap();
        pages
            .iter()
            .filter(|page| page.dedup_key == dedup_key)
            .map(|page| page.action)
            .collect()
    }
    fn count(&self) -> usize {
        self.pages.lock().unwrap().len()
    }
}

/// Counts the index items read: the cost of finding due reminders.
struct CountingStore {
    inner: Arc<dyn Store>,
    index_items_read: AtomicUsize,
}

impl Store for CountingStore {
    fn transact(
        &self,
        ops: Vec<payvisor::store::WriteOp>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.transact(ops)
    }
    fn get(
        &self,
        key: payvisor::store::Key,
    ) -> BoxFuture<'_, Result<Option<payvisor::store::Item>, StoreError>> {
        self.inner.get(key)
    }
    fn query(&self, query: payvisor::store::Query) -> BoxFuture<'_, Result<StorePage, StoreError>> {
        self.inner.query(query)
    }
    fn expire(
        &self,
        now_unix_seconds: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.inner.expire(now_unix_seconds, limit)
    }

    fn query_index(&self, query: IndexQuery) -> BoxFuture<'_, Result<StorePage, StoreError>> {
        Box::pin(async move {
            let page = self.inner.query_index(query).await?;
            self.index_items_read
                .fetch_add(page.items.len(), Ordering::SeqCst);
            Ok(page)
        })
    }
}

/// One node: orchestrator, manual clock, recording pager.
struct Node {
    orchestrator: Orchestrator,
    clock: Arc<ManualClock>,
    sink: Arc<RecordingSink>,
    _background: crate::common::Background,
}

fn policy() -> Policy {
    let mut policy = Policy::default();
    policy
        .stalls
        .deadline_ms
        .insert(Stage::Sent, SENT_DEADLINE.as_millis() as i64);
    policy.stalls.redrive_max = REDRIVES;
    policy
}

fn start_node(store: Arc<dyn Store>, clock: Arc<ManualClock>, sink: Arc<RecordingSink>) -> Node {
    let random = Arc::new(SeededRandom::new(11));
    let (events, queue) = mpsc::channel(1024);
    let simulator = BuiltInBankConfig {
        latency_min: Duration::from_millis(1),
        latency_max: Duration::from_millis(2),
        failure_per_mille: 0,
    };
    let mut background = crate::common::Background::new();
    let orchestrator = Orchestrator::start(
        Components {
            store,
            banks: Arc::new(payvisor::connectors::routing::Router::single(
                "built-in",
                Arc::new(BuiltInBank::new(simulator, random.clone(), events)),
            )),
            clock: clock.clone(),
            random,
            policy: policy(),
            settings: ActorSettings::default(),
            alert_sink: sink.clone(),
            node_name: "watchdog-test".into(),
            rules: Arc::new(payvisor::approval::RulesInForce::approve_all()),
            webhooks: payvisor::webhooks::WebhookSettings::default(),
            webhook_sink: Arc::new(
                payvisor::webhooks::HttpWebhookSink::new(
                    false,
                    payvisor::grpc::json::webhook_body_format(),
                )
                .unwrap(),
            ),
        },
        queue,
        &background.shutdown,
        &mut background.tasks,
    );
    Node {
        orchestrator,
        clock,
        sink,
        _background: background,
    }
}

fn fresh_node(store: Arc<dyn Store>) -> Node {
    let clock = Arc::new(ManualClock::starting_at(Timestamp::from_unix_millis(
        1_800_000_000_000,
    )));
    start_node(store, clock, Arc::default())
}

async fn create(node: &Node, account: &str, behaviour: &str) -> Payment {
    let command = CreatePayment {
        account: AccountId::new(account).unwrap(),
        payment_id: None,
        amount: Money::from_minor(Currency::from_code("USD").unwrap(), 1_000),
        metadata: BTreeMap::from([(BEHAVIOUR_KEY.to_owned(), behaviour.to_owned())]),
        payer_id: None,
        payer_country: None,
        request_id: RequestId::new(format!("create-{account}-{behaviour}")).unwrap(),
        trace: None,
    };
    node.orchestrator.create_payment(command).await.unwrap()
}

async fn operate(
    node: &Node,
    payment: &PaymentName,
    action: OperatorAction,
    request: &str,
) -> Result<Payment, CommandError> {
    node.orchestrator
        .operate(OperatorCommand {
            name: payment.clone(),
            action,
            request_id: RequestId::new(request).unwrap(),
            actor: None,
            trace: None,
        })
        .await
        .map(|answer| answer.payment)
}

/// Polls (in real time: actors and the simulator run for real) until the
/// payment satisfies `done`.
async fn wait_for(
    node: &Node,
    name: &PaymentName,
    what: &str,
    done: impl Fn(&Payment) -> bool,
) -> Payment {
    for _ in 0..2_000 {
        let payment = node.orchestrator.get_payment(name).await.unwrap();
        if done(&payment) {
            return payment;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{name}: never became {what}");
}

async fn wait_for_pages(node: &Node, count: usize) {
    for _ in 0..2_000 {
        if node.sink.count() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("expected {count} pages, got {}", node.sink.count());
}

/// Moves time to the payment's next due time and runs one watchdog pass.
async fn fire_reminder(node: &Node, payment: &Payment) {
    let due = payment
        .watch
        .as_ref()
        .and_then(|watch| watch.due_at)
        .expect("a reminder is armed");
    let now = node.clock.now().unix_millis();
    node.clock.advance(Duration::from_millis(
        (due.unix_millis() - now).max(0) as u64
    ));
    let woken = node.orchestrator.sweep_watchdog().await.unwrap();
    assert!(woken >= 1, "the due reminder was found");
}

fn history_causes(payment: &Payment) -> Vec<&str> {
    payment
        .history
        .iter()
        .map(|entry| entry.cause.as_str())
        .collect()
}

fn redrives(payment: &Payment) -> u32 {
    payment.watch.as_ref().map_or(0, |watch| watch.redrives)
}

async fn a_lost_callback_is_found_by_a_status_query_without_paging(store: Arc<dyn Store>) {
    let node = fresh_node(store);
    let sent = create(&node, "acme", "drop_callback").await;
    assert_eq!(sent.state, PaymentState::Sent);
    // Before the deadline the watchdog finds nothing to do.
    node.clock.advance(SENT_DEADLINE - Duration::from_secs(1));
    assert_eq!(node.orchestrator.sweep_watchdog().await.unwrap(), 0);
    // Give the simulated bank time to process (and lose the callback).
    tokio::time::sleep(Duration::from_millis(50)).await;
    fire_reminder(&node, &sent).await;
    let processed = wait_for(&node, &sent.name(), "processed", |p| {
        p.state == PaymentState::Processed
    })
    .await;
    assert!(
        history_causes(&processed).contains(&"redrive_1_of_2"),
        "{:?}",
        history_causes(&processed)
    );
    assert_eq!(processed.watch, None, "no longer watched");
    node.clock.advance(Duration::from_secs(3600));
    assert_eq!(node.orchestrator.sweep_watchdog().await.unwrap(), 0);
    assert_eq!(node.sink.count(), 0, "never paged");
}

async fn a_hung_payment_is_redriven_then_paged_once_and_resolved_when_failed(
    store: Arc<dyn Store>,
) {
    let node = fresh_node(store);
    let mut payment = create(&node, "acme", "hang").await;
    for redrive in 1..=REDRIVES {
        fire_reminder(&node, &payment).await;
        payment = wait_for(&node, &payment.name(), "re-driven", |p| {
            redrives(p) == redrive
        })
        .await;
        assert_eq!(payment.state, PaymentState::Sent);
    }
    // Back-off: each wait doubles the deadline.
    let watch = payment.watch.clone().unwrap();
    assert_eq!(
        watch.due_at.unwrap().unix_millis() - node.clock.now().unix_millis(),
        (SENT_DEADLINE * 4).as_millis() as i64
    );
    fire_reminder(&node, &payment).await;
    let paged = wait_for(&node, &payment.name(), "paged", |p| {
        p.watch.as_ref().is_some_and(|w| w.paged)
    })
    .await;
    wait_for_pages(&node, 1).await;
    let dedup_key = node.sink.pages.lock().unwrap()[0].dedup_key.clone();
    assert_eq!(dedup_key, paged.watch.as_ref().unwrap().dedup_key(&paged));
    assert!(dedup_key.starts_with("payvisor/accounts/acme/payments/"));

    // Stalled: listed; after the page it is still asked after, quietly (a
    // bank that was down may be back), and paged no more. (This asserted
    // that no sweep touched it again: the defect of issue 15 that stranded
    // payments behind a bank outage.)
    let (stalled, _) = node.orchestrator.list_stalled(None, 10).await.unwrap();
    assert_eq!(
        stalled.iter().map(Payment::name).collect::<Vec<_>>(),
        [paged.name()]
    );
    node.clock.advance(Duration::from_secs(24 * 3600));
    assert_eq!(
        node.orchestrator.sweep_watchdog().await.unwrap(),
        1,
        "re-driven quietly"
    );
    // An operator's retry re-drives without a second page.
    let retried = operate(&node, &paged.name(), OperatorAction::Retry, "retry-1")
        .await
        .unwrap();
    assert!(history_causes(&retried).contains(&"operator_retry"));
    let mut payment = retried;
    for redrive in 1..=REDRIVES {
        fire_reminder(&node, &payment).await;
        payment = wait_for(&node, &payment.name(), "re-driven again", |p| {
            redrives(p) == redrive
        })
        .await;
    }
    fire_reminder(&node, &payment).await;
    wait_for(
        &node,
        &payment.name(),
        "re-driven quietly after the page",
        |p| {
            p.watch
                .as_ref()
                .is_some_and(|w| w.paged && w.redrives == REDRIVES + 1 && w.due_at.is_some())
        },
    )
    .await;

    // The operator gives up: FAILED, funds released, the page resolved.
    let failed = operate(
        &node,
        &paged.name(),
        OperatorAction::Fail {
            reason: "bank lost it".into(),
        },
        "fail-1",
    )
    .await
    .unwrap();
    assert_eq!(failed.state, PaymentState::Failed);
    assert_eq!(failed.failure_reason.as_deref(), Some("bank lost it"));
    // Replaying the same request answers the same; a new one is refused.
    let replayed = operate(
        &node,
        &paged.name(),
        OperatorAction::Fail {
            reason: "bank lost it".into(),
        },
        "fail-1",
    )
    .await
    .unwrap();
    assert_eq!(replayed.state, PaymentState::Failed);
    assert!(matches!(
        operate(&node, &paged.name(), OperatorAction::Retry, "retry-2").await,
        Err(CommandError::OperatorRejected(
            OperatorRejection::NothingToRetry(PaymentState::Failed)
        ))
    ));
    wait_for_pages(&node, 2).await;
    assert_eq!(
        node.sink.actions_for(&dedup_key),
        [PageAction::Trigger, PageAction::Resolve]
    );
    let balances = node
        .orchestrator
        .get_account(&AccountId::new("acme").unwrap())
        .await
        .unwrap();
    let usd = balances.currency(Currency::from_code("USD").unwrap());
    assert!(usd.pending.is_zero(), "pending funds released");
    assert!(node
        .orchestrator
        .list_stalled(None, 10)
        .await
        .unwrap()
        .0
        .is_empty());
}

async fn a_restarted_node_catches_up_and_never_pages_a_stall_twice(store: Arc<dyn Store>) {
    let first = fresh_node(Arc::clone(&store));
    let paged = create(&first, "acme", "hang").await;
    let mut payment = paged.clone();
    for _ in 0..=REDRIVES {
        fire_reminder(&first, &payment).await;
        payment = wait_for(&first, &paged.name(), "moved on", |p| {
            p.watch != payment.watch
        })
        .await;
    }
    wait_for_pages(&first, 1).await;
    assert!(payment.watch.as_ref().unwrap().paged);
    // A second payment starts waiting just before the node stops.
    let waiting = create(&first, "globex", "hang").await;
    first.orchestrator.shutdown(Duration::from_secs(5)).await;

    // Down for an hour: `waiting`'s reminder fell due meanwhile. The next
    // node (same store, same pager) catches up on its first pass.
    first.clock.advance(Duration::from_secs(3600));
    let second = start_node(Arc::clone(&store), first.clock.clone(), first.sink.clone());
    assert!(second.orchestrator.recover().await.unwrap() >= 2);
    // The overdue one, and the paged one's quiet re-drive (it was "only
    // the overdue one" while a paged payment was never re-driven again).
    assert_eq!(
        second.orchestrator.sweep_watchdog().await.unwrap(),
        2,
        "the overdue one and the paged one"
    );
    wait_for(&second, &waiting.name(), "re-driven", |p| redrives(p) == 1).await;
    second.clock.advance(Duration::from_secs(24 * 3600));
    for _ in 0..3 {
        second.orchestrator.sweep_watchdog().await.unwrap();
    }
    // `waiting` is now due to page too (its re-drives were spread over a day).
    let paged_keys: Vec<String> = second
        .sink
        .pages
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.dedup_key.clone())
        .collect();
    let first_key = payment.watch.as_ref().unwrap().dedup_key(&payment);
    assert_eq!(
        paged_keys.iter().filter(|key| **key == first_key).count(),
        1,
        "one stall, one page: {paged_keys:?}"
    );
    // Nothing is left undelivered in the store.
    let (undelivered, _) = schema::undelivered_alerts(store.as_ref(), None, 10)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (still, _) = schema::undelivered_alerts(store.as_ref(), None, 10)
        .await
        .unwrap();
    assert!(still.len() <= undelivered.len());
}

async fn pages_are_retried_until_the_pager_accepts_them(store: Arc<dyn Store>) {
    let node = fresh_node(Arc::clone(&store));
    node.sink.failures.store(3, Ordering::SeqCst);
    let mut payment = create(&node, "acme", "hang").await;
    for _ in 0..=REDRIVES {
        fire_reminder(&node, &payment).await;
        payment = wait_for(&node, &payment.name(), "moved on", |p| {
            p.watch != payment.watch
        })
        .await;
    }
    wait_for_pages(&node, 1).await;
    assert_eq!(
        node.sink.failures.load(Ordering::SeqCst),
        0,
        "three refusals, then delivered"
    );
    // Delivery is recorded: the outbox entry leaves the undelivered index.
    for _ in 0..400 {
        let (undelivered, _) = schema::undelivered_alerts(store.as_ref(), None, 10)
            .await
            .unwrap();
        if undelivered.is_empty() {
            assert_eq!(node.sink.count(), 1);
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the delivered page was never recorded as delivered");
}

/// A page queued again from a stale read (a sweep that read it just before
/// its delivery was recorded) is not delivered a second time.
async fn a_page_queued_again_after_delivery_is_not_sent_twice(store: Arc<dyn Store>) {
    let clock = Arc::new(ManualClock::starting_at(Timestamp::from_unix_millis(
        1_800_000_000_000,
    )));
    let sink = Arc::new(RecordingSink::default());
    let mut background = crate::common::Background::new();
    let pager = Pager::start(
        Arc::clone(&store),
        sink.clone(),
        clock.clone(),
        "test".into(),
        &background.shutdown,
        &mut background.tasks,
    );
    // A paged payment's alert, recorded as the account actor records it.
    let node = fresh_node(Arc::clone(&store));
    let mut payment = create(&node, "acme", "hang").await;
    payment.watch.as_mut().unwrap().due_at = Some(clock.now());
    let decision = payment
        .on_reminder(clock.now(), &Policy::default())
        .unwrap()
        .unwrap();
    let decision = decision
        .payment
        .on_reminder(clock.now().plus_millis(3_600_000), &{
            let mut policy = Policy::default();
            policy.stalls.redrive_max = 0;
            policy
        })
        .unwrap()
        .unwrap();
    let record = schema::AlertRecord {
        payment: payment.name(),
        alert: decision.alert.expect("a page"),
        delivered_at: None,
    };
    store
        .transact(vec![payvisor::store::WriteOp::Put {
            item: schema::alert_item(&record),
            condition: payvisor::store::Condition::NotExists,
        }])
        .await
        .unwrap();
    pager.recorded(record.clone());
    for _ in 0..400 {
        let (undelivered, _) = schema::undelivered_alerts(store.as_ref(), None, 10)
            .await
            .unwrap();
        if undelivered.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(sink.count(), 1);
    // The stale copy, as a sweep would queue it.
    pager.recorded(record);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink.count(), 1, "a delivered page was sent again");
}

async fn finding_due_reminders_reads_only_what_is_due(store: Arc<dyn Store>, payments: usize) {
    let counting = Arc::new(CountingStore {
        inner: store,
        index_items_read: AtomicUsize::new(0),
    });
    let node = fresh_node(counting.clone());
    // Many payments waiting, all due in a minute…
    for n in 0..payments {
        create(&node, &format!("acct{n}"), "hang").await;
    }
    // …and three created 30 s later, due 30 s after the rest.
    node.clock.advance(Duration::from_secs(30));
    for n in 0..3 {
        create(&node, &format!("late{n}"), "hang").await;
    }
    // At +61 s the first batch is due: all of them are read.
    node.clock.advance(Duration::from_secs(31));
    counting.index_items_read.store(0, Ordering::SeqCst);
    assert_eq!(node.orchestrator.sweep_watchdog().await.unwrap(), payments);
    // Once re-driven (due again in two minutes), a pass at +91 s finds only
    // the three: it reads them, not the others.
    for n in 0..payments {
        let name = PaymentName {
            account: AccountId::new(format!("acct{n}")).unwrap(),
            payment: list_one(&node, &format!("acct{n}")).await,
        };
        wait_for(&node, &name, "re-driven", |p| redrives(p) == 1).await;
    }
    node.clock.advance(Duration::from_secs(30));
    counting.index_items_read.store(0, Ordering::SeqCst);
    assert_eq!(node.orchestrator.sweep_watchdog().await.unwrap(), 3);
    assert_eq!(
        counting.index_items_read.load(Ordering::SeqCst),
        3,
        "only the due reminders were read"
    );
}

async fn list_one(node: &Node, account: &str) -> payvisor::domain::PaymentId {
    let (payments, _) = node
        .orchestrator
        .list_payments(
            &AccountId::new(account).unwrap(),
            None,
            Default::default(),
            1,
        )
        .await
        .unwrap();
    payments[0].id.clone()
}

fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    crate::common::sqlite_store()
}

async fn dynamodb(test: &str) -> Option<Arc<dyn Store>> {
    dynamodb_server::store_if_available(test, "watchdog").await
}

macro_rules! on_both_stores {
    ($($scenario:ident $(($($arg:expr),*))?),* $(,)?) => {
        mod on_sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let (store, _dir) = sqlite();
                    super::$scenario(store $($(, $arg)*)?).await;
                }
            )*
        }
        mod on_dynamodb {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let Some(store) = dynamodb(stringify!($scenario)).await else { return };
                    super::$scenario(store $($(, $arg)*)?).await;
                }
            )*
        }
    };
}

on_both_stores!(
    a_lost_callback_is_found_by_a_status_query_without_paging,
    a_hung_payment_is_redriven_then_paged_once_and_resolved_when_failed,
    a_restarted_node_catches_up_and_never_pages_a_stall_twice,
    pages_are_retried_until_the_pager_accepts_them,
    a_page_queued_again_after_delivery_is_not_sent_twice,
    finding_due_reminders_reads_only_what_is_due(40),
);
