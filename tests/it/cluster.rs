//! Cluster membership against a real store: nodes heartbeat, claim and
//! release shard leases through conditional writes, and ownership moves
//! when a node dies or leaves. Rounds are driven by hand and each node has
//! its own monotonic clock moved by hand, so the tests decide the
//! interleaving and time, and the store decides every race.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use payvisor::actors::{CommandError, CreatePayment, RefundPayment};
use payvisor::clock::{Clock, ManualClock, SystemClock};
use payvisor::cluster::membership::{
    JoinError, ManualMono, Membership, MembershipSettings, MonoClock, Owned,
};
use payvisor::cluster::AccountOwnership;
use payvisor::domain::ownership::{shard_of, Mono, NodeId, ShardId, Timeouts};
use payvisor::domain::payment::PaymentState;
use payvisor::domain::{AccountId, Currency, Money, RequestId, Timestamp};
use payvisor::store::schema;
use payvisor::store::{BoxFuture, IndexQuery, Item, Key, Page, Query, Store, StoreError, WriteOp};
use payvisor::webhooks::{WebhookSettings, WebhookSink};
use payvisor_testkit::faults::{FaultScope, FaultyStore};
use tokio::sync::watch;

use crate::common::dynamodb as dynamodb_server;

const SHARDS: u16 = 64;
const TIMEOUTS: Timeouts = Timeouts {
    heartbeat_every: 1_000,
    self_demote_after: 3_000,
    dead_after: 6_000,
    moves_per_round: 16,
};

struct Node {
    membership: Membership,
    owned: watch::Receiver<Owned>,
    clock: Arc<ManualMono>,
}

impl Node {
    fn serves(&self) -> BTreeMap<ShardId, u64> {
        let now = self.clock.now();
        let owned = self.owned.borrow();
        (0..SHARDS)
            .filter_map(|shard| owned.epoch_at(shard, now).map(|epoch| (shard, epoch)))
            .collect()
    }
}

async fn join(store: &Arc<dyn Store>, name: &str) -> Node {
    join_with_wall_clock(store, name, &SystemClock).await
}

/// A node whose wall clock is `wall` (the membership reads it only for the
/// start time it records).
async fn join_with_wall_clock(store: &Arc<dyn Store>, name: &str, wall: &dyn Clock) -> Node {
    let clock = Arc::new(ManualMono::default());
    // Each node's clock has an origin of its own.
    clock.advance(name.len() as u64 * 7_919);
    let (membership, owned) = Membership::join(
        Arc::clone(store),
        wall,
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
    Node {
        membership,
        owned,
        clock,
    }
}

/// One heartbeat period: every clock moves on, each listed node rounds.
async fn tick(nodes: &mut [&mut Node]) {
    for node in nodes.iter() {
        node.clock.advance(TIMEOUTS.heartbeat_every);
    }
    for node in nodes.iter_mut() {
        node.membership.round().await.unwrap();
    }
}

/// Shards served by each node; panics if two serve one.
fn served(nodes: &[&Node]) -> Vec<usize> {
    let mut seen = BTreeSet::new();
    nodes
        .iter()
        .map(|node| {
            let shards = node.serves();
            for shard in shards.keys() {
                assert!(seen.insert(*shard), "shard {shard} served twice");
            }
            shards.len()
        })
        .collect()
}

fn assert_even_and_complete(counts: &[usize]) {
    assert_eq!(
        counts.iter().sum::<usize>(),
        usize::from(SHARDS),
        "{counts:?}"
    );
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(max - min <= 1, "even shares ±1: {counts:?}");
}

/// Three nodes a, b and c that joined together and had eight rounds
/// (ownership settles within three: 22 shards at 16 a round, and one to
/// see no change).
async fn three_settled_nodes(store: &Arc<dyn Store>) -> (Node, Node, Node) {
    let (mut a, mut b, mut c) = (
        join(store, "a").await,
        join(store, "b").await,
        join(store, "c").await,
    );
    for _ in 0..8 {
        tick(&mut [&mut a, &mut b, &mut c]).await;
    }
    (a, b, c)
}

async fn nodes_starting_together_own_every_shard_once_in_even_shares(store: Arc<dyn Store>) {
    let (mut a, mut b, mut c) = (
        join(&store, "a").await,
        join(&store, "b").await,
        join(&store, "c").await,
    );
    for _ in 0..8 {
        tick(&mut [&mut a, &mut b, &mut c]).await;
        served(&[&a, &b, &c]);
    }
    assert_even_and_complete(&served(&[&a, &b, &c]));
    for node in [&a, &b, &c] {
        assert!(
            node.serves().values().all(|epoch| *epoch == 1),
            "first owners: epoch 1"
        );
    }
}

async fn a_dead_nodes_shards_move_only_after_it_stopped_serving(store: Arc<dyn Store>) {
    let (mut a, mut b, c) = three_settled_nodes(&store).await;
    let c_held = c.serves();
    assert!(!c_held.is_empty());
    // c stops (killed, or paused): its clock goes on, its rounds do not.
    let mut ticks_to_takeover = None;
    for n in 1..=20 {
        c.clock.advance(TIMEOUTS.heartbeat_every);
        tick(&mut [&mut a, &mut b]).await;
        let taken = [&a, &b]
            .iter()
            .any(|node| node.serves().keys().any(|shard| c_held.contains_key(shard)));
        if taken {
            assert!(
                c.serves().is_empty(),
                "c still served when its shards were taken"
            );
            ticks_to_takeover.get_or_insert(n);
        }
    }
    let ticks_to_takeover = ticks_to_takeover.expect("c's shards were taken");
    assert!(
        u64::try_from(ticks_to_takeover).unwrap() * TIMEOUTS.heartbeat_every > TIMEOUTS.dead_after,
        "not before the dead timeout: {ticks_to_takeover} ticks"
    );
    assert_even_and_complete(&served(&[&a, &b]));
    for node in [&a, &b] {
        for (shard, epoch) in node.serves() {
            if c_held.contains_key(&shard) {
                assert_eq!(
                    epoch, 2,
                    "a new owner raises the epoch: c's writes are fenced"
                );
            }
        }
    }
}

/// What an [`Intercepting`] store does with the write it picks.
enum Interception {
    /// Holds it until released: a write decided and still on its way.
    Hold,
    /// Answers that it timed out, and keeps it for the test to land later.
    TimeOut,
}

/// A store that, once armed, intercepts the first write `picks` matches
/// (one of its operations); every other call passes through.
struct Intercepting {
    inner: Arc<dyn Store>,
    picks: fn(&WriteOp) -> bool,
    interception: Interception,
    armed: std::sync::atomic::AtomicBool,
    /// Notified when a write is held.
    held: tokio::sync::Notify,
    release: tokio::sync::Notify,
    /// The key of the operation picked.
    picked: std::sync::Mutex<Option<Key>>,
    /// The write that timed out, to land later.
    kept: std::sync::Mutex<Option<Vec<WriteOp>>>,
}

impl Intercepting {
    fn new(
        inner: &Arc<dyn Store>,
        picks: fn(&WriteOp) -> bool,
        interception: Interception,
    ) -> Self {
        Intercepting {
            inner: Arc::clone(inner),
            picks,
            interception,
            armed: false.into(),
            held: tokio::sync::Notify::new(),
            release: tokio::sync::Notify::new(),
            picked: Default::default(),
            kept: Default::default(),
        }
    }
}

impl Store for Intercepting {
    fn transact(&self, ops: Vec<WriteOp>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let picked = ops.iter().find(|op| (self.picks)(op));
            if let Some(picked) = picked {
                if self.armed.swap(false, Ordering::SeqCst) {
                    *self.picked.lock().unwrap() = Some(picked.key().clone());
                    match self.interception {
                        Interception::Hold => {
                            self.held.notify_one();
                            self.release.notified().await;
                        }
                        Interception::TimeOut => {
                            *self.kept.lock().unwrap() = Some(ops);
                            return Err(StoreError::Unavailable(
                                "timed out (the write lands later)".into(),
                            ));
                        }
                    }
                }
            }
            self.inner.transact(ops).await
        })
    }
    fn get(&self, key: Key) -> BoxFuture<'_, Result<Option<Item>, StoreError>> {
        self.inner.get(key)
    }
    fn query(&self, query: Query) -> BoxFuture<'_, Result<Page, StoreError>> {
        self.inner.query(query)
    }
    fn query_index(&self, query: IndexQuery) -> BoxFuture<'_, Result<Page, StoreError>> {
        self.inner.query_index(query)
    }
    fn expire(&self, now: i64, limit: usize) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.inner.expire(now, limit)
    }
}

/// A claim decided while a node was away, and landing after the node came
/// back and beat again, fails: the claim holds only while the judged
/// node's record is as read. Never do both nodes serve the shard. (Found by
/// payvisor-sim: the node served its leases again on its first heartbeat
/// back while the claim was still on its way, and then so did the peer.)
async fn a_claim_decided_while_a_node_was_away_fails_once_it_is_back(store: Arc<dyn Store>) {
    let lease_write = |op: &WriteOp| op.key().sk.starts_with("SHARD#");
    let holding = Arc::new(Intercepting::new(&store, lease_write, Interception::Hold));
    let through_holding: Arc<dyn Store> = holding.clone();
    let (mut b, mut c) = (join(&through_holding, "b").await, join(&store, "c").await);
    for _ in 0..8 {
        tick(&mut [&mut b, &mut c]).await;
    }
    assert!(!c.serves().is_empty());
    // c is paused; b rounds on until it claims c's shards, the first
    // claim held on its way.
    holding.armed.store(true, Ordering::SeqCst);
    let watching = Arc::clone(&holding);
    let claiming = tokio::spawn(async move {
        // Until the round whose claim was held (and then released) ends.
        for _ in 0..20 {
            b.clock.advance(TIMEOUTS.heartbeat_every);
            b.membership.round().await.unwrap();
            if !watching.armed.load(Ordering::SeqCst) {
                break;
            }
        }
        b
    });
    holding.held.notified().await;
    // c comes back and has a round: it beats, reads the leases (the held
    // claim has not landed) and serves its shards again.
    c.clock
        .advance(TIMEOUTS.dead_after + 2 * TIMEOUTS.heartbeat_every);
    c.membership.round().await.unwrap();
    let sk = holding.picked.lock().unwrap().clone().unwrap().sk;
    let shard: ShardId = sk.trim_start_matches("SHARD#").parse().unwrap();
    assert!(
        c.serves().contains_key(&shard),
        "c serves shard {shard} again"
    );
    holding.release.notify_one();
    let b = claiming.await.unwrap();
    assert!(
        !b.serves().contains_key(&shard),
        "b's claim decided while c was away landed after c's return: both serve shard {shard}"
    );
    served(&[&b, &c]);
}

/// One node's wall clock an hour ahead, another's an hour behind: the
/// shards are shared out and taken from a dead node exactly as with true
/// clocks (only monotonic readings decide; the start times show the skew).
async fn wall_clocks_an_hour_off_change_nothing_about_ownership(store: Arc<dyn Store>) {
    const HOUR: i64 = 3_600_000;
    let now = SystemClock.now().unix_millis();
    let ahead = ManualClock::starting_at(Timestamp::from_unix_millis(now + HOUR));
    let behind = ManualClock::starting_at(Timestamp::from_unix_millis(now - HOUR));
    let (mut a, mut b, mut c) = (
        join(&store, "a").await,
        join_with_wall_clock(&store, "b", &ahead).await,
        join_with_wall_clock(&store, "c", &behind).await,
    );
    for _ in 0..8 {
        tick(&mut [&mut a, &mut b, &mut c]).await;
        served(&[&a, &b, &c]);
    }
    assert_even_and_complete(&served(&[&a, &b, &c]));
    let view = schema::read_cluster(store.as_ref(), SHARDS).await.unwrap();
    let started = |name: &str| {
        (view.nodes.iter())
            .find(|node| node.value.id == NodeId::new(name))
            .map(|node| node.value.started_at.unix_millis())
            .unwrap()
    };
    assert!(
        started("b") - started("c") >= 2 * HOUR - 60_000,
        "the skew is real"
    );

    // a dies: the skewed nodes take its shards after the dead timeout, not
    // before, and only then.
    let a_held = a.serves();
    for n in 1..=12 {
        a.clock.advance(TIMEOUTS.heartbeat_every);
        tick(&mut [&mut b, &mut c]).await;
        let taken = [&b, &c]
            .iter()
            .any(|node| node.serves().keys().any(|shard| a_held.contains_key(shard)));
        if taken {
            assert!(
                a.serves().is_empty(),
                "a still served when its shards were taken"
            );
            // b and c read a's last heartbeat in the tick it was written
            // (a rounds first): dead once unchanged for the timeout.
            assert!(
                u64::try_from(n).unwrap() * TIMEOUTS.heartbeat_every >= TIMEOUTS.dead_after,
                "taken before the dead timeout: tick {n}"
            );
        }
    }
    assert_even_and_complete(&served(&[&b, &c]));
}

async fn a_leaving_node_hands_its_shards_over_without_waiting_for_the_timeout(
    store: Arc<dyn Store>,
) {
    let (mut a, mut b, mut c) = three_settled_nodes(&store).await;
    c.membership.leave().await.unwrap();
    assert!(c.serves().is_empty());
    // 32 shards each, at 16 moves a round: two rounds, well inside the
    // dead timeout (six).
    for _ in 0..3 {
        tick(&mut [&mut a, &mut b]).await;
    }
    assert_even_and_complete(&served(&[&a, &b]));
}

async fn a_new_node_gets_its_share_in_bounded_steps(store: Arc<dyn Store>) {
    let (mut a, mut b) = (join(&store, "a").await, join(&store, "b").await);
    for _ in 0..6 {
        tick(&mut [&mut a, &mut b]).await;
    }
    let mut d = join(&store, "d").await;
    for _ in 0..8 {
        tick(&mut [&mut a, &mut b, &mut d]).await;
        // Never a shard served twice while they move.
        served(&[&a, &b, &d]);
    }
    assert_even_and_complete(&served(&[&a, &b, &d]));
}

/// A release that timed out may still land: until the table answers for
/// good, the node neither serves the shard nor takes it back, and sends
/// the release again. Never is a shard served twice. (Found by
/// payvisor-sim: the node read its lease as still its own, served the
/// shard again, the release landed, and a peer claimed the shard.)
async fn a_release_that_timed_out_is_not_taken_back(store: Arc<dyn Store>) {
    // A lease written without an owner: a release.
    let release = |op: &WriteOp| match op {
        WriteOp::Put { item, .. } => {
            item.key.sk.starts_with("SHARD#")
                && !String::from_utf8_lossy(&item.body).contains("\"owner\"")
        }
        _ => false,
    };
    let late = Arc::new(Intercepting::new(&store, release, Interception::TimeOut));
    let through_late: Arc<dyn Store> = late.clone();
    let (mut a, mut b) = (join(&through_late, "a").await, join(&store, "b").await);
    for _ in 0..6 {
        tick(&mut [&mut a, &mut b]).await;
    }
    // d joins; a's first release to make room times out.
    late.armed.store(true, Ordering::SeqCst);
    let mut d = join(&store, "d").await;
    while late.kept.lock().unwrap().is_none() {
        tick(&mut [&mut a, &mut b, &mut d]).await;
        served(&[&a, &b, &d]);
    }
    let held = late.kept.lock().unwrap().take().unwrap();
    // b leaves: a's share grows, so a's next round has no reason to
    // release that shard again. It reads the lease as still its own, at
    // the version the release was written against; then the release lands.
    b.membership.leave().await.unwrap();
    tick(&mut [&mut a]).await;
    served(&[&a, &d]);
    let landed = store.transact(held).await;
    // d rounds before a does: the lease is free if the release landed, and
    // d, below its share, claims it.
    tick(&mut [&mut d]).await;
    served(&[&a, &d]);
    for _ in 0..8 {
        tick(&mut [&mut a, &mut d]).await;
        served(&[&a, &d]);
    }
    assert_even_and_complete(&served(&[&a, &d]));
    // (The late write may have found the release sent again first.)
    let _ = landed;
}

async fn a_node_with_another_shard_count_is_refused(store: Arc<dyn Store>) {
    join(&store, "a").await;
    let refused = Membership::join(
        Arc::clone(&store),
        &SystemClock,
        Arc::new(ManualMono::default()),
        NodeId::new("b"),
        MembershipSettings {
            shards: SHARDS * 2,
            timeouts: TIMEOUTS,
            address: "b:50051".into(),
        },
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(JoinError::ShardCountMismatch {
                recorded: SHARDS,
                ..
            })
        ),
        "{:?}",
        refused.err()
    );
}

/// A node's orchestrator on `store`, writing the shards `owned` says, by
/// its own monotonic clock `mono`.
fn orchestrator(
    store: &Arc<dyn Store>,
    owned: watch::Receiver<Owned>,
    mono: Arc<ManualMono>,
    background: &mut crate::common::Background,
) -> payvisor::actors::Orchestrator {
    let ownership = AccountOwnership::shards(owned, mono, SHARDS);
    orchestrator_owning(store, ownership, background)
}

/// The same, writing what `ownership` allows.
fn orchestrator_owning(
    store: &Arc<dyn Store>,
    ownership: AccountOwnership,
    background: &mut crate::common::Background,
) -> payvisor::actors::Orchestrator {
    let no_webhooks: (WebhookSettings, Arc<dyn WebhookSink>) = (
        Default::default(),
        Arc::new(
            payvisor::webhooks::HttpWebhookSink::new(
                false,
                payvisor::grpc::json::webhook_body_format(),
            )
            .unwrap(),
        ),
    );
    orchestrator_with_webhooks(store, ownership, background, no_webhooks)
}

/// The same, delivering webhooks to `webhooks`' endpoints through its sink.
fn orchestrator_with_webhooks(
    store: &Arc<dyn Store>,
    ownership: AccountOwnership,
    background: &mut crate::common::Background,
    (webhooks, webhook_sink): (WebhookSettings, Arc<dyn WebhookSink>),
) -> payvisor::actors::Orchestrator {
    let random = Arc::new(payvisor::random::SeededRandom::new(9));
    let (bank_events, bank_event_queue) = tokio::sync::mpsc::channel(64);
    let bank = payvisor::connectors::built_in_bank::BuiltInBank::new(
        payvisor::connectors::built_in_bank::BuiltInBankConfig::default(),
        random.clone(),
        bank_events,
    );
    let settings = payvisor::actors::ActorSettings {
        ownership,
        ..Default::default()
    };
    payvisor::actors::Orchestrator::start(
        payvisor::actors::Components {
            store: Arc::clone(store),
            banks: Arc::new(payvisor::connectors::routing::Router::single(
                "built-in",
                Arc::new(bank),
            )),
            clock: Arc::new(SystemClock),
            random,
            policy: Default::default(),
            settings,
            alert_sink: Arc::new(payvisor::alerts::LogSink),
            node_name: "cluster-test".into(),
            rules: Arc::new(payvisor::approval::RulesInForce::approve_all()),
            webhooks,
            webhook_sink,
        },
        bank_event_queue,
        &background.shutdown,
        &mut background.tasks,
    )
}

/// Every shard at `epoch`, servable until `until`.
fn holding_everything(epoch: u64, until: u64) -> Owned {
    Owned {
        valid_until: Some(Mono(until)),
        shards: (0..SHARDS).map(|shard| (shard, epoch)).collect(),
    }
}

fn create(account: &str, request: &str) -> CreatePayment {
    CreatePayment {
        account: AccountId::new(account).unwrap(),
        payment_id: None,
        amount: Money::from_minor(Currency::from_code("USD").unwrap(), 1_000),
        metadata: BTreeMap::new(),
        payer_id: None,
        payer_country: None,
        request_id: RequestId::new(request).unwrap(),
        trace: None,
    }
}

/// An old owner (epoch 1) that still believes it owns the account, after a
/// new owner (epoch 2) has written it: none of its writes lands, and the
/// account carries the new owner's epoch.
async fn a_superseded_owner_writes_nothing_after_the_new_owners_first_write(store: Arc<dyn Store>) {
    let (mut old_background, mut new_background) = (
        crate::common::Background::new(),
        crate::common::Background::new(),
    );
    let (_old_owned, old_view) = watch::channel(holding_everything(1, u64::MAX));
    let (_new_owned, new_view) = watch::channel(holding_everything(2, u64::MAX));
    let old = orchestrator(&store, old_view, Arc::default(), &mut old_background);
    let new = orchestrator(&store, new_view, Arc::default(), &mut new_background);

    let first = old.create_payment(create("acme", "r-1")).await.unwrap();
    let second = new.create_payment(create("acme", "r-2")).await.unwrap();
    let refused = old.create_payment(create("acme", "r-3")).await;
    assert!(
        matches!(refused, Err(CommandError::Moving(_))),
        "the old owner's write after the new owner's: {refused:?}"
    );
    let account = AccountId::new("acme").unwrap();
    let (payments, _) = schema::list_payments(store.as_ref(), &account, None, 10)
        .await
        .unwrap();
    let mut ids: Vec<_> = payments.iter().map(|payment| payment.id.clone()).collect();
    ids.sort();
    let mut expected = vec![first.id, second.id];
    expected.sort();
    assert_eq!(ids, expected, "only the two acknowledged creates");
    let book = schema::load_account(store.as_ref(), &account)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(book.value.owner_epoch, 2);
}

/// A node past its self-demotion deadline (on its own clock) writes
/// nothing, though its view still lists the shard.
async fn a_node_past_its_deadline_writes_nothing(store: Arc<dyn Store>) {
    let mut background = crate::common::Background::new();
    let mono = Arc::new(ManualMono::default());
    let (_owned, view) = watch::channel(holding_everything(1, 3_000));
    let node = orchestrator(&store, view, mono.clone(), &mut background);
    node.create_payment(create("acme", "r-1")).await.unwrap();
    mono.advance(3_000);
    let refused = node.create_payment(create("acme", "r-2")).await;
    assert!(
        matches!(refused, Err(CommandError::Moving(_))),
        "{refused:?}"
    );
    let (payments, _) =
        schema::list_payments(store.as_ref(), &AccountId::new("acme").unwrap(), None, 10)
            .await
            .unwrap();
    assert_eq!(payments.len(), 1);
}

/// Commands queued for an account whose actor is retired (its shard moved
/// away) while a write is in flight: each is answered `ACCOUNT_MOVING`,
/// so its caller retries at the new owner, and counted as a fenced write,
/// as if refused at staging. (A paused owner in the cluster test of
/// processes once had all its queued refunds dropped this way, uncounted,
/// answered a bare UNAVAILABLE.)
async fn commands_queued_for_a_retired_account_are_answered_moving_and_counted(
    store: Arc<dyn Store>,
) {
    let acme_write =
        |op: &WriteOp| *op.key() == schema::account_key(&AccountId::new("acme").unwrap());
    let holding = Arc::new(Intercepting::new(&store, acme_write, Interception::Hold));
    let through_holding: Arc<dyn Store> = holding.clone();
    let mut background = crate::common::Background::new();
    let (owned, view) = watch::channel(holding_everything(1, u64::MAX));
    let ownership = AccountOwnership::shards(view, Arc::new(ManualMono::default()), SHARDS);
    let node = orchestrator_owning(&through_holding, ownership.clone(), &mut background);
    let payment = node.create_payment(create("acme", "r-0")).await.unwrap();
    crate::actors::wait_until(&node, &payment, |p| p.state == PaymentState::Processed).await;
    let refund = |request: &str| RefundPayment {
        name: payment.name(),
        amount: Some(Money::from_minor(Currency::from_code("USD").unwrap(), 10)),
        reason: "customer asked".into(),
        request_id: RequestId::new(request).unwrap(),
        actor: None,
        trace: None,
    };

    holding.armed.store(true, Ordering::SeqCst);
    let in_flight = {
        let (node, command) = (node.clone(), refund("refund-1"));
        tokio::spawn(async move { node.refund_payment(command).await })
    };
    holding.held.notified().await;
    // Each polled once: its command waits in the actor's mailbox.
    let mut queued: Vec<_> = ["refund-2", "refund-3", "refund-4"]
        .map(|request| Box::pin(node.refund_payment(refund(request))))
        .into();
    for command in &mut queued {
        std::future::poll_fn(|cx| {
            assert!(std::future::Future::poll(command.as_mut(), cx).is_pending());
            std::task::Poll::Ready(())
        })
        .await;
    }
    let fenced_before = fenced_writes(&ownership);
    owned.send_replace(Owned::default());
    assert_eq!(node.retire_unserved(), 1, "acme's actor is retired");
    holding.release.notify_one();

    // The write sent while the node owned the account lands.
    in_flight.await.unwrap().expect("sent before the move");
    for command in queued {
        let refused = command.await;
        assert!(
            matches!(refused, Err(CommandError::Moving(_))),
            "a command queued at the move: {refused:?}"
        );
    }
    // (The refund's own next step, if its actor went on, is refused too.)
    let fenced = fenced_writes(&ownership) - fenced_before;
    assert!(fenced >= 3, "{fenced} fenced writes counted");
    let stored = node.get_payment(&payment.name()).await.unwrap();
    assert_eq!(stored.refunds.len(), 1, "refund-1 only");
}

/// Writes refused because the account was not `ownership`'s (its metric).
fn fenced_writes(ownership: &AccountOwnership) -> u64 {
    match ownership {
        AccountOwnership::Shards(held) => held.fenced_writes.get(),
        AccountOwnership::Everything => 0,
    }
}

/// One heartbeat period in which a round may fail (its store injects
/// faults): the node simply tries again next period.
async fn tick_through_faults(nodes: &mut [&mut Node]) {
    for node in nodes.iter() {
        node.clock.advance(TIMEOUTS.heartbeat_every);
    }
    for node in nodes.iter_mut() {
        let _ = node.membership.round().await;
    }
}

/// Three nodes whose every cluster call may be cancelled by a conflict,
/// throttled, or time out (a fifth of them; some timed-out writes land all
/// the same): no shard is ever served by two nodes, a node that stops still
/// loses its shards, and once the faults stop ownership is even and
/// complete.
async fn membership_under_injected_store_faults_never_serves_a_shard_twice(store: Arc<dyn Store>) {
    let faulty: Vec<Arc<FaultyStore>> = (0..3)
        .map(|n| {
            let faulty = FaultyStore::new(Arc::clone(&store), FaultScope::Leases, 200, 41 + n);
            faulty.set_faults(false);
            Arc::new(faulty)
        })
        .collect();
    let as_store = |n: usize| Arc::clone(&faulty[n]) as Arc<dyn Store>;
    let (mut a, mut b, mut c) = (
        join(&as_store(0), "a").await,
        join(&as_store(1), "b").await,
        join(&as_store(2), "c").await,
    );
    faulty.iter().for_each(|store| store.set_faults(true));
    for _ in 0..15 {
        tick_through_faults(&mut [&mut a, &mut b, &mut c]).await;
        served(&[&a, &b, &c]);
    }
    // c stops; a and b go on through the faults.
    for _ in 0..15 {
        c.clock.advance(TIMEOUTS.heartbeat_every);
        tick_through_faults(&mut [&mut a, &mut b]).await;
        served(&[&a, &b, &c]);
    }
    assert!(c.serves().is_empty(), "a stopped node serves nothing");
    let injected: u64 = faulty.iter().map(|store| store.injected.total()).sum();
    let landed: u64 = (faulty.iter())
        .map(|store| store.injected.timeouts_landed.load(Ordering::Relaxed))
        .sum();
    assert!(
        injected > 20 && landed > 0,
        "faults were injected: {injected}, {landed} landed"
    );
    faulty.iter().for_each(|store| store.set_faults(false));
    for _ in 0..12 {
        tick(&mut [&mut a, &mut b]).await;
    }
    assert_even_and_complete(&served(&[&a, &b]));
}

/// An owner whose data writes may be cancelled, throttled or time out
/// (some landing all the same), with clients retrying each create under its
/// `request_id` until it is acknowledged: every acknowledged create exists
/// exactly once and the books verify. Then a new owner takes over (through
/// the same faults): once it has written, none of the old owner's writes
/// lands.
async fn data_writes_under_injected_store_faults_are_never_lost_doubled_or_late(
    store: Arc<dyn Store>,
) {
    let faulty = Arc::new(FaultyStore::new(
        Arc::clone(&store),
        FaultScope::Data,
        150,
        7,
    ));
    let faulty_store = Arc::clone(&faulty) as Arc<dyn Store>;
    let (mut old_background, mut new_background) = (
        crate::common::Background::new(),
        crate::common::Background::new(),
    );
    let (_old_owned, old_view) = watch::channel(holding_everything(1, u64::MAX));
    let old = orchestrator(&faulty_store, old_view, Arc::default(), &mut old_background);
    let until_acknowledged = |node: &payvisor::actors::Orchestrator, request: String| {
        let node = node.clone();
        async move {
            for _ in 0..100 {
                match node.create_payment(create("acme", &request)).await {
                    Ok(payment) => return payment,
                    Err(
                        CommandError::Unavailable(_)
                        | CommandError::StoreUnavailable(_)
                        | CommandError::Conflict,
                    ) => continue,
                    Err(error) => panic!("{request}: {error:?}"),
                }
            }
            panic!("{request} never acknowledged");
        }
    };
    let mut acknowledged = BTreeSet::new();
    for n in 0..30 {
        let payment = until_acknowledged(&old, format!("r-{n}")).await;
        acknowledged.insert(payment.id);
    }
    assert!(faulty.injected.total() > 0, "faults were injected");

    let (_new_owned, new_view) = watch::channel(holding_everything(2, u64::MAX));
    let new = orchestrator(&faulty_store, new_view, Arc::default(), &mut new_background);
    let taken_over = until_acknowledged(&new, "r-new".into()).await;
    acknowledged.insert(taken_over.id);
    for n in 0..10 {
        match old
            .create_payment(create("acme", &format!("late-{n}")))
            .await
        {
            Ok(payment) => panic!("the old owner wrote after the new one: {payment:?}"),
            Err(
                CommandError::Moving(_)
                | CommandError::Unavailable(_)
                | CommandError::StoreUnavailable(_),
            ) => {}
            Err(error) => panic!("{error:?}"),
        }
    }
    faulty.set_faults(false);
    // Quiet before the books are read: the audit reads the account item
    // and the payments one after the other, not as one snapshot.
    new.shutdown(std::time::Duration::from_secs(5)).await;
    old.shutdown(std::time::Duration::from_secs(5)).await;
    let account = AccountId::new("acme").unwrap();
    let (payments, next) = schema::list_payments(store.as_ref(), &account, None, 100)
        .await
        .unwrap();
    assert!(next.is_none());
    let stored: BTreeSet<_> = payments.into_iter().map(|payment| payment.id).collect();
    assert_eq!(
        stored, acknowledged,
        "exactly the acknowledged creates, once each"
    );
    let audit = payvisor::audit::audit_account(store.as_ref(), &account)
        .await
        .unwrap();
    assert!(audit.is_clean(), "{audit:?}");
}

/// Remembers the payments whose events it was handed.
#[derive(Default)]
struct RecordingSink {
    payments: std::sync::Mutex<BTreeSet<String>>,
}

impl WebhookSink for RecordingSink {
    fn deliver<'a>(
        &'a self,
        _endpoint: &'a payvisor::webhooks::Endpoint,
        event: &'a payvisor::domain::events::PaymentEvent,
        _payment: Option<&'a payvisor::domain::payment::Payment>,
        _unix_seconds: i64,
    ) -> payvisor::store::BoxFuture<'a, Result<(), payvisor::webhooks::DeliveryError>> {
        Box::pin(async move {
            self.payments
                .lock()
                .unwrap()
                .insert(event.payment.account.to_string());
            Ok(())
        })
    }
}

/// Background work follows ownership: of two nodes on one store, each
/// holding half of the shards, each delivers the webhooks of the accounts
/// it owns and only those, and only the owner of shard 0 reconciles.
async fn background_work_runs_only_where_the_account_is_owned(store: Arc<dyn Store>) {
    let half = |odd: bool| Owned {
        valid_until: Some(Mono(u64::MAX)),
        shards: (0..SHARDS)
            .filter(|shard| (shard % 2 == 1) == odd)
            .map(|shard| (shard, 1))
            .collect(),
    };
    let accounts = |odd: bool| -> Vec<String> {
        (0..)
            .map(|n| format!("acct-{n}"))
            .filter(|account| (shard_of(account, SHARDS) % 2 == 1) == odd)
            .take(3)
            .collect()
    };
    let webhooks = || {
        WebhookSettings::fixed(
            vec![payvisor::webhooks::Endpoint::new(
                "shop",
                "http://127.0.0.1:9/",
                "0123456789abcdef",
            )
            .unwrap()],
            std::time::Duration::from_secs(3_600),
        )
    };
    let mut nodes = Vec::new();
    for odd in [false, true] {
        let mut background = crate::common::Background::new();
        let (sender, view) = watch::channel(half(odd));
        let sink = Arc::new(RecordingSink::default());
        let ownership = AccountOwnership::shards(view, Arc::new(ManualMono::default()), SHARDS);
        let node = orchestrator_with_webhooks(
            &store,
            ownership.clone(),
            &mut background,
            (webhooks(), sink.clone()),
        );
        for account in accounts(odd) {
            node.create_payment(create(&account, &format!("{account}-r")))
                .await
                .unwrap();
        }
        nodes.push((node, sink, ownership, background, sender));
    }
    // Both sweep everything that is due.
    for (node, ..) in &nodes {
        node.webhooks().sweep().await.unwrap();
    }
    for (index, (_, sink, ownership, ..)) in nodes.iter().enumerate() {
        let odd = index == 1;
        let delivered = sink.payments.lock().unwrap().clone();
        let owned: BTreeSet<String> = accounts(odd).into_iter().collect();
        assert_eq!(
            delivered, owned,
            "node {index} delivers its own accounts' webhooks"
        );
        assert_eq!(ownership.leads(), !odd, "the owner of shard 0 reconciles");
    }
}

fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    crate::common::sqlite_store()
}

async fn dynamodb(test: &str) -> Option<Arc<dyn Store>> {
    dynamodb_server::store_if_available(test, "cluster").await
}

macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let (store, _dir) = super::sqlite();
                    super::$scenario(store).await;
                }
            )*
        }
        mod on_dynamodb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let Some(store) = super::dynamodb(stringify!($scenario)).await else { return };
                    super::$scenario(store).await;
                }
            )*
        }
    };
}

on_both_stores!(
    nodes_starting_together_own_every_shard_once_in_even_shares,
    a_dead_nodes_shards_move_only_after_it_stopped_serving,
    a_claim_decided_while_a_node_was_away_fails_once_it_is_back,
    a_release_that_timed_out_is_not_taken_back,
    wall_clocks_an_hour_off_change_nothing_about_ownership,
    a_leaving_node_hands_its_shards_over_without_waiting_for_the_timeout,
    a_new_node_gets_its_share_in_bounded_steps,
    a_node_with_another_shard_count_is_refused,
    a_superseded_owner_writes_nothing_after_the_new_owners_first_write,
    a_node_past_its_deadline_writes_nothing,
    commands_queued_for_a_retired_account_are_answered_moving_and_counted,
    membership_under_injected_store_faults_never_serves_a_shard_twice,
    data_writes_under_injected_store_faults_are_never_lost_doubled_or_late,
    background_work_runs_only_where_the_account_is_owned,
);
