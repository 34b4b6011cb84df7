//! The network: between the nodes (a call forwarded to its account's
//! owner, a bank callback handed to it) and between each node and the
//! table. Messages between nodes are delayed, some a long while, and
//! dropped; a node is cut off from its peers, or from the table alone,
//! for a while. Nothing here decides where a call goes: the nodes' own
//! routing (`payvisor::cluster::Cluster::route`) does, on their own
//! picture of the cluster, as in the server's forwarding.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// Node slots cut off from every peer (both ways).
    isolated: Mutex<BTreeSet<usize>>,
    /// Node slots cut off from the table.
    cut_from_table: Mutex<BTreeSet<usize>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
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

    /// One message from node slot `from` to `to`: after its delay, whether
    /// it arrived (not if it was dropped, or either end is cut off from
    /// its peers when it arrives).
    pub async fn carry(&self, from: usize, to: usize) -> bool {
        let slow = self.faulty() && self.world.chance(self.faults.slow_per_mille);
        let latency = if slow {
            self.world
                .between(self.faults.latency_max_ms, self.faults.slow_max_ms)
        } else {
            self.world.between(0, self.faults.latency_max_ms)
        };
        tokio::time::sleep(Duration::from_millis(latency)).await;
        if !self.faulty() {
            return true;
        }
        let cut = {
            let isolated = lock(&self.isolated);
            isolated.contains(&from) || isolated.contains(&to)
        };
        !cut && !self.world.chance(self.faults.drop_per_mille)
    }

    /// Whether node slot `slot` reaches the table now.
    pub fn reaches_table(&self, slot: usize) -> bool {
        !self.faulty() || !lock(&self.cut_from_table).contains(&slot)
    }

    /// Cuts node slot `slot` off from its peers (`true`) or from the
    /// table (`false`).
    pub fn cut(&self, slot: usize, from_peers: bool) {
        let set = if from_peers {
            &self.isolated
        } else {
            &self.cut_from_table
        };
        lock(set).insert(slot);
        let from = if from_peers { "its peers" } else { "the table" };
        self.world
            .log(format!("node slot {slot} cut off from {from}"));
    }

    /// Ends what `cut` began.
    pub fn mend(&self, slot: usize, from_peers: bool) {
        let set = if from_peers {
            &self.isolated
        } else {
            &self.cut_from_table
        };
        if lock(set).remove(&slot) {
            let from = if from_peers { "its peers" } else { "the table" };
            self.world
                .log(format!("node slot {slot} reaches {from} again"));
        }
    }

    /// Every node reaches everything again.
    pub fn heal(&self) {
        for slot in 0..crate::limits::NODES {
            self.mend(slot, true);
            self.mend(slot, false);
        }
    }
}
