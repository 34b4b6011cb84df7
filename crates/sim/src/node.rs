//! A node of the simulated cluster: the real orchestrator, membership,
//! ownership follower, recovery and watchdog, wired as `payvisor::server`
//! wires them, on a [`NodeStore`] and [`BankLink`]s, with its own clocks
//! and randomness. A node crashes by closing its [`Gate`] for good: every
//! call it makes to the store or a bank never returns (a write already on
//! its way may still land), its background tasks are aborted, and a new
//! incarnation starts from the store under a new name, as a restarted
//! process would. A paused node's calls wait until it resumes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use payvisor::actors::{ActorSettings, Components, Orchestrator};
use payvisor::alerts::{AlertError, AlertSink, Page};
use payvisor::approval::RulesInForce;
use payvisor::clock::Clock;
use payvisor::cluster::membership::{Membership, MembershipSettings, MonoClock};
use payvisor::cluster::{AccountOwnership, Cluster};
use payvisor::connectors::routing::{RoutedBank, Router};
use payvisor::domain::ownership::{Mono, NodeId, Timeouts};
use payvisor::domain::Timestamp;
use payvisor::random::SeededRandom;
use payvisor::shutdown::{ShutdownTrigger, Tasks};
use payvisor::store::{BoxFuture, Store};

use crate::bank::{BankLink, SimBank};
use crate::limits;
use crate::store::{NodeStore, SimStore, StoreFaults};
use crate::world::World;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GateState {
    Open,
    Paused,
    Crashed,
}

/// Whether a node's calls go out: open, held (paused), or never (crashed).
/// (Not a `watch` channel: its waiters are woken in an order drawn from
/// tokio's unseeded generator, and a run must repeat from its seed.)
pub struct Gate {
    state: std::sync::Mutex<GateState>,
    changed: tokio::sync::Notify,
}

impl Gate {
    pub fn open() -> Gate {
        Gate {
            state: std::sync::Mutex::new(GateState::Open),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn state(&self) -> GateState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, state: GateState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
        self.changed.notify_waiters();
    }

    /// Returns when the node may proceed; never once it crashed.
    pub async fn pass(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.state() {
                GateState::Open => return,
                GateState::Crashed => std::future::pending::<()>().await,
                GateState::Paused => changed.await,
            }
        }
    }

    pub fn pause(&self) {
        if self.state() == GateState::Open {
            self.set(GateState::Paused);
        }
    }

    pub fn resume(&self) {
        if self.state() == GateState::Paused {
            self.set(GateState::Open);
        }
    }

    pub fn crash(&self) {
        self.set(GateState::Crashed);
    }

    pub fn is_crashed(&self) -> bool {
        self.state() == GateState::Crashed
    }
}

/// Wall-clock time of a node: the simulation's start plus virtual time
/// elapsed, off by this node's skew.
pub struct SimClock {
    origin: tokio::time::Instant,
    start: Timestamp,
    skew_ms: i64,
}

impl Clock for SimClock {
    fn now(&self) -> Timestamp {
        let elapsed = self.origin.elapsed().as_millis() as i64;
        Timestamp::from_unix_millis(self.start.unix_millis() + elapsed + self.skew_ms)
    }
}

/// A node's monotonic clock, running at `rate_per_mille` of true time (a
/// slow clock; the ownership rules assume drift well within their 2×
/// margin between self-demotion and being judged dead).
pub struct ScaledMono {
    origin: tokio::time::Instant,
    rate_per_mille: u64,
}

impl MonoClock for ScaledMono {
    fn now(&self) -> Mono {
        Mono(self.origin.elapsed().as_millis() as u64 * self.rate_per_mille / 1000)
    }
}

/// Pages as the sink received them (the checker reads them).
#[derive(Default)]
pub struct PageLog {
    pub pages: Mutex<Vec<(String, String)>>,
}

pub struct SimAlertSink {
    pub log: Arc<PageLog>,
    pub world: Arc<World>,
    pub gate: Arc<Gate>,
    /// Where a stall paged once too often is noted, as it is sent.
    pub audit: Arc<Mutex<crate::check::Audit>>,
}

impl AlertSink for SimAlertSink {
    fn send(&self, page: &Page) -> BoxFuture<'_, Result<(), AlertError>> {
        let entry = (format!("{:?}", page.action), page.dedup_key.clone());
        Box::pin(async move {
            self.gate.pass().await;
            self.world.log(format!("page {} {}", entry.0, entry.1));
            let key = entry.1.clone();
            self.log
                .pages
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(entry);
            let too_often = crate::check::paged_once(&self.log, &key);
            (self.audit.lock().unwrap_or_else(|p| p.into_inner()))
                .violations
                .extend(too_often);
            Ok(())
        })
    }
}

/// Webhook deliveries as the merchants' endpoints received them, in
/// order: (endpoint, payment name, event sequence).
#[derive(Default)]
pub struct WebhookLog {
    pub received: Mutex<Vec<(String, String, u64)>>,
    /// Per (endpoint, payment): the event sequences delivered so far.
    pub seen: Mutex<BTreeMap<(String, String), BTreeSet<u64>>>,
}

/// The merchants' endpoints: they answer 2xx, or fail while the faults
/// run (as an endpoint that is down would).
pub struct SimWebhookSink {
    pub log: Arc<WebhookLog>,
    pub world: Arc<World>,
    pub gate: Arc<Gate>,
    pub faults_on: Arc<AtomicBool>,
    pub fail_per_mille: u64,
    /// Where an event delivered before an earlier one is noted, as it is.
    pub audit: Arc<Mutex<crate::check::Audit>>,
}

impl payvisor::webhooks::WebhookSink for SimWebhookSink {
    fn deliver<'a>(
        &'a self,
        endpoint: &'a payvisor::webhooks::Endpoint,
        event: &'a payvisor::domain::events::PaymentEvent,
        _: Option<&'a payvisor::domain::payment::Payment>,
        _: i64,
    ) -> BoxFuture<'a, Result<(), payvisor::webhooks::DeliveryError>> {
        Box::pin(async move {
            self.gate.pass().await;
            let faulty = self.faults_on.load(std::sync::atomic::Ordering::SeqCst);
            if faulty && self.world.chance(self.fail_per_mille) {
                return Err(payvisor::webhooks::DeliveryError("503 (simulated)".into()));
            }
            let delivery = (endpoint.name.clone(), event.payment.to_string(), event.seq);
            let out_of_order = crate::check::delivered_in_order(&self.log, &delivery);
            (self.audit.lock().unwrap_or_else(|p| p.into_inner()))
                .violations
                .extend(out_of_order);
            (self.log.received.lock().unwrap_or_else(|p| p.into_inner())).push(delivery);
            self.gate.pass().await;
            Ok(())
        })
    }
}

/// The endpoints every node delivers to.
pub fn webhook_settings() -> payvisor::webhooks::WebhookSettings {
    let endpoints = (limits::WEBHOOK_ENDPOINTS.iter())
        .map(|name| {
            let url = format!("https://{name}.sim.example/hooks");
            payvisor::webhooks::Endpoint::new(name, &url, "sim-signing-secret-0123456789abcdef")
                .expect("the simulation's endpoints are valid")
        })
        .collect();
    payvisor::webhooks::WebhookSettings::fixed(
        endpoints,
        payvisor::limits::WEBHOOK_RETRY_FOR_DEFAULT,
    )
}

/// What every node shares: the table, the banks, the seed's world.
pub struct Shared {
    pub world: Arc<World>,
    pub table: Arc<SimStore>,
    pub banks: Vec<Arc<SimBank>>,
    pub store_faults: StoreFaults,
    pub faults_on: Arc<AtomicBool>,
    pub pages: Arc<PageLog>,
    pub rules: Arc<RulesInForce>,
    /// The wall-clock time the run starts at.
    pub start: Timestamp,
    pub audit: Arc<Mutex<crate::check::Audit>>,
    pub webhooks: Arc<WebhookLog>,
    /// Chance that a delivery fails while the faults run, in thousandths.
    pub webhook_fail_per_mille: u64,
    pub net: Arc<crate::net::Network>,
}

/// One start of a node: it lives until it crashes.
pub struct Incarnation {
    pub name: String,
    /// The node slot it runs in (its place in the network).
    pub slot: usize,
    pub gate: Arc<Gate>,
    pub orchestrator: Orchestrator,
    /// Its routing: where it sends a call for an account it does not own.
    pub cluster: Arc<Cluster>,
    _tasks: Tasks,
    _stop: ShutdownTrigger,
    _membership_stop: ShutdownTrigger,
}

/// The cluster's timings (the production defaults, `payvisor::limits`).
pub fn timeouts() -> Timeouts {
    Timeouts {
        heartbeat_every: payvisor::limits::CLUSTER_HEARTBEAT_EVERY.as_millis() as u64,
        self_demote_after: payvisor::limits::CLUSTER_SELF_DEMOTE_AFTER.as_millis() as u64,
        dead_after: payvisor::limits::CLUSTER_DEAD_AFTER.as_millis() as u64,
        moves_per_round: payvisor::limits::CLUSTER_MOVES_PER_ROUND,
    }
}

impl Incarnation {
    /// Starts a node named `name`: joins the cluster (retrying through
    /// store faults), starts the orchestrator and its background work, and
    /// runs the recovery sweep. `None` if it crashed while starting.
    pub async fn start(
        shared: &Shared,
        slot: usize,
        name: String,
        gate: Arc<Gate>,
    ) -> Option<Incarnation> {
        let world = &shared.world;
        let store: Arc<dyn Store> = Arc::new(NodeStore {
            node: name.clone(),
            slot,
            net: shared.net.clone(),
            table: shared.table.clone(),
            world: world.clone(),
            gate: gate.clone(),
            faults: shared.store_faults,
            faults_on: shared.faults_on.clone(),
            audit: shared.audit.clone(),
        });
        let clock: Arc<dyn Clock> = Arc::new(SimClock {
            origin: tokio::time::Instant::now(),
            start: shared.start,
            skew_ms: world.between(0, 4000) as i64 - 2000,
        });
        let mono: Arc<dyn MonoClock> = Arc::new(ScaledMono {
            origin: tokio::time::Instant::now(),
            rate_per_mille: world.between(800, 1000),
        });
        let settings = MembershipSettings {
            shards: limits::SHARDS,
            timeouts: timeouts(),
            address: format!("{name}.sim:50051"),
        };
        let (mut membership, owned) = loop {
            let joined = Membership::join(
                store.clone(),
                clock.as_ref(),
                mono.clone(),
                NodeId::new(name.clone()),
                settings.clone(),
            )
            .await;
            match joined {
                Ok(joined) => break joined,
                Err(error) => {
                    world.log(format!("{name} join failed: {error}"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let _ = membership.round().await;
        let ownership = AccountOwnership::shards(owned.clone(), mono.clone(), limits::SHARDS);
        let cluster = Arc::new(Cluster::new(
            NodeId::new(name.clone()),
            ownership.clone(),
            owned,
            membership.picture(),
        ));
        let (stop, shutdown) = payvisor::shutdown::channel();
        let (membership_stop, membership_shutdown) = payvisor::shutdown::channel();
        let mut tasks = Tasks::default();
        let banks = shared
            .banks
            .iter()
            .enumerate()
            .map(|(rank, bank)| RoutedBank {
                name: bank.name.clone(),
                priority: rank as u32,
                cost_bps: 10,
                currencies: None,
                connector: Arc::new(BankLink {
                    bank: bank.clone(),
                    gate: gate.clone(),
                }),
                http: None,
            });
        let router = Router::new(banks.collect()).expect("the simulation names distinct banks");
        // Outcomes arrive as callbacks; the channel carries none.
        let (_bank_events, bank_event_queue) = tokio::sync::mpsc::channel(1);
        let alert_sink = Arc::new(SimAlertSink {
            log: shared.pages.clone(),
            world: world.clone(),
            gate: gate.clone(),
            audit: shared.audit.clone(),
        });
        let components = Components {
            store: store.clone(),
            banks: Arc::new(router),
            clock: clock.clone(),
            random: Arc::new(SeededRandom::new(world.draw())),
            policy: Default::default(),
            settings: ActorSettings {
                ownership,
                passivate_after: limits::PASSIVATE_AFTER,
                idle_check_every: limits::PASSIVATE_AFTER / 4,
                ..ActorSettings::default()
            },
            alert_sink: alert_sink.clone(),
            node_name: name.clone(),
            rules: shared.rules.clone(),
            webhooks: webhook_settings(),
            webhook_sink: Arc::new(SimWebhookSink {
                log: shared.webhooks.clone(),
                world: world.clone(),
                gate: gate.clone(),
                faults_on: shared.faults_on.clone(),
                fail_per_mille: shared.webhook_fail_per_mille,
                audit: shared.audit.clone(),
            }),
        };
        let orchestrator = Orchestrator::start(components, bank_event_queue, &shutdown, &mut tasks);
        tasks.spawn("membership", membership.run(membership_shutdown));
        payvisor::server::follow_ownership(
            Some(cluster.clone()),
            orchestrator.clone(),
            Default::default(),
            &shutdown,
            &mut tasks,
        );
        loop {
            if gate.is_crashed() {
                return None;
            }
            match orchestrator.recover().await {
                Ok(resumed) => {
                    world.log(format!("{name} serving, {resumed} payments resumed"));
                    break;
                }
                Err(error) => {
                    world.log(format!("{name} recovery failed: {error}"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        // Writes of a call that timed out may land up to this late: what
        // they left pending is resumed by a second sweep (as on DynamoDB).
        let late = orchestrator.clone();
        let bound = Duration::from_millis(shared.store_faults.late_landing_max_ms + 1000);
        tasks.spawn("late recovery sweep", async move {
            tokio::time::sleep(bound).await;
            let _ = late.recover().await;
        });
        let webhooks = orchestrator.webhooks().clone();
        let until = shutdown.clone();
        tasks.spawn("webhook dispatcher", async move {
            let every = payvisor::limits::WEBHOOK_SWEEP_EVERY;
            webhooks.run_until(every, |_, _| {}, until).await;
        });
        let watched = orchestrator.clone();
        let failures = payvisor::watchdog::SweepFailurePager::new(
            alert_sink,
            clock.clone(),
            name.clone(),
            limits::WATCHDOG_PAGE_AFTER,
        );
        tasks.spawn(
            "watchdog",
            payvisor::watchdog::run_sweeps(
                payvisor::limits::WATCHDOG_SWEEP_EVERY,
                shutdown.clone(),
                failures,
                move || {
                    let orchestrator = watched.clone();
                    async move { orchestrator.sweep_watchdog().await }
                },
            ),
        );
        Some(Incarnation {
            name,
            slot,
            gate,
            orchestrator,
            cluster,
            _tasks: tasks,
            _stop: stop,
            _membership_stop: membership_stop,
        })
    }
}
