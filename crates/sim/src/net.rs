//! The network: between the nodes (a call forwarded to its account's
//! owner, a bank callback handed to it) and between each node and the
//! table. Messages between nodes are delayed, some a long while, and
//! dropped; a node is cut off from its peers, or from the table alone,
//! for a while. Nothing here decides where a call goes: the nodes' own
//! routing (`payvisor::cluster::Cluster::route`) does, on their own
//! picture of the cluster, as in the server's forwarding.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::world::World;

/// How the network between nodes misbehaves while the faults run.
#[derive(Clone, Copy, Debug)]
pub struct NetFaults {
    /// Each hop takes up to this long.
    pub latency_max_ms: u64,
    /// A hop is slow (up to `slow_max_ms`), in thousandths.
    pub slow_per_mille: u64,
    pub slow_max_ms: u64,
    /// A message is lost, in thousandths.
    pub drop_per_mille: u64,
    /// Whether nodes are cut off from their peers or the table (chaos).
    pub cuts: bool,
}

pub struct Network {
    world: Arc<World>,
    faults: NetFaults,
    faults_on: Arc<AtomicBool>,
    /// Node slots cut off from every peer (both ways), until when.
    isolated: Mutex<BTreeMap<usize, Instant>>,
    /// Node slots cut off from the table, until when.
    cut_from_table: Mutex<BTreeMap<usize, Instant>>,
}

/// What became of a message between two nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Arrived,
    /// Lost on the way: its sender hears nothing until its deadline.
    Lost,
    /// An end is cut off from its peers: no connection can be made.
    CutOff,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn cut_now(cuts: &Mutex<BTreeMap<usize, Instant>>, slot: usize) -> bool {
    lock(cuts)
        .get(&slot)
        .is_some_and(|until| Instant::now() < *until)
}

impl Network {
    pub fn new(world: Arc<World>, faults: NetFaults, faults_on: Arc<AtomicBool>) -> Network {
        Network {
            world,
            faults,
            faults_on,
            isolated: Mutex::default(),
            cut_from_table: Mutex::default(),
        }
    }

    /// Whether this seed cuts nodes off at all.
    pub fn cuts(&self) -> bool {
        self.faults.cuts
    }

    fn faulty(&self) -> bool {
        self.faults_on.load(Ordering::SeqCst)
    }

    /// One message from node slot `from` to `to`: after its delay, what
    /// became of it (cut off if either end is cut off from its peers when
    /// it arrives).
    pub async fn send(&self, from: usize, to: usize) -> Delivery {
        let slow = self.faulty() && self.world.chance(self.faults.slow_per_mille);
        let latency = if slow {
            self.world
                .between(self.faults.latency_max_ms, self.faults.slow_max_ms)
        } else {
            self.world.between(0, self.faults.latency_max_ms)
        };
        tokio::time::sleep(Duration::from_millis(latency)).await;
        if !self.faulty() {
            Delivery::Arrived
        } else if cut_now(&self.isolated, from) || cut_now(&self.isolated, to) {
            Delivery::CutOff
        } else if self.world.chance(self.faults.drop_per_mille) {
            Delivery::Lost
        } else {
            Delivery::Arrived
        }
    }

    /// Whether node slot `slot` reaches the table now.
    pub fn reaches_table(&self, slot: usize) -> bool {
        !self.faulty() || !cut_now(&self.cut_from_table, slot)
    }

    /// Cuts node slot `slot` off from its peers (`from_peers`) or from the
    /// table for `span` (longer, if it already is for longer).
    pub fn cut(&self, slot: usize, from_peers: bool, span: Duration) {
        let cuts = if from_peers {
            &self.isolated
        } else {
            &self.cut_from_table
        };
        let until = Instant::now() + span;
        let mut cuts = lock(cuts);
        let until = cuts.get(&slot).map_or(until, |known| until.max(*known));
        cuts.insert(slot, until);
        let from = if from_peers { "its peers" } else { "the table" };
        self.world.log(format!(
            "node slot {slot} cut off from {from} for {} ms",
            span.as_millis()
        ));
    }

    /// Every node reaches everything again.
    pub fn heal(&self) {
        lock(&self.isolated).clear();
        lock(&self.cut_from_table).clear();
    }
}
