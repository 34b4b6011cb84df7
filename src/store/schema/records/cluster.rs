//! The bodies of the cluster's items: the shard count, node records and
//! shard leases (see `crate::domain::ownership`).

use serde::{Deserialize, Serialize};

use super::{invalid, millis, time, Invalid, Stored};
use crate::domain::ownership::{Lease, NodeId, NodeRecord, ShardId};
use crate::store::schema::ClusterSettings;

impl Stored for ClusterSettings {
    type Body = ClusterSettingsBody;
    const FORMAT: u64 = 1;
}

#[derive(Serialize, Deserialize)]
pub(in crate::store::schema) struct ClusterSettingsBody {
    shards: u16,
}

impl From<&ClusterSettings> for ClusterSettingsBody {
    fn from(settings: &ClusterSettings) -> ClusterSettingsBody {
        ClusterSettingsBody {
            shards: settings.shards,
        }
    }
}

impl TryFrom<ClusterSettingsBody> for ClusterSettings {
    type Error = Invalid;
    fn try_from(body: ClusterSettingsBody) -> Result<ClusterSettings, Invalid> {
        if body.shards == 0 {
            return Err(invalid("a cluster of zero shards"));
        }
        Ok(ClusterSettings {
            shards: body.shards,
        })
    }
}

impl Stored for NodeRecord {
    type Body = NodeBody;
    const FORMAT: u64 = 1;
}

#[derive(Serialize, Deserialize)]
pub(in crate::store::schema) struct NodeBody {
    node: String,
    address: String,
    started_at: i64,
    heartbeat: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    leaving: bool,
}

impl From<&NodeRecord> for NodeBody {
    fn from(record: &NodeRecord) -> NodeBody {
        NodeBody {
            node: record.id.as_str().to_owned(),
            address: record.address.clone(),
            started_at: millis(record.started_at),
            heartbeat: record.heartbeat,
            leaving: record.leaving,
        }
    }
}

impl TryFrom<NodeBody> for NodeRecord {
    type Error = Invalid;
    fn try_from(body: NodeBody) -> Result<NodeRecord, Invalid> {
        if body.node.is_empty() {
            return Err(invalid("a node without an id"));
        }
        Ok(NodeRecord {
            id: NodeId::new(body.node),
            address: body.address,
            started_at: time(body.started_at),
            heartbeat: body.heartbeat,
            leaving: body.leaving,
        })
    }
}

impl Stored for Lease {
    type Body = LeaseBody;
    const FORMAT: u64 = 1;
}

#[derive(Serialize, Deserialize)]
pub(in crate::store::schema) struct LeaseBody {
    shard: ShardId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    epoch: u64,
}

impl From<&Lease> for LeaseBody {
    fn from(lease: &Lease) -> LeaseBody {
        LeaseBody {
            shard: lease.shard,
            owner: lease.owner.as_ref().map(|owner| owner.as_str().to_owned()),
            epoch: lease.epoch,
        }
    }
}

impl TryFrom<LeaseBody> for Lease {
    type Error = Invalid;
    fn try_from(body: LeaseBody) -> Result<Lease, Invalid> {
        if body.owner.is_some() && body.epoch == 0 {
            return Err(invalid("an owned lease at epoch 0"));
        }
        Ok(Lease {
            shard: body.shard,
            owner: body.owner.map(NodeId::new),
            epoch: body.epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::golden::{check, refused};
    use super::*;
    use crate::domain::Timestamp;

    #[test]
    fn cluster_items_keep_their_stored_format() {
        check(
            &ClusterSettings { shards: 256 },
            r#"{"format":1,"shards":256}"#,
        );
        refused::<ClusterSettings>(r#"{"format":1,"shards":0}"#);
        let node = NodeRecord {
            id: NodeId::new("n-7f3a"),
            address: "10.0.0.7:50051".into(),
            started_at: Timestamp::from_unix_millis(1_767_225_600_000),
            heartbeat: 42,
            leaving: true,
        };
        check(
            &node,
            r#"{"format":1,"node":"n-7f3a","address":"10.0.0.7:50051","started_at":1767225600000,"heartbeat":42,"leaving":true}"#,
        );
        let lease = Lease {
            shard: 17,
            owner: Some(NodeId::new("n-7f3a")),
            epoch: 3,
        };
        check(
            &lease,
            r#"{"format":1,"shard":17,"owner":"n-7f3a","epoch":3}"#,
        );
        refused::<Lease>(r#"{"format":1,"shard":17,"owner":"n-7f3a","epoch":0}"#);
        let free = Lease {
            shard: 17,
            owner: None,
            epoch: 3,
        };
        check(&free, r#"{"format":1,"shard":17,"epoch":3}"#);
    }
}
