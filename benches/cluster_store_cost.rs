//! What clustering costs in store calls, counted (not timed):
//!
//! - **per payment lifecycle** (create → processed → full refund →
//!   refunded, built-in bank): transactions, items written, conditional
//!   actions, reads and items read, for a node alone on its store and for a
//!   cluster member (its writes stamp and check the lease epoch); and what
//!   those calls would cost on DynamoDB in capacity units (see
//!   [`DynamoDbUnits`]), priced at on-demand rates;
//! - **membership**: per node and round, in a settled three-node cluster,
//!   and in the rounds after a member leaves until the leases are at rest
//!   again.
//!
//! `cargo bench --bench cluster_store_cost`. Under `cargo test` it runs a
//! small version so it keeps working.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use payvisor::actors::{ActorSettings, Components, CreatePayment, Orchestrator, RefundPayment};
use payvisor::clock::SystemClock;
use payvisor::cluster::membership::{ManualMono, Membership, MembershipSettings, Owned};
use payvisor::cluster::AccountOwnership;
use payvisor::connectors::built_in_bank::{BuiltInBank, BuiltInBankConfig};
use payvisor::domain::ownership::{Mono, NodeId, Timeouts};
use payvisor::domain::payment::PaymentState;
use payvisor::domain::{AccountId, Currency, Money, RequestId};
use payvisor::store::sqlite::SqliteStore;
use payvisor::store::{
    schema, BoxFuture, IndexQuery, Item, Key, Page, Query, Store, StoreError, WriteOp,
};

/// Counts every call and item through it.
#[derive(Default)]
struct Counts {
    transactions: AtomicU64,
    items_written: AtomicU64,
    conditional: AtomicU64,
    reads: AtomicU64,
    items_read: AtomicU64,
    units: DynamoDbUnits,
}

/// What the same calls would consume on DynamoDB, by its billing rules:
/// every write here is a `TransactWriteItems` action, which costs 2 write
/// units per KB of the item (a put by the larger of the item it replaces
/// and the new one, a delete by the size of the item deleted, a condition
/// check by the size of the item checked), and the table's one index
/// (projection ALL) costs 1 more write unit per KB for each item that
/// enters it, leaves it, or changes in it (by the larger size; 2 writes
/// when its index key changes: a delete and a put). Reads are strongly
/// consistent on the table (1 read unit per 4 KB, a query rounded over the
/// page returned) and eventually consistent on the index (half that).
/// Item sizes follow `store::dynamodb`'s attributes: `pk`, `sk`, `v`, `b`,
/// `ipk`, `isk`, `ttl`, each its name's length plus its value's.
///
/// Not priced: writes that fail (their actions are counted; a lifecycle
/// here has none), and the items a query reads beyond the page it returns
/// (none for this lifecycle's small queries; a listing would be
/// under-counted).
#[derive(Default)]
struct DynamoDbUnits {
    table_writes: AtomicU64,
    index_writes: AtomicU64,
    /// Read units in halves: an index read is eventually consistent, half
    /// a unit per 4 KB.
    read_halves: AtomicU64,
    /// By item family (the sort key up to its first `#`): actions and the
    /// write units (table and index) they cost.
    by_family: std::sync::Mutex<BTreeMap<String, (u64, u64)>>,
}

/// An item's family, from its sort key: `P` (payment), `M` (movement), …;
/// the account item's sort key has no `#`.
fn family(key: &Key) -> String {
    key.sk.split('#').next().unwrap_or_default().to_owned()
}

/// An item's size as DynamoDB bills it, in bytes.
fn dynamodb_item_bytes(item: &Item) -> u64 {
    // A number: a byte per two significant digits, and one more.
    let number = |value: u64| (value.to_string().len() as u64).div_ceil(2) + 1;
    let mut bytes = 2 + item.key.pk.len() as u64 + 2 + item.key.sk.len() as u64;
    bytes += 1 + number(item.version);
    bytes += 1 + item.body.len() as u64;
    if let Some(index) = &item.index {
        bytes += 3 + index.pk.len() as u64 + 3 + index.sk.len() as u64;
    }
    if let Some(expires_at) = item.expires_at {
        bytes += 3 + number(expires_at.unsigned_abs());
    }
    bytes
}

fn kilobytes(bytes: u64) -> u64 {
    bytes.div_ceil(1024).max(1)
}

impl DynamoDbUnits {
    /// Charges one atomic write, given each action's item as it was before.
    fn write(&self, ops: &[WriteOp], before: &[Option<Item>]) {
        let (mut table, mut index) = (0, 0);
        let mut by_family = self.by_family.lock().unwrap();
        for (op, before) in ops.iter().zip(before) {
            let (table_before, index_before) = (table, index);
            let before_bytes = before.as_ref().map(dynamodb_item_bytes).unwrap_or(0);
            let before_index = before.as_ref().and_then(|item| item.index.clone());
            match op {
                WriteOp::Put { item, .. } => {
                    let bytes = dynamodb_item_bytes(item);
                    table += 2 * kilobytes(bytes.max(before_bytes));
                    index += match (&before_index, &item.index) {
                        (None, None) => 0,
                        (Some(old), Some(new)) if old == new => kilobytes(bytes.max(before_bytes)),
                        (Some(_), Some(_)) => kilobytes(before_bytes) + kilobytes(bytes),
                        (None, Some(_)) => kilobytes(bytes),
                        (Some(_), None) => kilobytes(before_bytes),
                    };
                }
                WriteOp::Delete { .. } => {
                    table += 2 * kilobytes(before_bytes);
                    if before_index.is_some() {
                        index += kilobytes(before_bytes);
                    }
                }
                WriteOp::Check { .. } => table += 2 * kilobytes(before_bytes),
            }
            let key = match op {
                WriteOp::Put { item, .. } => &item.key,
                WriteOp::Delete { key, .. } | WriteOp::Check { key, .. } => key,
            };
            let entry = by_family.entry(family(key)).or_default();
            entry.0 += 1;
            entry.1 += table - table_before + index - index_before;
        }
        self.table_writes.fetch_add(table, Ordering::SeqCst);
        self.index_writes.fetch_add(index, Ordering::SeqCst);
    }

    /// Charges a read that returned `items`: `consistent` on the table, or
    /// an eventually consistent read of the index.
    fn read(&self, items: &[Item], consistent: bool) {
        let bytes: u64 = items.iter().map(dynamodb_item_bytes).sum();
        let units = bytes.div_ceil(4096).max(1);
        let halves = if consistent { 2 * units } else { units };
        self.read_halves.fetch_add(halves, Ordering::SeqCst);
    }

    /// (table write units, index write units, read units) so far.
    fn snapshot(&self) -> [f64; 3] {
        [
            self.table_writes.load(Ordering::SeqCst) as f64,
            self.index_writes.load(Ordering::SeqCst) as f64,
            self.read_halves.load(Ordering::SeqCst) as f64 / 2.0,
        ]
    }
}

impl Counts {
    fn snapshot(&self) -> [u64; 5] {
        [
            &self.transactions,
            &self.items_written,
            &self.conditional,
            &self.reads,
            &self.items_read,
        ]
        .map(|count| count.load(Ordering::SeqCst))
    }
}

struct Counting {
    inner: Arc<dyn Store>,
    counts: Arc<Counts>,
    /// Every item as this wrapper last wrote it: the before-image each
    /// write is priced by, exact and without a read (every write of the
    /// measured store goes through here).
    written: std::sync::Mutex<std::collections::HashMap<Key, Item>>,
}

impl Store for Counting {
    fn transact(&self, ops: Vec<WriteOp>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let counts = &self.counts;
            counts.transactions.fetch_add(1, Ordering::SeqCst);
            counts
                .items_written
                .fetch_add(ops.len() as u64, Ordering::SeqCst);
            // Every action carries a condition (NotExists or VersionIs).
            counts
                .conditional
                .fetch_add(ops.len() as u64, Ordering::SeqCst);
            let actions = ops.clone();
            self.inner.transact(ops).await?;
            let mut written = self.written.lock().unwrap();
            let before: Vec<Option<Item>> = actions
                .iter()
                .map(|op| {
                    let key = match op {
                        WriteOp::Put { item, .. } => &item.key,
                        WriteOp::Delete { key, .. } | WriteOp::Check { key, .. } => key,
                    };
                    written.get(key).cloned()
                })
                .collect();
            counts.units.write(&actions, &before);
            for op in actions {
                match op {
                    WriteOp::Put { item, .. } => {
                        written.insert(item.key.clone(), item);
                    }
                    WriteOp::Delete { key, .. } => {
                        written.remove(&key);
                    }
                    WriteOp::Check { .. } => {}
                }
            }
            Ok(())
        })
    }

    fn get(&self, key: Key) -> BoxFuture<'_, Result<Option<Item>, StoreError>> {
        Box::pin(async move {
            let item = self.inner.get(key).await?;
            self.counts.units.read(item.as_slice(), true);
            self.counts.reads.fetch_add(1, Ordering::SeqCst);
            self.counts
                .items_read
                .fetch_add(u64::from(item.is_some()), Ordering::SeqCst);
            Ok(item)
        })
    }

    fn query(&self, query: Query) -> BoxFuture<'_, Result<Page, StoreError>> {
        Box::pin(async move {
            let page = self.inner.query(query).await?;
            self.counts.units.read(&page.items, true);
            self.counts.reads.fetch_add(1, Ordering::SeqCst);
            self.counts
                .items_read
                .fetch_add(page.items.len() as u64, Ordering::SeqCst);
            Ok(page)
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
            let page = self.inner.query_index(query).await?;
            self.counts.units.read(&page.items, false);
            self.counts.reads.fetch_add(1, Ordering::SeqCst);
            self.counts
                .items_read
                .fetch_add(page.items.len() as u64, Ordering::SeqCst);
            Ok(page)
        })
    }
}

/// A counting store on `dir`, its counts, and the store uncounted (for
/// the bench's own reads).
fn counting(dir: &std::path::Path) -> (Arc<dyn Store>, Arc<Counts>, Arc<dyn Store>) {
    let counts = Arc::new(Counts::default());
    let inner: Arc<dyn Store> = Arc::new(SqliteStore::open(dir).unwrap());
    let store = Counting {
        inner: Arc::clone(&inner),
        counts: Arc::clone(&counts),
        written: Default::default(),
    };
    (Arc::new(store), counts, inner)
}

const SHARDS: u16 = 256;

/// DynamoDB on-demand prices in us-east-1 (since 1 November 2024), in
/// dollars per million request units.
const ON_DEMAND_DOLLARS_PER_MILLION_WRITES: f64 = 0.625;
const ON_DEMAND_DOLLARS_PER_MILLION_READS: f64 = 0.125;

/// Runs `payments` lifecycles through an orchestrator with `ownership` and
/// returns the counts per lifecycle, and the DynamoDB units per lifecycle
/// (table writes, index writes, reads).
async fn lifecycles(
    payments: usize,
    ownership: AccountOwnership,
) -> ([f64; 5], [f64; 3], BTreeMap<String, (u64, u64)>) {
    let dir = tempfile::tempdir().unwrap();
    let (store, counts, uncounted) = counting(dir.path());
    let (trigger, shutdown) = payvisor::shutdown::channel();
    let mut tasks = payvisor::shutdown::Tasks::default();
    let random = Arc::new(payvisor::random::SeededRandom::new(3));
    let (bank_events, bank_event_queue) = tokio::sync::mpsc::channel(4096);
    let bank = BuiltInBank::new(
        BuiltInBankConfig {
            latency_min: Duration::from_millis(1),
            latency_max: Duration::from_millis(2),
            failure_per_mille: 0,
        },
        random.clone(),
        bank_events,
    );
    let orchestrator = Orchestrator::start(
        Components {
            store: Arc::clone(&store),
            banks: Arc::new(payvisor::connectors::routing::Router::single(
                "built-in",
                Arc::new(bank),
            )),
            clock: Arc::new(SystemClock),
            random,
            policy: Default::default(),
            settings: ActorSettings {
                ownership,
                ..Default::default()
            },
            alert_sink: Arc::new(payvisor::alerts::LogSink),
            node_name: "bench".into(),
            rules: Arc::new(payvisor::approval::RulesInForce::approve_all()),
            webhooks: Default::default(),
            webhook_sink: Arc::new(
                payvisor::webhooks::HttpWebhookSink::new(
                    false,
                    payvisor::grpc::json::webhook_body_format(),
                )
                .unwrap(),
            ),
        },
        bank_event_queue,
        &shutdown,
        &mut tasks,
    );
    let usd = Currency::from_code("USD").unwrap();
    let mut names = Vec::new();
    for n in 0..payments {
        let payment = orchestrator
            .create_payment(CreatePayment {
                account: AccountId::new(format!("acct-{}", n % 10)).unwrap(),
                payment_id: None,
                amount: Money::from_minor(usd, 1_000),
                metadata: BTreeMap::new(),
                payer_id: None,
                payer_country: None,
                request_id: RequestId::new(format!("create-{n}")).unwrap(),
                trace: None,
            })
            .await
            .unwrap();
        names.push(payment.name());
    }
    for name in &names {
        settle(&uncounted, name, PaymentState::Processed).await;
    }
    for (n, name) in names.iter().enumerate() {
        orchestrator
            .refund_payment(RefundPayment {
                name: name.clone(),
                amount: None,
                reason: "bench".into(),
                request_id: RequestId::new(format!("refund-{n}")).unwrap(),
                actor: None,
                trace: None,
            })
            .await
            .unwrap();
    }
    for name in &names {
        settle(&uncounted, name, PaymentState::Refunded).await;
    }
    let [transactions, written, conditional, reads, read] = counts.snapshot();
    let units = counts.units.snapshot().map(|units| units / payments as f64);
    let families = counts.units.by_family.lock().unwrap().clone();
    orchestrator.shutdown(Duration::from_secs(5)).await;
    trigger.fire();
    tasks.join(Duration::from_secs(5)).await;
    let per = |count: u64| count as f64 / payments as f64;
    (
        [
            per(transactions),
            per(written),
            per(conditional),
            per(reads),
            per(read),
        ],
        units,
        families,
    )
}

/// Waits until the payment is in `state` (read uncounted).
async fn settle(store: &Arc<dyn Store>, name: &payvisor::domain::PaymentName, state: PaymentState) {
    loop {
        let payment = schema::load_payment(store.as_ref(), name).await.unwrap();
        if payment.is_some_and(|payment| payment.value.state == state) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// One heartbeat period: every clock moves on, every node rounds.
async fn round(nodes: &mut [(Membership, Arc<ManualMono>)]) {
    for (_, clock) in nodes.iter() {
        clock.advance(TIMEOUTS.heartbeat_every);
    }
    for (membership, _) in nodes.iter_mut() {
        membership.round().await.unwrap();
    }
}

/// A cluster member holding every shard at epoch 1, for good.
fn member_of_everything() -> AccountOwnership {
    let (sender, owned) = tokio::sync::watch::channel(Owned {
        valid_until: Some(Mono(u64::MAX)),
        shards: (0..SHARDS).map(|shard| (shard, 1)).collect(),
    });
    std::mem::forget(sender);
    AccountOwnership::shards(owned, Arc::new(ManualMono::default()), SHARDS)
}

const TIMEOUTS: Timeouts = Timeouts {
    heartbeat_every: 1_000,
    self_demote_after: 3_000,
    dead_after: 6_000,
    moves_per_round: 64,
};

/// Membership rounds of three nodes: settled, then after one leaves.
/// Returns (per node-round when settled, per node-round while moving, the
/// rounds it took).
async fn membership(settled_rounds: u64) -> ([f64; 5], [f64; 5], u64) {
    let dir = tempfile::tempdir().unwrap();
    let (store, counts, uncounted) = counting(dir.path());
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        let clock = Arc::new(ManualMono::default());
        let (membership, _owned) = Membership::join(
            Arc::clone(&store),
            &SystemClock,
            clock.clone(),
            NodeId::new(name),
            MembershipSettings {
                shards: SHARDS,
                timeouts: TIMEOUTS,
                address: format!("{name}:50051"),
            },
        )
        .await
        .unwrap();
        nodes.push((membership, clock));
    }
    for _ in 0..12 {
        round(&mut nodes).await;
    }
    let before = counts.snapshot();
    for _ in 0..settled_rounds {
        round(&mut nodes).await;
    }
    let after = counts.snapshot();
    let per_node_round = |from: [u64; 5], to: [u64; 5], node_rounds: u64| {
        let mut per = [0.0; 5];
        for i in 0..5 {
            per[i] = (to[i] - from[i]) as f64 / node_rounds as f64;
        }
        per
    };
    let settled = per_node_round(before, after, 3 * settled_rounds);

    let (mut leaving, _) = nodes.pop().unwrap();
    leaving.leave().await.unwrap();
    let before = counts.snapshot();
    let mut rounds = 0;
    let moving_counts;
    loop {
        rounds += 1;
        round(&mut nodes).await;
        let view = schema::read_cluster(uncounted.as_ref(), SHARDS)
            .await
            .unwrap();
        let members: Vec<NodeId> = vec![NodeId::new("a"), NodeId::new("b")];
        let leases: Vec<_> = view.leases.into_iter().map(|(lease, _)| lease).collect();
        if payvisor::domain::ownership::is_settled(&leases, &members) {
            moving_counts = counts.snapshot();
            break;
        }
    }
    let moving = per_node_round(before, moving_counts, 2 * rounds);
    (settled, moving, rounds)
}

fn row(label: &str, counts: [f64; 5]) {
    println!(
        "| {label} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        counts[0], counts[1], counts[2], counts[3], counts[4]
    );
}

fn main() {
    let benchmarking = std::env::args().any(|arg| arg == "--bench");
    let (payments, settled_rounds) = if benchmarking { (500, 60) } else { (20, 5) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (alone, alone_units, alone_families) =
            lifecycles(payments, AccountOwnership::Everything).await;
        let (member, member_units, _) = lifecycles(payments, member_of_everything()).await;
        println!("per payment lifecycle (create, processed, full refund, refunded), {payments} payments:");
        println!("| node | transactions | items written | conditional actions | reads | items read |");
        println!("|---|---:|---:|---:|---:|---:|");
        row("alone on its store", alone);
        row("cluster member", member);
        println!();
        println!("by item family, alone on its store, per payment lifecycle:");
        println!("| family | actions | write units (table and index) |");
        println!("|---|---:|---:|");
        for (family, (actions, units)) in alone_families {
            let per = |count: u64| count as f64 / payments as f64;
            println!("| {family} | {:.2} | {:.2} |", per(actions), per(units));
        }
        println!();
        println!("on DynamoDB, per payment lifecycle, and on-demand (us-east-1) per million lifecycles:");
        println!("| node | table write units | index write units | read units | dollars per million |");
        println!("|---|---:|---:|---:|---:|");
        for (label, [table, index, reads]) in [
            ("alone on its store", alone_units),
            ("cluster member", member_units),
        ] {
            let dollars = (table + index) * ON_DEMAND_DOLLARS_PER_MILLION_WRITES
                + reads * ON_DEMAND_DOLLARS_PER_MILLION_READS;
            println!("| {label} | {table:.2} | {index:.2} | {reads:.2} | {dollars:.2} |");
        }
        let (settled, moving, rounds) = membership(settled_rounds).await;
        println!();
        println!("membership, per node and round (one round a second by default):");
        println!("| cluster | transactions | items written | conditional actions | reads | items read |");
        println!("|---|---:|---:|---:|---:|---:|");
        row("3 nodes, settled", settled);
        row(&format!("2 nodes after the third left ({rounds} rounds to settle)"), moving);
    });
}
