//! Shard ownership rules. Pure: time comes in as readings of the node's own
//! monotonic clock ([`Mono`]), never a wall clock, and the leases and node
//! records come in as read from the table; the result is what to write.
//!
//! **The model.** Accounts hash into a fixed number of shards. Each shard
//! has a lease: an owner (or none) and an epoch that grows on every change
//! of owner (the fencing token). Each node has a record with a heartbeat
//! counter that it bumps every [`Timeouts::heartbeat_every`]; one write per
//! node, not per shard, keeps liveness cheap however many shards there are.
//!
//! **Liveness, on the observer's clock.** An observer judges a node dead
//! when its heartbeat counter has not changed for [`Timeouts::dead_after`],
//! measured from when *the observer* first read the current value
//! ([`Liveness`]). No two machines' clocks are compared, as in the Kinesis
//! Client Library and the DynamoDB lock client.
//!
//! **Self-demotion.** A node serves its shards only until
//! [`Timeouts::self_demote_after`] past the moment it *sent* its last
//! heartbeat that the table acknowledged. That moment precedes the write's
//! landing, which precedes any observer's reading of it, so the node stops
//! serving at least `dead_after - self_demote_after` before any observer
//! may judge it dead and take its shards ([`Timeouts::check`] demands that
//! margin). Only a process pause longer than the margin breaks this, and
//! fencing at the account (the epoch) covers that case.
//!
//! **Claims and rebalancing.** Live nodes (sorted by id) each take an even
//! share of the shards, ±1 ([`share_of`]). A node under its share claims
//! shards that are free or whose owner is not live; a node over its share
//! releases the excess; both at most [`Timeouts::moves_per_round`] per
//! round, so ownership moves in steps. Which shards a node prefers is
//! rendezvous hashing of (node, shard): nodes racing for free shards mostly
//! want different ones, and a node keeps preferring the same ones.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::Timestamp;

/// A reading of this node's monotonic clock, in milliseconds since an
/// arbitrary origin of its own. Only ever compared with readings of the
/// same clock.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Mono(pub u64);

impl Mono {
    fn since(self, earlier: Mono) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// One process start of a node: fresh every start, so a restarted node
/// never inherits what its previous incarnation believed.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct NodeId(String);

impl NodeId {
    pub fn new(id: impl Into<String>) -> NodeId {
        NodeId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub type ShardId = u16;

/// A node's record as read from the table.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NodeRecord {
    pub id: NodeId,
    /// Where peers reach the node's gRPC port (`HOST:PORT`).
    pub address: String,
    /// When the node started, by its own wall clock: shown to operators,
    /// never compared with another node's clock.
    pub started_at: Timestamp,
    /// Bumped by the node on every heartbeat.
    pub heartbeat: u64,
    /// Set by a node that is shutting down: it takes no share and releases
    /// what it holds.
    pub leaving: bool,
}

/// A shard's lease as read from the table.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Lease {
    pub shard: ShardId,
    pub owner: Option<NodeId>,
    /// Grows by one on every change of owner; never goes back.
    pub epoch: u64,
}

/// The timings of the protocol, in milliseconds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Timeouts {
    pub heartbeat_every: u64,
    pub self_demote_after: u64,
    pub dead_after: u64,
    pub moves_per_round: usize,
}

/// Why a set of timings would let two nodes serve one shard.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum TimeoutsError {
    #[error("a node must heartbeat at least twice within its self-demotion timeout ({self_demote_after} ms), not every {heartbeat_every} ms")]
    HeartbeatTooRare {
        heartbeat_every: u64,
        self_demote_after: u64,
    },
    #[error("a node must stop serving well before peers may judge it dead: self-demotion after {self_demote_after} ms needs a dead timeout of at least twice that, not {dead_after} ms")]
    NoMargin {
        self_demote_after: u64,
        dead_after: u64,
    },
    #[error("at least one shard must be able to move per round")]
    NoMoves,
}

impl Timeouts {
    /// Safe timings: renewals have a spare attempt before demotion, and
    /// demotion leaves a margin as long as itself before peers may take over
    /// (for clock-rate drift, the time a takeover write takes, scheduling).
    pub fn check(&self) -> Result<(), TimeoutsError> {
        if self.heartbeat_every.saturating_mul(2) > self.self_demote_after {
            return Err(TimeoutsError::HeartbeatTooRare {
                heartbeat_every: self.heartbeat_every,
                self_demote_after: self.self_demote_after,
            });
        }
        if self.self_demote_after.saturating_mul(2) > self.dead_after {
            return Err(TimeoutsError::NoMargin {
                self_demote_after: self.self_demote_after,
                dead_after: self.dead_after,
            });
        }
        if self.moves_per_round == 0 {
            return Err(TimeoutsError::NoMoves);
        }
        Ok(())
    }

    /// Whether a node whose last acknowledged heartbeat was sent at `sent`
    /// may still serve its shards at `now`.
    pub fn may_serve(&self, last_acknowledged_sent: Option<Mono>, now: Mono) -> bool {
        last_acknowledged_sent.is_some_and(|sent| now.since(sent) < self.self_demote_after)
    }
}

/// What this node has seen of every other node's heartbeat: the value and
/// when (on this node's clock) it first saw it.
#[derive(Clone, Debug, Default)]
pub struct Liveness {
    seen: BTreeMap<NodeId, (u64, Mono)>,
}

impl Liveness {
    /// Takes in the node records read at `now`. A node whose record is gone
    /// is forgotten (it left, or was removed as dead).
    pub fn observe(&mut self, nodes: &[NodeRecord], now: Mono) {
        let present: BTreeSet<&NodeId> = nodes.iter().map(|node| &node.id).collect();
        self.seen.retain(|id, _| present.contains(id));
        for node in nodes {
            match self.seen.get(&node.id) {
                Some((heartbeat, _)) if *heartbeat == node.heartbeat => {}
                _ => {
                    self.seen.insert(node.id.clone(), (node.heartbeat, now));
                }
            }
        }
    }

    /// Seen, and its heartbeat changed less than `dead_after` ago.
    pub fn is_alive(&self, node: &NodeId, now: Mono, timeouts: &Timeouts) -> bool {
        self.unchanged_for(node, now)
            .is_some_and(|unchanged| unchanged < timeouts.dead_after)
    }

    /// How long (ms, on the observer's clock) the node's heartbeat has not
    /// changed, if it was seen at all: an upper bound on its heartbeat's age.
    pub fn unchanged_for(&self, node: &NodeId, now: Mono) -> Option<u64> {
        self.seen.get(node).map(|(_, since)| now.since(*since))
    }
}

/// What one round of the rules decides for this node.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Plan {
    /// Shards to claim, each conditional on the lease as read (the new
    /// epoch is one more than `expected.epoch`).
    pub claims: Vec<Lease>,
    /// Shards to give up (conditional on still holding them at `epoch`).
    pub releases: Vec<Lease>,
}

/// The number of shards `member` should hold when `members` (sorted, each
/// once) share `shards`: an even share, the first `shards % n` members one
/// more.
pub fn share_of(member: &NodeId, members: &[NodeId], shards: usize) -> usize {
    let Some(position) = members.iter().position(|other| other == member) else {
        return 0;
    };
    let n = members.len();
    shards / n + usize::from(position < shards % n)
}

/// The shard `account` belongs to among `shards`: FNV-1a of its id, so it
/// never changes across processes, platforms or versions (every node must
/// agree, and leases are stored).
pub fn shard_of(account: &str, shards: u16) -> ShardId {
    let hash = account
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    (hash % u64::from(shards.max(1))) as ShardId
}

/// Why a node may not write an account.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[error("the account was written under lease epoch {stored}; this node holds epoch {mine}")]
pub struct Fenced {
    pub stored: u64,
    pub mine: u64,
}

/// The epoch a write by a node holding `mine` stamps on an account last
/// written under `stored`: its own, raising the fence for any older owner;
/// refused if a newer owner has written the account already.
pub fn fence(stored: u64, mine: u64) -> Result<u64, Fenced> {
    if mine < stored {
        return Err(Fenced { stored, mine });
    }
    Ok(mine)
}

/// FNV-1a of node and shard: the rendezvous weight of a shard for a node
/// (stable across processes and versions, like the store's shard hash).
fn weight(node: &NodeId, shard: ShardId) -> u64 {
    node.as_str()
        .bytes()
        .chain([0])
        .chain(shard.to_be_bytes())
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// Whether `leases` are at rest for `members` (sorted, each once): every
/// shard held by a member, each member holding exactly its share. Then no
/// member's plan moves anything while the members stay the same, so a node
/// need not read the leases again until they change.
pub fn is_settled(leases: &[Lease], members: &[NodeId]) -> bool {
    let mut held: BTreeMap<&NodeId, usize> = members.iter().map(|member| (member, 0)).collect();
    for lease in leases {
        match lease.owner.as_ref().and_then(|owner| held.get_mut(owner)) {
            Some(count) => *count += 1,
            None => return false,
        }
    }
    held.iter()
        .all(|(member, count)| *count == share_of(member, members, leases.len()))
}

/// One round for `me`: `may_serve` is whether its own heartbeat is current
/// ([`Timeouts::may_serve`]); `alive` says which other nodes are live (by
/// [`Liveness::is_alive`]); `members` are the live nodes not leaving,
/// `me` included unless it is leaving.
pub fn plan(
    me: &NodeId,
    leases: &[Lease],
    members: &[NodeId],
    leaving: bool,
    may_serve: bool,
    alive: impl Fn(&NodeId) -> bool,
    moves_per_round: usize,
) -> Plan {
    // A node that may not serve decides nothing: its view may be stale,
    // and what it holds is judged by others.
    if !may_serve {
        return Plan::default();
    }
    let mut owned: Vec<&Lease> = leases
        .iter()
        .filter(|lease| lease.owner.as_ref() == Some(me))
        .collect();
    let share = if leaving {
        0
    } else {
        share_of(me, members, leases.len())
    };
    let mut plan = Plan::default();
    if owned.len() > share {
        // Give up the shards this node wants least.
        owned.sort_by_key(|lease| weight(me, lease.shard));
        let excess = (owned.len() - share).min(moves_per_round);
        plan.releases = owned.into_iter().take(excess).cloned().collect();
    } else if owned.len() < share {
        let mut claimable: Vec<&Lease> = leases
            .iter()
            .filter(|lease| match &lease.owner {
                None => true,
                Some(owner) => owner != me && !alive(owner),
            })
            .collect();
        // The shards this node wants most first.
        claimable.sort_by_key(|lease| std::cmp::Reverse(weight(me, lease.shard)));
        let wanted = (share - owned.len()).min(moves_per_round);
        plan.claims = claimable.into_iter().take(wanted).cloned().collect();
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        heartbeat_every: 1_000,
        self_demote_after: 4_000,
        dead_after: 10_000,
        moves_per_round: 16,
    };

    fn node(name: &str) -> NodeId {
        NodeId::new(name)
    }

    fn record(id: NodeId, heartbeat: u64) -> NodeRecord {
        NodeRecord {
            id,
            address: "127.0.0.1:50051".into(),
            started_at: Timestamp::from_unix_millis(0),
            heartbeat,
            leaving: false,
        }
    }

    fn free_leases(shards: u16) -> Vec<Lease> {
        (0..shards)
            .map(|shard| Lease {
                shard,
                owner: None,
                epoch: 0,
            })
            .collect()
    }

    /// Applies a plan as the table would: each claim or release lands only
    /// if the lease is still as read (a conditional write).
    fn apply(table: &mut [Lease], me: &NodeId, plan: &Plan) -> (usize, usize) {
        let mut landed = (0, 0);
        for claim in &plan.claims {
            let lease = &mut table[usize::from(claim.shard)];
            if *lease == *claim {
                lease.owner = Some(me.clone());
                lease.epoch += 1;
                landed.0 += 1;
            }
        }
        for release in &plan.releases {
            let lease = &mut table[usize::from(release.shard)];
            if *lease == *release {
                lease.owner = None;
                landed.1 += 1;
            }
        }
        landed
    }

    fn counts(table: &[Lease]) -> BTreeMap<Option<NodeId>, usize> {
        let mut counts = BTreeMap::new();
        for lease in table {
            *counts.entry(lease.owner.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Rounds of every member planning on the table as it is, in turn,
    /// until nothing changes. Returns the rounds it took.
    fn settle(table: &mut [Lease], members: &[NodeId], alive: &dyn Fn(&NodeId) -> bool) -> usize {
        for round in 1..=100 {
            let mut moved = 0;
            for me in members {
                let plan = plan(
                    me,
                    table,
                    members,
                    false,
                    true,
                    alive,
                    TIMEOUTS.moves_per_round,
                );
                let (claimed, released) = apply(table, me, &plan);
                moved += claimed + released;
            }
            if moved == 0 {
                return round;
            }
        }
        panic!(
            "ownership did not settle in 100 rounds: {:?}",
            counts(table)
        );
    }

    fn assert_even(table: &[Lease], members: &[NodeId]) {
        let counts = counts(table);
        assert_eq!(
            counts.get(&None),
            None,
            "every shard has an owner: {counts:?}"
        );
        let shares: Vec<usize> = members
            .iter()
            .map(|m| counts.get(&Some(m.clone())).copied().unwrap_or(0))
            .collect();
        let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
        assert!(max - min <= 1, "even shares ±1: {shares:?}");
        assert_eq!(shares.iter().sum::<usize>(), table.len());
    }

    #[test]
    fn an_accounts_shard_never_changes_and_accounts_spread() {
        // Pinned: a changed hash would move every account to another shard.
        assert_eq!(shard_of("acme", 256), shard_of("acme", 256));
        assert_eq!(shard_of("", 256), (0xcbf2_9ce4_8422_2325_u64 % 256) as u16);
        let mut per_shard = [0_u32; 16];
        for n in 0..16_000 {
            per_shard[usize::from(shard_of(&format!("acct-{n}"), 16))] += 1;
        }
        assert!(
            per_shard.iter().all(|count| (850..1150).contains(count)),
            "{per_shard:?}"
        );
    }

    #[test]
    fn a_write_raises_the_fence_and_an_older_owner_is_refused() {
        assert_eq!(fence(0, 0), Ok(0), "a single node");
        assert_eq!(fence(1, 2), Ok(2), "the new owner's first write raises it");
        assert_eq!(fence(2, 2), Ok(2));
        assert_eq!(fence(2, 1), Err(Fenced { stored: 2, mine: 1 }));
    }

    #[test]
    fn safe_timings_leave_a_margin_and_unsafe_ones_are_refused() {
        assert_eq!(TIMEOUTS.check(), Ok(()));
        let no_margin = Timeouts {
            dead_after: 6_000,
            ..TIMEOUTS
        };
        assert!(matches!(
            no_margin.check(),
            Err(TimeoutsError::NoMargin { .. })
        ));
        let rare = Timeouts {
            heartbeat_every: 3_000,
            ..TIMEOUTS
        };
        assert!(matches!(
            rare.check(),
            Err(TimeoutsError::HeartbeatTooRare { .. })
        ));
        let stuck = Timeouts {
            moves_per_round: 0,
            ..TIMEOUTS
        };
        assert_eq!(stuck.check(), Err(TimeoutsError::NoMoves));
    }

    #[test]
    fn shares_are_even_and_cover_every_shard() {
        let members = [node("a"), node("b"), node("c")];
        let shares: Vec<usize> = members.iter().map(|m| share_of(m, &members, 256)).collect();
        assert_eq!(shares, [86, 85, 85]);
        assert_eq!(share_of(&node("z"), &members, 256), 0, "not a member");
    }

    #[test]
    fn a_cold_start_gives_every_shard_one_owner_in_even_shares() {
        let members = [node("a"), node("b"), node("c")];
        let mut table = free_leases(256);
        let rounds = settle(&mut table, &members, &|_| true);
        assert_even(&table, &members);
        // Each claim raised its shard's epoch from 0 to 1, once.
        assert!(table.iter().all(|lease| lease.epoch == 1));
        // 86 shards at 16 a round take 6 rounds, and one to see no change.
        assert!(rounds <= 7, "{rounds} rounds");
    }

    #[test]
    fn leases_are_settled_only_when_every_member_holds_exactly_its_share() {
        let mut members = vec![node("a"), node("b"), node("c")];
        let mut table = free_leases(64);
        assert!(!is_settled(&table, &members), "free shards");
        settle(&mut table, &members, &|_| true);
        assert!(is_settled(&table, &members));
        // A new member: the others hold more than their share now.
        members.push(node("d"));
        assert!(!is_settled(&table, &members));
        // A member gone: its shards are held by a non-member.
        members.retain(|member| *member != node("b") && *member != node("d"));
        assert!(!is_settled(&table, &members));
        settle(&mut table, &members, &|member| *member != node("b"));
        assert!(is_settled(&table, &members));
    }

    #[test]
    fn moves_per_round_are_bounded() {
        let members = [node("a")];
        let table = free_leases(256);
        let plan = plan(&node("a"), &table, &members, false, true, |_| true, 16);
        assert_eq!(plan.claims.len(), 16);
    }

    #[test]
    fn a_new_node_gets_its_share_in_bounded_steps_and_nothing_is_left_unowned() {
        let mut members = vec![node("a"), node("b"), node("c")];
        let mut table = free_leases(256);
        settle(&mut table, &members, &|_| true);
        members.push(node("d"));
        members.sort();
        for me in &members {
            let plan = plan(
                me,
                &table,
                &members,
                false,
                true,
                |_| true,
                TIMEOUTS.moves_per_round,
            );
            assert!(plan.releases.len() <= TIMEOUTS.moves_per_round);
            apply(&mut table, me, &plan);
        }
        settle(&mut table, &members, &|_| true);
        assert_even(&table, &members);
        assert_eq!(counts(&table)[&Some(node("d"))], 64);
    }

    #[test]
    fn a_dead_nodes_shards_are_taken_by_the_live_with_a_new_epoch() {
        let all = [node("a"), node("b"), node("c")];
        let mut table = free_leases(256);
        settle(&mut table, &all, &|_| true);
        let c_held: Vec<ShardId> = table
            .iter()
            .filter(|l| l.owner == Some(node("c")))
            .map(|l| l.shard)
            .collect();
        let live = [node("a"), node("b")];
        let alive = |id: &NodeId| *id != node("c");
        settle(&mut table, &live, &alive);
        assert_even(&table, &live);
        for shard in c_held {
            let lease = &table[usize::from(shard)];
            assert_ne!(lease.owner, Some(node("c")));
            assert_eq!(lease.epoch, 2, "taken over: the epoch fences c's writes");
        }
    }

    #[test]
    fn a_live_owners_shards_are_never_claimed() {
        let mut table = free_leases(4);
        table[0].owner = Some(node("b"));
        table[0].epoch = 1;
        // "a" sees only itself as a member (b's record not yet read as a
        // member), but b is alive: its shard is not claimable.
        let plan = plan(&node("a"), &table, &[node("a")], false, true, |_| true, 16);
        assert!(plan.claims.iter().all(|lease| lease.shard != 0), "{plan:?}");
        assert_eq!(plan.claims.len(), 3);
    }

    #[test]
    fn a_leaving_node_releases_everything_and_claims_nothing() {
        let members = [node("a"), node("b")];
        let mut table = free_leases(64);
        settle(&mut table, &members, &|_| true);
        let plan = plan(&node("a"), &table, &[node("b")], true, true, |_| true, 64);
        assert!(plan.claims.is_empty());
        assert_eq!(plan.releases.len(), 32);
        apply(&mut table, &node("a"), &plan);
        settle(&mut table, &[node("b")], &|_| true);
        assert_eq!(counts(&table)[&Some(node("b"))], 64);
    }

    #[test]
    fn a_node_that_may_not_serve_decides_nothing() {
        let table = free_leases(8);
        let plan = plan(&node("a"), &table, &[node("a")], false, false, |_| true, 8);
        assert_eq!(plan, Plan::default());
    }

    #[test]
    fn a_node_stops_serving_before_any_peer_may_judge_it_dead() {
        let timeouts = TIMEOUTS;
        // The owner sent its last acknowledged heartbeat at 100 on its
        // clock; an observer whose clock reads 5_000 at that moment (clocks
        // of two machines share no origin) reads the new counter then.
        let sent = Mono(100);
        let mut observer = Liveness::default();
        let record = record(node("owner"), 7);
        observer.observe(std::slice::from_ref(&record), Mono(5_000));
        for elapsed in (0..20_000).step_by(250) {
            let owner_serves = timeouts.may_serve(Some(sent), Mono(100 + elapsed));
            observer.observe(std::slice::from_ref(&record), Mono(5_000 + elapsed));
            let judged_dead = !observer.is_alive(&node("owner"), Mono(5_000 + elapsed), &timeouts);
            assert!(!(owner_serves && judged_dead), "both at {elapsed} ms");
        }
        assert!(
            !timeouts.may_serve(None, Mono(0)),
            "never heartbeated: never serves"
        );
    }

    #[test]
    fn a_heartbeat_that_changes_keeps_a_node_alive_and_a_gone_record_forgets_it() {
        let mut liveness = Liveness::default();
        for beat in 0..30 {
            let now = Mono(beat * 1_000);
            liveness.observe(&[record(node("b"), beat)], now);
            assert!(liveness.is_alive(&node("b"), now, &TIMEOUTS));
        }
        liveness.observe(&[], Mono(30_000));
        assert!(!liveness.is_alive(&node("b"), Mono(30_000), &TIMEOUTS));
    }

    #[test]
    fn a_stuck_heartbeat_is_judged_dead_after_the_timeout_on_the_observers_clock() {
        let mut liveness = Liveness::default();
        let stuck = [record(node("b"), 3)];
        liveness.observe(&stuck, Mono(1_000));
        liveness.observe(&stuck, Mono(10_999));
        assert!(liveness.is_alive(&node("b"), Mono(10_999), &TIMEOUTS));
        liveness.observe(&stuck, Mono(11_000));
        assert!(!liveness.is_alive(&node("b"), Mono(11_000), &TIMEOUTS));
    }
}
