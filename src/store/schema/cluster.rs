//! The cluster's items, all in one small partition: the shard count
//! (written once), a record per running node, a lease per shard. Node
//! records are read by every node every heartbeat (a few items), the leases
//! (one per shard) when the members change; both strongly consistent.

use super::*;
use crate::domain::ownership::{Lease, NodeId, NodeRecord, ShardId};

const CLUSTER_PARTITION: &str = "CLUSTER";
const SETTINGS_SK: &str = "SETTINGS";
const NODE_SK_PREFIX: &str = "NODE#";
const LEASE_SK_PREFIX: &str = "SHARD#";

/// What every node of a cluster must agree on, recorded in the table by the
/// first node and checked by every later one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    pub shards: u16,
}

/// Everything the ownership rules read, with the versions a write must
/// condition on. A shard without a lease item is free at epoch 0 (version
/// `None`: its first claim creates the item).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub nodes: Vec<Versioned<NodeRecord>>,
    pub leases: Vec<(Lease, Option<u64>)>,
}

fn settings_key() -> Key {
    Key::new(CLUSTER_PARTITION, SETTINGS_SK)
}

fn node_key(node: &NodeId) -> Key {
    Key::new(CLUSTER_PARTITION, format!("{NODE_SK_PREFIX}{node}"))
}

fn lease_key(shard: ShardId) -> Key {
    Key::new(CLUSTER_PARTITION, format!("{LEASE_SK_PREFIX}{shard:05}"))
}

fn condition(version: Option<u64>) -> Condition {
    version.map_or(Condition::NotExists, Condition::VersionIs)
}

/// Records `settings` if no node has, and returns what the table holds.
pub async fn agree_on_settings(
    store: &dyn Store,
    settings: ClusterSettings,
) -> Result<ClusterSettings, StoreError> {
    written_once(store, settings_key(), settings).await
}

/// Writes this node's record: created when `version` is `None`, else
/// conditional on it. Returns the new version.
pub async fn put_node(
    store: &dyn Store,
    record: &NodeRecord,
    version: Option<u64>,
) -> Result<u64, StoreError> {
    let next = version.map_or(1, |version| version + 1);
    let put = WriteOp::Put {
        item: Item {
            key: node_key(&record.id),
            version: next,
            body: encode(record),
            index: None,
            expires_at: None,
        },
        condition: condition(version),
    };
    store.transact(vec![put]).await.map(|()| next)
}

/// Removes a node's record (its own on leaving, or a long-dead peer's that
/// holds no lease), conditional on the version read.
pub async fn remove_node(store: &dyn Store, node: &NodeId, version: u64) -> Result<(), StoreError> {
    let delete = WriteOp::Delete {
        key: node_key(node),
        condition: Condition::VersionIs(version),
    };
    store.transact(vec![delete]).await
}

/// Writes a shard's lease, conditional on the version it was read at
/// (`None`: it had no item).
pub async fn put_lease(
    store: &dyn Store,
    lease: &Lease,
    version: Option<u64>,
) -> Result<(), StoreError> {
    claim_lease(store, lease, version, None).await
}

/// Claims a lease: conditional on the lease as read (`version`) and, when
/// it is taken from a node judged dead, on that node's record being as
/// read (`None`: it had none). A node that beat again since fails the claim.
pub async fn claim_lease(
    store: &dyn Store,
    lease: &Lease,
    version: Option<u64>,
    judged_dead: Option<(&NodeId, Option<u64>)>,
) -> Result<(), StoreError> {
    let mut ops = vec![WriteOp::Put {
        item: Item {
            key: lease_key(lease.shard),
            version: version.map_or(1, |version| version + 1),
            body: encode(lease),
            index: None,
            expires_at: None,
        },
        condition: condition(version),
    }];
    if let Some((node, record)) = judged_dead {
        ops.push(WriteOp::Check {
            key: node_key(node),
            condition: condition(record),
        });
    }
    store.transact(ops).await
}

/// Reads every node record and the lease of each of `shards` shards.
pub async fn read_cluster(store: &dyn Store, shards: u16) -> Result<ClusterView, StoreError> {
    Ok(ClusterView {
        nodes: read_nodes(store).await?,
        leases: read_leases(store, shards).await?,
    })
}

/// One node's record, strongly consistent.
pub async fn read_node(
    store: &dyn Store,
    node: &NodeId,
) -> Result<Option<Versioned<NodeRecord>>, StoreError> {
    store.get(node_key(node)).await?.map(versioned).transpose()
}

/// Every node record (a few small items: read every round).
pub async fn read_nodes(store: &dyn Store) -> Result<Vec<Versioned<NodeRecord>>, StoreError> {
    let mut nodes = Vec::new();
    for item in read_all(store, NODE_SK_PREFIX).await? {
        nodes.push(versioned(item)?);
    }
    Ok(nodes)
}

/// The lease of each of `shards` shards, with its version; a shard without
/// a lease item is free at epoch 0 (version `None`: its first claim creates
/// the item).
pub async fn read_leases(
    store: &dyn Store,
    shards: u16,
) -> Result<Vec<(Lease, Option<u64>)>, StoreError> {
    let mut leases: Vec<(Lease, Option<u64>)> = (0..shards)
        .map(|shard| {
            let free = Lease {
                shard,
                owner: None,
                epoch: 0,
            };
            (free, None)
        })
        .collect();
    for item in read_all(store, LEASE_SK_PREFIX).await? {
        let Versioned { value, version } = versioned::<Lease>(item)?;
        // A lease beyond the agreed count cannot exist: the count is
        // checked before any lease is written.
        if let Some(slot) = leases.get_mut(usize::from(value.shard)) {
            *slot = (value, Some(version));
        }
    }
    Ok(leases)
}

/// Every item of the cluster partition under `prefix`, strongly
/// consistent, page by page.
async fn read_all(store: &dyn Store, prefix: &str) -> Result<Vec<Item>, StoreError> {
    let mut items = Vec::new();
    let mut start_after = None;
    loop {
        let page = store
            .query(Query {
                pk: CLUSTER_PARTITION.into(),
                sk_prefix: prefix.into(),
                start_after: start_after.take(),
                limit: limits::PAGE_SIZE_MAX,
            })
            .await?;
        items.extend(page.items);
        match page.next {
            Some(next) => start_after = Some(next),
            None => return Ok(items),
        }
    }
}
