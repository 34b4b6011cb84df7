//! A store that fails the way DynamoDB does, on purpose: transactions
//! cancelled by a conflict, throttled calls, and timeouts, some of whose
//! writes land anyway (the caller cannot tell). Seeded, so a failing run
//! repeats; scoped to the cluster's items (leases and node records), to the
//! data, or to both; switched off to let the system settle.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use payvisor::store::{BoxFuture, IndexQuery, Item, Key, Page, Query, Store, StoreError, WriteOp};

/// Which calls faults are injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultScope {
    /// The cluster's partition: heartbeats, lease reads and writes.
    Leases,
    /// Everything else: payments, accounts, indexes.
    Data,
    All,
}

/// What was injected so far, by kind.
#[derive(Debug, Default)]
pub struct Injected {
    pub conflicts: AtomicU64,
    pub throttles: AtomicU64,
    /// Timeouts whose write was dropped.
    pub timeouts_lost: AtomicU64,
    /// Timeouts whose write landed all the same.
    pub timeouts_landed: AtomicU64,
}

impl Injected {
    pub fn total(&self) -> u64 {
        [
            &self.conflicts,
            &self.throttles,
            &self.timeouts_lost,
            &self.timeouts_landed,
        ]
        .iter()
        .map(|count| count.load(Ordering::Relaxed))
        .sum()
    }
}

pub struct FaultyStore {
    inner: Arc<dyn Store>,
    scope: FaultScope,
    /// Chance of a fault per call in scope, in thousandths.
    per_mille: u64,
    on: AtomicBool,
    random: Mutex<u64>,
    pub injected: Injected,
}

enum Fault {
    Conflict,
    Throttle,
    TimeoutLost,
    TimeoutLanded,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>, scope: FaultScope, per_mille: u64, seed: u64) -> FaultyStore {
        FaultyStore {
            inner,
            scope,
            per_mille,
            on: AtomicBool::new(true),
            random: Mutex::new(seed.max(1)),
            injected: Injected::default(),
        }
    }

    /// Faults stop (or start again).
    pub fn set_faults(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
    }

    fn in_scope(&self, pk: &str) -> bool {
        let cluster = pk == "CLUSTER";
        match self.scope {
            FaultScope::Leases => cluster,
            FaultScope::Data => !cluster,
            FaultScope::All => true,
        }
    }

    /// xorshift64*: enough to spread faults, and repeatable by seed.
    fn next(&self) -> u64 {
        let mut state = self
            .random
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn draw(&self, pk: &str, write: bool) -> Option<Fault> {
        if !self.on.load(Ordering::SeqCst) || !self.in_scope(pk) {
            return None;
        }
        let roll = self.next();
        if roll % 1000 >= self.per_mille {
            return None;
        }
        Some(match (roll / 1000) % 4 {
            0 if write => Fault::Conflict,
            1 => Fault::Throttle,
            2 => Fault::TimeoutLost,
            _ if write => Fault::TimeoutLanded,
            _ => Fault::TimeoutLost,
        })
    }

    fn refuse(&self, fault: &Fault) -> StoreError {
        let (count, what) = match fault {
            Fault::Conflict => (
                &self.injected.conflicts,
                "transaction cancelled: [TransactionConflict] (injected)",
            ),
            Fault::Throttle => (&self.injected.throttles, "ThrottlingException (injected)"),
            Fault::TimeoutLost => (
                &self.injected.timeouts_lost,
                "timed out (injected; nothing written)",
            ),
            Fault::TimeoutLanded => (
                &self.injected.timeouts_landed,
                "timed out (injected; the write landed)",
            ),
        };
        count.fetch_add(1, Ordering::Relaxed);
        StoreError::Unavailable(what.into())
    }
}

impl Store for FaultyStore {
    fn transact(&self, ops: Vec<WriteOp>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let pk = ops
                .first()
                .map(|op| op.key().pk.clone())
                .unwrap_or_default();
            match self.draw(&pk, true) {
                None => self.inner.transact(ops).await,
                Some(Fault::TimeoutLanded) => {
                    // Landed or refused by its condition: the caller hears
                    // only that it timed out.
                    let _ = self.inner.transact(ops).await;
                    Err(self.refuse(&Fault::TimeoutLanded))
                }
                Some(fault) => Err(self.refuse(&fault)),
            }
        })
    }

    fn get(&self, key: Key) -> BoxFuture<'_, Result<Option<Item>, StoreError>> {
        Box::pin(async move {
            match self.draw(&key.pk, false) {
                None => self.inner.get(key).await,
                Some(fault) => Err(self.refuse(&fault)),
            }
        })
    }

    fn query(&self, query: Query) -> BoxFuture<'_, Result<Page, StoreError>> {
        Box::pin(async move {
            match self.draw(&query.pk, false) {
                None => self.inner.query(query).await,
                Some(fault) => Err(self.refuse(&fault)),
            }
        })
    }

    fn expire(
        &self,
        now_unix_seconds: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.inner.expire(now_unix_seconds, limit)
    }

    fn query_index(&self, query: IndexQuery) -> BoxFuture<'_, Result<Page, StoreError>> {
        Box::pin(async move {
            match self.draw(&query.index_pk, false) {
                None => self.inner.query_index(query).await,
                Some(fault) => Err(self.refuse(&fault)),
            }
        })
    }
}
