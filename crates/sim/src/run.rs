//! One seed's run: builds the world from the seed, runs the workload under
//! faults, stops the faults, lets everything settle, and checks the
//! invariants throughout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use payvisor::domain::payment::PaymentState;
use payvisor::domain::Timestamp;
use payvisor::mutations::Mutation;

use crate::bank::{BankFaults, SimBank};
use crate::check::{self, Violation};
use crate::cluster::{CallbackRelay, Cluster};
use crate::limits;
use crate::net::{NetFaults, Network};
use crate::node::{PageLog, Shared, WebhookLog};
use crate::store::{SimStore, StoreFaults};
use crate::workload::{self, Workload};
use crate::world::World;

/// What one seed's run came to.
pub struct Report {
    pub seed: u64,
    pub violations: Vec<Violation>,
    /// Of the whole trace: equal for equal seeds.
    pub digest: u64,
    pub events: u64,
    pub simulated: Duration,
    pub trace_tail: Vec<String>,
}

impl Report {
    /// The one line a run ends with: nothing in it varies between runs of
    /// one seed.
    pub fn summary(&self) -> String {
        let outcome = match self.violations.first() {
            None => "ok".to_owned(),
            Some(violation) => format!("violated:{}", violation.invariant),
        };
        format!(
            "seed={} outcome={outcome} digest={:016x} events={} simulated_s={}",
            self.seed,
            self.digest,
            self.events,
            self.simulated.as_secs()
        )
    }
}

/// Runs `seed` on a runtime of its own: one thread, time virtual.
pub fn run(seed: u64) -> Report {
    run_with(seed, None)
}

/// Runs `seed` with `mutation` planted (in this thread, for this run).
pub fn run_with(seed: u64, mutation: Option<Mutation>) -> Report {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds");
    payvisor::mutations::plant(mutation);
    let report = runtime.block_on(simulate(seed));
    // The tasks still pending (crashed nodes' calls) go with the runtime,
    // while the mutation is still planted.
    drop(runtime);
    payvisor::mutations::plant(None);
    report
}

fn store_faults(world: &World) -> StoreFaults {
    StoreFaults {
        per_mille: world.between(0, 40),
        latency_max_ms: world.between(1, 20),
        timeout_ms: world.between(500, 3_000),
        late_landing_max_ms: world.between(0, 5_000),
        kinds: fault_kinds(world),
    }
}

/// Which of the store's four kinds of fault a seed injects: each in half
/// the seeds (swarm testing, as below), at least one. A seed with fewer
/// kinds has more of each: the planted refund bug needs a write that
/// timed out and landed late, followed by a refund of its account.
fn fault_kinds(world: &World) -> [bool; 4] {
    let kinds = [(); 4].map(|()| world.chance(500));
    if kinds.contains(&true) {
        kinds
    } else {
        [true; 4]
    }
}

/// Swarm testing: a fault family is on in half the seeds only. A family
/// that fires in every seed masks subtler bugs: nodes cut off again and
/// again keep moving accounts, so no actor keeps a stale view long enough
/// for a write that landed late to matter; payments held up at a bank
/// cannot be refunded. (The refund planted bug was found in 0 of 30 seeds
/// with every family always on; with this and `fault_kinds`, in 5 of 30.)
fn swarm(world: &World, draw: impl FnOnce(&World) -> u64) -> u64 {
    if world.chance(500) {
        draw(world)
    } else {
        0
    }
}

/// Hops within a data centre take milliseconds; a slow one (a stalled
/// connection, a long GC pause of a peer) up to 5 s, the dead timeout's
/// order; up to 3 % of messages lost.
fn net_faults(world: &World) -> NetFaults {
    NetFaults {
        latency_max_ms: world.between(1, 20),
        slow_per_mille: swarm(world, |world| world.between(0, 30)),
        slow_max_ms: world.between(100, 5_000),
        drop_per_mille: swarm(world, |world| world.between(0, 30)),
        cuts: world.chance(500),
    }
}

fn bank_faults(world: &World) -> BankFaults {
    BankFaults {
        latency_max_ms: world.between(1, 200),
        error_per_mille: world.between(0, 60),
        timeout_after_recording_per_mille: world.between(0, 60),
        refuse_per_mille: world.between(0, 40),
        decline_per_mille: world.between(0, 100),
        callback_lost_per_mille: world.between(0, 150),
        callback_duplicated_per_mille: world.between(0, 150),
        callback_delay_max_ms: world.between(1, 3_000),
        outage_per_mille: world.between(0, 5),
        outage_max_ms: 20_000,
        hang_per_mille: world.between(0, 20),
        late_submission_per_mille: swarm(world, |world| world.between(0, 20)),
        late_submission_max_ms: world.between(1, 30_000),
    }
}

async fn simulate(seed: u64) -> Report {
    let world = Arc::new(World::new(seed));
    let started = tokio::time::Instant::now();
    let faults_on = Arc::new(AtomicBool::new(true));
    let store_faults = store_faults(&world);
    let bank_faults = bank_faults(&world);
    let net_faults = net_faults(&world);
    let index_lag = world.between(0, 2_000);
    world.log(format!(
        "seed {seed}: store {store_faults:?}, index lag ≤ {index_lag} ms, banks {bank_faults:?}, network {net_faults:?}"
    ));
    let table = Arc::new(SimStore::lagging(world.clone(), index_lag));
    let audit = check::audit_commits(&table);
    let relay = Arc::new(CallbackRelay::default());
    let banks: Vec<Arc<SimBank>> = ["alpha", "beta"]
        .iter()
        .map(|name| {
            SimBank::new(
                name,
                world.clone(),
                bank_faults,
                faults_on.clone(),
                relay.clone(),
                table.clone(),
                audit.clone(),
            )
        })
        .collect();
    let pages = Arc::new(PageLog::default());
    let webhooks = Arc::new(WebhookLog::default());
    let shared = Shared {
        world: world.clone(),
        table: table.clone(),
        banks: banks.clone(),
        store_faults,
        faults_on: faults_on.clone(),
        pages: pages.clone(),
        rules: Arc::new(workload::rules()),
        start: Timestamp::from_unix_millis(1_900_000_000_000),
        audit: audit.clone(),
        webhooks: webhooks.clone(),
        webhook_fail_per_mille: world.between(0, 200),
        net: Arc::new(Network::new(world.clone(), net_faults, faults_on.clone())),
    };
    let cluster = Cluster::new(shared);
    let _ = relay.0.set(Arc::downgrade(&cluster));
    for index in 0..limits::NODES {
        cluster.start(index).await;
    }
    let workload = Workload::new(world.clone(), cluster.clone());
    let accounts = workload.accounts.clone();

    let on_call = tokio::spawn(workload.clone().on_call(pages.clone(), banks.clone()));
    let violations = |settled: bool| {
        let (table, banks, accounts, workload, audit, webhooks) =
            (&table, &banks, &accounts, &workload, &audit, &webhooks);
        async move {
            let mut found = audit
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .violations
                .clone();
            let acknowledged = {
                let acknowledged = workload
                    .acknowledged
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                crate::workload::Acknowledged {
                    creates: acknowledged.creates.clone(),
                    refunds: acknowledged.refunds.clone(),
                }
            };
            found.extend(check::check_store(table, banks, accounts, &acknowledged, settled).await);
            found.extend(check::check_webhooks(table, accounts, webhooks, settled).await);
            found
        }
    };

    // The faults, with the workload.
    let chaos = tokio::spawn(cluster.clone().chaos(limits::FAULT_PHASE));
    let load = tokio::spawn(workload.clone().run(limits::FAULT_PHASE));
    let mut found = Vec::new();
    while !(chaos.is_finished() && load.is_finished()) {
        tokio::time::sleep(limits::CHECK_EVERY).await;
        found = violations(false).await;
        if !found.is_empty() {
            break;
        }
    }

    // No more faults: everything must settle within the bound.
    if found.is_empty() {
        world.log("faults stop");
        faults_on.store(false, Ordering::SeqCst);
        cluster.heal().await;
        let deadline = tokio::time::Instant::now() + limits::SETTLE_BOUND;
        loop {
            tokio::time::sleep(limits::SETTLE_CHECK_EVERY).await;
            for name in in_review(&table, &accounts).await {
                workload.clone().review(Some(name)).await;
            }
            found = violations(true).await;
            // Until the bound, a payment still on its way is not yet a violation.
            let resting = (found.iter()).all(|violation| {
                matches!(
                    violation.invariant,
                    "everything_settles" | "store_agrees_with_banks" | "webhooks_delivered"
                )
            });
            if found.is_empty() || !resting || tokio::time::Instant::now() >= deadline {
                break;
            }
        }
    }
    on_call.abort();
    let delivered = webhooks
        .received
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .len();
    let paged = pages.pages.lock().unwrap_or_else(|p| p.into_inner()).len();
    world.log(format!("{delivered} webhook deliveries, {paged} pages"));
    for violation in &found {
        world.log(format!(
            "VIOLATION {}: {}",
            violation.invariant, violation.detail
        ));
    }
    let (digest, events) = world.digest();
    Report {
        seed,
        violations: found,
        digest,
        events,
        simulated: started.elapsed(),
        trace_tail: world.tail(),
    }
}

/// Payments waiting for a reviewer.
async fn in_review(
    table: &SimStore,
    accounts: &[payvisor::domain::AccountId],
) -> Vec<payvisor::domain::PaymentName> {
    let payments = check::all_payments(table, accounts)
        .await
        .unwrap_or_default();
    (payments.iter())
        .filter(|payment| payment.state == PaymentState::InReview)
        .map(|payment| payment.name())
        .collect()
}
