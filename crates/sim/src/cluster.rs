//! The simulated cluster: node slots, each running one incarnation at a
//! time; which node a caller or a bank reaches; and the node faults
//! (crash and restart, pause and resume).

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use payvisor::actors::{BankCallback, CallbackAck, CommandError, Orchestrator};
use payvisor::store::BoxFuture;

use crate::bank::CallbackTarget;
use crate::limits;
use crate::node::{Gate, Incarnation, Shared};

struct Slot {
    started: u32,
    gate: Arc<Gate>,
    current: Option<Arc<Incarnation>>,
}

pub struct Cluster {
    pub shared: Shared,
    slots: Mutex<Vec<Slot>>,
}

impl Cluster {
    pub fn new(shared: Shared) -> Arc<Cluster> {
        let slots = (0..limits::NODES)
            .map(|_| Slot {
                started: 0,
                gate: Arc::new(Gate::open()),
                current: None,
            })
            .collect();
        Arc::new(Cluster {
            shared,
            slots: Mutex::new(slots),
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts node `index` again under a new name (a new process).
    pub async fn start(&self, index: usize) {
        let (name, gate) = {
            let mut slots = self.slots();
            let slot = &mut slots[index];
            slot.started += 1;
            slot.gate = Arc::new(Gate::open());
            (format!("n{index}.{}", slot.started), slot.gate.clone())
        };
        self.shared.world.log(format!("{name} starting"));
        let started = Incarnation::start(&self.shared, name, gate.clone()).await;
        let mut slots = self.slots();
        if Arc::ptr_eq(&slots[index].gate, &gate) {
            slots[index].current = started.map(Arc::new);
        }
    }

    /// Kills node `index` (its process, as `kill -9`).
    pub fn crash(&self, index: usize) {
        let mut slots = self.slots();
        let slot = &mut slots[index];
        slot.gate.crash();
        if let Some(incarnation) = slot.current.take() {
            self.shared
                .world
                .log(format!("{} crashed", incarnation.name));
        }
    }

    pub fn pause(&self, index: usize) {
        let slots = self.slots();
        slots[index].gate.pause();
        if let Some(incarnation) = &slots[index].current {
            self.shared
                .world
                .log(format!("{} paused", incarnation.name));
        }
    }

    pub fn resume(&self, index: usize) {
        let slots = self.slots();
        slots[index].gate.resume();
        if let Some(incarnation) = &slots[index].current {
            self.shared
                .world
                .log(format!("{} resumed", incarnation.name));
        }
    }

    /// Whether node `index` has a running incarnation.
    pub fn is_up(&self, index: usize) -> bool {
        self.slots()[index].current.is_some()
    }

    /// A node a caller reaches: any running one, paused ones too (its
    /// caller then waits for its deadline).
    pub fn pick(&self) -> Option<(String, Orchestrator)> {
        let running: Vec<(String, Orchestrator)> = (self.slots().iter())
            .filter_map(|slot| slot.current.as_ref())
            .map(|incarnation| (incarnation.name.clone(), incarnation.orchestrator.clone()))
            .collect();
        if running.is_empty() {
            return None;
        }
        let index = self.shared.world.between(0, running.len() as u64 - 1) as usize;
        running.into_iter().nth(index)
    }

    /// The node a forwarding node would hand a call for `account` to: the
    /// owner the table's lease names, if it runs (gRPC forwarding is not
    /// simulated; this stands in for its one hop). Any running node if not.
    pub async fn owner_of(
        &self,
        account: &payvisor::domain::AccountId,
    ) -> Option<(String, Orchestrator)> {
        let shard = payvisor::domain::ownership::shard_of(account.as_str(), limits::SHARDS);
        let leases =
            payvisor::store::schema::read_leases(self.shared.table.as_ref(), limits::SHARDS)
                .await
                .ok()?;
        let owner = leases[usize::from(shard)].0.owner.clone();
        let found = owner.and_then(|owner| {
            (self.slots().iter())
                .filter_map(|slot| slot.current.as_ref())
                .find(|incarnation| incarnation.name == owner.as_str())
                .map(|incarnation| (incarnation.name.clone(), incarnation.orchestrator.clone()))
        });
        found.or_else(|| self.pick())
    }

    /// Crashes, restarts, pauses and resumes nodes until `phase` ends.
    pub async fn chaos(self: Arc<Self>, phase: Duration) {
        let world = self.shared.world.clone();
        let end = tokio::time::Instant::now() + phase;
        let mut restarts = Vec::new();
        loop {
            let wait = Duration::from_millis(world.between(2_000, 12_000));
            if tokio::time::Instant::now() + wait >= end {
                break;
            }
            tokio::time::sleep(wait).await;
            let index = world.between(0, limits::NODES as u64 - 1) as usize;
            if !self.is_up(index) {
                continue;
            }
            match world.between(0, 9) {
                0..=3 => {
                    self.crash(index);
                    let down = Duration::from_millis(world.between(500, 10_000));
                    let cluster = Arc::clone(&self);
                    restarts.push(tokio::spawn(async move {
                        tokio::time::sleep(down).await;
                        cluster.start(index).await;
                    }));
                }
                4..=8 => {
                    self.pause(index);
                    let paused = Duration::from_millis(world.between(200, 8_000));
                    let cluster = Arc::clone(&self);
                    tokio::spawn(async move {
                        tokio::time::sleep(paused).await;
                        cluster.resume(index);
                    });
                }
                _ => {}
            }
        }
        for restart in restarts {
            let _ = restart.await;
        }
    }

    /// After the faults: every node resumed and running.
    pub async fn heal(&self) {
        for index in 0..limits::NODES {
            self.resume(index);
            if !self.is_up(index) {
                self.start(index).await;
            }
        }
    }
}

/// Hands a bank's callbacks to the cluster (built after the banks).
#[derive(Default)]
pub struct CallbackRelay(pub OnceLock<Weak<Cluster>>);

impl CallbackTarget for CallbackRelay {
    fn deliver(&self, callback: BankCallback) -> BoxFuture<'_, Result<CallbackAck, CommandError>> {
        Box::pin(async move {
            let cluster = (self.0.get())
                .and_then(Weak::upgrade)
                .ok_or_else(|| CommandError::Unavailable("no cluster".into()))?;
            let (_, node) = cluster
                .pick()
                .ok_or_else(|| CommandError::Unavailable("no node running".into()))?;
            tokio::time::timeout(limits::CLIENT_TIMEOUT, node.bank_callback(callback))
                .await
                .map_err(|_| CommandError::Unavailable("timed out".into()))?
        })
    }
}
