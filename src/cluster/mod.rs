//! The cluster: nodes on one DynamoDB table share its accounts by shard.
//! The rules are in the core (`domain::ownership`: which shards a node
//! claims, keeps and releases, when a peer is dead, when a node must stop
//! serving); [`membership`] is the node's part that executes them:
//! heartbeat, read the leases, decide, write.

pub mod membership;

use std::fmt;
use std::sync::Arc;

use tokio::sync::watch;

use crate::domain::ownership::shard_of;
use crate::domain::AccountId;
use membership::{MonoClock, Owned};

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
    Shards {
        owned: watch::Receiver<Owned>,
        mono: Arc<dyn MonoClock>,
        shards: u16,
    },
}

impl AccountOwnership {
    /// The epoch under which this node may write `account` now, if it may.
    pub fn epoch(&self, account: &AccountId) -> Option<u64> {
        match self {
            AccountOwnership::Everything => Some(0),
            AccountOwnership::Shards {
                owned,
                mono,
                shards,
            } => owned
                .borrow()
                .epoch_at(shard_of(account.as_str(), *shards), mono.now()),
        }
    }
}

impl fmt::Debug for AccountOwnership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccountOwnership::Everything => f.write_str("Everything"),
            AccountOwnership::Shards { owned, shards, .. } => f
                .debug_struct("Shards")
                .field("shards", shards)
                .field("held", &owned.borrow().shards.len())
                .finish(),
        }
    }
}
