//! The cluster: nodes on one DynamoDB table share its accounts by shard.
//! The rules are in the core (`domain::ownership`: which shards a node
//! claims, keeps and releases, when a peer is dead, when a node must stop
//! serving); [`membership`] is the node's part that executes them:
//! heartbeat, read the leases, decide, write.

pub mod membership;
