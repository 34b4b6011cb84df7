//! What clustering costs in store calls, counted (not timed):
//!
//! - **per payment lifecycle** (create → processed → full refund →
//!   refunded, built-in bank): transactions, items written, conditional
//!   actions, reads and items read, for a node alone on its store and for a
//!   cluster member (its writes stamp and check the lease epoch);
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
}

impl Store for Counting {
    fn transact(&self, ops: Vec<WriteOp>) -> BoxFuture<'_, Result<(), StoreError>> {
        let counts = &self.counts;
        counts.transactions.fetch_add(1, Ordering::SeqCst);
        counts
            .items_written
            .fetch_add(ops.len() as u64, Ordering::SeqCst);
        // Every action carries a condition (NotExists or VersionIs).
        counts
            .conditional
            .fetch_add(ops.len() as u64, Ordering::SeqCst);
        self.inner.transact(ops)
    }

    fn get(&self, key: Key) -> BoxFuture<'_, Result<Option<Item>, StoreError>> {
        Box::pin(async move {
            let item = self.inner.get(key).await?;
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
    };
    (Arc::new(store), counts, inner)
}

const SHARDS: u16 = 256;

/// Runs `payments` lifecycles through an orchestrator with `ownership` and
/// returns the counts per lifecycle.
async fn lifecycles(payments: usize, ownership: AccountOwnership) -> [f64; 5] {
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
    orchestrator.shutdown(Duration::from_secs(5)).await;
    trigger.fire();
    tasks.join(Duration::from_secs(5)).await;
    let per = |count: u64| count as f64 / payments as f64;
    [
        per(transactions),
        per(written),
        per(conditional),
        per(reads),
        per(read),
    ]
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
        let alone = lifecycles(payments, AccountOwnership::Everything).await;
        let member = lifecycles(payments, member_of_everything()).await;
        println!("per payment lifecycle (create, processed, full refund, refunded), {payments} payments:");
        println!("| node | transactions | items written | conditional actions | reads | items read |");
        println!("|---|---:|---:|---:|---:|---:|");
        row("alone on its store", alone);
        row("cluster member", member);
        let (settled, moving, rounds) = membership(settled_rounds).await;
        println!();
        println!("membership, per node and round (one round a second by default):");
        println!("| cluster | transactions | items written | conditional actions | reads | items read |");
        println!("|---|---:|---:|---:|---:|---:|");
        row("3 nodes, settled", settled);
        row(&format!("2 nodes after the third left ({rounds} rounds to settle)"), moving);
    });
}
