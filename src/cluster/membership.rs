//! A node's membership: every [`Timeouts::heartbeat_every`] it bumps its
//! heartbeat, reads every node record and lease (strongly consistent), lets
//! the ownership rules decide, and writes their claims and releases, each
//! conditional on the lease as read. What it holds is published as
//! [`Owned`]; whoever serves accounts checks it (with the deadline in it)
//! before every command.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::clock::Clock;
use crate::domain::ownership::{
    is_settled, plan, Lease, Liveness, Mono, NodeId, NodeRecord, ShardId, Timeouts,
};
use crate::limits;
use crate::shutdown::Shutdown;
use crate::store::schema::{self, ClusterSettings};
use crate::store::{Store, StoreError};

/// This node's monotonic clock, as the rules read it.
pub trait MonoClock: Send + Sync + 'static {
    fn now(&self) -> Mono;
}

/// The process's monotonic clock (tokio's, so tests may pause it).
pub struct ProcessMono {
    origin: tokio::time::Instant,
}

impl Default for ProcessMono {
    fn default() -> ProcessMono {
        ProcessMono {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl MonoClock for ProcessMono {
    fn now(&self) -> Mono {
        Mono(self.origin.elapsed().as_millis() as u64)
    }
}

/// A monotonic clock a test moves by hand.
#[derive(Default)]
pub struct ManualMono(AtomicU64);

impl ManualMono {
    pub fn advance(&self, millis: u64) {
        self.0.fetch_add(millis, Ordering::SeqCst);
    }
}

impl MonoClock for ManualMono {
    fn now(&self) -> Mono {
        Mono(self.0.load(Ordering::SeqCst))
    }
}

/// The shards this node holds, with their epochs (the fencing token of its
/// writes to their accounts), and until when it may serve them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owned {
    /// `None`: not at all (never heartbeated, or left).
    pub valid_until: Option<Mono>,
    pub shards: BTreeMap<ShardId, u64>,
}

impl Owned {
    /// The epoch of `shard` if this node may serve it at `now`.
    pub fn epoch_at(&self, shard: ShardId, now: Mono) -> Option<u64> {
        match self.valid_until {
            Some(until) if now < until => self.shards.get(&shard).copied(),
            Some(_) if crate::mutations::planted(crate::mutations::Mutation::NoSelfDemotion) => {
                self.shards.get(&shard).copied()
            }
            _ => None,
        }
    }
}

/// Why a node cannot join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the table's cluster has {recorded} shards, this node is set to {configured}: every node of a cluster must use the same count")]
    ShardCountMismatch { recorded: u16, configured: u16 },
    #[error(transparent)]
    Timeouts(#[from] crate::domain::ownership::TimeoutsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What became of one lease write.
enum LeaseWrite {
    Landed,
    /// Its condition failed: nothing was written by this call.
    Refused,
    /// The call failed: the write may land still, or never.
    Unknown,
}

/// A lease to write, the version it was read at, and the node it is
/// taken from with that node's record version as read (`None`: no record).
type Claim = (Lease, Option<u64>, Option<(NodeId, Option<u64>)>);

/// How a node takes part.
#[derive(Clone, Debug)]
pub struct MembershipSettings {
    pub shards: u16,
    pub timeouts: Timeouts,
    /// Where peers reach this node's gRPC port.
    pub address: String,
}

pub struct Membership {
    store: Arc<dyn Store>,
    mono: Arc<dyn MonoClock>,
    timeouts: Timeouts,
    shards: u16,
    me: NodeRecord,
    /// The version of this node's record, as last written.
    version: Option<u64>,
    last_acknowledged_sent: Option<Mono>,
    liveness: Liveness,
    owned: watch::Sender<Owned>,
    picture: watch::Sender<Arc<super::Picture>>,
    /// The leases as last read and written, kept while the cluster is
    /// settled (see [`LeaseCache`]).
    leases: Option<LeaseCache>,
    /// Releases whose outcome is unknown (the call failed; the write may
    /// still land): the lease as freed and the version it was written
    /// against. Such a shard is not served, and the release is sent again
    /// each round until the table answers for good.
    releasing: BTreeMap<ShardId, (Lease, Option<u64>)>,
}

/// The leases as this node last read them (with its own writes since),
/// for the members it saw then. Reading every lease costs a query of every
/// shard's item; once the leases are at rest (`ownership::is_settled`:
/// every shard held by a member, each holding its share) nothing in them
/// changes unless the members do (a node joins, leaves, or is judged dead:
/// only then does anyone claim or release). So a round reads the node
/// records (a few items) and keeps the leases only while they were at rest
/// when last read and written, and reads them again when the members
/// changed, when its last round moved something or was refused a write,
/// when its own
/// heartbeats were not acknowledged without a gap (peers may have judged it
/// dead meanwhile), or every [`limits::CLUSTER_LEASE_REREAD_ROUNDS`] rounds
/// as a backstop.
struct LeaseCache {
    leases: Vec<(Lease, Option<u64>)>,
    members: Vec<NodeId>,
    rounds: u32,
}

impl LeaseCache {
    async fn read(
        store: &dyn Store,
        shards: u16,
        members: &[NodeId],
    ) -> Result<LeaseCache, StoreError> {
        Ok(LeaseCache {
            leases: schema::read_leases(store, shards).await?,
            members: members.to_vec(),
            rounds: 0,
        })
    }

    /// Whether it may stand in for a read this round (and counts the round).
    fn still_valid(&mut self, members: &[NodeId]) -> bool {
        self.rounds += 1;
        self.members == members && self.rounds < limits::CLUSTER_LEASE_REREAD_ROUNDS
    }

    fn version(&self, shard: ShardId) -> Option<u64> {
        self.leases[usize::from(shard)].1
    }

    /// This node wrote `lease` (one version on from the one read).
    fn written(&mut self, lease: Lease) {
        let slot = &mut self.leases[usize::from(lease.shard)];
        slot.1 = Some(slot.1.map_or(1, |version| version + 1));
        slot.0 = lease;
    }
}

impl Membership {
    /// Checks the settings against the table's and registers the node.
    pub async fn join(
        store: Arc<dyn Store>,
        wall: &dyn Clock,
        mono: Arc<dyn MonoClock>,
        id: NodeId,
        settings: MembershipSettings,
    ) -> Result<(Membership, watch::Receiver<Owned>), JoinError> {
        settings.timeouts.check()?;
        let configured = ClusterSettings {
            shards: settings.shards,
        };
        let recorded = schema::agree_on_settings(store.as_ref(), configured).await?;
        if recorded != configured {
            return Err(JoinError::ShardCountMismatch {
                recorded: recorded.shards,
                configured: configured.shards,
            });
        }
        let (owned, watching) = watch::channel(Owned::default());
        let membership = Membership {
            store,
            mono,
            timeouts: settings.timeouts,
            shards: settings.shards,
            me: NodeRecord {
                id,
                address: settings.address,
                started_at: wall.now(),
                heartbeat: 0,
                leaving: false,
            },
            version: None,
            last_acknowledged_sent: None,
            liveness: Liveness::default(),
            owned,
            picture: watch::Sender::new(Arc::new(super::Picture {
                shards: settings.shards,
                ..Default::default()
            })),
            leases: None,
            releasing: BTreeMap::new(),
        };
        Ok((membership, watching))
    }

    pub fn id(&self) -> &NodeId {
        &self.me.id
    }

    /// The cluster as each round reads it (published after the round's
    /// writes).
    pub fn picture(&self) -> watch::Receiver<Arc<super::Picture>> {
        self.picture.subscribe()
    }

    /// One round: heartbeat, read, decide, write, publish.
    pub async fn round(&mut self) -> Result<(), StoreError> {
        let before = self.last_acknowledged_sent;
        self.heartbeat().await;
        let beating = before
            .zip(self.last_acknowledged_sent)
            .is_some_and(|(before, now)| {
                now.0.saturating_sub(before.0) < self.timeouts.self_demote_after
            });
        if !beating {
            // Peers may have judged this node dead meanwhile (a pause, an
            // outage) and taken its shards: what it knew is void.
            self.leases = None;
        }
        let records = schema::read_nodes(self.store.as_ref()).await?;
        let now = self.mono.now();
        let nodes: Vec<NodeRecord> = records.iter().map(|node| node.value.clone()).collect();
        self.liveness.observe(&nodes, now);
        let may_serve = self.timeouts.may_serve(self.last_acknowledged_sent, now);
        let alive =
            |id: &NodeId| *id == self.me.id || self.liveness.is_alive(id, now, &self.timeouts);
        let mut members: Vec<NodeId> = nodes
            .iter()
            .filter(|node| !node.leaving && alive(&node.id) && node.id != self.me.id)
            .map(|node| node.id.clone())
            .collect();
        if !self.me.leaving {
            members.push(self.me.id.clone());
        }
        members.sort();
        let cached = self
            .leases
            .take()
            .and_then(|mut cache| cache.still_valid(&members).then_some(cache));
        let mut cache = match cached {
            Some(cache) => cache,
            None => LeaseCache::read(self.store.as_ref(), self.shards, &members).await?,
        };
        let leases: Vec<Lease> = cache
            .leases
            .iter()
            .map(|(lease, _)| lease.clone())
            .collect();
        let decided = plan(
            &self.me.id,
            &leases,
            &members,
            self.me.leaving,
            may_serve,
            alive,
            self.timeouts.moves_per_round,
        );
        let mut held: BTreeMap<ShardId, u64> = leases
            .iter()
            .filter(|lease| lease.owner.as_ref() == Some(&self.me.id))
            .map(|lease| (lease.shard, lease.epoch))
            .collect();
        let mut refused = false;
        // A release that may still land is not taken back (found reviewing
        // what payvisor-sim found: a timed-out release landed after the
        // node read its lease as still its own and served the shard again,
        // and a peer claimed the freed lease). Resolved once the lease
        // moved on from the version the release was written against.
        let me = &self.me.id;
        self.releasing.retain(|shard, (_, version)| {
            let (lease, read) = &cache.leases[usize::from(*shard)];
            lease.owner.as_ref() == Some(me) && read == version
        });
        for (shard, (freed, version)) in self.releasing.clone() {
            held.remove(&shard);
            match self.write_lease(&freed, version).await {
                LeaseWrite::Landed => {
                    cache.written(freed);
                    self.releasing.remove(&shard);
                }
                LeaseWrite::Refused => {
                    self.releasing.remove(&shard);
                    refused = true;
                }
                LeaseWrite::Unknown => refused = true,
            }
        }
        // A claim of a shard whose owner was judged dead holds only while
        // that owner's record is as this round read it: had the owner come
        // back (a pause, an outage) and beaten again by the time the claim
        // lands, it may serve the shard again, and the claim fails (found
        // by payvisor-sim: a claim decided while the owner was away landed
        // after its first round back, and both served the shard). Claims
        // go out together: a dead node's shards are taken in one round
        // trip, not one per shard.
        let record_version = |owner: &NodeId| {
            (records.iter())
                .find(|record| record.value.id == *owner)
                .map(|record| record.version)
        };
        let claims = (decided.claims.iter())
            .map(|claim| {
                let taken = Lease {
                    shard: claim.shard,
                    owner: Some(self.me.id.clone()),
                    epoch: claim.epoch + 1,
                };
                let version = cache.version(taken.shard);
                let judged = (claim.owner.as_ref())
                    .filter(|owner| **owner != self.me.id)
                    .map(|owner| (owner.clone(), record_version(owner)));
                (taken, version, judged)
            })
            .collect();
        for (taken, landed) in self.write_leases(claims).await {
            if landed {
                held.insert(taken.shard, taken.epoch);
                cache.written(taken);
            } else {
                refused = true;
            }
        }
        for release in &decided.releases {
            if self.releasing.contains_key(&release.shard) {
                continue;
            }
            // Given up first: serving stops before the lease is free.
            held.remove(&release.shard);
            self.publish(&held);
            let freed = Lease {
                owner: None,
                ..release.clone()
            };
            let version = cache.version(freed.shard);
            match self.write_lease(&freed, version).await {
                LeaseWrite::Landed => cache.written(freed),
                LeaseWrite::Refused => refused = true,
                LeaseWrite::Unknown => {
                    self.releasing.insert(freed.shard, (freed, version));
                    refused = true;
                }
            }
        }
        self.publish(&held);
        let nodes = nodes
            .into_iter()
            .map(|record| super::NodeSeen {
                unchanged_for_ms: self.liveness.unchanged_for(&record.id, now),
                alive: alive(&record.id),
                record,
            })
            .collect();
        self.picture.send_replace(Arc::new(super::Picture {
            shards: self.shards,
            nodes,
            leases: (cache.leases.iter())
                .map(|(lease, _)| (lease.owner.clone(), lease.epoch))
                .collect(),
        }));
        self.forget_the_dead(&records, &cache.leases, now).await;
        // Read again next round unless the leases are at rest: then no
        // member moves anything until the members change.
        let now_held: Vec<Lease> = cache
            .leases
            .iter()
            .map(|(lease, _)| lease.clone())
            .collect();
        let settled = decided.claims.is_empty()
            && decided.releases.is_empty()
            && !refused
            && is_settled(&now_held, &members);
        if settled {
            self.leases = Some(cache);
        }
        Ok(())
    }

    /// Bumps this node's heartbeat. Only an acknowledged write extends how
    /// long the node may serve, and from when it was *sent*.
    async fn heartbeat(&mut self) {
        let sent = self.mono.now();
        self.me.heartbeat += 1;
        match schema::put_node(self.store.as_ref(), &self.me, self.version).await {
            Ok(version) => {
                self.version = Some(version);
                self.last_acknowledged_sent = Some(sent);
            }
            Err(StoreError::ConditionFailed { .. }) => {
                // The record is not as this node last wrote it: a peer
                // removed it (it judged this node dead, so its leases are
                // being taken), or an earlier heartbeat that timed out
                // landed after all. Either way, serve nothing until a
                // heartbeat is acknowledged again (and the leases read
                // again, see `round`); write on top of what is there.
                self.last_acknowledged_sent = None;
                match schema::read_node(self.store.as_ref(), &self.me.id).await {
                    Ok(Some(stored)) => {
                        self.version = Some(stored.version);
                        self.me.heartbeat = self.me.heartbeat.max(stored.value.heartbeat);
                    }
                    Ok(None) => {
                        tracing::warn!("this node's record was removed by a peer; rejoining");
                        self.version = None;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "this node's record not read");
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "heartbeat not written");
            }
        }
    }

    /// Writes `leases` (claims, or the releases of a leaving node), a
    /// bounded number at a time, each conditional on the lease as read
    /// and, for a lease taken from a node judged dead, on that node's
    /// record as read; returns each with whether it landed.
    async fn write_leases(&self, leases: Vec<Claim>) -> Vec<(Lease, bool)> {
        let permits = Arc::new(tokio::sync::Semaphore::new(
            limits::CLUSTER_LEASE_WRITES_IN_FLIGHT,
        ));
        let mut writes = tokio::task::JoinSet::new();
        for (lease, version, judged) in leases {
            let store = Arc::clone(&self.store);
            let permits = Arc::clone(&permits);
            let node = self.me.id.clone();
            writes.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let judged = judged.as_ref().map(|(owner, version)| (owner, *version));
                let claim = schema::claim_lease(store.as_ref(), &lease, version, judged);
                let landed = match claim.await {
                    Ok(()) => true,
                    // Another node moved first: the next round reads it.
                    Err(StoreError::ConditionFailed { .. }) => false,
                    Err(error) => {
                        tracing::warn!(%node, shard = lease.shard, %error, "lease not written");
                        false
                    }
                };
                (lease, landed)
            });
        }
        let mut written = Vec::new();
        while let Some(result) = writes.join_next().await {
            if let Ok(result) = result {
                written.push(result);
            }
        }
        written
    }

    async fn write_lease(&self, lease: &Lease, version: Option<u64>) -> LeaseWrite {
        match schema::put_lease(self.store.as_ref(), lease, version).await {
            Ok(()) => LeaseWrite::Landed,
            // Another node moved first (or this write landed before):
            // the next round reads what it did.
            Err(StoreError::ConditionFailed { .. }) => LeaseWrite::Refused,
            Err(error) => {
                tracing::warn!(shard = lease.shard, %error, "lease not written (it may land still)");
                LeaseWrite::Unknown
            }
        }
    }

    fn publish(&self, held: &BTreeMap<ShardId, u64>) {
        let valid_until = self
            .last_acknowledged_sent
            .map(|sent| Mono(sent.0 + self.timeouts.self_demote_after));
        self.owned.send_replace(Owned {
            valid_until,
            shards: held.clone(),
        });
    }

    /// Removes the records of dead nodes that hold no lease (each process
    /// start has a new id, so they would pile up).
    async fn forget_the_dead(
        &self,
        records: &[schema::Versioned<NodeRecord>],
        leases: &[(Lease, Option<u64>)],
        now: Mono,
    ) {
        for node in records {
            let id = &node.value.id;
            let holds = leases
                .iter()
                .any(|(lease, _)| lease.owner.as_ref() == Some(id));
            if *id != self.me.id && !holds && !self.liveness.is_alive(id, now, &self.timeouts) {
                if let Err(error) = schema::remove_node(self.store.as_ref(), id, node.version).await
                {
                    tracing::debug!(peer = %id, %error, "dead node's record not removed");
                }
            }
        }
    }

    /// Leaves gracefully: stops serving, marks the record leaving, frees
    /// every lease it holds (peers claim them at once) and removes its
    /// record.
    pub async fn leave(&mut self) -> Result<(), StoreError> {
        self.owned.send_replace(Owned::default());
        self.me.leaving = true;
        // Marked first, so peers stop counting this node among the members
        // even if a release below fails.
        if let Ok(version) = schema::put_node(self.store.as_ref(), &self.me, self.version).await {
            self.version = Some(version);
        }
        let view = schema::read_cluster(self.store.as_ref(), self.shards).await?;
        let mine = (view.leases.into_iter())
            .filter(|(lease, _)| lease.owner.as_ref() == Some(&self.me.id))
            .map(|(lease, version)| {
                let freed = Lease {
                    owner: None,
                    ..lease
                };
                (freed, version, None)
            })
            .collect();
        // Refused: a peer took it already (it judged this node dead).
        self.write_leases(mine).await;
        if let Some(version) = self.version {
            schema::remove_node(self.store.as_ref(), &self.me.id, version).await?;
        }
        Ok(())
    }

    /// Rounds every heartbeat until `shutdown`, then leaves.
    pub async fn run(mut self, shutdown: Shutdown) {
        let mut ticks = tokio::time::interval(std::time::Duration::from_millis(
            self.timeouts.heartbeat_every,
        ));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.signalled() => break,
                _ = ticks.tick() => {}
            }
            if let Err(error) = self.round().await {
                tracing::warn!(%error, "cluster round failed; retrying next heartbeat");
            }
        }
        if let Err(error) = self.leave().await {
            tracing::warn!(%error, "leases not released on leaving; peers take them once this node is judged dead");
        }
    }
}
