//! payvisor as a cluster of real processes: three (or four) `payvisor serve
//! --cluster` nodes on one table of the DynamoDB-API test server, with a
//! bank-sim, and clients that spread their calls over every node and retry
//! `UNAVAILABLE` under the same `request_id`, as a client behind a load
//! balancer does. Nodes are killed (`kill -9`), paused (`SIGSTOP`), added
//! and restarted one by one (SIGTERM); afterwards every acknowledged request
//! exists exactly once, every payment settles, the books verify and the
//! bank holds each payment once.
//!
//! These load the test server, which answers one request at a time:
//! `tests/run.sh` runs them in a phase of their own, with
//! `PAYVISOR_TEST_CLUSTER=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use payvisor::domain::ownership::shard_of;
use payvisor::grpc::pb;
use payvisor::grpc::pb::cluster_service_client::ClusterServiceClient;
use payvisor::grpc::pb::payment_service_client::PaymentServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Response, Status};
use tonic_types::StatusExt;

use crate::common::bank_sim::{free_port, metric, BankSim, BANK_SIM_SECRET};
use crate::common::*;

/// Whether this run includes the cluster group (see the module comment).
fn enabled(test: &str) -> bool {
    if std::env::var("PAYVISOR_TEST_CLUSTER").as_deref() != Ok("1") {
        eprintln!("{test}: skipped here; tests/run.sh runs it in its cluster phase (PAYVISOR_TEST_CLUSTER=1)");
        return false;
    }
    assert!(
        crate::common::dynamodb::available(test),
        "PAYVISOR_TEST_CLUSTER=1 needs AWS_ENDPOINT_URL_DYNAMODB"
    );
    true
}

/// How long a client waits for one answer: above the server's move wait and
/// forwarding bounds, so that a slow answer is not mistaken for a lost one.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Shards of the test clusters: the default.
const SHARDS: u16 = payvisor::limits::CLUSTER_SHARDS_DEFAULT;

struct Node {
    process: Child,
    args: Vec<String>,
    address: String,
    metrics: String,
    callbacks: String,
    /// The key the test presents for status (a cluster with `--auth`).
    operator_key: Option<String>,
    /// How the test reaches a node that serves TLS.
    client_tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Node {
    /// Starts a node (without waiting for it to listen), with `extra`
    /// flags.
    fn spawn(table: &str, bank: &str, extra: &[&str]) -> Node {
        let address = format!("127.0.0.1:{}", free_port());
        let metrics = format!("127.0.0.1:{}", free_port());
        let callbacks = format!("127.0.0.1:{}", free_port());
        // Nodes on one machine share its host name: each is named, as
        // deploy/ says to (the name keys its watchdog's page).
        let name = format!("node-{}", address.rsplit(':').next().unwrap());
        let args: Vec<String> = [
            "serve",
            "--node-name",
            &name,
            "--store",
            "dynamodb",
            "--dynamodb-table",
            table,
            "--cluster",
            "--listen",
            &address,
            "--bank-url",
            bank,
            "--bank-name",
            "bank-a",
            "--bank-secret",
            BANK_SIM_SECRET,
            "--bank-callback-listen",
            &callbacks,
            "--metrics-listen",
            &metrics,
            // A payment whose node died mid-way is found by its new owner
            // at once (recovery of gained shards); lost callbacks by this.
            "--stall-deadline",
            "sent=3s",
            "--stall-deadline",
            "refunding=3s",
        ]
        .iter()
        .chain(extra)
        .map(|arg| arg.to_string())
        .collect();
        let process = launch(&args);
        Node {
            process,
            args,
            address,
            metrics,
            callbacks,
            operator_key: None,
            client_tls: None,
        }
    }

    /// The same node again after it stopped (a new process: a new id).
    fn restart(&mut self) {
        self.process = launch(&self.args);
    }

    fn pid(&self) -> String {
        self.process.id().to_string()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal}");
    }

    fn kill9(&mut self) {
        self.process.kill().expect("SIGKILL");
        self.process.wait().expect("reap");
    }

    /// Waits for the exit (bounded), polling so the test's tasks run.
    async fn exited(&mut self) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
        loop {
            if let Some(status) = self.process.try_wait().expect("wait") {
                return status;
            }
            assert!(tokio::time::Instant::now() < deadline, "node did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn channel(&self) -> Channel {
        let endpoint = match &self.client_tls {
            None => Endpoint::from_shared(format!("http://{}", self.address)).unwrap(),
            Some(tls) => Endpoint::from_shared(format!("https://{}", self.address))
                .unwrap()
                .tls_config(tls.clone())
                .unwrap(),
        };
        endpoint
            .connect_timeout(Duration::from_secs(2))
            .timeout(CALL_TIMEOUT)
            .connect_lazy()
    }

    fn client(&self) -> PaymentServiceClient<Channel> {
        PaymentServiceClient::new(self.channel())
    }

    async fn status(&self) -> Result<pb::ClusterStatus, Status> {
        let mut request = tonic::Request::new(pb::GetClusterStatusRequest {});
        if let Some(key) = &self.operator_key {
            crate::security::present(&mut request, key);
        }
        ClusterServiceClient::new(self.channel())
            .get_cluster_status(request)
            .await
            .map(Response::into_inner)
    }

    fn metric(&self, name: &str) -> i64 {
        metric(&self.metrics, name)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A paused node is resumed first, so that the kill takes.
        let _ = Command::new("kill")
            .args(["-CONT", &self.process.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Starts `payvisor` with `args`; its stdout is drained (the listening
/// line is waited for by [`listening`]).
fn launch(args: &[String]) -> Child {
    Command::new(BINARY)
        .args(args)
        // PAYVISOR_TEST_NODE_LOG=debug shows what the nodes did.
        .env(
            "RUST_LOG",
            std::env::var("PAYVISOR_TEST_NODE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start payvisor")
}

/// Waits until each node's listening line is out.
fn listening(nodes: &mut [&mut Node]) {
    for node in nodes {
        let stdout = node.process.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let Some(line) = lines.next() else {
                let status = node.process.wait().expect("reap");
                panic!("payvisor exited before listening ({status}); its stderr is above");
            };
            let line = line.expect("read stdout");
            if line.starts_with("payvisor listening on ") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
    }
}

struct TestCluster {
    table: String,
    bank: BankSim,
    _bank_dir: tempfile::TempDir,
    bank_url: String,
    nodes: Vec<Node>,
}

impl TestCluster {
    /// A fresh table, a bank, and `size` nodes started together, settled.
    async fn start(size: usize) -> TestCluster {
        TestCluster::start_with(size, &[]).await
    }

    /// The same, every node with the `extra` flags.
    async fn start_with(size: usize, extra: &[&str]) -> TestCluster {
        TestCluster::start_keyed(size, extra, None, None).await
    }

    /// The same, with `operator_key` presented for the cluster's status,
    /// reaching the nodes with `client_tls` if they serve TLS.
    async fn start_keyed(
        size: usize,
        extra: &[&str],
        operator_key: Option<&str>,
        client_tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> TestCluster {
        let table = crate::common::dynamodb::created_table("cluster");
        let bank_dir = tempfile::tempdir().unwrap();
        let bank = BankSim::start(
            bank_dir.path(),
            free_port(),
            &["--outcome-delay-ms", "5..50"],
        );
        let bank_url = format!("http://{}", bank.address);
        let mut nodes: Vec<Node> = (0..size)
            .map(|_| Node::spawn(&table, &bank_url, extra))
            .collect();
        for node in &mut nodes {
            node.operator_key = operator_key.map(str::to_owned);
            node.client_tls = client_tls.clone();
        }
        listening(&mut nodes.iter_mut().collect::<Vec<_>>());
        let cluster = TestCluster {
            table,
            bank,
            _bank_dir: bank_dir,
            bank_url,
            nodes,
        };
        cluster.settled(size).await;
        cluster
    }

    /// Adds a node and waits for it to listen.
    fn add_node(&mut self) -> usize {
        let mut node = Node::spawn(&self.table, &self.bank_url, &[]);
        listening(&mut [&mut node]);
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn clients(&self) -> Vec<PaymentServiceClient<Channel>> {
        self.nodes.iter().map(Node::client).collect()
    }

    /// Waits until every running node sees `size` live nodes, each with its
    /// even share ±1 of the shards, and all agree on every shard's owner.
    /// Returns the owners by shard.
    async fn settled(&self, size: usize) -> Vec<String> {
        self.settled_among(&(0..self.nodes.len()).collect::<Vec<_>>(), size)
            .await
    }

    async fn settled_among(&self, running: &[usize], size: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
        loop {
            let mut views = Vec::new();
            for &index in running {
                if let Ok(status) = self.nodes[index].status().await {
                    views.push(status);
                }
            }
            if views.len() == running.len() && agree_and_even(&views, size) {
                return views[0].shards.iter().map(|s| s.owner.clone()).collect();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the cluster never settled: {:?}",
                views
                    .iter()
                    .map(|view| view
                        .nodes
                        .iter()
                        .map(|n| (n.id.clone(), n.shards_owned, n.alive))
                        .collect::<Vec<_>>())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The node id of the node at `index`, as the cluster knows it.
    async fn id_of(&self, index: usize) -> String {
        self.nodes[index].status().await.expect("status").node
    }

    /// `ledger verify` on the table for `accounts`; panics unless clean.
    fn verify_ledger(&self, accounts: &[String]) {
        let mut command = Command::new(BINARY);
        command.args([
            "ledger",
            "verify",
            "--store",
            "dynamodb",
            "--dynamodb-table",
            &self.table,
        ]);
        for account in accounts {
            command.args(["--account", account]);
        }
        let output = command.output().expect("run ledger verify");
        assert!(
            output.status.success(),
            "ledger verify failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Every view lists `size` live nodes and the same owner for every shard,
/// none free, shares even ±1.
fn agree_and_even(views: &[pb::ClusterStatus], size: usize) -> bool {
    let owners = |view: &pb::ClusterStatus| -> Vec<String> {
        view.shards
            .iter()
            .map(|shard| shard.owner.clone())
            .collect()
    };
    let first = owners(&views[0]);
    if first.len() != usize::from(SHARDS) || first.iter().any(String::is_empty) {
        return false;
    }
    if views.iter().any(|view| owners(view) != first) {
        return false;
    }
    let live: Vec<_> = views[0]
        .nodes
        .iter()
        .filter(|n| n.alive && !n.leaving)
        .collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for owner in &first {
        *counts.entry(owner.as_str()).or_default() += 1;
    }
    let even = usize::from(SHARDS) / size;
    live.len() == size
        && counts.len() == size
        && counts
            .values()
            .all(|&count| count == even || count == even + 1)
}

/// An account whose shard `owner` holds (by the cluster's owners by shard).
fn account_owned_by(owners: &[String], owner: &str, prefix: &str) -> String {
    (0..)
        .map(|n| format!("{prefix}{n}"))
        .find(|account| owners[usize::from(shard_of(account, SHARDS))] == owner)
        .unwrap()
}

/// Whether a client retries after `status` (with the same `request_id`):
/// UNAVAILABLE and DEADLINE_EXCEEDED, and a failure of the connection
/// itself, which the client library reports as CANCELLED or UNKNOWN without
/// any `ErrorInfo` (every status payvisor answers carries one): a node
/// killed or shutting down mid-call.
fn retryable(status: &Status) -> bool {
    let from_the_connection =
        reason(status).is_empty() && matches!(status.code(), Code::Cancelled | Code::Unknown);
    from_the_connection || matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
}

/// Calls `call` on the nodes in turn, starting at `first`, again after a
/// retryable answer (the same request: the same `request_id`), until it is
/// answered otherwise (bounded by [`PROGRESS_DEADLINE`]). Returns the answer
/// and the retryable codes seen before it.
async fn retrying<T, Fut>(
    clients: &[PaymentServiceClient<Channel>],
    first: usize,
    call: impl Fn(PaymentServiceClient<Channel>) -> Fut,
) -> (Result<T, Status>, Vec<Code>)
where
    Fut: Future<Output = Result<Response<T>, Status>>,
{
    let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
    let mut seen = Vec::new();
    let mut node = first;
    loop {
        match call(clients[node % clients.len()].clone()).await {
            Ok(answer) => return (Ok(answer.into_inner()), seen),
            Err(status) if retryable(&status) && tokio::time::Instant::now() < deadline => {
                if reason(&status) == "ACCOUNT_MOVING" {
                    assert!(
                        status.get_error_details().retry_info().is_some(),
                        "a moving account says when to retry: {status:?}"
                    );
                }
                seen.push(status.code());
                node += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => return (Err(status), seen),
        }
    }
}

/// What the clients were told.
#[derive(Default)]
struct Acknowledged {
    /// Payment name by create request id.
    creates: BTreeMap<String, String>,
    /// Payment name by refund request id.
    refunds: BTreeMap<String, String>,
    /// Retryable answers seen (calls that were then retried).
    retried: usize,
    /// Anything else: none is expected.
    unexpected: Vec<String>,
}

/// Clients creating and refunding payments over `accounts`, spread over
/// the nodes, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Acknowledged>>,
}

impl Load {
    fn start(
        clients: Vec<PaymentServiceClient<Channel>>,
        accounts: &[String],
        workers: usize,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|worker| {
                let clients = clients.clone();
                let accounts = accounts.to_vec();
                let stop = Arc::clone(&stop);
                tokio::spawn(async move { work(worker, clients, accounts, stop).await })
            })
            .collect();
        Load { stop, workers }
    }

    async fn stop(self) -> Acknowledged {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Acknowledged::default();
        for worker in self.workers {
            let done = worker.await.expect("a load worker panicked");
            all.creates.extend(done.creates);
            all.refunds.extend(done.refunds);
            all.retried += done.retried;
            all.unexpected.extend(done.unexpected);
        }
        all
    }
}

/// One client: a create, and every third step a partial refund of one of
/// its processed payments; each call retried until answered.
async fn work(
    worker: usize,
    clients: Vec<PaymentServiceClient<Channel>>,
    accounts: Vec<String>,
    stop: Arc<AtomicBool>,
) -> Acknowledged {
    let mut done = Acknowledged::default();
    let mut step = 0;
    while !stop.load(Ordering::SeqCst) {
        step += 1;
        let account = &accounts[(worker + step) % accounts.len()];
        let request = format!("w{worker}-c{step}");
        let (answer, seen) = retrying(&clients, worker + step, |mut client| {
            let request = create_request(account, &request, 1_000 + step as i64);
            async move { client.create_payment(request).await }
        })
        .await;
        done.retried += seen.len();
        match answer {
            Ok(payment) => {
                done.creates.insert(request, payment.name);
            }
            Err(status) => done
                .unexpected
                .push(format!("create {request}: {status:?}")),
        }
        if step % 3 == 0 {
            refund_one(worker, step, &clients, &mut done).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done
}

/// Refunds 1.00 of the oldest processed payment of this worker not yet
/// refunded, if there is one.
async fn refund_one(
    worker: usize,
    step: usize,
    clients: &[PaymentServiceClient<Channel>],
    done: &mut Acknowledged,
) {
    let refunded: BTreeSet<&String> = done.refunds.values().collect();
    let candidates: Vec<String> = done
        .creates
        .values()
        .filter(|name| !refunded.contains(name))
        .take(3)
        .cloned()
        .collect();
    for name in candidates {
        let read = clients[step % clients.len()]
            .clone()
            .get_payment(pb::GetPaymentRequest { name: name.clone() })
            .await;
        let Ok(payment) = read else { continue };
        if state(&payment.into_inner()) != pb::payment::State::Processed {
            continue;
        }
        let request = format!("w{worker}-r{step}");
        let (answer, seen) = retrying(clients, step, |mut client| {
            let refund = refund_request(&name, &request, Some(100));
            async move { client.refund_payment(refund).await }
        })
        .await;
        done.retried += seen.len();
        match answer {
            Ok(_) => {
                done.refunds.insert(request, name);
            }
            Err(status) => done
                .unexpected
                .push(format!("refund {request}: {status:?}")),
        }
        return;
    }
}

/// After the load: nothing unexpected was answered; every acknowledged
/// create exists exactly once (an account holds exactly the payments its
/// acknowledged creates named), every acknowledged refund once; every
/// payment settles; the books verify; the bank holds each payment once.
async fn verify(
    cluster: &TestCluster,
    running: &[usize],
    acknowledged: &Acknowledged,
    accounts: &[String],
) {
    assert!(
        acknowledged.unexpected.is_empty(),
        "answers other than retryable ones: {:?}",
        acknowledged.unexpected
    );
    assert!(!acknowledged.creates.is_empty());
    let mut client = cluster.nodes[running[0]].client();
    let mut at_bank = 0;
    for account in accounts {
        let expected: BTreeSet<&String> = acknowledged
            .creates
            .values()
            .filter(|name| name.starts_with(&format!("accounts/{account}/")))
            .collect();
        let stored = list_all(&mut client, account, 200).await;
        let names: BTreeSet<&String> = stored.iter().map(|payment| &payment.name).collect();
        assert_eq!(
            names, expected,
            "account {account}: payments = acknowledged creates"
        );
        for name in expected {
            let payment = wait_for(&mut client, name, finished).await;
            let refunds_acknowledged = acknowledged.refunds.values().filter(|n| *n == name).count();
            assert_eq!(
                payment.refunds.len(),
                refunds_acknowledged,
                "{name}: refunds = acknowledged refunds"
            );
            if state(&payment) != pb::payment::State::Failed {
                at_bank += 1;
            }
        }
    }
    cluster.verify_ledger(accounts);
    let stats = cluster.bank.stats();
    assert_eq!(stats["conflicting_submissions"], 0, "{stats}");
    assert_eq!(
        stats["distinct_payments"], at_bank,
        "each payment at the bank once: {stats}"
    );
}

/// A payment that reached a final state, refunds included.
fn finished(payment: &pb::Payment) -> bool {
    use pb::payment::State;
    matches!(
        state(payment),
        State::Processed
            | State::PartiallyRefunded
            | State::Refunded
            | State::Failed
            | State::Declined
    ) && is_settled(payment)
}

fn accounts(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|n| format!("{prefix}{n}")).collect()
}

/// `kill -9` an owner while clients create and refund through every node:
/// its shards move to the others, and nothing acknowledged is lost or
/// doubled. The failover time (kill → first commit on one of its accounts,
/// through another node) is printed; the benchmark measures its
/// distribution.
#[tokio::test(flavor = "multi_thread")]
async fn an_owner_killed_under_load_loses_nothing_and_its_shards_move() {
    if !enabled("kill -9 under load") {
        return;
    }
    let mut cluster = TestCluster::start(3).await;
    let owners = cluster.settled(3).await;
    let victim = cluster.id_of(2).await;
    let orphan = account_owned_by(&owners, &victim, "orphan-");
    let mut accounts = accounts("kill-", 6);
    accounts.push(orphan.clone());
    let load = Load::start(cluster.clients(), &accounts, 4);
    tokio::time::sleep(Duration::from_secs(3)).await;

    cluster.nodes[2].kill9();
    let killed = tokio::time::Instant::now();
    let survivors = [cluster.nodes[0].client(), cluster.nodes[1].client()];
    let (answer, _) = retrying(&survivors, 0, |mut client| {
        let request = create_request(&orphan, "failover-probe", 4_242);
        async move { client.create_payment(request).await }
    })
    .await;
    let probe = answer.expect("a create on the dead node's account, through a survivor");
    eprintln!(
        "failover: first commit on a shard of the killed node {:?} after the kill",
        killed.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut acknowledged = load.stop().await;
    acknowledged
        .creates
        .insert("failover-probe".into(), probe.name);
    eprintln!(
        "{} creates and {} refunds acknowledged, {} retried answers",
        acknowledged.creates.len(),
        acknowledged.refunds.len(),
        acknowledged.retried
    );
    let owners = cluster.settled_among(&[0, 1], 2).await;
    assert!(owners.iter().all(|owner| *owner != victim));
    verify(&cluster, &[0, 1], &acknowledged, &accounts).await;
}

/// A node paused (SIGSTOP) past the dead timeout while its account actor
/// holds queued refunds: its peers take its shards, and when it resumes,
/// none of those refunds lands after the new owner's first write; each is
/// refused and counted, and the node gives up the shard.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_owner_writes_nothing_after_its_successor_has_written() {
    if !enabled("paused owner") {
        return;
    }
    let cluster = TestCluster::start(3).await;
    let owners = cluster.settled(3).await;
    let victim_id = cluster.id_of(2).await;
    let account = account_owned_by(&owners, &victim_id, "paused-");
    let shard = usize::from(shard_of(&account, SHARDS));
    let old_epoch = cluster.nodes[0].status().await.unwrap().shards[shard].epoch;
    let victim = &cluster.nodes[2];
    let mut client = victim.client();
    let payment = processed_payment(&mut client, &account, "paused-payment", 100_000).await;

    // Refunds queue up in the owner's account actor (one write at a time).
    let refunds: Vec<_> = (0..20)
        .map(|n| {
            let mut client = victim.client();
            let request = refund_request(&payment.name, &format!("paused-refund-{n}"), Some(1));
            tokio::spawn(async move { client.refund_payment(request).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(40)).await;
    victim.signal("-STOP");

    // The peers take the shard and the new owner writes the account.
    let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
    loop {
        let status = cluster.nodes[0].status().await.unwrap();
        let lease = &status.shards[shard];
        if lease.owner != victim_id && !lease.owner.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the shard never moved"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let survivors = [cluster.nodes[0].client(), cluster.nodes[1].client()];
    let (answer, _) = retrying(&survivors, 0, |mut client| {
        let request = create_request(&account, "after-the-move", 500);
        async move { client.create_payment(request).await }
    })
    .await;
    answer.expect("the new owner writes the account");
    let get = |mut client: PaymentServiceClient<Channel>, name: String| async move {
        client
            .get_payment(pb::GetPaymentRequest { name })
            .await
            .unwrap()
            .into_inner()
    };
    let refunds_at_move = get(cluster.nodes[0].client(), payment.name.clone())
        .await
        .refunds
        .len();

    victim.signal("-CONT");
    let (mut acknowledged, mut refused, mut unanswered) = (0, 0, 0);
    for refund in refunds {
        match refund.await.unwrap() {
            Ok(_) => acknowledged += 1,
            Err(status) if status.code() == Code::Unavailable => refused += 1,
            Err(status) if status.code() == Code::DeadlineExceeded => unanswered += 1,
            Err(status) => panic!("a queued refund: {status:?}"),
        }
    }
    eprintln!("queued refunds: {acknowledged} acknowledged before the pause, {refused} refused after it, {unanswered} unanswered");
    assert!(refused > 0, "refunds were queued at the pause");
    assert!(acknowledged <= refunds_at_move);
    // Nothing more lands, whatever the resumed node still had.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = get(cluster.nodes[0].client(), payment.name.clone()).await;
    assert_eq!(
        after.refunds.len(),
        refunds_at_move,
        "no refund landed after the move"
    );
    assert!(
        victim.metric("payvisor_cluster_fenced_writes_total") >= 1,
        "the refused writes are counted"
    );
    // It gives the shard up: whoever holds it now holds it at a newer epoch.
    let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
    loop {
        if let Ok(status) = victim.status().await {
            let lease = &status.shards[shard];
            if lease.epoch > old_epoch + 1 || (lease.owner != victim_id && lease.epoch > old_epoch)
            {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the paused node kept its view"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.verify_ledger(&[account]);
}

/// One account's calls sent to every node at once are all served by its
/// owner: no `ABORTED` from concurrency races, nothing to retry (no shard
/// moves), and each node's calls in the order it sent them.
#[tokio::test(flavor = "multi_thread")]
async fn one_hot_account_is_served_by_its_owner_through_every_node() {
    if !enabled("hot account") {
        return;
    }
    let cluster = TestCluster::start(3).await;
    let owners = cluster.settled(3).await;
    let owner = cluster.id_of(0).await;
    let hot = account_owned_by(&owners, &owner, "hot-");
    let mut senders = Vec::new();
    for (index, node) in cluster.nodes.iter().enumerate() {
        for lane in 0..2 {
            let mut client = node.client();
            let hot = hot.clone();
            senders.push(tokio::spawn(async move {
                let mut answered = Vec::new();
                for n in 0..5 {
                    let request = create_request(&hot, &format!("hot-{index}-{lane}-{n}"), 1_000);
                    let payment = client
                        .create_payment(request)
                        .await
                        .unwrap_or_else(|status| panic!("node {index}: {status:?}"))
                        .into_inner();
                    answered.push(payment);
                }
                answered
            }));
        }
    }
    let mut lanes = Vec::new();
    for sender in senders {
        lanes.push(sender.await.unwrap());
    }
    for lane in &lanes {
        let times: Vec<_> = lane
            .iter()
            .map(|payment| {
                let time = payment.create_time.as_ref().unwrap();
                (time.seconds, time.nanos)
            })
            .collect();
        assert!(
            times.windows(2).all(|pair| pair[0] <= pair[1]),
            "in sending order: {times:?}"
        );
    }
    let mut client = cluster.nodes[1].client();
    for (index, lane) in lanes.iter().enumerate() {
        let payment = lane.last().unwrap();
        let processed = wait_for(&mut client, &payment.name, |payment| {
            state(payment) == pb::payment::State::Processed
        })
        .await;
        let refund = refund_request(&processed.name, &format!("hot-refund-{index}"), Some(10));
        cluster.nodes[2]
            .client()
            .refund_payment(refund)
            .await
            .expect("a refund through another node");
    }
    assert_eq!(
        cluster.nodes[0].metric("payvisor_cluster_forwarded_calls_total"),
        0
    );
    // Node 1 forwarded its 10 creates; node 2 its 10 and the 6 refunds.
    assert_eq!(
        cluster.nodes[1].metric("payvisor_cluster_forwarded_calls_total"),
        10
    );
    assert_eq!(
        cluster.nodes[2].metric("payvisor_cluster_forwarded_calls_total"),
        10 + 6
    );
    for node in &cluster.nodes {
        assert_eq!(node.metric("payvisor_cluster_fenced_writes_total"), 0);
    }
    let payments = list_all(&mut client, &hot, 200).await;
    assert_eq!(payments.len(), 30);
    for payment in &payments {
        wait_for(&mut client, &payment.name, finished).await;
    }
    cluster.verify_ledger(&[hot]);
}

/// A fourth node started under load takes its even share, in steps;
/// nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_fourth_node_takes_its_share_under_load() {
    if !enabled("scale out") {
        return;
    }
    let mut cluster = TestCluster::start(3).await;
    let accounts = accounts("scale-", 6);
    let load = Load::start(cluster.clients(), &accounts, 3);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let added = cluster.add_node();
    let owners = cluster.settled(4).await;
    let newcomer = cluster.id_of(added).await;
    let held = owners.iter().filter(|owner| **owner == newcomer).count();
    assert!(held == 64, "the new node holds its share: {held}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acknowledged = load.stop().await;
    verify(&cluster, &[0, 1, 2, 3], &acknowledged, &accounts).await;
}

/// Nodes started at the same moment: every shard gets exactly one owner,
/// and every node sees the same owners, in even shares.
#[tokio::test(flavor = "multi_thread")]
async fn nodes_started_together_give_every_shard_one_owner() {
    if !enabled("cold start") {
        return;
    }
    let cluster = TestCluster::start(3).await;
    let owners = cluster.settled(3).await;
    let ids: BTreeSet<String> = [
        cluster.id_of(0).await,
        cluster.id_of(1).await,
        cluster.id_of(2).await,
    ]
    .into();
    assert!(owners.iter().all(|owner| ids.contains(owner)));
    for node in &cluster.nodes {
        let owned = node.metric("payvisor_cluster_shards_owned");
        assert!((85..=86).contains(&owned), "{owned}");
    }
}

/// SIGTERM one node at a time, start it again, under load: clients see only
/// retryable answers, each node exits 0 and hands its shards over, and
/// nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_shows_clients_only_retryable_errors() {
    if !enabled("rolling restart") {
        return;
    }
    let mut cluster = TestCluster::start(3).await;
    let accounts = accounts("rolling-", 6);
    let load = Load::start(cluster.clients(), &accounts, 3);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for index in 0..cluster.nodes.len() {
        cluster.nodes[index].signal("-TERM");
        let exit = cluster.nodes[index].exited().await;
        assert!(exit.success(), "node {index} exits 0: {exit:?}");
        let others: Vec<usize> = (0..3).filter(|other| *other != index).collect();
        // Handed over: the others hold every shard without waiting for the
        // dead timeout.
        cluster.settled_among(&others, 2).await;
        cluster.nodes[index].restart();
        listening(&mut [&mut cluster.nodes[index]]);
        cluster.settled(3).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acknowledged = load.stop().await;
    eprintln!(
        "{} creates and {} refunds acknowledged through the restarts, {} retried answers",
        acknowledged.creates.len(),
        acknowledged.refunds.len(),
        acknowledged.retried
    );
    verify(&cluster, &[0, 1, 2], &acknowledged, &accounts).await;
}

/// Any node is the whole cluster to its clients: live events and pages
/// decided on another node reach a watcher here; a bank callback that
/// arrives here for an account another node owns is handed to it and
/// recorded there before the bank's 200; a call already forwarded once is
/// never forwarded again (it waits for the shard, then `ACCOUNT_MOVING`
/// with a retry delay); and `payvisor cluster status` shows every node and
/// shard.
#[tokio::test(flavor = "multi_thread")]
async fn any_node_shows_the_whole_cluster_and_hands_work_to_the_owner() {
    if !enabled("one cluster") {
        return;
    }
    // A payment that waits for the bank is paged at its first stall
    // deadline.
    let cluster = TestCluster::start_with(3, &["--redrive-max", "0"]).await;
    let owners = cluster.settled(3).await;
    let owner = cluster.id_of(2).await;
    let account = account_owned_by(&owners, &owner, "whole-");
    let mut watcher = cluster.nodes[0].client();
    let mut events = watcher
        .watch_payment_events(pb::WatchPaymentEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut alerts = watcher
        .watch_alerts(pb::WatchAlertsRequest::default())
        .await
        .unwrap()
        .into_inner();
    // Decided on node 2: the bank holds it without an answer.
    let mut request = create_request(&account, "whole-hang", 2_500);
    request
        .payment
        .as_mut()
        .unwrap()
        .metadata
        .insert("bank_sim".into(), "hang".into());
    let payment = cluster.nodes[2]
        .client()
        .create_payment(request.clone())
        .await
        .unwrap()
        .into_inner();
    // The same request through node 0, which forwards it to the owner: the
    // owner's answer is a replay, and node 0 passes its mark on.
    let replayed = cluster.nodes[0]
        .client()
        .create_payment(request)
        .await
        .unwrap();
    let mark = replayed.metadata().get("idempotent-replayed");
    assert_eq!(mark.map(|value| value.to_str().unwrap()), Some("true"));
    assert_eq!(replayed.get_ref().name, payment.name);
    let event = tokio::time::timeout(PROGRESS_DEADLINE, async {
        loop {
            let event = events.message().await.unwrap().expect("the stream goes on");
            if event.name.starts_with(&payment.name) {
                return event;
            }
        }
    })
    .await
    .expect("node 2's event seen on node 0");
    eprintln!("seen on node 0: {}", event.name);
    let alert = tokio::time::timeout(PROGRESS_DEADLINE, async {
        loop {
            let alert = alerts.message().await.unwrap().expect("the stream goes on");
            if alert.payment == payment.name {
                return alert;
            }
        }
    })
    .await
    .expect("node 2's page seen on node 0");
    assert_eq!(alert.action, pb::alert::Action::Trigger as i32);

    // The bank calls back node 0, which does not own the account.
    let body = serde_json::json!({
        "message_id": "bank-a-handed-1",
        "bank": "bank-a",
        "type": "payment.processed",
        "payment_id": payment.name,
    })
    .to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let signature = payvisor::signature::sign(BANK_SIM_SECRET.as_bytes(), now, body.as_bytes());
    let answer = post(
        &cluster.nodes[0].callbacks,
        "/v1/callbacks/bank-a",
        &signature,
        &body,
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("applied"), "{answer}");
    // Recorded by the time the bank heard 200.
    let stored = cluster.nodes[1]
        .client()
        .get_payment(pb::GetPaymentRequest {
            name: payment.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&stored), pb::payment::State::Processed);
    // A forged one is refused at node 0, before any hand-over.
    let forged = post(
        &cluster.nodes[0].callbacks,
        "/v1/callbacks/bank-a",
        "t=1,v1=00",
        &body,
    );
    assert!(forged.starts_with("HTTP/1.1 401"), "{forged}");

    // A call marked as forwarded is not forwarded again.
    let mut once = tonic::Request::new(create_request(&account, "whole-hop", 100));
    once.metadata_mut()
        .insert("payvisor-forwarded-by", "n-elsewhere".parse().unwrap());
    let refused = cluster.nodes[1]
        .client()
        .create_payment(once)
        .await
        .expect_err("a second hop");
    assert_eq!(refused.code(), Code::Unavailable);
    assert_eq!(reason(&refused), "ACCOUNT_MOVING");
    assert!(refused.get_error_details().retry_info().is_some());
    assert_eq!(
        cluster.nodes[1].metric("payvisor_cluster_forwarded_calls_total"),
        0
    );

    // Operators see the cluster from any node.
    let output = Command::new(BINARY)
        .args(["cluster", "status", "--json", "--server"])
        .arg(format!("http://{}", cluster.nodes[1].address))
        .output()
        .unwrap();
    assert!(output.status.success());
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["clustered"], true);
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3);
    let shards = status["shards"].as_array().unwrap();
    assert_eq!(shards.len(), usize::from(SHARDS));
    // The canonical JSON mapping writes a 64-bit epoch as a string.
    assert!(shards.iter().all(|shard| shard["owner"] != ""
        && shard["epoch"].as_str().and_then(|e| e.parse::<u64>().ok()) >= Some(1)));
    let table = Command::new(BINARY)
        .args(["cluster", "status", "--server"])
        .arg(format!("http://{}", cluster.nodes[0].address))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("3 nodes, 256 shards (0 without an owner)"),
        "{text}"
    );
    assert!(text.contains(&owner), "{text}");
}

/// A raw HTTP/1.1 POST with a `bank-signature`; the whole answer.
fn post(address: &str, path: &str, signature: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nbank-signature: {signature}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[tokio::test(flavor = "multi_thread")]
async fn with_an_access_list_and_mutual_tls_every_node_acts_for_the_caller_and_no_further() {
    if !enabled("secured cluster") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (node_key, node_entry) = crate::security::new_key(&["--role", "node", "--id", "nodes"]);
    let (admin, admin_entry) = crate::security::new_key(&["--role", "admin", "--id", "ops"]);
    let (tenant, tenant_entry) = crate::security::new_key(&[
        "--role",
        "gateway",
        "--id",
        "gw-a",
        "--account-prefix",
        "sec-a",
    ]);
    let access = dir.path().join("access.json");
    // A person with a certificate whose subject is not ASCII: their
    // identity crosses to the owner all the same.
    let list = serde_json::json!({
        "keys": [node_entry, admin_entry, tenant_entry],
        "certificates": [{
            "subject": "CN=Zoë Ødegård,O=payvisor",
            "roles": ["gateway"],
            "account_prefix": "sec-a",
        }],
    });
    std::fs::write(&access, list.to_string()).unwrap();
    // Every node serves mutual TLS with a certificate of the cluster's CA,
    // and calls its peers the same way.
    let ca = crate::common::certs::Authority::new(dir.path(), "cluster-ca");
    let person = ca.client("Zoë Ødegård", "payvisor");
    let node_cert = ca.server("payvisor-node");
    let test_client = ca.client("cluster-test", "payvisor");
    let client_tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(&ca.cert).unwrap(),
        ))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(&test_client.cert).unwrap(),
            std::fs::read(&test_client.key).unwrap(),
        ));
    let cluster = TestCluster::start_keyed(
        2,
        &[
            "--auth",
            access.to_str().unwrap(),
            "--node-key",
            &node_key,
            "--tls-cert",
            node_cert.cert.to_str().unwrap(),
            "--tls-key",
            node_cert.key.to_str().unwrap(),
            "--tls-client-ca",
            ca.cert.to_str().unwrap(),
            "--tls-peer-ca",
            ca.cert.to_str().unwrap(),
        ],
        Some(&admin),
        Some(client_tls),
    )
    .await;
    let owners = cluster.settled(2).await;
    let far = cluster.id_of(1).await;
    let ours = account_owned_by(&owners, &far, "sec-a");
    let theirs = account_owned_by(&owners, &far, "sec-b");
    use crate::security::with_key as keyed;
    let mut near = cluster.nodes[0].client();

    // Node 0 follows node 1's feed with the node key: the tenant watching
    // on node 0 sees what node 1 decides for its accounts.
    let mut events = near
        .watch_payment_events(keyed(pb::WatchPaymentEventsRequest::default(), &tenant))
        .await
        .unwrap()
        .into_inner();
    // Forwarded to node 1 on the tenant's behalf, and accepted there.
    let payment = near
        .create_payment(keyed(create_request(&ours, "sec-1", 700), &tenant))
        .await
        .expect("forwarded on the caller's behalf")
        .into_inner();
    assert!(cluster.nodes[0].metric("payvisor_cluster_forwarded_calls_total") >= 1);
    tokio::time::timeout(PROGRESS_DEADLINE, async {
        loop {
            let event = events.message().await.unwrap().expect("the stream goes on");
            assert!(
                event.payment.starts_with(&format!("accounts/{ours}/")),
                "{event:?}"
            );
            if event.payment == payment.name
                && event.to_state == pb::payment::State::Processed as i32
            {
                return;
            }
        }
    })
    .await
    .expect("node 1's events seen on node 0");

    // Another tenant's account: refused, and no identity can be borrowed
    // by a caller that is not a node.
    let mut borrowed = keyed(create_request(&theirs, "sec-2", 700), &tenant);
    borrowed
        .metadata_mut()
        .insert("payvisor-on-behalf-of", "ops".parse().unwrap());
    let refused = near.create_payment(borrowed).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let anonymous = near
        .create_payment(create_request(&ours, "sec-3", 700))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    // The admin's call goes through node 0 to node 1 too.
    near.create_payment(keyed(create_request(&theirs, "sec-4", 700), &admin))
        .await
        .expect("the admin's call");
    // A caller's own "already forwarded" mark is dropped: node 0 still
    // takes the call to the owner instead of refusing it as misrouted.
    let mut marked = keyed(create_request(&ours, "sec-5", 700), &tenant);
    marked
        .metadata_mut()
        .insert("payvisor-forwarded-by", "node-x".parse().unwrap());
    near.create_payment(marked)
        .await
        .expect("a caller's forwarded mark is ignored");
    // The person's certificate subject goes to node 1 on their behalf.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(&ca.cert).unwrap(),
        ))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(&person.cert).unwrap(),
            std::fs::read(&person.key).unwrap(),
        ));
    let channel = Endpoint::from_shared(format!("https://{}", cluster.nodes[0].address))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    let created = PaymentServiceClient::new(channel)
        .create_payment(create_request(&ours, "sec-6", 700))
        .await
        .expect("forwarded for a certificate subject that is not ASCII")
        .into_inner();
    assert!(created.name.starts_with(&format!("accounts/{ours}/")));
}
