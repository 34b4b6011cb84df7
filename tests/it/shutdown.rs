//! Background components hold the node's shutdown signal
//! (`payvisor::shutdown`): each returns once it fires, instead of running
//! until the process dies. The server as a whole is shown in `e2e`
//! (SIGTERM: health NOT_SERVING while draining, exit 0); the HTTP server's
//! drain and the webhook dispatcher's in-progress sweep in their own tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use payvisor::alerts::LogSink;
use payvisor::clock::SystemClock;
use payvisor::connectors::http::{BankEndpoint, HttpBankConnector, HttpConnectorSettings};
use payvisor::random::SeededRandom;
use payvisor::reconcile::Periodic;
use payvisor::store::sqlite::SqliteStore;

use crate::common::PROGRESS_DEADLINE;

/// Awaits a component's task, which must return now that the signal fired.
async fn returns(task: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(PROGRESS_DEADLINE, task)
        .await
        .expect("the component returns once the signal fired")
        .unwrap();
}

#[tokio::test]
async fn the_periodic_reconciliation_returns_when_the_signal_fires() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(SystemClock);
    // Never called: the first period is an hour away.
    let bank = HttpBankConnector::new(
        BankEndpoint {
            name: "bank-a".into(),
            base_url: "http://127.0.0.1:9".parse().unwrap(),
            callback_url: "http://127.0.0.1:9/v1/callbacks/bank-a".into(),
        },
        HttpConnectorSettings::default(),
        clock.clone(),
        Arc::new(SeededRandom::new(1)),
    )
    .unwrap();
    let found = payvisor::metrics::Counter::default();
    let periodic = Periodic {
        store: Arc::new(SqliteStore::open(dir.path()).unwrap()),
        bank: Arc::new(bank),
        clock,
        sink: Arc::new(LogSink),
        node_name: "shutdown-test".into(),
        every: Duration::from_secs(3600),
        lag: Duration::from_secs(60),
        found: found.clone(),
        sweeps: Default::default(),
        ownership: Default::default(),
        turns: Default::default(),
    };
    let (trigger, shutdown) = payvisor::shutdown::channel();
    let running = tokio::spawn(periodic.run(shutdown));
    tokio::task::yield_now().await;
    assert!(!running.is_finished(), "it waits for its first period");

    trigger.fire();
    returns(running).await;
    assert_eq!(found.get(), 0, "no period was reconciled");
}

#[tokio::test]
async fn the_watchdog_sweeps_at_once_then_returns_when_the_signal_fires() {
    let sweeps = Arc::new(AtomicUsize::new(0));
    let (first_sweep, first_swept) = tokio::sync::oneshot::channel();
    let mut first_sweep = Some(first_sweep);
    let counted = sweeps.clone();
    let (trigger, shutdown) = payvisor::shutdown::channel();
    let failures = payvisor::watchdog::SweepFailurePager::new(
        Arc::new(payvisor::alerts::LogSink),
        Arc::new(payvisor::clock::SystemClock),
        "node".into(),
        Duration::from_secs(60),
    );
    let running = tokio::spawn(payvisor::watchdog::run_sweeps(
        Duration::from_secs(3600),
        shutdown,
        failures,
        move || {
            counted.fetch_add(1, Ordering::SeqCst);
            if let Some(first) = first_sweep.take() {
                let _ = first.send(());
            }
            async { Ok::<usize, String>(0) }
        },
    ));
    first_swept.await.unwrap();

    trigger.fire();
    returns(running).await;
    assert_eq!(
        sweeps.load(Ordering::SeqCst),
        1,
        "the catch-up sweep, and none after the signal"
    );
}

/// The orchestrator's own tasks (routing bank outcomes, delivering pages)
/// return when the signal fires, although the bank that feeds the first is
/// still alive and holds its channel open.
#[tokio::test]
async fn the_orchestrators_tasks_return_when_the_signal_fires() {
    let dir = tempfile::tempdir().unwrap();
    let random = Arc::new(SeededRandom::new(3));
    let (bank_events, bank_event_queue) = tokio::sync::mpsc::channel(16);
    let bank = Arc::new(payvisor::connectors::built_in_bank::BuiltInBank::new(
        payvisor::connectors::built_in_bank::BuiltInBankConfig::default(),
        random.clone(),
        bank_events,
    ));
    let (trigger, shutdown) = payvisor::shutdown::channel();
    let mut tasks = payvisor::shutdown::Tasks::default();
    let _orchestrator = payvisor::actors::Orchestrator::start(
        payvisor::actors::Components {
            store: Arc::new(SqliteStore::open(dir.path()).unwrap()),
            banks: Arc::new(payvisor::connectors::routing::Router::single(
                "built-in",
                bank.clone(),
            )),
            clock: Arc::new(SystemClock),
            random,
            policy: Default::default(),
            settings: Default::default(),
            alert_sink: Arc::new(LogSink),
            node_name: "shutdown-test".into(),
            rules: Arc::new(payvisor::approval::RulesInForce::approve_all()),
            webhooks: Default::default(),
            webhook_sink: Arc::new(
                payvisor::webhooks::HttpWebhookSink::new(
                    false,
                    payvisor::grpc::json::webhook_body_format(),
                )
                .unwrap(),
            ),
        },
        bank_event_queue,
        &shutdown,
        &mut tasks,
    );
    tokio::task::yield_now().await;
    for task in ["bank outcome routing", "page delivery"] {
        assert!(
            tasks.names().contains(&task),
            "{task} is held: {:?}",
            tasks.names()
        );
    }

    trigger.fire();
    let still_running = tasks.join(PROGRESS_DEADLINE).await;
    assert!(
        still_running.is_empty(),
        "{still_running:?} still ran after the signal"
    );
    drop(bank);
}
