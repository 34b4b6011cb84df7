//! The simulated store, with DynamoDB's semantics where the product depends
//! on them: conditional atomic writes of up to 100 items, strongly
//! consistent reads of the table, an index that lags behind it, and calls
//! that fail as DynamoDB's do (transaction conflicts, throttling, timeouts
//! whose write is lost or still lands, later). [`SimStore`] is the table
//! (it passes the store conformance suite); [`NodeStore`] is one node's
//! connection to it, which injects the faults, adds latency, and stops
//! when its node is paused or crashed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use payvisor::store::{
    validate_write, BoxFuture, Condition, IndexQuery, Item, Key, Page, Query, Store, StoreError,
    WriteOp,
};

use crate::node::Gate;
use crate::world::World;

/// Called with every committed write, under the store's lock (so in commit
/// order): who wrote it (a node's name, or `None`) and what.
pub type CommitObserver = Box<dyn Fn(Option<&str>, &[WriteOp]) + Send + Sync>;

/// The table.
pub struct SimStore {
    tables: Mutex<Tables>,
    /// How far the index may lag behind the table, and the draws of the lag.
    index_lag: Option<(Arc<World>, u64)>,
    origin: tokio::time::Instant,
    observer: OnceLock<CommitObserver>,
}

#[derive(Default)]
struct Tables {
    items: BTreeMap<Key, Item>,
    /// The index as readers see it: by (index pk, index sk, key).
    index: BTreeMap<(String, String, Key), Item>,
    /// Where each key sits in `index`.
    indexed_at: BTreeMap<Key, (String, String)>,
    /// Changes the index has not caught up with, in commit order: (due at,
    /// key, the item as committed or `None` when deleted).
    behind: VecDeque<(u64, Key, Option<Item>)>,
}

impl Tables {
    fn catch_up(&mut self, now: u64) {
        while self.behind.front().is_some_and(|(due, _, _)| *due <= now) {
            let Some((_, key, item)) = self.behind.pop_front() else {
                break;
            };
            if let Some((pk, sk)) = self.indexed_at.remove(&key) {
                self.index.remove(&(pk, sk, key.clone()));
            }
            if let Some(item) = item {
                if let Some(index) = &item.index {
                    self.indexed_at
                        .insert(key.clone(), (index.pk.clone(), index.sk.clone()));
                    self.index
                        .insert((index.pk.clone(), index.sk.clone(), key), item);
                }
            }
        }
    }
}

impl SimStore {
    /// A table whose index is always up to date.
    pub fn consistent() -> SimStore {
        SimStore {
            tables: Mutex::default(),
            index_lag: None,
            origin: tokio::time::Instant::now(),
            observer: OnceLock::new(),
        }
    }

    /// A table whose index lags by up to `max_ms` per write, drawn from `world`.
    pub fn lagging(world: Arc<World>, max_ms: u64) -> SimStore {
        SimStore {
            index_lag: Some((world, max_ms)),
            ..SimStore::consistent()
        }
    }

    /// Sets the observer of every commit (once).
    pub fn observe(&self, observer: CommitObserver) {
        let _ = self.observer.set(observer);
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a write at once, as `writer`.
    pub fn apply(&self, writer: Option<&str>, ops: &[WriteOp]) -> Result<(), StoreError> {
        validate_write(ops)?;
        let mut tables = self.lock();
        for (index, op) in ops.iter().enumerate() {
            let (key, condition) = match op {
                WriteOp::Put { item, condition } => (&item.key, condition),
                WriteOp::Delete { key, condition } | WriteOp::Check { key, condition } => {
                    (key, condition)
                }
            };
            let holds = match (condition, tables.items.get(key)) {
                (Condition::NotExists, found) => found.is_none(),
                (Condition::VersionIs(version), Some(found)) => found.version == *version,
                (Condition::VersionIs(_), None) => false,
            };
            if !holds {
                return Err(StoreError::ConditionFailed {
                    index,
                    key: key.clone(),
                });
            }
        }
        let now = self.now_ms();
        for op in ops {
            let change = match op {
                WriteOp::Put { item, .. } => {
                    tables.items.insert(item.key.clone(), item.clone());
                    Some((item.key.clone(), Some(item.clone())))
                }
                WriteOp::Delete { key, .. } => {
                    tables.items.remove(key);
                    Some((key.clone(), None))
                }
                WriteOp::Check { .. } => None,
            };
            if let Some((key, item)) = change {
                let lag = match &self.index_lag {
                    Some((world, max_ms)) => world.between(0, *max_ms),
                    None => 0,
                };
                tables.behind.push_back((now + lag, key, item));
            }
        }
        if self.index_lag.is_none() {
            tables.catch_up(u64::MAX);
        }
        if let Some(observer) = self.observer.get() {
            observer(writer, ops);
        }
        Ok(())
    }

    /// Every item of the table now (for the checker).
    pub fn snapshot(&self) -> BTreeMap<Key, Item> {
        self.lock().items.clone()
    }

    pub fn read(&self, key: &Key) -> Option<Item> {
        self.lock().items.get(key).cloned()
    }

    fn query_now(&self, query: &Query) -> Page {
        let tables = self.lock();
        let limit = query.limit.max(1);
        let from = Key::new(query.pk.clone(), query.sk_prefix.clone());
        let mut items = Vec::new();
        let mut more = false;
        for (key, item) in tables.items.range(from..) {
            if key.pk != query.pk || !key.sk.starts_with(&query.sk_prefix) {
                break;
            }
            if query
                .start_after
                .as_ref()
                .is_some_and(|after| key.sk <= *after)
            {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(item.clone());
        }
        let next = if more {
            items.last().map(|item: &Item| item.key.sk.clone())
        } else {
            None
        };
        Page { items, next }
    }

    fn query_index_now(&self, query: &IndexQuery) -> Page {
        let mut tables = self.lock();
        let now = self.now_ms();
        tables.catch_up(now);
        let limit = query.limit.max(1);
        let mut items = Vec::new();
        let mut more = false;
        let from = (query.index_pk.clone(), String::new(), Key::new("", ""));
        for ((pk, sk, _), item) in tables.index.range(from..) {
            if *pk != query.index_pk {
                break;
            }
            if query.start_after.as_ref().is_some_and(|after| sk <= after) {
                continue;
            }
            if query.end_at.as_ref().is_some_and(|end| sk > end) {
                break;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(item.clone());
        }
        let next = if more {
            items
                .last()
                .and_then(|item: &Item| item.index.as_ref().map(|index| index.sk.clone()))
        } else {
            None
        };
        Page { items, next }
    }

    fn expire_now(&self, writer: Option<&str>, now_unix_seconds: i64, limit: usize) -> usize {
        let expired: Vec<WriteOp> = {
            let tables = self.lock();
            (tables.items.values())
                .filter(|item| item.expires_at.is_some_and(|at| at < now_unix_seconds))
                .take(limit.min(payvisor::limits::TRANSACT_ITEMS_MAX))
                .map(|item| WriteOp::Delete {
                    key: item.key.clone(),
                    condition: Condition::VersionIs(item.version),
                })
                .collect()
        };
        if expired.is_empty() {
            return 0;
        }
        let count = expired.len();
        match self.apply(writer, &expired) {
            Ok(()) => count,
            Err(_) => 0,
        }
    }
}

impl Store for SimStore {
    fn transact(&self, ops: Vec<WriteOp>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.apply(None, &ops) })
    }

    fn get(&self, key: Key) -> BoxFuture<'_, Result<Option<Item>, StoreError>> {
        Box::pin(async move { Ok(self.read(&key)) })
    }

    fn query(&self, query: Query) -> BoxFuture<'_, Result<Page, StoreError>> {
        Box::pin(async move { Ok(self.query_now(&query)) })
    }

    fn query_index(&self, query: IndexQuery) -> BoxFuture<'_, Result<Page, StoreError>> {
        Box::pin(async move { Ok(self.query_index_now(&query)) })
    }

    fn expire(
        &self,
        now_unix_seconds: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move { Ok(self.expire_now(None, now_unix_seconds, limit)) })
    }
}

/// How a node's calls to the store fail.
#[derive(Clone, Copy, Debug)]
pub struct StoreFaults {
    /// Chance of a fault per call, in thousandths.
    pub per_mille: u64,
    /// Each way of a call takes up to this long.
    pub latency_max_ms: u64,
    /// A call that times out does so after this long.
    pub timeout_ms: u64,
    /// A timed-out write that lands does so up to this long after its call.
    pub late_landing_max_ms: u64,
    /// Which kinds of fault this seed injects (swarm testing): conflicts,
    /// throttling, timeouts whose write is lost, timeouts whose write
    /// lands later.
    pub kinds: [bool; 4],
}

/// One node incarnation's connection to the table.
pub struct NodeStore {
    pub node: String,
    /// Its node's slot, and the network between it and the table.
    pub slot: usize,
    pub net: Arc<crate::net::Network>,
    pub table: Arc<SimStore>,
    pub world: Arc<World>,
    pub gate: Arc<Gate>,
    pub faults: StoreFaults,
    /// Whether faults are injected now (off once the run settles).
    pub faults_on: Arc<std::sync::atomic::AtomicBool>,
    /// Where a write issued without holding its account's lease is noted.
    pub audit: Arc<Mutex<crate::check::Audit>>,
}

enum Fault {
    Conflict,
    Throttle,
    TimeoutLost,
    TimeoutLanded,
}

impl NodeStore {
    async fn one_way(&self) {
        let latency = self.world.between(0, self.faults.latency_max_ms);
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }

    fn draw(&self, write: bool) -> Option<Fault> {
        if !self.faults_on.load(std::sync::atomic::Ordering::SeqCst)
            || !self.world.chance(self.faults.per_mille)
        {
            return None;
        }
        // A read neither conflicts nor lands.
        let kinds: Vec<Fault> = [
            Fault::Conflict,
            Fault::Throttle,
            Fault::TimeoutLost,
            Fault::TimeoutLanded,
        ]
        .into_iter()
        .zip(self.faults.kinds)
        .filter(|(kind, on)| *on && (write || matches!(kind, Fault::Throttle | Fault::TimeoutLost)))
        .map(|(kind, _)| kind)
        .collect();
        if kinds.is_empty() {
            return None;
        }
        let pick = self.world.between(0, kinds.len() as u64 - 1) as usize;
        kinds.into_iter().nth(pick)
    }

    /// Sends a call: waits while the node is paused, never returns once it
    /// crashed, then the latency there and a fault, if one is drawn.
    async fn send(&self, what: &str, write: bool) -> Result<(), (Fault, StoreError)> {
        self.gate.pass().await;
        self.one_way().await;
        if !self.net.reaches_table(self.slot) {
            // Never reaches the table: it times out.
            let text = "timed out (cut off from the table, simulated)";
            self.world
                .log(format!("{} store {what}: {text}", self.node));
            return Err((Fault::TimeoutLost, StoreError::Unavailable(text.into())));
        }
        match self.draw(write) {
            None => Ok(()),
            Some(fault) => {
                let text = match fault {
                    Fault::Conflict => "transaction cancelled: [TransactionConflict] (simulated)",
                    Fault::Throttle => "ThrottlingException (simulated)",
                    Fault::TimeoutLost | Fault::TimeoutLanded => "timed out (simulated)",
                };
                self.world
                    .log(format!("{} store {what}: {text}", self.node));
                Err((fault, StoreError::Unavailable(text.into())))
            }
        }
    }

    /// The answer's way back; a node that crashed meanwhile never hears it.
    async fn receive<T>(&self, answer: T) -> T {
        self.one_way().await;
        self.gate.pass().await;
        answer
    }

    /// At most one owner writes an account per epoch: a node issues a
    /// write of an account only while the lease of its shard, as the table
    /// holds it now, is this node's at the epoch the write stamps. (A write
    /// already on its way may land after the lease moved; the version
    /// conditions and the fence deal with that, and the audit of each
    /// commit checks them.)
    async fn check_lease(&self, ops: &[WriteOp]) {
        for op in ops {
            let WriteOp::Put { item, .. } = op else {
                continue;
            };
            if item.key.sk != payvisor::store::schema::ACCOUNT_SK {
                continue;
            }
            let (Ok(book), Some(account)) = (
                payvisor::store::schema::decode_account(item),
                item.key.pk.strip_prefix("A#"),
            ) else {
                continue;
            };
            let epoch = book.value.owner_epoch;
            let shard = payvisor::domain::ownership::shard_of(account, crate::limits::SHARDS);
            let Ok(leases) =
                payvisor::store::schema::read_leases(self.table.as_ref(), crate::limits::SHARDS)
                    .await
            else {
                continue;
            };
            let lease = &leases[usize::from(shard)].0;
            let holder = lease.owner.as_ref().map(|owner| owner.as_str());
            if holder != Some(self.node.as_str()) || lease.epoch != epoch {
                let violation = crate::check::Violation {
                    invariant: "one_owner_per_epoch",
                    detail: format!(
                        "{} writes {account} at epoch {epoch}; shard {shard}'s lease is {holder:?}'s at epoch {}",
                        self.node, lease.epoch
                    ),
                };
                self.world.log(format!(
                    "VIOLATION {}: {}",
                    violation.invariant, violation.detail
                ));
                let mut audit = self.audit.lock().unwrap_or_else(|p| p.into_inner());
                audit.violations.push(violation);
            }
        }
    }

    async fn timed_out(&self, error: StoreError) -> StoreError {
        tokio::time::sleep(Duration::from_millis(self.faults.timeout_ms)).await;
        self.gate.pass().await;
        error
    }
}

fn describe(ops: &[WriteOp]) -> String {
    let first = ops
        .first()
        .map(|op| format!("{:?}", op.key()))
        .unwrap_or_default();
    format!("write of {} ({first}…)", ops.len())
}

impl Store for NodeStore {
    fn transact(&self, ops: Vec<WriteOp>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let what = describe(&ops);
            self.check_lease(&ops).await;
            match self.send(&what, true).await {
                Ok(()) => {
                    let result = self.table.apply(Some(&self.node), &ops);
                    if ops
                        .iter()
                        .any(|op| op.key().pk == "CLUSTER" && op.key().sk.starts_with("SHARD#"))
                    {
                        let landed = if result.is_ok() { "written" } else { "refused" };
                        let leases: Vec<String> = (ops.iter())
                            .filter(|op| op.key().sk.starts_with("SHARD#"))
                            .map(|op| match op {
                                WriteOp::Put { item, .. } => format!(
                                    "{} {}",
                                    item.key.sk,
                                    String::from_utf8_lossy(&item.body)
                                ),
                                other => format!("{:?}", other.key()),
                            })
                            .collect();
                        self.world.log(format!(
                            "{} lease write {landed}: {}",
                            self.node,
                            leases.join("; ")
                        ));
                    }
                    self.receive(result).await
                }
                Err((Fault::TimeoutLanded, error)) => {
                    let (table, node, world) =
                        (self.table.clone(), self.node.clone(), self.world.clone());
                    let late = self.world.between(0, self.faults.late_landing_max_ms);
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(late)).await;
                        let landed = table.apply(Some(&node), &ops).is_ok();
                        world.log(format!(
                            "{node} store: a timed-out {what} landed late: {landed}"
                        ));
                    });
                    Err(self.timed_out(error).await)
                }
                Err((Fault::TimeoutLost, error)) => Err(self.timed_out(error).await),
                Err((_, error)) => Err(error),
            }
        })
    }

    fn get(&self, key: Key) -> BoxFuture<'_, Result<Option<Item>, StoreError>> {
        Box::pin(async move {
            match self.send("get", false).await {
                Ok(()) => {
                    let found = self.table.read(&key);
                    self.receive(Ok(found)).await
                }
                Err((Fault::TimeoutLost, error)) => Err(self.timed_out(error).await),
                Err((_, error)) => Err(error),
            }
        })
    }

    fn query(&self, query: Query) -> BoxFuture<'_, Result<Page, StoreError>> {
        Box::pin(async move {
            match self.send("query", false).await {
                Ok(()) => {
                    let page = self.table.query_now(&query);
                    self.receive(Ok(page)).await
                }
                Err((Fault::TimeoutLost, error)) => Err(self.timed_out(error).await),
                Err((_, error)) => Err(error),
            }
        })
    }

    fn query_index(&self, query: IndexQuery) -> BoxFuture<'_, Result<Page, StoreError>> {
        Box::pin(async move {
            match self.send("index query", false).await {
                Ok(()) => {
                    let page = self.table.query_index_now(&query);
                    self.receive(Ok(page)).await
                }
                Err((Fault::TimeoutLost, error)) => Err(self.timed_out(error).await),
                Err((_, error)) => Err(error),
            }
        })
    }

    /// DynamoDB deletes expired items itself (TTL): the table's own sweep
    /// does it here, not the nodes.
    fn expire(&self, _: i64, _: usize) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async { Ok(0) })
    }
}
