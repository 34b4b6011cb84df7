//! The cluster: nodes on one DynamoDB table share its accounts by shard.
//! `ownership` holds the rules (pure: which shards a node claims, keeps and
//! releases, and when a node is judged dead or must stop serving); the
//! runtime that heartbeats, reads the leases and applies the rules is built
//! on them.

pub mod ownership;
