//! Wiring of a payvisor node: store, bank, actors, gRPC, recovery and
//! graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::actors::{ActorSettings, CommandError, Components, Orchestrator};
use crate::alerts::pagerduty::PagerDutySink;
use crate::alerts::{AlertSink, LinkedSink, LogSink};
use crate::approval::RulesInForce;
use crate::auth::Authenticator;
use crate::callbacks::CallbackEndpoint;
use crate::clock::{Clock, SystemClock};
use crate::cluster::membership::{
    JoinError, Membership, MembershipSettings, MonoClock, ProcessMono,
};
use crate::cluster::{AccountOwnership, Cluster};
use crate::config::{AuthConfig, ClusterConfig, Config, PagerConfig};
use crate::connectors::built_in_bank::BuiltInBank;
use crate::connectors::http::{HttpBankConnector, HttpConnectorSettings};
use crate::connectors::routing::{RoutedBank, Router};
use crate::connectors::Connector;
use crate::domain::payment::BankEvent;
use crate::grpc::auth::AuthLayer;
use crate::grpc::cluster::{ClusterApi, PeerFeed};
use crate::grpc::metered::MeteredLayer;
use crate::grpc::page_token::PageTokens;
use crate::grpc::pb::cluster_service_server::ClusterServiceServer;
use crate::grpc::pb::payment_service_server::PaymentServiceServer;
use crate::grpc::{pb, PaymentApi};
use crate::health::NodeHealth;
use crate::limits;
use crate::metrics::edges::{BankMetrics, MeteredAlertSink, MeteredConnector, MeteredWebhookSink};
use crate::metrics::store::MeteredStore;
use crate::metrics::{NodeMetrics, RpcMetrics, SweepMetrics};
use crate::random::SeededRandom;
use crate::shutdown::{Shutdown, ShutdownTrigger, Tasks};
use crate::store::{schema, Store, StoreError};
use crate::tls::ServerTls;
use crate::webhooks::HttpWebhookSink;
use std::collections::HashMap;

/// Runs a server until `stop` completes, then shuts it down: health says
/// NOT_SERVING, every listener and background task is told to stop (one
/// [`Shutdown`] signal), the node waits for them and for the account actors
/// (each bounded by [`limits::SHUTDOWN_GRACE`]) and returns.
pub async fn run(
    config: Config,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // One process per data directory, held until the server has stopped.
    let _data_dir = match config.store.data_dir() {
        Some(data_dir) => Some(crate::store::data_dir::DataDirLock::acquire(data_dir)?),
        None => None,
    };
    // Dropped on an early return: the tasks already started stop too.
    let (trigger, shutdown) = crate::shutdown::channel();
    let mut tasks = Tasks::default();
    let mut metrics = NodeMetrics::default();
    // Spans outlive the other tasks: the drain's are exported too.
    let (spans_trigger, spans_stop) = crate::shutdown::channel();
    let spans = match &config.otlp {
        Some(otlp) => {
            let span_metrics = crate::trace::export::SpanMetrics::default();
            metrics.spans = Some(span_metrics.clone());
            let exporting = crate::trace::export::install(
                otlp,
                &config.watchdog.node_name,
                span_metrics,
                spans_stop,
            )?;
            tracing::info!(endpoint = %otlp.endpoint, sample_ratio = otlp.sample_ratio, "exporting spans over OTLP");
            Some(tokio::spawn(exporting))
        }
        None => None,
    };
    let mut node = Node::start(&config, &metrics, &shutdown, &mut tasks).await?;
    let callbacks = if config.banks.is_empty() {
        None
    } else {
        let listener = TcpListener::bind(config.bank_callback_listen).await?;
        Some(serve_bank_callbacks(
            &config, listener, &node, &shutdown, &mut tasks,
        )?)
    };
    let authenticator = Arc::new(authenticator(&config, &node, &shutdown, &mut tasks)?);
    metrics.cluster = node.cluster.as_ref().map(|cluster| cluster.metrics.clone());
    metrics.auth_failures = authenticator.failures.clone();
    metrics.rate_limited = authenticator.rates.refused.clone();
    reconcile_periodically(&config, &node, &metrics, &shutdown, &mut tasks);

    let listener = TcpListener::bind(config.listen).await?;
    let local = listener.local_addr()?;
    // The membership outlives the other tasks: it keeps the leases renewed
    // while the actors drain, then hands them over.
    let (membership_trigger, membership_stop) = crate::shutdown::channel();
    let membership = node.membership.take().map(|membership| {
        let (cluster, orchestrator) = (node.cluster.clone(), node.orchestrator.clone());
        follow_ownership(
            cluster,
            orchestrator,
            metrics.sweeps.clone(),
            &shutdown,
            &mut tasks,
        );
        tokio::spawn(membership.run(membership_stop))
    });
    let resumed = patiently("recovery sweep", transient_command_error, || {
        (metrics.sweeps).time("recovery_startup", node.orchestrator.recover())
    })
    .await?;
    sweep_periodically(&config, &node, &metrics.sweeps, &shutdown, &mut tasks);
    if let Some(address) = config.metrics_listen {
        let listener = TcpListener::bind(address).await?;
        tracing::info!(listen = %listener.local_addr()?, "metrics serving");
        let render = metrics_renderer(
            node.orchestrator.clone(),
            node.http_banks.clone(),
            metrics.clone(),
        );
        let tls = http1_tls(config.auth.metrics_tls.as_ref(), &shutdown, &mut tasks)?;
        let serving = crate::metrics::serve(listener, tls, render, shutdown.clone());
        tasks.spawn("metrics", serving);
    }

    // A cluster member's id is on every line (logging::init).
    tracing::info!(listen = %local, store = ?config.store, resumed, "payvisor serving");
    let tls = match &config.auth.tls {
        None => None,
        Some(files) => {
            let tls = Arc::new(ServerTls::load(files.clone(), crate::tls::ALPN_GRPC)?);
            tasks.spawn("TLS reload", Arc::clone(&tls).watch_until(shutdown.clone()));
            Some(tls)
        }
    };
    let health_listener = match config.health_listen {
        Some(address) => Some(TcpListener::bind(address).await?),
        None => None,
    };
    let edge = Edge {
        authenticator,
        tls,
        rpc_metrics: metrics.rpc.clone(),
        health_listener,
    };
    serve_grpc(listener, &node, edge, callbacks, trigger, stop, tasks).await?;
    tracing::info!("draining account actors");
    node.orchestrator.shutdown(limits::SHUTDOWN_GRACE).await;
    if let Some(membership) = membership {
        tracing::info!("handing this node's shards over");
        membership_trigger.fire();
        if tokio::time::timeout(limits::CLUSTER_LEAVE_MAX, membership)
            .await
            .is_err()
        {
            tracing::warn!(
                "shards not handed over in time; peers take them once this node is judged dead"
            );
        }
    }
    if let Err(error) = node.store.settle().await {
        tracing::warn!(%error, "the store was not tidied up after the stop");
    }
    if let Some(spans) = spans {
        spans_trigger.fire();
        // An export in flight (up to its own timeout) and the flush, within
        // one bound; what is cut off is lost with the process.
        if tokio::time::timeout(limits::OTLP_FLUSH_MAX, spans)
            .await
            .is_err()
        {
            tracing::warn!("the last spans were not exported in time");
        }
    }
    tracing::info!("payvisor stopped");
    Ok(())
}

/// What a node is built of, once started.
struct Node {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    orchestrator: Orchestrator,
    /// The banks over HTTP (none with the built-in bank): reconciled.
    http_banks: Vec<Arc<HttpBankConnector>>,
    alert_sink: Arc<dyn AlertSink>,
    rules: Arc<RulesInForce>,
    /// Set on a cluster member.
    cluster: Option<Arc<Cluster>>,
    /// A cluster member's membership, until its rounds start.
    membership: Option<Membership>,
    /// What the peers decide, live (a cluster member follows them).
    peers: Option<PeerFeed>,
}

impl Node {
    /// Opens the store, joins the cluster (with `--cluster`: one round, so
    /// the node holds its first shards before it serves) and starts the
    /// orchestrator on the configured banks, pager, rules and webhooks (its
    /// own tasks in `tasks`).
    async fn start(
        config: &Config,
        metrics: &NodeMetrics,
        shutdown: &Shutdown,
        tasks: &mut Tasks,
    ) -> anyhow::Result<Node> {
        let store: Arc<dyn Store> = Arc::new(MeteredStore::new(
            config.store.open().await?,
            metrics.store.clone(),
        ));
        let random = Arc::new(SeededRandom::from_entropy());
        let (bank_events, bank_event_queue) = mpsc::channel(limits::BANK_EVENT_QUEUE_MAX);
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let (router, http_banks) = banks(config, &clock, &random, bank_events, &metrics.bank)?;
        let alert_sink: Arc<dyn AlertSink> = Arc::new(MeteredAlertSink::new(
            Arc::new(LinkedSink::new(
                alert_sink(&config.watchdog.pager)?,
                config.watchdog.links.clone(),
            )),
            metrics.pages.clone(),
        ));
        let rules = Arc::new(match &config.rules {
            Some(path) => RulesInForce::from_file(path.clone())?,
            None => RulesInForce::approve_all(),
        });
        let webhook_sink = webhook_sink(&config.webhooks)?;
        let (ownership, cluster, membership) = match &config.cluster {
            None => (AccountOwnership::Everything, None, None),
            Some(settings) => {
                let (cluster, membership) = join(&store, clock.as_ref(), settings).await?;
                let cluster = Arc::new(
                    Arc::into_inner(cluster)
                        .expect("the cluster is not shared yet")
                        .with_credential(config.auth.node_key.clone())
                        .with_peer_tls(peer_tls(&config.auth)?),
                );
                (cluster.ownership.clone(), Some(cluster), Some(membership))
            }
        };
        let components = Components {
            store: store.clone(),
            banks: Arc::new(router),
            clock: clock.clone(),
            random,
            policy: config.policy.clone(),
            settings: ActorSettings {
                passivate_after: config.passivate_after,
                ownership,
                idempotency_retention: config.idempotency_retention,
                ..ActorSettings::default()
            },
            alert_sink: alert_sink.clone(),
            node_name: config.watchdog.node_name.clone(),
            rules: rules.clone(),
            webhook_sink: Arc::new(MeteredWebhookSink::new(
                Arc::new(webhook_sink),
                &config.webhooks.endpoints().0,
                metrics.webhooks.clone(),
            )),
            webhooks: config.webhooks.clone(),
        };
        let orchestrator = Orchestrator::start(components, bank_event_queue, shutdown, tasks);
        let peers = cluster.as_ref().map(|cluster| {
            let (peers, _) = tokio::sync::broadcast::channel(limits::EVENT_FEED_BUFFER);
            crate::grpc::cluster::follow_peers(Arc::clone(cluster), peers.clone(), shutdown, tasks);
            peers
        });
        Ok(Node {
            store,
            clock,
            orchestrator,
            http_banks,
            alert_sink,
            rules,
            cluster,
            membership,
            peers,
        })
    }
}

/// How a node calls its peers when the nodes serve TLS: their CA (or the
/// system's roots), and its own certificate, which it presents where the
/// peers require client certificates. Read once at start: a renewed
/// certificate is presented to peers after the next restart.
fn peer_tls(auth: &AuthConfig) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let Some(files) = &auth.tls else {
        return Ok(None);
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))
    };
    let tls = match &auth.tls_peer_ca {
        Some(path) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(path)?)),
        None => ClientTlsConfig::new().with_native_roots(),
    };
    Ok(Some(tls.identity(Identity::from_pem(
        read(&files.cert)?,
        read(&files.key)?,
    ))))
}

/// Who may call: the access list in force (reloaded when it changes), or
/// no authentication, which the configuration allowed only on loopback or
/// with `--insecure-no-auth`.
fn authenticator(
    config: &Config,
    node: &Node,
    shutdown: &Shutdown,
    tasks: &mut Tasks,
) -> anyhow::Result<Authenticator> {
    let Some(path) = &config.auth.access_list else {
        if config.listen.ip().is_loopback() {
            tracing::info!("no --auth: callers are not authenticated (loopback only)");
        } else {
            tracing::warn!(listen = %config.listen, "--insecure-no-auth: anyone who reaches this port can move money");
        }
        return Ok(Authenticator::disabled(node.clock.clone()));
    };
    let authenticator = Authenticator::from_file(path.clone(), node.clock.clone())?;
    if let Some(access) = authenticator.access() {
        let reloading = Arc::clone(access).watch_until(limits::AUTH_RELOAD_EVERY, shutdown.clone());
        tasks.spawn("access list reload", reloading);
    }
    Ok(authenticator)
}

/// Joins the cluster on `store` with a fresh node id and runs a first
/// round.
async fn join(
    store: &Arc<dyn Store>,
    wall: &dyn Clock,
    settings: &ClusterConfig,
) -> anyhow::Result<(Arc<Cluster>, Membership)> {
    let mono: Arc<dyn MonoClock> = Arc::new(ProcessMono::default());
    let me = settings.node_id.clone();
    let transient = |error: &JoinError| matches!(error, JoinError::Store(error) if transient_store_error(error));
    let (mut membership, owned) = patiently("joining the cluster", transient, || {
        Membership::join(
            Arc::clone(store),
            wall,
            Arc::clone(&mono),
            me.clone(),
            MembershipSettings {
                shards: settings.shards,
                timeouts: settings.timeouts,
                address: settings.advertise.clone(),
            },
        )
    })
    .await?;
    if let Err(error) = membership.round().await {
        tracing::warn!(%error, "first cluster round failed; the node owns nothing until a round succeeds");
    }
    let ownership = AccountOwnership::shards(owned.clone(), mono, settings.shards);
    let cluster = Cluster::new(me, ownership, owned, membership.picture());
    tracing::info!(advertise = %settings.advertise, shards = owned_count(&cluster), "joined the cluster");
    Ok((Arc::new(cluster), membership))
}

fn owned_count(cluster: &Cluster) -> usize {
    match &cluster.ownership {
        AccountOwnership::Shards(held) => held.owned.borrow().shards.len(),
        AccountOwnership::Everything => 0,
    }
}

/// A cluster member follows what it holds: when shards go, the actors of
/// their accounts are retired (their new owner runs them); when shards
/// come, their payments in flight are resumed (the previous owner may have
/// died mid-way). Ownership changes are counted.
/// (The deterministic simulation runs it on its nodes too.)
pub fn follow_ownership(
    cluster: Option<Arc<Cluster>>,
    orchestrator: Orchestrator,
    sweeps: SweepMetrics,
    shutdown: &Shutdown,
    tasks: &mut Tasks,
) {
    let Some(cluster) = cluster else {
        return;
    };
    let AccountOwnership::Shards(held) = cluster.ownership.clone() else {
        return;
    };
    let mut owned = held.owned.clone();
    let mut holding = owned.borrow_and_update().shards.clone();
    cluster.metrics.shards_owned.set(holding.len() as i64);
    let stopping = shutdown.clone();
    tasks.spawn("ownership changes", async move {
        loop {
            tokio::select! {
                biased;
                () = stopping.signalled() => return,
                changed = owned.changed() => if changed.is_err() { return },
            }
            let now = owned.borrow_and_update().shards.clone();
            let gained: std::collections::BTreeSet<_> = (now.iter())
                .filter(|(shard, epoch)| holding.get(shard) != Some(epoch))
                .map(|(shard, _)| *shard)
                .collect();
            let lost = (holding.iter())
                .filter(|(shard, epoch)| now.get(shard) != Some(epoch))
                .count();
            holding = now;
            if gained.is_empty() && lost == 0 {
                continue;
            }
            let metrics = &cluster.metrics;
            metrics.ownership_changes.inc_by((gained.len() + lost) as u64);
            metrics.shards_owned.set(holding.len() as i64);
            if lost > 0 {
                let retired = orchestrator.retire_unserved();
                tracing::info!(lost, retired, held = holding.len(), "shards moved away");
            }
            if !gained.is_empty() {
                let picked = |account: &crate::domain::AccountId| {
                    (cluster.ownership.shard(account)).is_some_and(|shard| gained.contains(&shard))
                };
                let recovery = orchestrator.recover_where(picked);
                match sweeps.time("recovery_gained_shards", recovery).await {
                    Ok(resumed) => tracing::info!(gained = gained.len(), resumed, held = holding.len(), "shards gained"),
                    Err(error) => tracing::warn!(%error, "payments of gained shards not resumed now; the watchdog re-drives them"),
                }
            }
        }
    });
}

/// Reconciliation against each bank over HTTP, every
/// `--reconcile-every` (in a cluster, by the owner of shard 0 only);
/// mismatches found are counted since start.
fn reconcile_periodically(
    config: &Config,
    node: &Node,
    metrics: &NodeMetrics,
    shutdown: &Shutdown,
    tasks: &mut Tasks,
) {
    for bank in &node.http_banks {
        let periodic = crate::reconcile::Periodic {
            store: node.store.clone(),
            bank: bank.clone(),
            clock: node.clock.clone(),
            sink: node.alert_sink.clone(),
            node_name: config.watchdog.node_name.clone(),
            every: config.reconcile_every,
            lag: config.reconcile_lag,
            found: metrics.reconciliation_mismatches.clone(),
            sweeps: metrics.sweeps.clone(),
            ownership: node
                .cluster
                .as_ref()
                .map(|cluster| cluster.ownership.clone())
                .unwrap_or_default(),
            turns: Default::default(),
        };
        tasks.spawn("periodic reconciliation", periodic.run(shutdown.clone()));
    }
}

/// The node's periodic work after recovery: the late recovery sweep (on a
/// store that needs one), the watchdog, the webhook dispatcher and the rules
/// reloader.
fn sweep_periodically(
    config: &Config,
    node: &Node,
    sweeps: &SweepMetrics,
    shutdown: &Shutdown,
    tasks: &mut Tasks,
) {
    if let Some(bound) = config.store.late_write_bound() {
        let orchestrator = node.orchestrator.clone();
        let sweep = late_recovery_sweep(orchestrator, sweeps.clone(), bound, shutdown.clone());
        tasks.spawn("late recovery sweep", sweep);
    }
    // The watchdog's first sweep runs now: reminders that fell due while the
    // node was down fire at once (catch-up), and undelivered pages go out.
    let watched = node.orchestrator.clone();
    let timed = sweeps.clone();
    let failures = crate::watchdog::SweepFailurePager::new(
        node.alert_sink.clone(),
        node.clock.clone(),
        config.watchdog.node_name.clone(),
        config.watchdog.failing_page_after,
    );
    let watchdog = crate::watchdog::run_sweeps(
        config.watchdog.sweep_every,
        shutdown.clone(),
        failures,
        move || {
            let orchestrator = watched.clone();
            let timed = timed.clone();
            async move { timed.time("watchdog", orchestrator.sweep_watchdog()).await }
        },
    );
    tasks.spawn("watchdog", watchdog);
    // Undelivered webhooks (from before a restart too) go out now.
    let webhooks = node.orchestrator.webhooks().clone();
    let until = shutdown.clone();
    let timed = sweeps.clone();
    tasks.spawn("webhook dispatcher", async move {
        let swept = |ok, started| timed.observe("webhooks", ok, started);
        (webhooks.run_until(limits::WEBHOOK_SWEEP_EVERY, swept, until)).await;
    });
    if config.store.sweeps_expired_items() {
        let expiry = expire_periodically(node.store.clone(), node.clock.clone(), sweeps.clone());
        let until = shutdown.clone();
        tasks.spawn("expiry sweep", async move {
            tokio::select! {
                biased;
                () = until.signalled() => {}
                () = expiry => {}
            }
        });
    }
    let reloading =
        Arc::clone(&node.rules).watch_until(limits::RULES_RELOAD_EVERY, shutdown.clone());
    tasks.spawn("rules reload", reloading);
    let endpoints = Arc::clone(&config.webhooks.endpoints);
    let reloading = endpoints.watch_until(limits::WEBHOOK_RELOAD_EVERY, shutdown.clone());
    tasks.spawn("webhooks file reload", reloading);
}

/// Webhooks over HTTP(S). The system's CA certificates are loaded when an
/// endpoint is `https` now, or may become one in a reloaded file; a
/// machine without them can still post to `http` endpoints.
fn webhook_sink(settings: &crate::webhooks::WebhookSettings) -> anyhow::Result<HttpWebhookSink> {
    let https_now =
        (settings.endpoints().iter()).any(|endpoint| endpoint.url.scheme_str() == Some("https"));
    let format = crate::grpc::json::webhook_body_format;
    match HttpWebhookSink::new(https_now || settings.endpoints.has_file(), format()) {
        Ok(sink) => Ok(sink),
        Err(error) if !https_now => {
            tracing::warn!(%error, "no system CA certificates: an https endpoint added to the webhooks file cannot be verified until a restart");
            Ok(HttpWebhookSink::new(false, format())?)
        }
        Err(error) => Err(error.into()),
    }
}

/// Deletes expired records (idempotency keys past their retention) every
/// [`limits::EXPIRY_SWEEP_EVERY`], in bounded batches (the embedded store;
/// DynamoDB's time to live needs no sweep).
async fn expire_periodically(store: Arc<dyn Store>, clock: Arc<dyn Clock>, sweeps: SweepMetrics) {
    loop {
        tokio::time::sleep(limits::EXPIRY_SWEEP_EVERY).await;
        let sweep = async {
            let now = clock.now().unix_millis().div_euclid(1000);
            let mut deleted = 0;
            for _ in 0..limits::EXPIRY_SWEEP_BATCHES_MAX {
                let batch = store.expire(now, limits::EXPIRY_SWEEP_BATCH).await?;
                deleted += batch;
                if batch < limits::EXPIRY_SWEEP_BATCH {
                    break;
                }
            }
            Ok::<_, StoreError>(deleted)
        };
        match sweeps.time("expiry", sweep).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired records deleted"),
            Err(error) => {
                tracing::warn!(%error, "expired records not deleted; retrying next sweep")
            }
        }
    }
}

/// The node's banks: each `--banks` entry over HTTP (outcomes come back as
/// signed callbacks), or the built-in bank, whose outcomes go straight to
/// `bank_events`. Returns the router and the HTTP connectors (reconciled
/// periodically).
fn banks(
    config: &Config,
    clock: &Arc<dyn Clock>,
    random: &Arc<SeededRandom>,
    bank_events: mpsc::Sender<BankEvent>,
    metrics: &BankMetrics,
) -> anyhow::Result<(Router, Vec<Arc<HttpBankConnector>>)> {
    let metered = |name: &str, connector: Arc<dyn Connector>| -> Arc<dyn Connector> {
        Arc::new(MeteredConnector::new(name, connector, metrics.clone()))
    };
    let http_banks = config
        .banks
        .iter()
        .map(|bank| {
            HttpBankConnector::new(
                bank.endpoint.clone(),
                HttpConnectorSettings::default(),
                clock.clone(),
                random.clone(),
            )
            .map(Arc::new)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let router = if http_banks.is_empty() {
        let built_in = BuiltInBank::new(config.built_in_bank, random.clone(), bank_events);
        Router::single("built-in", metered("built-in", Arc::new(built_in)))
    } else {
        Router::new(
            config
                .banks
                .iter()
                .zip(&http_banks)
                .map(|(bank, http)| RoutedBank {
                    name: bank.endpoint.name.clone(),
                    priority: bank.priority,
                    cost_bps: bank.cost_bps,
                    currencies: bank.currencies.clone(),
                    connector: metered(&bank.endpoint.name, http.clone()),
                    http: Some(http.clone()),
                })
                .collect(),
        )
        .map_err(|why| anyhow::anyhow!(why))?
    };
    Ok((router, http_banks))
}

/// Where pages go: PagerDuty when a routing key is set, the log otherwise.
fn alert_sink(pager: &PagerConfig) -> anyhow::Result<Arc<dyn AlertSink>> {
    Ok(match pager {
        PagerConfig::Log => Arc::new(LogSink),
        PagerConfig::PagerDuty { url, routing_key } => {
            Arc::new(PagerDutySink::new(url, routing_key.expose().to_owned())?)
        }
    })
}

/// The bank-callback endpoint on `listener`, a task of the node. Returned
/// for the callbacks peers hand over (cluster).
fn serve_bank_callbacks(
    config: &Config,
    listener: TcpListener,
    node: &Node,
    shutdown: &Shutdown,
    tasks: &mut Tasks,
) -> anyhow::Result<Arc<CallbackEndpoint>> {
    let endpoint = Arc::new(CallbackEndpoint::new(
        config
            .banks
            .iter()
            .map(|bank| (bank.endpoint.name.clone(), bank.secret.as_bytes().to_vec()))
            .collect::<HashMap<_, _>>(),
        node.orchestrator.clone(),
        node.clock.clone(),
        (node.cluster.clone()).map(|cluster| {
            let hand_off: crate::callbacks::HandOff = crate::grpc::cluster::hand_off;
            (cluster, hand_off)
        }),
    ));
    tracing::info!(listen = %listener.local_addr()?, banks = config.banks.len(), "bank callbacks serving");
    let bounds = crate::http_server::ServerLimits {
        connections_max: limits::BANK_CALLBACK_CONNECTIONS_MAX,
        header_read_timeout: limits::BANK_CALLBACK_HEADER_READ_TIMEOUT,
        body_read_timeout: limits::BANK_CALLBACK_BODY_READ_TIMEOUT,
        body_bytes_max: limits::BANK_CALLBACK_BYTES_MAX,
        drain_max: limits::BANK_CALLBACK_DRAIN_MAX,
    };
    let tls = http1_tls(config.auth.bank_callback_tls.as_ref(), shutdown, tasks)?;
    tasks.spawn(
        "bank callbacks",
        crate::http_server::serve_over(
            "bank-callbacks",
            listener,
            tls,
            bounds,
            Arc::clone(&endpoint).handler(),
            shutdown.clone(),
        ),
    );
    Ok(endpoint)
}

/// TLS for an HTTP/1.1 listener (callbacks, metrics), reloaded as its
/// files change; `None`: plaintext.
fn http1_tls(
    files: Option<&crate::tls::TlsFiles>,
    shutdown: &Shutdown,
    tasks: &mut Tasks,
) -> anyhow::Result<Option<Arc<ServerTls>>> {
    let Some(files) = files else {
        return Ok(None);
    };
    let tls = Arc::new(ServerTls::load(files.clone(), crate::tls::ALPN_HTTP1)?);
    tasks.spawn("TLS reload", Arc::clone(&tls).watch_until(shutdown.clone()));
    Ok(Some(tls))
}

/// What the gRPC port checks before any service: who calls, and TLS.
struct Edge {
    authenticator: Arc<Authenticator>,
    tls: Option<Arc<ServerTls>>,
    /// Every call counted and timed, refusals at the edge included.
    rpc_metrics: RpcMetrics,
    /// `--health-listen`: health alone, in plaintext, for probes.
    health_listener: Option<TcpListener>,
}

/// Serves gRPC on `listener` until `stop` completes. Then, in this order:
/// health says NOT_SERVING (the store probe stopped first), watchers get
/// [`limits::DRAIN_NOTICE`] to hear it, the shutdown fires
/// (gRPC stops accepting, in-flight calls finish, every task in `tasks`
/// winds down), and the server and the tasks get [`limits::SHUTDOWN_GRACE`]
/// in all; what still runs then is aborted (a client that keeps its
/// connection open must not hold up the shutdown).
async fn serve_grpc(
    listener: TcpListener,
    node: &Node,
    edge: Edge,
    callbacks: Option<Arc<CallbackEndpoint>>,
    trigger: ShutdownTrigger,
    stop: impl Future<Output = ()>,
    mut tasks: Tasks,
) -> anyhow::Result<()> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = NodeHealth::serving(reporter).await;
    // Reflection in both versions: grpcurl before 1.8.8, Python's
    // grpcio-reflection, Postman and Evans speak only v1alpha. Health is
    // in it too, so tools find it without its proto file, and so are the
    // error details, so they decode what an error carries.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(pb::ERROR_DETAILS_DESCRIPTOR_SET)
    };
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let reflection = reflection().build_v1()?;
    let fresh_key = crate::grpc::page_token::fresh_key();
    let page_token_key = patiently("page-token key", transient_store_error, || {
        schema::page_token_key(node.store.as_ref(), fresh_key.clone())
    })
    .await?;
    let mut api = PaymentApi::new(
        node.orchestrator.clone(),
        trigger.subscribe(),
        PageTokens::new(&page_token_key),
    );
    if edge.authenticator.required() {
        api = api.with_authenticator(Arc::clone(&edge.authenticator));
    }
    if let (Some(cluster), Some(peers)) = (&node.cluster, &node.peers) {
        api = api.in_cluster(Arc::clone(cluster), peers.clone());
    }
    let payments =
        PaymentServiceServer::new(api).max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX);
    let mut cluster_api = ClusterApi::new(
        node.orchestrator.clone(),
        node.cluster.clone(),
        callbacks,
        trigger.subscribe(),
    );
    if edge.authenticator.required() {
        cluster_api = cluster_api.with_authenticator(Arc::clone(&edge.authenticator));
    }
    let cluster = ClusterServiceServer::new(cluster_api)
        .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX);
    let local = listener.local_addr()?;
    let router = tonic::transport::Server::builder()
        .timeout(limits::GRPC_REQUEST_TIMEOUT)
        .concurrency_limit_per_connection(limits::GRPC_CONCURRENCY_PER_CONNECTION)
        .layer(MeteredLayer::new(edge.rpc_metrics))
        .layer(AuthLayer::new(edge.authenticator))
        .add_service(health_service.clone())
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(payments)
        .add_service(cluster);
    let stopping = trigger.subscribe();
    let mut grpc = match edge.tls {
        Some(tls) => tokio::spawn(router.serve_with_incoming_shutdown(
            crate::tls::incoming(listener, tls, stopping.clone()),
            stopping.signalled(),
        )),
        None => tokio::spawn(router.serve_with_incoming_shutdown(
            // No Nagle: a response's frames go out at once (a peer's
            // delayed ACK would hold the last one back ~40 ms).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopping.signalled(),
        )),
    };

    // Health alone, in plaintext: it says NOT_SERVING through the drain
    // like the main port, and closes with it.
    if let Some(listener) = edge.health_listener {
        tracing::info!(listen = %listener.local_addr()?, "health serving (plaintext, health only)");
        let health_only = tonic::transport::Server::builder()
            .add_service(health_service)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                stopping.signalled(),
            );
        tasks.spawn("health listener", async move {
            if let Err(error) = health_only.await {
                tracing::warn!(%error, "the health listener stopped");
            }
        });
    }
    // Not in `tasks`: it must stop before the drain says NOT_SERVING, not
    // with the others after it.
    let probing = tokio::spawn(
        health
            .clone()
            .probe_store_until(Arc::clone(&node.store), trigger.subscribe()),
    );

    // A line on stdout that scripts and tests wait for (port 0 included).
    println!("payvisor listening on {local}");

    tokio::select! {
        biased;
        () = stop => {}
        served = &mut grpc => {
            probing.abort();
            served??;
            anyhow::bail!("the gRPC server stopped without being asked to");
        }
    }
    tracing::info!("shutting down: NOT_SERVING, then draining requests and tasks");
    probing.abort();
    let _ = probing.await;
    health.set_ready(false).await;
    tokio::time::sleep(limits::DRAIN_NOTICE).await;
    trigger.fire();
    let deadline = tokio::time::Instant::now() + limits::SHUTDOWN_GRACE;
    match tokio::time::timeout_at(deadline, &mut grpc).await {
        Ok(served) => served??,
        Err(_) => {
            tracing::warn!("gRPC connections still open after the grace period; closing them");
            grpc.abort();
        }
    }
    let still_running = tasks
        .join(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await;
    if !still_running.is_empty() {
        tracing::warn!(tasks = ?still_running, "tasks still running after the grace period; aborted");
    }
    Ok(())
}

/// On a store that can apply a dead node's in-flight writes late, a payment
/// written by the previous incarnation after the start-up sweep would be
/// missed: sweep again once no such write can still land.
async fn late_recovery_sweep(
    orchestrator: Orchestrator,
    sweeps: SweepMetrics,
    bound: Duration,
    shutdown: Shutdown,
) {
    tokio::select! {
        biased;
        () = shutdown.signalled() => return,
        () = tokio::time::sleep(bound + limits::RECOVERY_LATE_SWEEP_MARGIN) => {}
    }
    // Until it succeeds: a payment it would miss has no one else to find it.
    let mut backoff = limits::STARTUP_STORE_BACKOFF_INITIAL;
    loop {
        match sweeps.time("recovery_late", orchestrator.recover()).await {
            Ok(resumed) => return tracing::info!(resumed, "late recovery sweep done"),
            Err(error) if transient_command_error(&error) => {
                tracing::warn!(%error, retry_in = ?backoff, "late recovery sweep failed; retrying");
            }
            Err(error) => return tracing::error!(%error, "late recovery sweep failed"),
        }
        tokio::select! {
            biased;
            () = shutdown.signalled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(limits::STARTUP_STORE_BACKOFF_MAX);
    }
}

fn transient_store_error(error: &StoreError) -> bool {
    matches!(error, StoreError::Unavailable(_))
}

fn transient_command_error(error: &CommandError) -> bool {
    matches!(
        error,
        CommandError::Unavailable(_) | CommandError::StoreUnavailable(_) | CommandError::Conflict
    )
}

/// Runs a start-up step on the store, riding out transient failures with
/// back-off for [`limits::STARTUP_STORE_PATIENCE`] (a node restarted during
/// a store hiccup comes up late rather than exiting); any other failure, or
/// one that outlasts the patience, ends the start.
async fn patiently<T, E, Step, Attempt>(
    step: &str,
    transient: impl Fn(&E) -> bool,
    mut attempt: Step,
) -> Result<T, E>
where
    E: std::fmt::Display,
    Step: FnMut() -> Attempt,
    Attempt: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + limits::STARTUP_STORE_PATIENCE;
    let mut backoff = limits::STARTUP_STORE_BACKOFF_INITIAL;
    loop {
        match attempt().await {
            Err(error) if transient(&error) && tokio::time::Instant::now() + backoff < deadline => {
                tracing::warn!(%error, retry_in = ?backoff, "{step} failed at start; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(limits::STARTUP_STORE_BACKOFF_MAX);
            }
            answer => return answer,
        }
    }
}

/// The Prometheus exposition: `metrics`, and stalled payments by state (a
/// bounded count from the store's stalled index, so every node reports the
/// same truth).
fn metrics_renderer(
    orchestrator: Orchestrator,
    http_banks: Vec<Arc<HttpBankConnector>>,
    metrics: NodeMetrics,
) -> crate::metrics::Render {
    Arc::new(move || {
        let orchestrator = orchestrator.clone();
        let metrics = metrics.clone();
        let breakers = (http_banks.iter())
            .map(|bank| (bank.name().to_owned(), bank.breaker().state()))
            .collect();
        Box::pin(async move {
            let stalled = match orchestrator.stalled_counts().await {
                Ok(counts) => Some(counts),
                Err(error) => {
                    tracing::warn!(%error, "stalled payments not counted");
                    None
                }
            };
            let held = crate::metrics::Held {
                tasks_alive: tokio::runtime::Handle::current()
                    .metrics()
                    .num_alive_tasks(),
                accounts_live: orchestrator.live_accounts(),
                queues: orchestrator.queue_depth(),
                process: crate::metrics::ProcessStats::read(),
                breakers,
                webhook_backlog: match orchestrator.webhook_backlog().await {
                    Ok(backlog) => backlog,
                    Err(error) => {
                        tracing::warn!(%error, "webhook backlog not counted");
                        None
                    }
                },
            };
            metrics.page(stalled.as_ref(), held)
        })
    })
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing the SIGTERM handler");
        tokio::select! {
            biased;
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
