//! The simulated cluster: node slots, each running one incarnation at a
//! time; which node a caller or a bank reaches; and the node faults
//! (crash and restart, pause and resume).

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use payvisor::actors::{BankCallback, CallbackAck, CommandError, Orchestrator};
use payvisor::domain::ownership::NodeId;
use payvisor::domain::AccountId;
use payvisor::store::BoxFuture;

use crate::bank::CallbackTarget;
use crate::limits;
use crate::net::Delivery;
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
        let started = Incarnation::start(&self.shared, index, name, gate.clone()).await;
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

    /// A node a caller reaches: any running one, paused ones too (the
    /// call then waits for the node, or for its deadline).
    pub fn pick(&self) -> Option<Arc<Incarnation>> {
        let running: Vec<Arc<Incarnation>> = (self.slots().iter())
            .filter_map(|slot| slot.current.clone())
            .collect();
        if running.is_empty() {
            return None;
        }
        let index = self.shared.world.between(0, running.len() as u64 - 1) as usize;
        running.into_iter().nth(index)
    }

    /// The running incarnation named `name`, if any.
    fn named(&self, name: &str) -> Option<Arc<Incarnation>> {
        (self.slots().iter())
            .filter_map(|slot| slot.current.clone())
            .find(|incarnation| incarnation.name == name)
    }

    /// A call about `account` reaching node `entry`, served as the
    /// server's gRPC layer serves it (`grpc/forward.rs`): here if this node
    /// owns the account, else forwarded over the network to the owner its
    /// picture names, which serves it only if it owns the account then.
    /// An owner that cannot be reached (crashed, or cut off from its
    /// peers) is tried again once the entry's picture changes, and once
    /// only; then the call is answered `ACCOUNT_MOVING`. A hop or its
    /// answer lost leaves the call to run out of its deadline, perhaps
    /// after the owner acted on it.
    pub async fn serve<T, F, Fut>(
        &self,
        entry: &Incarnation,
        account: &AccountId,
        attempt: &F,
    ) -> Result<T, CommandError>
    where
        F: Fn(Orchestrator) -> Fut,
        Fut: std::future::Future<Output = Result<T, CommandError>>,
    {
        let deadline = tokio::time::Instant::now()
            + limits::CLIENT_TIMEOUT.min(payvisor::limits::CLUSTER_FORWARD_TIMEOUT);
        let served = self.forwarding(entry, account, attempt, deadline);
        tokio::time::timeout_at(deadline, served)
            .await
            .unwrap_or_else(|_| {
                Err(CommandError::Unavailable(
                    "deadline exceeded (simulated)".into(),
                ))
            })
    }

    async fn forwarding<T, F, Fut>(
        &self,
        entry: &Incarnation,
        account: &AccountId,
        attempt: &F,
        deadline: tokio::time::Instant,
    ) -> Result<T, CommandError>
    where
        F: Fn(Orchestrator) -> Fut,
        Fut: std::future::Future<Output = Result<T, CommandError>>,
    {
        let pictures = entry.cluster.picture_changes();
        for _hop in 0..2 {
            // A paused process routes nothing either.
            entry.gate.pass().await;
            let Some(owner) = route(entry, account, false, deadline).await? else {
                return attempt(entry.orchestrator.clone()).await;
            };
            let seen = pictures.borrow().clone();
            if let Hop::Answered(answer) = self.hop(entry, &owner, account, attempt, deadline).await
            {
                return answer;
            }
            self.shared.world.log(format!(
                "{} cannot reach {owner}, the owner of {account}",
                entry.name
            ));
            // Again once the picture changes (a membership round), as
            // the server waits for one; if it does not, the call is done.
            let wait_until =
                deadline.min(tokio::time::Instant::now() + payvisor::limits::CLUSTER_MOVE_WAIT);
            while Arc::ptr_eq(&pictures.borrow(), &seen) {
                if tokio::time::Instant::now() >= wait_until {
                    return Err(unreachable_owner(account));
                }
                tokio::time::sleep(limits::ROUTE_POLL_EVERY).await;
            }
        }
        Err(unreachable_owner(account))
    }

    /// One forwarded call, from `entry` to the node named `owner`.
    async fn hop<T, F, Fut>(
        &self,
        entry: &Incarnation,
        owner: &NodeId,
        account: &AccountId,
        attempt: &F,
        deadline: tokio::time::Instant,
    ) -> Hop<T>
    where
        F: Fn(Orchestrator) -> Fut,
        Fut: std::future::Future<Output = Result<T, CommandError>>,
    {
        // A crashed owner refuses the connection at once.
        let Some(owner) = self.named(owner.as_str()) else {
            return Hop::Unreached;
        };
        let net = &self.shared.net;
        match net.send(entry.slot, owner.slot).await {
            Delivery::Arrived => {}
            Delivery::Lost => return std::future::pending().await,
            Delivery::CutOff => {
                // No connection: it fails after the connect timeout.
                let refused =
                    tokio::time::Instant::now() + payvisor::limits::CLUSTER_CONNECT_TIMEOUT;
                tokio::time::sleep_until(refused.min(deadline)).await;
                return Hop::Unreached;
            }
        }
        // At the owner: a paused process holds the call, and a crash
        // resets the connection (the entry may send it again).
        let at_owner = async {
            owner.gate.pass().await;
            match route(&owner, account, true, deadline).await {
                Ok(_) => attempt(owner.orchestrator.clone()).await,
                Err(error) => Err(error),
            }
        };
        let answer = tokio::select! {
            biased;
            answer = at_owner => answer,
            () = crashed(&owner.gate) => return Hop::Unreached,
        };
        if net.send(owner.slot, entry.slot).await != Delivery::Arrived {
            return std::future::pending().await;
        }
        entry.gate.pass().await;
        Hop::Answered(answer)
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
            // In the seeds that cut nodes off, besides crashes and pauses:
            // from the peers or from the table alone.
            if self.shared.net.cuts() && world.chance(400) {
                let index = world.between(0, limits::NODES as u64 - 1) as usize;
                let span = Duration::from_millis(world.between(500, limits::CUT_MAX_MS));
                self.shared.net.cut(index, world.chance(500), span);
            }
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

    /// After the faults: every node resumed, running and connected.
    pub async fn heal(&self) {
        self.shared.net.heal();
        for index in 0..limits::NODES {
            self.resume(index);
            if !self.is_up(index) {
                self.start(index).await;
            }
        }
    }
}

/// What one forwarded call came to.
enum Hop<T> {
    Answered(Result<T, CommandError>),
    /// The owner could not be reached (the server's `unreached`).
    Unreached,
}

fn unreachable_owner(account: &AccountId) -> CommandError {
    CommandError::Moving(format!(
        "the node that owns account {account} cannot be reached (simulated); retry with the same request_id"
    ))
}

/// Returns once `gate`'s node has crashed (looked at every
/// `ROUTE_POLL_EVERY`: the gate wakes waiters of its opening only).
async fn crashed(gate: &Gate) {
    while !gate.is_crashed() {
        tokio::time::sleep(limits::ROUTE_POLL_EVERY).await;
    }
}

/// Where `node` sends a call for `account`: `None` to serve it itself (it
/// owns the account), or the owner its picture names (unless the call was
/// forwarded to it already). Decided on the node's own ownership and
/// picture as `payvisor::cluster::Cluster::route` decides, waiting as it
/// does while nobody owns the account; but polled, not awaited: tokio's
/// watch channel wakes its waiters in an order no seed controls.
async fn route(
    node: &Incarnation,
    account: &AccountId,
    forwarded: bool,
    deadline: tokio::time::Instant,
) -> Result<Option<NodeId>, CommandError> {
    let give_up = deadline.min(tokio::time::Instant::now() + payvisor::limits::CLUSTER_MOVE_WAIT);
    loop {
        if node.cluster.ownership.serves(account) {
            return Ok(None);
        }
        if !forwarded {
            if let Some(owner) = node.cluster.owner_elsewhere(account) {
                return Ok(Some(owner));
            }
        }
        if tokio::time::Instant::now() >= give_up {
            let moving = payvisor::cluster::RouteError::Moving(account.clone());
            return Err(CommandError::from(moving));
        }
        tokio::time::sleep(limits::ROUTE_POLL_EVERY).await;
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
            let entry = cluster
                .pick()
                .ok_or_else(|| CommandError::Unavailable("no node running".into()))?;
            // The node it reaches hands it to the account's owner.
            let account = callback.event.payment_name().account.clone();
            let attempt = |node: Orchestrator| {
                let callback = callback.clone();
                async move { node.bank_callback(callback).await }
            };
            cluster.serve(&entry, &account, &attempt).await
        })
    }
}
