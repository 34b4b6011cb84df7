//! The watchdog: finds payments whose durable reminder fell due and wakes
//! their account actor (which decides, with the pure core, whether to
//! re-drive or page), and delivers pages.
//!
//! - [`sweep_due`] reads, in every index partition of the reminder families,
//!   the reminders due by now: a range read whose cost is what is due. It
//!   runs every sweep interval ([`run_sweeps`], until shutdown), and at once
//!   on start (catch-up: reminders that fell due while the node was down
//!   fire promptly, none is dropped).
//! - [`Pager`] delivers pages recorded by account actors (the alert outbox):
//!   one at a time, in order, retried with back-off on retryable failures,
//!   then marked delivered in the store. Before sending, it re-reads the
//!   page: a sweep's stale copy of a page just delivered is dropped. Pages not delivered (sink down,
//!   queue full, node restarted) stay in the store's `PAGE` index and are
//!   picked up by [`sweep_pages`].
//!
//! **Invariant:** a page is delivered at least once and, short of a crash
//! between the sink's acknowledgement and the write that records it, at most
//! once; a re-send carries the same `dedup_key`, so PagerDuty still opens one
//! incident.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};

use crate::alerts::{AlertError, AlertSink, Page};
use crate::clock::Clock;
use crate::domain::watch::{PageAction, Severity, Stage};
use crate::domain::{PaymentName, Timestamp};
use crate::limits;
use crate::shutdown::{Shutdown, Tasks};
use crate::store::schema::{self, AlertRecord, WaitingList};
use crate::store::{Condition, Key, Store, StoreError, WriteOp};

/// An alert as watchers of `WatchAlerts` see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertEvent {
    pub payment: PaymentName,
    pub action: PageAction,
    pub dedup_key: String,
    pub stage: Stage,
    pub severity: Severity,
    pub summary: String,
    pub at: Timestamp,
}

impl AlertEvent {
    fn of(record: &AlertRecord) -> AlertEvent {
        AlertEvent {
            payment: record.payment.clone(),
            action: record.alert.action,
            dedup_key: record.alert.dedup_key.clone(),
            stage: record.alert.stage,
            severity: record.alert.severity,
            summary: record.alert.summary.clone(),
            at: record.alert.at,
        }
    }
}

/// The handle account actors and sweeps hand pages to. Cheap to clone.
#[derive(Clone)]
pub struct Pager {
    queue: mpsc::Sender<AlertRecord>,
    /// Pages queued or being delivered, so a sweep does not queue one twice.
    in_hand: Arc<Mutex<HashSet<Key>>>,
    /// Live feed for `WatchAlerts`.
    feed: broadcast::Sender<AlertEvent>,
}

impl Pager {
    /// Starts the delivery task in `tasks`; it stops on `shutdown` (a page
    /// left undelivered is in the store, for the next sweep).
    pub fn start(
        store: Arc<dyn Store>,
        sink: Arc<dyn AlertSink>,
        clock: Arc<dyn Clock>,
        source: String,
        shutdown: &Shutdown,
        tasks: &mut Tasks,
    ) -> Pager {
        let (queue, pages) = mpsc::channel(limits::PAGE_QUEUE_MAX);
        let (feed, _) = broadcast::channel(limits::ALERT_STREAM_BUFFER);
        let pager = Pager {
            queue,
            in_hand: Arc::default(),
            feed,
        };
        let delivery = Delivery {
            store,
            sink,
            clock,
            source,
            in_hand: Arc::clone(&pager.in_hand),
        };
        tasks.spawn("page delivery", delivery.run(pages, shutdown.clone()));
        pager
    }

    /// A page was durably recorded: tell watchers, queue it for delivery.
    pub fn recorded(&self, record: AlertRecord) {
        let _ = self.feed.send(AlertEvent::of(&record));
        self.enqueue(record);
    }

    /// Queues a page unless it is already in hand. A full queue leaves it
    /// in the store for the next sweep.
    fn enqueue(&self, record: AlertRecord) {
        let key = schema::alert_key(&record.payment, &record.alert);
        if !lock(&self.in_hand).insert(key.clone()) {
            return;
        }
        if self.queue.try_send(record).is_err() {
            lock(&self.in_hand).remove(&key);
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<AlertEvent> {
        self.feed.subscribe()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

struct Delivery {
    store: Arc<dyn Store>,
    sink: Arc<dyn AlertSink>,
    clock: Arc<dyn Clock>,
    source: String,
    in_hand: Arc<Mutex<HashSet<Key>>>,
}

impl Delivery {
    async fn run(self, mut pages: mpsc::Receiver<AlertRecord>, shutdown: Shutdown) {
        // One at a time: a payment's resolve is never delivered before its
        // trigger, and a sink outage does not fan out into a retry storm.
        // A page being delivered when the shutdown comes is finished.
        loop {
            let record = tokio::select! {
                biased;
                () = shutdown.signalled() => return,
                record = pages.recv() => match record {
                    Some(record) => record,
                    None => return,
                },
            };
            let key = schema::alert_key(&record.payment, &record.alert);
            // A sweep may have read the page before its delivery was
            // recorded and queued it again after: ask the store (strongly
            // consistent; this task is the only one that records deliveries).
            if self.still_undelivered(&record).await && self.deliver(&record).await {
                use crate::mutations::{planted, Mutation};
                if !planted(Mutation::PageSentWithoutRecording) {
                    self.mark_delivered(record).await;
                }
            }
            lock(&self.in_hand).remove(&key);
        }
    }

    async fn still_undelivered(&self, record: &AlertRecord) -> bool {
        match schema::load_alert(self.store.as_ref(), &record.payment, &record.alert).await {
            Ok(Some(stored)) => stored.delivered_at.is_none(),
            Ok(None) => false,
            Err(error @ StoreError::Corrupt(_)) => {
                tracing::error!(payment = %record.payment, %error, "undecodable page left undelivered");
                false
            }
            // Unknown: leave it to the next sweep rather than risk a repeat.
            Err(error) => {
                tracing::warn!(payment = %record.payment, %error, "page not checked; the next sweep retries");
                false
            }
        }
    }

    async fn deliver(&self, record: &AlertRecord) -> bool {
        let alert = &record.alert;
        let page = Page {
            action: alert.action,
            class: crate::alerts::PageClass::StalledPayment,
            dedup_key: alert.dedup_key.clone(),
            summary: alert.summary.clone(),
            source: self.source.clone(),
            severity: alert.severity,
            timestamp: alert.at,
            custom_details: alert.details.clone(),
            links: Vec::new(),
            client_url: None,
        };
        let mut backoff = limits::PAGE_BACKOFF_INITIAL;
        for attempt in 1..=limits::PAGE_ATTEMPTS_MAX {
            match self.sink.send(&page).await {
                Ok(()) => {
                    tracing::info!(payment = %record.payment, dedup_key = %alert.dedup_key, action = ?alert.action, attempt, "page delivered");
                    return true;
                }
                Err(AlertError::Rejected(why)) => {
                    // Retrying cannot help (bad routing key, bad payload):
                    // say so loudly and keep it in the store for a person.
                    tracing::error!(payment = %record.payment, dedup_key = %alert.dedup_key, %why, "the pager refused a page");
                    return false;
                }
                Err(AlertError::Retryable(why)) => {
                    tracing::warn!(payment = %record.payment, dedup_key = %alert.dedup_key, %why, attempt, "page not delivered; retrying");
                    if attempt < limits::PAGE_ATTEMPTS_MAX {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(limits::PAGE_BACKOFF_MAX);
                    }
                }
            }
        }
        tracing::error!(payment = %record.payment, dedup_key = %alert.dedup_key, "page still not delivered; left for the next sweep");
        false
    }

    /// Records the delivery. Conditional on the item being undelivered: the
    /// alert item has this one writer after its creation.
    async fn mark_delivered(&self, mut record: AlertRecord) {
        record.delivered_at = Some(self.clock.now());
        let op = WriteOp::Put {
            item: schema::alert_item(&record),
            condition: Condition::VersionIs(1),
        };
        match self.store.transact(vec![op]).await {
            Ok(()) | Err(StoreError::ConditionFailed { .. }) => {}
            Err(error) => {
                // Delivered but not recorded: the next sweep sends it again,
                // with the same dedup_key (no second incident).
                tracing::warn!(payment = %record.payment, %error, "could not record a delivered page");
            }
        }
    }
}

/// Runs `sweep` every `every`, the first at once (catch-up after a
/// restart), until `shutdown` fires; a sweep in progress finishes first.
/// The sweep is passed in (`Orchestrator::sweep_watchdog`): waking actors
/// belongs to the actor layer. While sweeps fail, `failures` decides when
/// to page that the watchdog itself is down.
pub async fn run_sweeps<F, S, E>(
    every: Duration,
    shutdown: Shutdown,
    mut failures: SweepFailurePager,
    mut sweep: F,
) where
    F: FnMut() -> S,
    S: Future<Output = Result<usize, E>>,
    E: std::fmt::Display,
{
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.signalled() => return,
            _ = ticks.tick() => {}
        }
        match sweep().await {
            Ok(_) => failures.swept().await,
            Err(error) => {
                tracing::warn!(%error, "watchdog sweep failed; retrying next tick");
                failures.failed(&error.to_string()).await;
            }
        }
    }
}

/// Pages on-call when the watchdog cannot sweep (the store does not
/// answer it): while that lasts, stalled payments are neither re-driven
/// nor paged, so the silence itself must page. The page goes straight to
/// the sink, not through the store (which is what fails); it is sent once
/// sweeps have failed for `page_after` without a success, again at each
/// sweep until the sink takes it, and resolved at the first sweep that
/// succeeds after it.
pub struct SweepFailurePager {
    sink: Arc<dyn AlertSink>,
    clock: Arc<dyn Clock>,
    /// The node (PagerDuty's `source`, and part of the dedup key: each
    /// node's watchdog is its own incident).
    source: String,
    page_after: Duration,
    failing_since: Option<(tokio::time::Instant, Timestamp)>,
    failed_sweeps: u64,
    paged: bool,
    resolve_earlier_page: bool,
}

impl SweepFailurePager {
    pub fn new(
        sink: Arc<dyn AlertSink>,
        clock: Arc<dyn Clock>,
        source: String,
        page_after: Duration,
    ) -> SweepFailurePager {
        SweepFailurePager {
            sink,
            clock,
            source,
            page_after,
            failing_since: None,
            failed_sweeps: 0,
            paged: false,
            // A previous incarnation of this node may have paged and died
            // (or been restarted by the person paged): its incident is
            // only in PagerDuty, so the first sweep that succeeds resolves
            // this node's key (a resolve of a key nobody triggered is
            // accepted and changes nothing).
            resolve_earlier_page: true,
        }
    }

    fn dedup_key(&self) -> String {
        format!("payvisor/watchdog/{}", self.source)
    }

    async fn failed(&mut self, error: &str) {
        self.failed_sweeps += 1;
        let (since, since_wall) = *self
            .failing_since
            .get_or_insert_with(|| (tokio::time::Instant::now(), self.clock.now()));
        if self.paged || since.elapsed() < self.page_after {
            return;
        }
        let page = Page {
            action: PageAction::Trigger,
            class: crate::alerts::PageClass::WatchdogFailing,
            dedup_key: self.dedup_key(),
            summary: format!(
                "payvisor watchdog on {} cannot sweep: stalled payments are not re-driven or paged",
                self.source
            ),
            source: self.source.clone(),
            severity: Severity::Critical,
            timestamp: self.clock.now(),
            custom_details: BTreeMap::from([
                (
                    "failing_since".to_owned(),
                    crate::domain::time::rfc3339(since_wall),
                ),
                ("failed_sweeps".to_owned(), self.failed_sweeps.to_string()),
                ("last_error".to_owned(), error.to_owned()),
                (
                    "runbook".to_owned(),
                    "docs/runbooks/watchdog-cannot-sweep.md".to_owned(),
                ),
            ]),
            links: Vec::new(),
            client_url: None,
        };
        match self.sink.send(&page).await {
            Ok(()) => {
                self.paged = true;
                tracing::error!(
                    failed_sweeps = self.failed_sweeps,
                    "paged: the watchdog cannot sweep"
                );
            }
            Err(error) => {
                tracing::error!(%error, "the watchdog cannot sweep, and the page saying so was not delivered; retrying next sweep");
            }
        }
    }

    async fn swept(&mut self) {
        self.failing_since = None;
        self.failed_sweeps = 0;
        if !self.paged && !self.resolve_earlier_page {
            return;
        }
        let page = Page {
            action: PageAction::Resolve,
            class: crate::alerts::PageClass::WatchdogFailing,
            dedup_key: self.dedup_key(),
            summary: format!("payvisor watchdog on {} sweeps again", self.source),
            source: self.source.clone(),
            severity: Severity::Critical,
            timestamp: self.clock.now(),
            custom_details: BTreeMap::new(),
            links: Vec::new(),
            client_url: None,
        };
        match self.sink.send(&page).await {
            Ok(()) => {
                self.paged = false;
                self.resolve_earlier_page = false;
                tracing::info!("the watchdog sweeps; its page (if any) resolved");
            }
            Err(error) => {
                // Still paged: the next successful sweep resolves it.
                tracing::warn!(%error, "the watchdog sweeps again, but the page was not resolved; retrying next sweep");
            }
        }
    }
}

/// Wakes the account actor of every payment whose reminder is due by `now`;
/// returns how many were woken. `wake` is how a payment reaches its actor.
pub async fn sweep_due(
    store: &dyn Store,
    now: Timestamp,
    mut wake: impl FnMut(PaymentName),
) -> Result<usize, StoreError> {
    let due = schema::due_reminders(store, now, limits::WATCHDOG_DUE_PER_SHARD_MAX).await?;
    let woken = due.len();
    due.into_iter().for_each(&mut wake);
    Ok(woken)
}

/// Queues every undelivered page of the accounts this node `serves` (after
/// a restart, a sink outage, a full queue, a change of owner). Returns how
/// many are undelivered in all.
pub async fn sweep_pages(
    store: &dyn Store,
    pager: &Pager,
    serves: impl Fn(&crate::domain::AccountId) -> bool,
) -> Result<usize, StoreError> {
    let mut undelivered = 0;
    let mut token = None;
    loop {
        let (records, next) =
            schema::undelivered_alerts(store, token.as_ref(), limits::PAGE_QUEUE_MAX).await?;
        undelivered += records.len();
        // In a cluster, each node delivers the pages of the accounts it
        // owns (their owner decided them, and resolves them).
        for record in records
            .into_iter()
            .filter(|record| serves(&record.payment.account))
        {
            pager.enqueue(record);
        }
        match next {
            Some(next) if undelivered < limits::PAGE_QUEUE_MAX => token = Some(next),
            _ => return Ok(undelivered),
        }
    }
}

/// Stalled payments by state name, for the gauge (bounded scan).
pub async fn stalled_counts(store: &dyn Store) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut counts = BTreeMap::new();
    let mut token = None;
    let mut scanned = 0;
    loop {
        let (payments, next) = schema::waiting_payments(
            store,
            WaitingList::Stalled,
            token.as_ref(),
            limits::PAGE_SIZE_MAX,
        )
        .await?;
        scanned += payments.len();
        for payment in payments {
            *counts.entry(payment.state.as_str().to_owned()).or_insert(0) += 1;
        }
        match next {
            Some(next) if scanned < limits::STALLED_GAUGE_SCAN_MAX => token = Some(next),
            _ => return Ok(counts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::PageClass;
    use crate::clock::ManualClock;

    /// Records what it was sent; refuses the first `refuse` sends.
    #[derive(Default)]
    struct RecordingSink {
        refuse: Mutex<usize>,
        delivered: Mutex<Vec<Page>>,
    }

    impl AlertSink for RecordingSink {
        fn send(&self, page: &Page) -> crate::store::BoxFuture<'_, Result<(), AlertError>> {
            let answer = {
                let mut refuse = self.refuse.lock().unwrap();
                if *refuse > 0 {
                    *refuse -= 1;
                    Err(AlertError::Retryable("503".into()))
                } else {
                    self.delivered.lock().unwrap().push(page.clone());
                    Ok(())
                }
            };
            Box::pin(async move { answer })
        }
    }

    #[tokio::test]
    async fn a_watchdog_that_cannot_sweep_pages_once_and_resolves_when_it_sweeps_again() {
        let sink = Arc::new(RecordingSink {
            refuse: Mutex::new(1),
            ..RecordingSink::default()
        });
        let clock = Arc::new(ManualClock::starting_at(Timestamp::from_unix_millis(
            1_700_000_000_000,
        )));
        let page_after = Duration::from_millis(50);
        let mut pager = SweepFailurePager::new(sink.clone(), clock, "node-1".into(), page_after);
        let delivered = || sink.delivered.lock().unwrap().clone();

        // Sweeping from the start: what an earlier incarnation paged is
        // resolved, once.
        *sink.refuse.lock().unwrap() = 0;
        pager.swept().await;
        pager.swept().await;
        let pages = delivered();
        assert_eq!(pages.len(), 1, "{pages:?}");
        assert_eq!(pages[0].action, PageAction::Resolve);
        sink.delivered.lock().unwrap().clear();
        *sink.refuse.lock().unwrap() = 1;

        // A failure is not an outage yet.
        pager.failed("store unavailable").await;
        assert!(delivered().is_empty());
        tokio::time::sleep(page_after + Duration::from_millis(10)).await;
        // Past the bound: paged; the sink refuses the first try, the next
        // sweep's failure sends it again, and then no more.
        pager.failed("store unavailable").await;
        assert!(delivered().is_empty());
        pager.failed("throttled").await;
        pager.failed("throttled").await;
        let pages = delivered();
        assert_eq!(pages.len(), 1, "{pages:?}");
        let page = &pages[0];
        assert_eq!(page.action, PageAction::Trigger);
        assert_eq!(page.class, PageClass::WatchdogFailing);
        assert_eq!(page.dedup_key, "payvisor/watchdog/node-1");
        assert_eq!(page.source, "node-1");
        assert_eq!(page.custom_details["failed_sweeps"], "3");
        assert_eq!(page.custom_details["last_error"], "throttled");
        assert_eq!(
            page.custom_details["failing_since"],
            "2023-11-14T22:13:20.000Z"
        );
        assert!(page.custom_details["runbook"].starts_with("docs/runbooks/"));

        // The first sweep that succeeds resolves it, once.
        pager.swept().await;
        pager.swept().await;
        let pages = delivered();
        assert_eq!(pages.len(), 2, "{pages:?}");
        assert_eq!(pages[1].action, PageAction::Resolve);
        assert_eq!(pages[1].dedup_key, "payvisor/watchdog/node-1");

        // A new outage counts from its own start.
        pager.failed("store unavailable").await;
        assert_eq!(delivered().len(), 2);
    }

    #[tokio::test]
    async fn sweeps_that_never_failed_for_long_page_nothing() {
        let sink = Arc::new(RecordingSink::default());
        let clock = Arc::new(ManualClock::starting_at(Timestamp::from_unix_millis(0)));
        let mut pager = SweepFailurePager::new(
            sink.clone(),
            clock,
            "node-1".into(),
            Duration::from_secs(60),
        );
        for _ in 0..100 {
            pager.failed("store unavailable").await;
            pager.swept().await;
        }
        // Only the resolve of an earlier incarnation's page, at the first
        // success.
        let pages = sink.delivered.lock().unwrap().clone();
        assert_eq!(pages.len(), 1, "{pages:?}");
        assert_eq!(pages[0].action, PageAction::Resolve);
    }
}
