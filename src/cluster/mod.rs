//! The cluster: nodes on one DynamoDB table share its accounts by shard.
//! The rules are in the core (`domain::ownership`: which shards a node
//! claims, keeps and releases, when a peer is dead, when a node must stop
//! serving); [`membership`] is the node's part that executes them:
//! heartbeat, read the leases, decide, write, and publish what it holds
//! ([`Owned`]) and what it saw ([`Picture`]). [`Cluster`] is what the rest of
//! the node asks: may I write this account, and if not, who owns it.

pub mod membership;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::domain::ownership::{shard_of, NodeId, NodeRecord, ShardId};
use crate::domain::AccountId;
use crate::limits;
use crate::secret::Secret;
use membership::{MonoClock, Owned};

/// A fresh identity for this process start (64 random bits, hex): a
/// restarted node never inherits what its previous incarnation believed.
pub fn fresh_node_id() -> NodeId {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    let id = match ring::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => u64::from_be_bytes(bytes),
        // No system randomness: the time and the process id still differ
        // between starts.
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            nanos ^ (u64::from(std::process::id()) << 32)
        }
    };
    NodeId::new(format!("n-{id:016x}"))
}

/// Which accounts this node may write now, and under which lease epoch
/// (stamped on the account item by every write; see
/// `domain::ownership::fence`).
#[derive(Clone, Default)]
pub enum AccountOwnership {
    /// A node alone on its store: every account, at epoch 0. (On a table a
    /// cluster has written, accounts carry higher epochs, and such a node
    /// is refused their writes: it cannot know their owners are gone.)
    #[default]
    Everything,
    /// A cluster member: the shards its membership holds now, while its
    /// self-demotion deadline has not passed on its own monotonic clock.
    Shards(Arc<HeldShards>),
}

/// What a cluster member holds, as its membership publishes it.
pub struct HeldShards {
    pub owned: watch::Receiver<Owned>,
    pub mono: Arc<dyn MonoClock>,
    pub shards: u16,
    /// Writes refused because the account is not (or no longer) this
    /// node's: not held, past the deadline, or a newer owner wrote it.
    pub fenced_writes: Counter,
}

impl AccountOwnership {
    /// A cluster member's ownership: what `owned` says, by `mono`.
    pub fn shards(
        owned: watch::Receiver<Owned>,
        mono: Arc<dyn MonoClock>,
        shards: u16,
    ) -> AccountOwnership {
        AccountOwnership::Shards(Arc::new(HeldShards {
            owned,
            mono,
            shards,
            fenced_writes: Counter::default(),
        }))
    }

    /// The epoch under which this node may write `account` now, if it may.
    pub fn epoch(&self, account: &AccountId) -> Option<u64> {
        match self {
            AccountOwnership::Everything => Some(0),
            AccountOwnership::Shards(held) => held
                .owned
                .borrow()
                .epoch_at(shard_of(account.as_str(), held.shards), held.mono.now()),
        }
    }

    /// Whether this node may act for `account` now (run its reminders,
    /// deliver its webhooks and pages).
    pub fn serves(&self, account: &AccountId) -> bool {
        self.epoch(account).is_some()
    }

    /// Whether this node does the cluster's singleton work now (the
    /// periodic reconciliation): the owner of shard 0, whose lease makes it
    /// one node at a time.
    pub fn leads(&self) -> bool {
        match self {
            AccountOwnership::Everything => true,
            AccountOwnership::Shards(held) => {
                held.owned.borrow().epoch_at(0, held.mono.now()).is_some()
            }
        }
    }

    /// Counts a write refused by fencing (see [`HeldShards::fenced_writes`]).
    pub fn count_fenced(&self) {
        if let AccountOwnership::Shards(held) = self {
            held.fenced_writes.inc();
        }
    }

    /// The shard of `account`, on a cluster member.
    pub fn shard(&self, account: &AccountId) -> Option<ShardId> {
        match self {
            AccountOwnership::Everything => None,
            AccountOwnership::Shards(held) => Some(shard_of(account.as_str(), held.shards)),
        }
    }
}

impl fmt::Debug for AccountOwnership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccountOwnership::Everything => f.write_str("Everything"),
            AccountOwnership::Shards(held) => f
                .debug_struct("Shards")
                .field("shards", &held.shards)
                .field("held", &held.owned.borrow().shards.len())
                .finish(),
        }
    }
}

/// The cluster as a node's last membership round read it.
#[derive(Clone, Debug, Default)]
pub struct Picture {
    pub shards: u16,
    pub nodes: Vec<NodeSeen>,
    /// Every shard's owner (by index) and epoch.
    pub leases: Vec<(Option<NodeId>, u64)>,
}

/// A node as the observer saw it.
#[derive(Clone, Debug)]
pub struct NodeSeen {
    pub record: NodeRecord,
    /// How long its heartbeat has not changed, on the observer's clock.
    pub unchanged_for_ms: Option<u64>,
    pub alive: bool,
}

impl Picture {
    /// The live node that holds `shard`'s lease, with its address.
    fn owner(&self, shard: ShardId) -> Option<&NodeSeen> {
        let (owner, _) = self.leases.get(usize::from(shard))?;
        let owner = owner.as_ref()?;
        self.nodes
            .iter()
            .find(|node| &node.record.id == owner && node.alive && !node.record.leaving)
    }
}

/// The metrics of a cluster member.
#[derive(Clone, Debug, Default)]
pub struct ClusterMetrics {
    pub shards_owned: Gauge,
    pub ownership_changes: Counter,
    pub forwarded_calls: Counter,
    pub fenced_writes: Counter,
}

/// Why a call cannot be routed now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No node may serve the account now: its shard is moving, or its
    /// owner cannot be reached. Retryable.
    #[error("account {0} is moving between nodes; retry with the same request_id")]
    Moving(AccountId),
    #[error("peer address {0:?} is not a URL")]
    BadPeerAddress(String),
}

/// Where a call for an account goes.
pub enum Route {
    /// This node owns the account: serve it here.
    Local,
    /// Another node does: forward the call there.
    Forward { node: NodeId, channel: Channel },
}

/// A cluster member's view for serving calls: its ownership, the picture of
/// the cluster, and connections to its peers.
pub struct Cluster {
    pub me: NodeId,
    pub ownership: AccountOwnership,
    owned: watch::Receiver<Owned>,
    picture: watch::Receiver<Arc<Picture>>,
    /// One lazily connected channel per peer address.
    channels: Mutex<HashMap<String, Channel>>,
    pub metrics: ClusterMetrics,
    /// The node key this node presents to its peers (when callers must
    /// authenticate): forwarded calls, handed callbacks, followed feeds.
    credential: Option<Secret>,
    /// TLS to peers (when the nodes serve TLS): their CA, and this node's
    /// certificate for mutual TLS.
    peer_tls: Option<ClientTlsConfig>,
}

impl Cluster {
    pub fn new(
        me: NodeId,
        ownership: AccountOwnership,
        owned: watch::Receiver<Owned>,
        picture: watch::Receiver<Arc<Picture>>,
    ) -> Cluster {
        let metrics = ClusterMetrics {
            fenced_writes: match &ownership {
                AccountOwnership::Shards(held) => held.fenced_writes.clone(),
                AccountOwnership::Everything => Counter::default(),
            },
            ..ClusterMetrics::default()
        };
        Cluster {
            me,
            ownership,
            owned,
            picture,
            channels: Mutex::default(),
            metrics,
            credential: None,
            peer_tls: None,
        }
    }

    /// The cluster as last read.
    pub fn picture(&self) -> Arc<Picture> {
        Arc::clone(&self.picture.borrow())
    }

    /// Changes every membership round.
    pub fn picture_changes(&self) -> watch::Receiver<Arc<Picture>> {
        self.picture.clone()
    }

    /// Where a call for `account` goes. Served here if this node owns it;
    /// forwarded to its live owner unless the call was forwarded already
    /// (`forwarded`: at most one hop); otherwise it waits for the shard to
    /// settle, until `deadline` or [`limits::CLUSTER_MOVE_WAIT`], and is
    /// then refused as moving (retryable).
    pub async fn route(
        &self,
        account: &AccountId,
        forwarded: bool,
        deadline: tokio::time::Instant,
    ) -> Result<Route, RouteError> {
        let give_up = deadline.min(tokio::time::Instant::now() + limits::CLUSTER_MOVE_WAIT);
        let mut owned = self.owned.clone();
        let mut picture = self.picture.clone();
        loop {
            if self.ownership.serves(account) {
                return Ok(Route::Local);
            }
            if !forwarded {
                let shard = shard_of(account.as_str(), picture.borrow().shards);
                let owner = picture.borrow().owner(shard).cloned();
                if let Some(owner) = owner.filter(|owner| owner.record.id != self.me) {
                    let channel = self.channel(&owner.record.address)?;
                    self.metrics.forwarded_calls.inc();
                    return Ok(Route::Forward {
                        node: owner.record.id,
                        channel,
                    });
                }
            }
            tokio::select! {
                biased;
                changed = owned.changed() => if changed.is_err() { break },
                changed = picture.changed() => if changed.is_err() { break },
                () = tokio::time::sleep_until(give_up) => break,
            }
        }
        Err(RouteError::Moving(account.clone()))
    }

    fn channel(&self, address: &str) -> Result<Channel, RouteError> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        if channels.len() >= limits::CLUSTER_NODES_MAX {
            // Peers come and go with every restart (fresh ids, maybe fresh
            // addresses): start over rather than grow.
            channels.clear();
        }
        let scheme = if self.peer_tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|_| RouteError::BadPeerAddress(address.to_owned()))?;
        if let Some(tls) = &self.peer_tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|_| RouteError::BadPeerAddress(address.to_owned()))?;
        }
        let channel = endpoint
            .connect_timeout(limits::CLUSTER_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Presents `credential` (a key with the `node` role) to peers.
    pub fn with_credential(mut self, credential: Option<Secret>) -> Cluster {
        self.credential = credential;
        self
    }

    /// Calls peers over TLS with `tls` (the nodes serve TLS).
    pub fn with_peer_tls(mut self, tls: Option<ClientTlsConfig>) -> Cluster {
        self.peer_tls = tls;
        self
    }

    /// Sets this node's credential on a call to a peer, in place of any
    /// the call carried (a caller's key never leaves the node it reached).
    pub fn present_credential(&self, metadata: &mut tonic::metadata::MetadataMap) {
        metadata.remove("authorization");
        if let Some(credential) = &self.credential {
            let bearer = format!("Bearer {}", credential.expose());
            if let Ok(mut value) = tonic::metadata::MetadataValue::try_from(bearer) {
                // Never indexed by HTTP/2 header compression.
                value.set_sensitive(true);
                metadata.insert("authorization", value);
            }
        }
    }

    /// The channel to a live peer by id (for node-to-node calls).
    pub fn peer(&self, node: &NodeId) -> Result<Option<Channel>, RouteError> {
        let address = self
            .picture
            .borrow()
            .nodes
            .iter()
            .find(|seen| &seen.record.id == node && seen.alive)
            .map(|seen| seen.record.address.clone());
        address.map(|address| self.channel(&address)).transpose()
    }

    /// The owner of `account`'s shard if it is a live peer (not this node).
    pub fn owner_elsewhere(&self, account: &AccountId) -> Option<NodeId> {
        let picture = self.picture.borrow();
        let owner = picture.owner(shard_of(account.as_str(), picture.shards))?;
        (owner.record.id != self.me).then(|| owner.record.id.clone())
    }
}
