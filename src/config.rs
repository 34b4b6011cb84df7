//! One validated configuration for `payvisor serve`: flags and environment
//! variables, parsed in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::approval::load_rules_file;
use crate::connectors::built_in_bank::BuiltInBankConfig;
use crate::connectors::http::BankEndpoint;
use crate::domain::payment::{Fee, FeeSchedule, Policy};
use crate::domain::watch::{Stage, StallPolicy};
use crate::limits;
use crate::store::dynamodb::{DynamoDbSettings, DynamoDbStore};
use crate::store::lsm::LsmStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};
use crate::webhooks::WebhookSettings;

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to serve gRPC on (port 0 picks a free port).
    #[arg(long, env = "PAYVISOR_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Approval rules file (JSON; see the README). Checked at start
    /// (a bad file stops the start) and reloaded when it changes. Without
    /// it every payment is approved.
    #[arg(long, env = "PAYVISOR_RULES")]
    pub rules: Option<PathBuf>,
    /// Webhook endpoints file (JSON: `{"endpoints": [{"name", "url",
    /// "secret", "events"?}]}`). Each event goes, signed, to every
    /// endpoint that subscribes to its type (all types without `events`).
    /// Reloaded when it changes.
    #[arg(long, env = "PAYVISOR_WEBHOOKS")]
    pub webhooks: Option<PathBuf>,
    /// How long a webhook delivery is retried before it is given up.
    #[arg(long, env = "PAYVISOR_WEBHOOK_RETRY_FOR", default_value = "24h")]
    pub webhook_retry_for: String,
    /// Fee in basis points of each processed payment (default 0).
    #[arg(long, env = "PAYVISOR_FEE_BASIS_POINTS", default_value_t = 0)]
    pub fee_basis_points: u32,
    /// Fixed fee per processed payment, in minor units (default 0).
    #[arg(long, env = "PAYVISOR_FEE_FIXED_MINOR", default_value_t = 0)]
    pub fee_fixed_minor: i64,
    /// Banks over HTTP, routed by cost, priority, currency and health (JSON:
    /// `{"banks": [{"name", "url", "secret", "priority", "cost_bps",
    /// "currencies"}]}`); instead of the built-in simulator.
    #[arg(long, env = "PAYVISOR_BANKS")]
    pub banks: Option<PathBuf>,
    /// One bank over HTTP (`docs/bank-protocol.md`), e.g. the simulator
    /// `payvisor-bank-sim`: the short form of `--banks` for a single bank.
    #[arg(long, env = "PAYVISOR_BANK_URL")]
    pub bank_url: Option<String>,
    /// Accept an `http://` --bank-url beyond loopback (a private network);
    /// otherwise it must be https://.
    #[arg(long, env = "PAYVISOR_BANK_ALLOW_INSECURE")]
    pub bank_allow_insecure: bool,
    /// That bank's name (in callbacks, logs and the inbox).
    #[arg(long, env = "PAYVISOR_BANK_NAME", default_value = "bank")]
    pub bank_name: String,
    /// The secret that bank signs its callbacks with (at least 16 bytes).
    #[arg(long, env = "PAYVISOR_BANK_SECRET", hide_env_values = true)]
    pub bank_secret: Option<crate::secret::Secret>,
    /// Where payvisor listens for the bank's callbacks.
    #[arg(
        long,
        env = "PAYVISOR_BANK_CALLBACK_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    pub bank_callback_listen: SocketAddr,
    /// The callback URL given to the bank (default: on the listen address).
    #[arg(long, env = "PAYVISOR_BANK_CALLBACK_URL")]
    pub bank_callback_url: Option<String>,
    /// How often payvisor reconciles with the bank over HTTP (each period
    /// once it is this old).
    #[arg(long, env = "PAYVISOR_RECONCILE_EVERY", default_value = "10m")]
    pub reconcile_every: String,
    /// How old a period must be before it is reconciled: longer than it
    /// takes an outcome to reach payvisor (a lost callback waits for the
    /// `sent` stall deadline and a status query).
    #[arg(long, env = "PAYVISOR_RECONCILE_LAG", default_value = "15m")]
    pub reconcile_lag: String,
    /// Bank simulator latency range in milliseconds, `MIN..MAX`.
    #[arg(long, env = "PAYVISOR_BANK_LATENCY_MS", default_value = "5..50")]
    pub bank_latency_ms: String,
    /// Share of payments the bank simulator fails, in thousandths.
    #[arg(long, env = "PAYVISOR_BANK_FAILURE_PER_MILLE", default_value_t = 0)]
    pub bank_failure_per_mille: u32,
    /// How long a `request_id` is remembered: a retry within this replays
    /// the first answer; after it the key is forgotten (and its record
    /// deleted: DynamoDB's time to live, the embedded store's sweep).
    /// From 24h to 365d.
    #[arg(long, env = "PAYVISOR_IDEMPOTENCY_RETENTION", default_value = "24h")]
    pub idempotency_retention: String,
    /// Account actors idle this many seconds stop and free their memory.
    #[arg(long, env = "PAYVISOR_PASSIVATE_AFTER_SECS", default_value_t = crate::limits::ACCOUNT_IDLE_PASSIVATE.as_secs())]
    pub passivate_after_secs: u64,
    /// Stall deadline of a stage, `STAGE=DURATION` (stages: created,
    /// approved, in_review, sent, refunding; durations like `500ms`, `2s`,
    /// `1m`, `24h`). Repeatable. A payment still in the stage after this is
    /// re-driven, then paged.
    #[arg(
        long = "stall-deadline",
        env = "PAYVISOR_STALL_DEADLINE",
        value_delimiter = ','
    )]
    pub stall_deadline: Vec<String>,
    /// Re-drives of a stalled payment before on-call is paged.
    #[arg(long, env = "PAYVISOR_REDRIVE_MAX", default_value_t = limits::REDRIVES_DEFAULT)]
    pub redrive_max: u32,
    /// How often the watchdog looks for due reminders (a duration).
    #[arg(long, env = "PAYVISOR_WATCHDOG_INTERVAL", default_value = "1s")]
    pub watchdog_interval: String,
    /// How long the watchdog's sweeps may keep failing (the store does not
    /// answer them) before on-call is paged that stalls go unwatched (a
    /// duration, 1s to 1h).
    #[arg(long, env = "PAYVISOR_WATCHDOG_PAGE_AFTER", default_value = "1m")]
    pub watchdog_page_after: String,
    /// PagerDuty Events API v2 endpoint.
    #[arg(
        long,
        env = "PAYVISOR_PAGERDUTY_URL",
        default_value = "https://events.pagerduty.com/v2/enqueue"
    )]
    pub pagerduty_url: String,
    /// PagerDuty integration (routing) key. Without it, pages are written to
    /// the log at error level instead.
    #[arg(long, env = "PAYVISOR_PAGERDUTY_ROUTING_KEY", hide_env_values = true)]
    pub pagerduty_routing_key: Option<crate::secret::Secret>,
    /// Where the runbooks are published (ending in `/`): each page links
    /// its class's runbook there.
    #[arg(long, env = "PAYVISOR_RUNBOOK_BASE_URL", default_value = crate::alerts::RUNBOOK_BASE_DEFAULT)]
    pub runbook_base_url: String,
    /// An operator UI's address for a payment, put on each page that names
    /// one (PagerDuty's `client_url`): `{payment}` becomes its resource
    /// name, `{account}` its account. E.g.
    /// `https://console.example.com/{payment}`.
    #[arg(long, env = "PAYVISOR_PAGE_CLIENT_URL")]
    pub page_client_url: Option<String>,
    /// Serve Prometheus metrics on this address (`/metrics`); off if unset.
    #[arg(long, env = "PAYVISOR_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Also serve the gRPC health service alone, in plaintext, on this
    /// address: for probes that cannot speak TLS (Kubernetes' gRPC
    /// probes). It says SERVING or NOT_SERVING, nothing else; off if unset.
    #[arg(long, env = "PAYVISOR_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// This node's name in pages (PagerDuty's `source`, and the key of the
    /// page its watchdog sends when it cannot sweep): distinct per node of
    /// a cluster. A restarted node resolves the page of an earlier one of
    /// the same name; a page of a node replaced under another name is
    /// resolved by hand. Default: with --cluster, this machine's host name
    /// (a pod's or a task's own); otherwise `payvisor`.
    #[arg(long, env = "PAYVISOR_NODE_NAME")]
    pub node_name: Option<String>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "PAYVISOR_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Export traces to this OpenTelemetry collector over OTLP/gRPC, e.g.
    /// `http://otel-collector:4317` (`https://` trusts the system's
    /// roots); off if unset. Spans: each RPC, each account decision, its
    /// write (and the store call in it) and what follows it, each bank call
    /// and each webhook delivery.
    #[arg(long, env = "PAYVISOR_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The share of traces begun on this node that are exported (0 to 1; a
    /// call that arrives with a `traceparent` follows its caller's sampled
    /// flag instead).
    #[arg(
        long,
        env = "PAYVISOR_OTLP_SAMPLE_RATIO",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    pub otlp_sample_ratio: f64,
    /// How long a batch of spans may fill before it is sent (tests make it
    /// long, to see the stop send what waits).
    #[arg(long, hide = true, default_value = "500ms")]
    pub otlp_batch_wait: String,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// Who may call (docs/security.md).
#[derive(clap::Args, Debug, Clone)]
pub struct SecurityArgs {
    /// Access list (JSON): the API keys (id, SHA-256 of the secret, roles,
    /// optional accounts and expiry) that may call. Checked at start and
    /// reloaded when it changes. `payvisor auth new-key` makes keys.
    /// Without it the server listens on loopback only.
    #[arg(long, env = "PAYVISOR_AUTH")]
    pub auth: Option<PathBuf>,
    /// Serve without authentication on any address: anyone who reaches
    /// the port can move money. For development only.
    #[arg(long, env = "PAYVISOR_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// The key (role `node` in the access list) this node presents to its
    /// peers in a cluster with --auth.
    #[arg(long, env = "PAYVISOR_NODE_KEY", hide_env_values = true)]
    pub node_key: Option<crate::secret::Secret>,
    /// Serve over TLS with this certificate chain (PEM): the gRPC port, and
    /// the bank-callback and metrics ports. Reloaded when it changes.
    #[arg(long, env = "PAYVISOR_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "PAYVISOR_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require gRPC clients to present a certificate signed by one of
    /// these CAs (PEM; mutual TLS). The access list's `certificates` give
    /// a certificate's subject its roles.
    #[arg(long, env = "PAYVISOR_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// CAs (PEM) that sign the certificates of this cluster's nodes, which
    /// a node checks its peers against (default: the system's roots).
    #[arg(long, env = "PAYVISOR_TLS_PEER_CA", requires = "tls_cert")]
    pub tls_peer_ca: Option<PathBuf>,
    /// Serve bank callbacks over TLS with this certificate (PEM): one the
    /// banks trust, often not the gRPC port's. Reloaded when it changes.
    #[arg(
        long,
        env = "PAYVISOR_BANK_CALLBACK_TLS_CERT",
        requires = "bank_callback_tls_key"
    )]
    pub bank_callback_tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(
        long,
        env = "PAYVISOR_BANK_CALLBACK_TLS_KEY",
        requires = "bank_callback_tls_cert"
    )]
    pub bank_callback_tls_key: Option<PathBuf>,
    /// Serve /metrics over TLS with this certificate (PEM).
    #[arg(long, env = "PAYVISOR_METRICS_TLS_CERT", requires = "metrics_tls_key")]
    pub metrics_tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "PAYVISOR_METRICS_TLS_KEY", requires = "metrics_tls_cert")]
    pub metrics_tls_key: Option<PathBuf>,
}

/// Who may call, validated.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// The access list; `None`: no authentication (loopback, or
    /// `--insecure-no-auth`).
    pub access_list: Option<PathBuf>,
    /// What this node presents to its peers.
    pub node_key: Option<crate::secret::Secret>,
    /// TLS on the listeners; `None`: plaintext.
    pub tls: Option<crate::tls::TlsFiles>,
    /// CAs a node checks its peers' certificates against (`None` with TLS:
    /// the system's roots).
    pub tls_peer_ca: Option<PathBuf>,
    /// TLS on the bank-callback port, and on the metrics port.
    pub bank_callback_tls: Option<crate::tls::TlsFiles>,
    pub metrics_tls: Option<crate::tls::TlsFiles>,
}

impl SecurityArgs {
    fn validate(&self, listen: SocketAddr, clustered: bool) -> Result<AuthConfig, ConfigError> {
        let refuse = |why: String| Err(ConfigError::Security(why));
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let files = crate::tls::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.tls_client_ca.clone(),
                };
                // Checked now: a bad file stops the start with its problem.
                crate::tls::ServerTls::load(files.clone(), crate::tls::ALPN_GRPC)
                    .map_err(|error| ConfigError::Security(format!("TLS: {error}")))?;
                Some(files)
            }
            _ => None,
        };
        let http1 = |cert: &Option<PathBuf>,
                     key: &Option<PathBuf>,
                     what: &str|
         -> Result<Option<crate::tls::TlsFiles>, ConfigError> {
            match (cert, key) {
                (Some(cert), Some(key)) => {
                    let files = crate::tls::TlsFiles {
                        cert: cert.clone(),
                        key: key.clone(),
                        client_ca: None,
                    };
                    crate::tls::ServerTls::load(files.clone(), crate::tls::ALPN_HTTP1)
                        .map_err(|error| ConfigError::Security(format!("{what} TLS: {error}")))?;
                    Ok(Some(files))
                }
                _ => Ok(None),
            }
        };
        let bank_callback_tls = http1(
            &self.bank_callback_tls_cert,
            &self.bank_callback_tls_key,
            "bank callback",
        )?;
        let metrics_tls = http1(&self.metrics_tls_cert, &self.metrics_tls_key, "metrics")?;
        if let Some(path) = &self.tls_peer_ca {
            let pem = std::fs::read(path).map_err(|error| {
                ConfigError::Security(format!("--tls-peer-ca {}: {error}", path.display()))
            })?;
            crate::tls::certificates(path, &pem)
                .map_err(|error| ConfigError::Security(format!("--tls-peer-ca: {error}")))?;
        }
        let Some(path) = &self.auth else {
            if !self.insecure_no_auth && !listen.ip().is_loopback() {
                return refuse(format!(
                    "refusing to serve on {listen} without authentication: anyone who reaches it could refund or fail payments. \
                     Give --auth FILE (make keys with `payvisor auth new-key --role ROLE`; see docs/security.md), \
                     or listen on loopback (--listen 127.0.0.1:50051), or, for development only, --insecure-no-auth"
                ));
            }
            return Ok(AuthConfig {
                tls,
                tls_peer_ca: self.tls_peer_ca.clone(),
                bank_callback_tls,
                metrics_tls,
                ..AuthConfig::default()
            });
        };
        if self.insecure_no_auth {
            return refuse("--auth and --insecure-no-auth exclude each other".into());
        }
        let (access, _) = crate::reload::load::<crate::domain::access::AccessList>(path)?;
        if clustered {
            let Some(node_key) = &self.node_key else {
                return refuse(
                    "--cluster with --auth needs --node-key (PAYVISOR_NODE_KEY): a key with the node role, which this node presents to its peers".into(),
                );
            };
            let authenticator = crate::auth::Authenticator::new(
                std::sync::Arc::new(crate::reload::InForce::fixed(access)),
                std::sync::Arc::new(crate::clock::SystemClock),
            );
            let bearer = format!("Bearer {}", node_key.expose());
            match authenticator.bearer(Some(bearer.as_bytes())) {
                Ok(grant) if grant.roles.contains(&crate::domain::access::Role::Node) => {}
                Ok(grant) => {
                    return refuse(format!(
                        "--node-key: key {} has no node role in {}",
                        grant.identity,
                        path.display()
                    ))
                }
                Err(error) => {
                    return refuse(format!(
                        "--node-key: {error} (checked against {})",
                        path.display()
                    ))
                }
            }
        }
        Ok(AuthConfig {
            access_list: Some(path.clone()),
            node_key: self.node_key.clone(),
            tls,
            tls_peer_ca: self.tls_peer_ca.clone(),
            bank_callback_tls,
            metrics_tls,
        })
    }
}

/// Running as one node of a cluster (see ARCHITECTURE.md, "The cluster").
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Join the cluster of every node on the same DynamoDB table: accounts
    /// are shared out by shard, and a call for an account another node owns
    /// is forwarded to it. Needs --store dynamodb and banks over HTTP.
    #[arg(long, env = "PAYVISOR_CLUSTER")]
    pub cluster: bool,
    /// Where peers reach this node's gRPC port (default: --listen; give it
    /// when --listen is 0.0.0.0 or behind NAT). `auto`: this machine's
    /// address on its default route, at the --listen port (ECS tasks,
    /// containers).
    #[arg(long, env = "PAYVISOR_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Shards accounts are hashed into; recorded in the table by the first
    /// node, and every node must use the same count.
    #[arg(long, env = "PAYVISOR_CLUSTER_SHARDS", default_value_t = limits::CLUSTER_SHARDS_DEFAULT)]
    pub cluster_shards: u16,
    /// How often this node heartbeats and rebalances, in milliseconds.
    #[arg(long, env = "PAYVISOR_CLUSTER_HEARTBEAT_MS", default_value_t = limits::CLUSTER_HEARTBEAT_EVERY.as_millis() as u64)]
    pub cluster_heartbeat_ms: u64,
    /// After how long without a heartbeat a peer is judged dead and its
    /// shards taken, in milliseconds (on this node's own clock). A node
    /// stops serving after half of it without an acknowledged heartbeat.
    #[arg(long, env = "PAYVISOR_CLUSTER_DEAD_AFTER_MS", default_value_t = limits::CLUSTER_DEAD_AFTER.as_millis() as u64)]
    pub cluster_dead_after_ms: u64,
}

/// A cluster member's settings, validated.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This process start's identity (fresh every start).
    pub node_id: crate::domain::ownership::NodeId,
    /// Where peers reach this node's gRPC port.
    pub advertise: String,
    pub shards: u16,
    pub timeouts: crate::domain::ownership::Timeouts,
}

impl ClusterArgs {
    fn validate(
        &self,
        listen: SocketAddr,
        store: &StoreConfig,
        http_banks: usize,
    ) -> Result<Option<ClusterConfig>, ConfigError> {
        if !self.cluster {
            return Ok(None);
        }
        if !matches!(store, StoreConfig::DynamoDb(_)) {
            return Err(ConfigError::Cluster(
                "--cluster needs --store dynamodb: the nodes of a cluster share one DynamoDB table (the embedded store belongs to one process)".into(),
            ));
        }
        if http_banks == 0 {
            return Err(ConfigError::Cluster(
                "--cluster needs banks over HTTP (--bank-url or --banks): the built-in simulator lives inside one process, so a payment that moves to another node would meet a bank that never saw it".into(),
            ));
        }
        if self.cluster_shards == 0 || self.cluster_shards > limits::CLUSTER_SHARDS_MAX {
            return Err(ConfigError::Cluster(format!(
                "--cluster-shards must be 1..={}",
                limits::CLUSTER_SHARDS_MAX
            )));
        }
        let advertise = match &self.advertise_addr {
            Some(auto) if auto == "auto" => {
                let host = routed_address().map_err(|why| {
                    ConfigError::Cluster(format!(
                        "--advertise-addr auto: this machine's address could not be found ({why}): give HOST:PORT"
                    ))
                })?;
                std::net::SocketAddr::new(host, listen.port()).to_string()
            }
            Some(address) => address.clone(),
            None if listen.ip().is_unspecified() || listen.port() == 0 => {
                return Err(ConfigError::Cluster(format!(
                    "--listen {listen} is not an address peers can reach: give --advertise-addr HOST:PORT"
                )))
            }
            None => listen.to_string(),
        };
        let valid_address = advertise.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port > 0)
        });
        if !valid_address {
            return Err(ConfigError::Cluster(format!(
                "--advertise-addr {advertise:?}: expected HOST:PORT"
            )));
        }
        let timeouts = crate::domain::ownership::Timeouts {
            heartbeat_every: self.cluster_heartbeat_ms,
            self_demote_after: self.cluster_dead_after_ms / 2,
            dead_after: self.cluster_dead_after_ms,
            moves_per_round: limits::CLUSTER_MOVES_PER_ROUND,
        };
        timeouts.check().map_err(|error| {
            ConfigError::Cluster(format!(
                "--cluster-heartbeat-ms, --cluster-dead-after-ms: {error}"
            ))
        })?;
        Ok(Some(ClusterConfig {
            node_id: crate::cluster::fresh_node_id(),
            advertise,
            shards: self.cluster_shards,
            timeouts,
        }))
    }
}

/// The address this machine sends from on its default route: what peers on
/// the same network reach it at, where nothing tells it its address (an
/// ECS task, a container). A UDP "connect" only picks the route; no packet
/// is sent (192.0.2.1 is TEST-NET-1, never a real host).
fn routed_address() -> std::io::Result<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    socket.connect("192.0.2.1:9")?;
    let ip = socket.local_addr()?.ip();
    if ip.is_unspecified() || ip.is_loopback() {
        return Err(std::io::Error::other(format!(
            "the route goes out from {ip}"
        )));
    }
    Ok(ip)
}

/// Which store, and how to reach it.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// Where state lives: `sqlite` (embedded, under --data-dir), `lsm`
    /// (embedded, log-structured, under --data-dir/lsm) or `dynamodb` (the
    /// table --dynamodb-table).
    #[arg(long, env = "PAYVISOR_STORE", default_value = "sqlite")]
    pub store: StoreKind,
    /// Directory of the embedded store (created if missing).
    #[arg(long, env = "PAYVISOR_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub dynamodb: DynamoDbArgs,
}

impl StoreArgs {
    pub fn validate(&self) -> Result<StoreConfig, ConfigError> {
        Ok(match self.store {
            StoreKind::Sqlite => StoreConfig::Sqlite {
                data_dir: self.data_dir.clone(),
            },
            StoreKind::Lsm => StoreConfig::Lsm {
                data_dir: self.data_dir.clone(),
            },
            StoreKind::Dynamodb => {
                let table = self.dynamodb.dynamodb_table.as_deref().ok_or_else(|| {
                    ConfigError::DynamoDb("--store dynamodb needs --dynamodb-table NAME".into())
                })?;
                StoreConfig::DynamoDb(self.dynamodb.settings(table)?)
            }
        })
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Lsm,
    Dynamodb,
}

/// How to reach DynamoDB. Region, credentials and endpoint come the
/// standard AWS way (`AWS_REGION`, the credentials chain,
/// `AWS_ENDPOINT_URL_DYNAMODB`); these are the table and the bounds.
#[derive(clap::Args, Debug, Clone)]
pub struct DynamoDbArgs {
    /// The DynamoDB table (required with --store dynamodb).
    #[arg(long, env = "PAYVISOR_DYNAMODB_TABLE")]
    pub dynamodb_table: Option<String>,
    /// Time allowed to connect, in milliseconds.
    #[arg(long, env = "PAYVISOR_DYNAMODB_CONNECT_TIMEOUT_MS", default_value_t = limits::DYNAMODB_CONNECT_TIMEOUT.as_millis() as u64)]
    pub dynamodb_connect_timeout_ms: u64,
    /// Time allowed for one attempt of a call, in milliseconds.
    #[arg(long, env = "PAYVISOR_DYNAMODB_ATTEMPT_TIMEOUT_MS", default_value_t = limits::DYNAMODB_ATTEMPT_TIMEOUT.as_millis() as u64)]
    pub dynamodb_attempt_timeout_ms: u64,
    /// Time allowed for a call with all its retries, in milliseconds.
    #[arg(long, env = "PAYVISOR_DYNAMODB_OPERATION_TIMEOUT_MS", default_value_t = limits::DYNAMODB_OPERATION_TIMEOUT.as_millis() as u64)]
    pub dynamodb_operation_timeout_ms: u64,
    /// Attempts per call (standard retry policy with back-off).
    #[arg(long, env = "PAYVISOR_DYNAMODB_MAX_ATTEMPTS", default_value_t = limits::DYNAMODB_ATTEMPTS_MAX)]
    pub dynamodb_max_attempts: u32,
}

impl DynamoDbArgs {
    pub fn settings(&self, table: &str) -> Result<DynamoDbSettings, ConfigError> {
        if self.dynamodb_max_attempts == 0 || self.dynamodb_max_attempts > 10 {
            return Err(ConfigError::DynamoDb(
                "--dynamodb-max-attempts must be 1..=10".into(),
            ));
        }
        if self.dynamodb_attempt_timeout_ms == 0
            || self.dynamodb_operation_timeout_ms < self.dynamodb_attempt_timeout_ms
        {
            return Err(ConfigError::DynamoDb(
                "timeouts must be positive and the operation timeout at least the attempt timeout"
                    .into(),
            ));
        }
        Ok(DynamoDbSettings {
            table: table.to_owned(),
            connect_timeout: Duration::from_millis(self.dynamodb_connect_timeout_ms),
            attempt_timeout: Duration::from_millis(self.dynamodb_attempt_timeout_ms),
            operation_timeout: Duration::from_millis(self.dynamodb_operation_timeout_ms),
            max_attempts: self.dynamodb_max_attempts,
        })
    }
}

/// Where a server keeps its state.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    Sqlite {
        data_dir: PathBuf,
    },
    /// The log-structured embedded store (src/store/lsm.rs).
    Lsm {
        data_dir: PathBuf,
    },
    DynamoDb(DynamoDbSettings),
}

impl StoreConfig {
    /// How long a write sent by a previous, killed incarnation of this node
    /// may still be applied by the store. The embedded store's writer dies
    /// with the process (none); DynamoDB may apply a request after its
    /// sender died, within the call's operation timeout.
    /// Whether expired items must be deleted by payvisor's own sweep: the
    /// embedded store; DynamoDB's time to live deletes them itself.
    pub fn sweeps_expired_items(&self) -> bool {
        matches!(self, StoreConfig::Sqlite { .. } | StoreConfig::Lsm { .. })
    }

    /// The embedded store's data directory (none for DynamoDB).
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        match self {
            StoreConfig::Sqlite { data_dir } | StoreConfig::Lsm { data_dir } => Some(data_dir),
            StoreConfig::DynamoDb(_) => None,
        }
    }

    pub fn late_write_bound(&self) -> Option<std::time::Duration> {
        match self {
            StoreConfig::Sqlite { .. } | StoreConfig::Lsm { .. } => None,
            StoreConfig::DynamoDb(settings) => Some(settings.operation_timeout),
        }
    }

    /// Opens the configured store, which must exist: for the offline tools
    /// (`ledger verify`, `reconcile`), which must not create an empty store
    /// in a mistyped `--data-dir` and report on it.
    pub async fn open_existing(&self) -> Result<std::sync::Arc<dyn Store>, StoreError> {
        if let StoreConfig::Sqlite { data_dir } = self {
            let database = data_dir.join("payvisor.db");
            if !database.is_file() {
                return Err(StoreError::Unavailable(format!(
                    "no payvisor store in {} ({} is missing): check --data-dir",
                    data_dir.display(),
                    database.display()
                )));
            }
        }
        if let StoreConfig::Lsm { data_dir } = self {
            if !LsmStore::exists_in(data_dir) {
                return Err(StoreError::Unavailable(format!(
                    "no payvisor store in {} ({} is missing): check --data-dir and --store",
                    data_dir.display(),
                    data_dir.join(crate::store::lsm::LSM_DIR).display()
                )));
            }
        }
        self.open().await
    }

    /// Opens the configured store.
    pub async fn open(&self) -> Result<std::sync::Arc<dyn Store>, StoreError> {
        Ok(match self {
            StoreConfig::Sqlite { data_dir } => {
                let store = SqliteStore::open(data_dir)?;
                // A damaged file is refused before anything is served.
                store.quick_check()?;
                std::sync::Arc::new(store)
            }
            StoreConfig::Lsm { data_dir } => std::sync::Arc::new(LsmStore::open(data_dir)?),
            StoreConfig::DynamoDb(settings) => {
                std::sync::Arc::new(DynamoDbStore::connect(settings).await)
            }
        })
    }
}

/// Validated settings of a server.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub store: StoreConfig,
    pub policy: Policy,
    pub built_in_bank: BuiltInBankConfig,
    pub passivate_after: Duration,
    /// How long idempotency records are kept.
    pub idempotency_retention: Duration,
    pub watchdog: WatchdogConfig,
    pub metrics_listen: Option<SocketAddr>,
    pub health_listen: Option<SocketAddr>,
    /// The approval rules file, if any (validated).
    pub rules: Option<PathBuf>,
    pub webhooks: WebhookSettings,
    /// Banks over HTTP instead of the built-in simulator (none: simulator).
    pub banks: Vec<HttpBankConfig>,
    /// Where their callbacks come in.
    pub bank_callback_listen: SocketAddr,
    /// How often to reconcile with that bank, and how old a period must be.
    pub reconcile_every: Duration,
    pub reconcile_lag: Duration,
    /// Set when this node is a cluster member (`--cluster`).
    pub cluster: Option<ClusterConfig>,
    pub auth: AuthConfig,
    /// Where spans are exported (`None`: nowhere).
    pub otlp: Option<crate::trace::export::OtlpConfig>,
}

/// One bank over HTTP, and how routing weighs it.
#[derive(Clone)]
pub struct HttpBankConfig {
    pub endpoint: BankEndpoint,
    /// Its callbacks' signing secret; never printed.
    pub secret: String,
    pub priority: u32,
    pub cost_bps: u32,
    /// `None`: every currency.
    pub currencies: Option<std::collections::BTreeSet<crate::domain::Currency>>,
}

/// `{"banks": [{"name", "url", "secret", "priority", "cost_bps", "currencies"}]}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BanksFile {
    banks: Vec<BankEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BankEntry {
    name: String,
    url: String,
    secret: String,
    /// Accept an `http://` URL beyond loopback (a private network).
    #[serde(default)]
    allow_insecure: bool,
    #[serde(default)]
    priority: u32,
    #[serde(default)]
    cost_bps: u32,
    #[serde(default)]
    currencies: Option<Vec<String>>,
}

impl ServeArgs {
    /// The banks of `--banks FILE`, or the one of `--bank-url`.
    fn banks(&self) -> Result<Vec<HttpBankConfig>, ConfigError> {
        let entries = match (&self.banks, &self.bank_url) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Bank {
                    flag: "--banks",
                    why: "give --banks or --bank-url, not both".into(),
                })
            }
            (None, None) => return Ok(Vec::new()),
            (None, Some(url)) => vec![BankEntry {
                name: self.bank_name.clone(),
                url: url.clone(),
                secret: self
                    .bank_secret
                    .as_ref()
                    .map(|secret| secret.expose().to_owned())
                    .unwrap_or_default(),
                allow_insecure: self.bank_allow_insecure,
                priority: 0,
                cost_bps: 0,
                currencies: None,
            }],
            (Some(path), None) => {
                let bad = |why: String| ConfigError::Bank {
                    flag: "--banks",
                    why: format!("{}: {why}", path.display()),
                };
                let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
                let file: BanksFile = serde_json::from_str(&text)
                    .map_err(|e| bad(crate::domain::json::without_values(&e)))?;
                if file.banks.is_empty() || file.banks.len() > limits::BANKS_MAX {
                    return Err(bad(format!("1 to {} banks", limits::BANKS_MAX)));
                }
                file.banks
            }
        };
        let mut banks: Vec<HttpBankConfig> = Vec::new();
        for entry in entries {
            let flag = if self.banks.is_some() {
                "--banks"
            } else {
                "--bank-url"
            };
            let bad = |why: &str| ConfigError::Bank {
                flag,
                why: format!("bank {:?}: {why}", entry.name),
            };
            let name_ok = !entry.name.is_empty()
                && entry.name.len() <= limits::WEBHOOK_ENDPOINT_NAME_CHARS_MAX
                && entry
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !name_ok {
                return Err(bad("name: 1..=64 characters of [A-Za-z0-9._-]"));
            }
            if banks.iter().any(|known| known.endpoint.name == entry.name) {
                return Err(bad("appears twice"));
            }
            let base_url = crate::http_client::outbound_url(&entry.url, entry.allow_insecure)
                .map_err(|why| bad(&why))?;
            if entry.secret.len() < limits::WEBHOOK_SECRET_BYTES_MIN {
                return Err(bad(
                    "a secret of at least 16 bytes is required (--bank-secret)",
                ));
            }
            let callback_url = match (&self.bank_callback_url, banks.is_empty()) {
                // The one bank of --bank-url: the URL as given.
                (Some(url), true) if self.banks.is_none() => url.clone(),
                // A banks file: the URL is the callback load balancer's
                // base, each bank's path below it.
                (Some(base), _) if self.banks.is_some() => {
                    format!("{}/v1/callbacks/{}", base.trim_end_matches('/'), entry.name)
                }
                _ => format!(
                    "{}://{}/v1/callbacks/{}",
                    if self.security.bank_callback_tls_cert.is_some() {
                        "https"
                    } else {
                        "http"
                    },
                    self.bank_callback_listen,
                    entry.name
                ),
            };
            crate::http_client::parse_url(&callback_url)
                .map_err(|why| bad(&format!("callback URL: {why}")))?;
            let currencies = match &entry.currencies {
                None => None,
                Some(codes) => Some(
                    codes
                        .iter()
                        .map(|code| {
                            crate::domain::Currency::from_code(code)
                                .ok_or_else(|| bad(&format!("unknown currency {code:?}")))
                        })
                        .collect::<Result<_, _>>()?,
                ),
            };
            banks.push(HttpBankConfig {
                endpoint: BankEndpoint {
                    name: entry.name.clone(),
                    base_url,
                    callback_url,
                },
                secret: entry.secret,
                priority: entry.priority,
                cost_bps: entry.cost_bps,
                currencies,
            });
        }
        Ok(banks)
    }
}

impl std::fmt::Debug for HttpBankConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBankConfig")
            .field("endpoint", &self.endpoint)
            .field("secret", &"<redacted>")
            .field("priority", &self.priority)
            .field("cost_bps", &self.cost_bps)
            .field("currencies", &self.currencies)
            .finish()
    }
}

/// How stalls are looked for and who is paged.
#[derive(Debug, Clone)]
pub struct WatchdogConfig {
    pub sweep_every: Duration,
    /// Sweeps failing this long page on-call (`watchdog_failing`).
    pub failing_page_after: Duration,
    pub node_name: String,
    pub pager: PagerConfig,
    /// What pages link to.
    pub links: crate::alerts::PageLinks,
}

#[derive(Clone)]
pub enum PagerConfig {
    /// Pages go to the log (no routing key configured).
    Log,
    PagerDuty {
        url: String,
        routing_key: crate::secret::Secret,
    },
}

impl std::fmt::Debug for PagerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The routing key is a secret: never logged.
            PagerConfig::Log => f.write_str("Log"),
            PagerConfig::PagerDuty { url, .. } => write!(f, "PagerDuty({url})"),
        }
    }
}

/// An address a page links to: http(s), with a host.
fn page_link(flag: &'static str, url: &str) -> Result<String, ConfigError> {
    let parsed = url
        .replace("{payment}", "p")
        .replace("{account}", "a")
        .parse::<http::Uri>();
    match parsed {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {
            Ok(url.to_owned())
        }
        _ => Err(ConfigError::PageLink(flag, url.to_owned())),
    }
}

/// The OTLP collector of `--otlp-endpoint`: no user information (it would
/// be a secret in the log) and nothing after the authority (OTLP/gRPC's
/// path is fixed).
fn otlp_config(
    endpoint: &str,
    sample_ratio: f64,
) -> Result<crate::trace::export::OtlpConfig, ConfigError> {
    // Shown without user information, which may hold a token.
    let shown = match endpoint.split_once('@') {
        Some((before, after)) => match before.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://[redacted]@{after}"),
            None => format!("[redacted]@{after}"),
        },
        None => endpoint.to_owned(),
    };
    let refused = || ConfigError::OtlpEndpoint(shown.clone());
    let uri: http::Uri = endpoint.parse().map_err(|_| refused())?;
    let authority = uri.authority().ok_or_else(refused)?;
    let bare = matches!(uri.path(), "" | "/") && uri.query().is_none();
    if !matches!(uri.scheme_str(), Some("http" | "https"))
        || authority.as_str().contains('@')
        || !bare
    {
        return Err(refused());
    }
    Ok(crate::trace::export::OtlpConfig {
        endpoint: uri,
        sample_ratio,
        batch_wait: limits::OTLP_BATCH_WAIT,
    })
}

/// A node name as pages carry it: 1 to 63 letters, digits, `.`, `-`, `_`
/// (a host name's alphabet; it goes into the page's dedup key).
fn valid_node_name(name: &str) -> Result<String, ConfigError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if (1..=63).contains(&name.len()) && name.chars().all(allowed) {
        Ok(name.to_owned())
    } else {
        Err(ConfigError::NodeName(format!(
            "{name:?}: expected 1 to 63 letters, digits, '.', '-' or '_'"
        )))
    }
}

/// This machine's host name (Linux), else `$HOSTNAME`.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

/// Parses `500ms`, `2s`, `5m`, `24h`, `1d`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let millis = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    number.checked_mul(millis).map(Duration::from_millis)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    File(#[from] crate::reload::FileError),
    #[error("--webhooks: {0}")]
    Webhooks(crate::reload::FileError),
    #[error("--idempotency-retention {0:?}: expected a duration from 24h to 365d, like 7d")]
    IdempotencyRetention(String),
    #[error("--node-name: {0}")]
    NodeName(String),
    #[error("--otlp-endpoint {0:?}: expected a collector's http:// or https:// address with no user, path or query, like http://otel-collector:4317")]
    OtlpEndpoint(String),
    #[error("--otlp-sample-ratio {0}: expected a share from 0 to 1, like 0.1")]
    OtlpSampleRatio(f64),
    #[error("--otlp-batch-wait {0:?}: expected a duration, like 500ms")]
    OtlpBatchWait(String),
    #[error("{0} {1:?}: expected an http:// or https:// address")]
    PageLink(&'static str, String),
    #[error("--webhook-retry-for {0:?}: expected a duration from 1s to 30d, like 24h")]
    WebhookRetryFor(String),
    #[error("{flag}: {why}")]
    Bank { flag: &'static str, why: String },
    #[error("--reconcile-every {0:?}: expected a duration from 1s to 1d, like 10m")]
    ReconcileEvery(String),
    #[error("--reconcile-lag {0:?}: expected a duration from 1s to 1d, like 15m")]
    ReconcileLag(String),
    #[error("--bank-latency-ms {0:?}: expected MIN..MAX in milliseconds, MIN <= MAX")]
    Latency(String),
    #[error("--bank-failure-per-mille must be at most 1000")]
    FailureRate,
    #[error("--fee-fixed-minor must not be negative; --fee-basis-points at most 10000")]
    Fee,
    #[error("{0}")]
    DynamoDb(String),
    #[error("--stall-deadline {0:?}: {1}")]
    StallDeadline(String, String),
    #[error("--redrive-max must be at most {max}", max = limits::REDRIVES_MAX)]
    RedriveMax,
    #[error("--watchdog-interval {0:?}: expected a duration from 10ms to 1m, like 1s")]
    WatchdogInterval(String),
    #[error("--watchdog-page-after {0:?}: expected a duration from 1s to 1h, like 1m")]
    WatchdogPageAfter(String),
    #[error("{0}")]
    Cluster(String),
    #[error("{0}")]
    Security(String),
    #[error("--pagerduty-url {0:?}: expected an https:// URL (http:// for loopback only)")]
    PagerDutyUrl(String),
}

impl ServeArgs {
    pub fn validate(&self) -> Result<Config, ConfigError> {
        if let Some(path) = &self.rules {
            // Checked now so that a bad file stops the start with its
            // problems; the server loads it again and keeps watching it.
            load_rules_file(path)?;
        }
        let retry_for = parse_duration(&self.webhook_retry_for)
            .filter(|d| *d >= Duration::from_secs(1) && *d <= Duration::from_secs(30 * 86_400))
            .ok_or_else(|| ConfigError::WebhookRetryFor(self.webhook_retry_for.clone()))?;
        let banks = self.banks()?;
        let reconcile_every = parse_duration(&self.reconcile_every)
            .filter(|d| *d >= Duration::from_secs(1) && *d <= Duration::from_secs(86_400))
            .ok_or_else(|| ConfigError::ReconcileEvery(self.reconcile_every.clone()))?;
        let reconcile_lag = parse_duration(&self.reconcile_lag)
            .filter(|d| *d >= Duration::from_secs(1) && *d <= Duration::from_secs(86_400))
            .ok_or_else(|| ConfigError::ReconcileLag(self.reconcile_lag.clone()))?;
        let webhooks = match &self.webhooks {
            Some(path) => WebhookSettings {
                endpoints: Arc::new(
                    crate::reload::InForce::from_file(path.clone())
                        .map_err(ConfigError::Webhooks)?,
                ),
                retry_for,
            },
            None => WebhookSettings::fixed(Vec::new(), retry_for),
        };
        if self.fee_fixed_minor < 0 || self.fee_basis_points > 10_000 {
            return Err(ConfigError::Fee);
        }
        let fees = FeeSchedule {
            default: Fee {
                basis_points: self.fee_basis_points,
                fixed_minor: self.fee_fixed_minor,
            },
            per_currency: Default::default(),
        };
        let (min, max) = self
            .bank_latency_ms
            .split_once("..")
            .and_then(|(min, max)| {
                Some((
                    min.trim().parse::<u64>().ok()?,
                    max.trim().parse::<u64>().ok()?,
                ))
            })
            .filter(|(min, max)| min <= max)
            .ok_or_else(|| ConfigError::Latency(self.bank_latency_ms.clone()))?;
        if self.bank_failure_per_mille > 1000 {
            return Err(ConfigError::FailureRate);
        }
        let mut stalls = StallPolicy::default();
        for entry in &self.stall_deadline {
            let bad = |why: &str| ConfigError::StallDeadline(entry.clone(), why.to_owned());
            let (stage, duration) = entry
                .split_once('=')
                .ok_or_else(|| bad("expected STAGE=DURATION"))?;
            let stage: Stage = stage.trim().parse().map_err(|why: String| bad(&why))?;
            let deadline = parse_duration(duration)
                .filter(|deadline| {
                    !deadline.is_zero() && *deadline <= Duration::from_secs(30 * 86_400)
                })
                .ok_or_else(|| bad("expected a duration from 1ms to 30d, like 2s or 5m"))?;
            stalls
                .deadline_ms
                .insert(stage, deadline.as_millis() as i64);
        }
        if self.redrive_max > limits::REDRIVES_MAX {
            return Err(ConfigError::RedriveMax);
        }
        stalls.redrive_max = self.redrive_max;
        let sweep_every = parse_duration(&self.watchdog_interval)
            .filter(|every| {
                *every >= Duration::from_millis(10) && *every <= Duration::from_secs(60)
            })
            .ok_or_else(|| ConfigError::WatchdogInterval(self.watchdog_interval.clone()))?;
        let failing_page_after = parse_duration(&self.watchdog_page_after)
            .filter(|after| *after >= Duration::from_secs(1) && *after <= Duration::from_secs(3600))
            .ok_or_else(|| ConfigError::WatchdogPageAfter(self.watchdog_page_after.clone()))?;
        let pager = match &self.pagerduty_routing_key {
            None => PagerConfig::Log,
            Some(routing_key) => {
                if crate::http_client::outbound_url(&self.pagerduty_url, false).is_err() {
                    return Err(ConfigError::PagerDutyUrl(self.pagerduty_url.clone()));
                }
                PagerConfig::PagerDuty {
                    url: self.pagerduty_url.clone(),
                    routing_key: routing_key.clone(),
                }
            }
        };
        let store = self.store.validate()?;
        let cluster = self.cluster.validate(self.listen, &store, banks.len())?;
        let auth = self.security.validate(self.listen, cluster.is_some())?;
        let node_name = match &self.node_name {
            Some(name) => valid_node_name(name)?,
            None if cluster.is_some() => match host_name() {
                Some(name) => valid_node_name(&name).map_err(|_| {
                    ConfigError::NodeName(format!(
                        "this machine's host name {name:?} is not a node name (1 to 63 letters, digits, '.', '-' or '_'); give each node its own --node-name"
                    ))
                })?,
                None => {
                    return Err(ConfigError::NodeName(
                        "this machine's host name could not be read; give each node its own --node-name".into(),
                    ))
                }
            },
            None => "payvisor".to_owned(),
        };
        // Checked with export off too: a typo shows now, not the day
        // tracing is turned on.
        if !(0.0..=1.0).contains(&self.otlp_sample_ratio) {
            return Err(ConfigError::OtlpSampleRatio(self.otlp_sample_ratio));
        }
        let otlp = match &self.otlp_endpoint {
            Some(endpoint) => {
                let mut otlp = otlp_config(endpoint, self.otlp_sample_ratio)?;
                otlp.batch_wait = parse_duration(&self.otlp_batch_wait)
                    .ok_or_else(|| ConfigError::OtlpBatchWait(self.otlp_batch_wait.clone()))?;
                Some(otlp)
            }
            None => None,
        };
        Ok(Config {
            auth,
            otlp,
            listen: self.listen,
            store,
            cluster,
            policy: Policy { fees, stalls },
            rules: self.rules.clone(),
            webhooks,
            banks,
            bank_callback_listen: self.bank_callback_listen,
            reconcile_every,
            reconcile_lag,
            watchdog: WatchdogConfig {
                sweep_every,
                failing_page_after,
                node_name,
                pager,
                links: crate::alerts::PageLinks {
                    // A base the runbook's file name is appended to.
                    runbook_base: page_link("--runbook-base-url", &self.runbook_base_url).map(
                        |base| match base.ends_with('/') {
                            true => base,
                            false => format!("{base}/"),
                        },
                    )?,
                    client_url: match &self.page_client_url {
                        Some(url) => Some(page_link("--page-client-url", url)?),
                        None => None,
                    },
                },
            },
            metrics_listen: self.metrics_listen,
            health_listen: self.health_listen,
            built_in_bank: BuiltInBankConfig {
                latency_min: Duration::from_millis(min),
                latency_max: Duration::from_millis(max),
                failure_per_mille: self.bank_failure_per_mille,
            },
            passivate_after: Duration::from_secs(self.passivate_after_secs),
            idempotency_retention: parse_duration(&self.idempotency_retention)
                .filter(|retention| {
                    (limits::IDEMPOTENCY_RETENTION_MIN..=limits::IDEMPOTENCY_RETENTION_MAX)
                        .contains(retention)
                })
                .ok_or_else(|| {
                    ConfigError::IdempotencyRetention(self.idempotency_retention.clone())
                })?,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["payvisor"];
        argv.extend(args);
        Cli::try_parse_from(argv)
            .expect("flags parse")
            .serve
            .validate()
    }

    #[test]
    fn outbound_urls_are_https_unless_loopback_or_allowed() {
        let bank = |url: &str, extra: &[&str]| {
            parse(
                &[
                    &["--bank-url", url, "--bank-secret", "0123456789abcdef"][..],
                    extra,
                ]
                .concat(),
            )
        };
        let refused = bank("http://bank.internal:7001", &[])
            .unwrap_err()
            .to_string();
        assert!(refused.contains("use https://"), "{refused}");
        assert!(bank("http://bank.internal:7001", &["--bank-allow-insecure"]).is_ok());
        assert!(bank("https://bank.example", &[]).is_ok());
        assert!(bank("http://127.0.0.1:7001", &[]).is_ok());
        assert!(bank("http://[::1]:7001", &[]).is_ok());

        let dir = tempfile::tempdir().unwrap();
        let banks = dir.path().join("banks.json");
        std::fs::write(
            &banks,
            r#"{"banks": [{"name": "a", "url": "http://a.internal", "secret": "0123456789abcdef"},
                          {"name": "b", "url": "http://b.internal", "secret": "0123456789abcdef", "allow_insecure": true}]}"#,
        )
        .unwrap();
        let refused = parse(&["--banks", banks.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("\"a\"") && refused.contains("https://"),
            "{refused}"
        );
        // With a banks file, --bank-callback-url is the base of every bank's
        // callback path; without it, the listen address is.
        let both_allowed = r#"{"banks": [{"name": "a", "url": "http://a.internal", "secret": "0123456789abcdef", "allow_insecure": true},
                          {"name": "b", "url": "http://b.internal", "secret": "0123456789abcdef", "allow_insecure": true}]}"#;
        std::fs::write(&banks, both_allowed).unwrap();
        let callbacks = |extra: &[&str]| -> Vec<String> {
            parse(&[&["--banks", banks.to_str().unwrap()][..], extra].concat())
                .unwrap()
                .banks
                .iter()
                .map(|bank| bank.endpoint.callback_url.clone())
                .collect()
        };
        assert_eq!(
            callbacks(&["--bank-callback-url", "https://callbacks.example:50052/"]),
            [
                "https://callbacks.example:50052/v1/callbacks/a",
                "https://callbacks.example:50052/v1/callbacks/b"
            ]
        );
        assert_eq!(
            callbacks(&["--bank-callback-listen", "10.0.0.5:50052"]),
            [
                "http://10.0.0.5:50052/v1/callbacks/a",
                "http://10.0.0.5:50052/v1/callbacks/b"
            ]
        );

        let hooks = dir.path().join("hooks.json");
        let write_hooks = |allow: bool| {
            std::fs::write(
                &hooks,
                format!(
                    r#"{{"endpoints": [{{"name": "shop", "url": "http://hooks.example/in", "secret": "0123456789abcdef", "allow_insecure": {allow}}}]}}"#
                ),
            )
            .unwrap();
        };
        write_hooks(false);
        let refused = parse(&["--webhooks", hooks.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(refused.contains("use https://"), "{refused}");
        write_hooks(true);
        assert!(parse(&["--webhooks", hooks.to_str().unwrap()]).is_ok());

        let pager =
            |url: &str| parse(&["--pagerduty-routing-key", "R0UT1NG", "--pagerduty-url", url]);
        assert!(pager("http://events.pagerduty.example/v2/enqueue").is_err());
        assert!(pager("http://127.0.0.1:9/v2/enqueue").is_ok());
        assert!(pager("https://events.pagerduty.com/v2/enqueue").is_ok());
    }

    #[test]
    fn beyond_loopback_a_server_needs_an_access_list_and_a_cluster_node_its_key() {
        let refused = |args: &[&str], says: &str| {
            let error = parse(args).expect_err("refused").to_string();
            assert!(error.contains(says), "{args:?}: {error}");
        };
        refused(&["--listen", "0.0.0.0:50051"], "--auth FILE");
        refused(&["--listen", "10.1.2.3:50051"], "without authentication");
        assert!(parse(&["--listen", "[::1]:50051"]).is_ok());
        assert!(parse(&["--listen", "0.0.0.0:50051", "--insecure-no-auth"]).is_ok());

        let dir = tempfile::tempdir().unwrap();
        let node = crate::auth::new_key(Some("node-1")).unwrap();
        let gateway = crate::auth::new_key(Some("gw")).unwrap();
        let file = dir.path().join("access.json");
        std::fs::write(
            &file,
            format!(
                r#"{{"keys": [{{"id": "node-1", "secret_sha256": "{}", "roles": ["node"]}},
                             {{"id": "gw", "secret_sha256": "{}", "roles": ["gateway"]}}]}}"#,
                node.secret_sha256, gateway.secret_sha256
            ),
        )
        .unwrap();
        let auth = [
            "--listen",
            "0.0.0.0:50051",
            "--auth",
            file.to_str().unwrap(),
        ];
        let with_auth = parse(&auth).unwrap();
        assert_eq!(with_auth.auth.access_list.as_deref(), Some(file.as_path()));
        refused(
            &[&auth[..], &["--insecure-no-auth"]].concat(),
            "exclude each other",
        );
        let clustered = [
            &auth[..],
            &[
                "--cluster",
                "--advertise-addr",
                "10.0.0.5:50051",
                "--store",
                "dynamodb",
                "--dynamodb-table",
                "t",
                "--bank-url",
                "http://127.0.0.1:9",
                "--bank-secret",
                "0123456789abcdef",
            ],
        ]
        .concat();
        refused(&clustered, "--node-key");
        refused(
            &[&clustered[..], &["--node-key", gateway.key.expose()]].concat(),
            "has no node role",
        );
        let wrong = format!("pvk_node-1_{}", "0".repeat(64));
        let error = parse(&[&clustered[..], &["--node-key", &wrong]].concat())
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains("not valid") && !error.contains(&wrong),
            "{error}"
        );
        let config = parse(&[&clustered[..], &["--node-key", node.key.expose()]].concat()).unwrap();
        assert_eq!(config.auth.node_key.as_ref(), Some(&node.key));
        assert!(!format!("{config:?}").contains(node.key.expose()));
    }

    #[test]
    fn a_cluster_needs_dynamodb_banks_over_http_and_an_address_peers_can_reach() {
        let bank = [
            "--bank-url",
            "http://127.0.0.1:9",
            "--bank-secret",
            "0123456789abcdef",
        ];
        let dynamodb = ["--store", "dynamodb", "--dynamodb-table", "t"];
        let refused = |args: &[&str], says: &str| {
            let error = parse(args).expect_err("refused").to_string();
            assert!(error.contains(says), "{args:?}: {error}");
        };
        refused(&[&["--cluster"][..], &bank].concat(), "--store dynamodb");
        refused(&[&["--cluster"][..], &dynamodb].concat(), "banks over HTTP");
        let clustered = [&["--cluster"][..], &dynamodb, &bank].concat();
        refused(
            &[&clustered[..], &["--listen", "0.0.0.0:50051"]].concat(),
            "--advertise-addr",
        );
        refused(
            &[&clustered[..], &["--advertise-addr", "no-port"]].concat(),
            "HOST:PORT",
        );
        refused(
            &[&clustered[..], &["--cluster-dead-after-ms", "1000"]].concat(),
            "heartbeat",
        );
        refused(
            &[&clustered[..], &["--cluster-shards", "0"]].concat(),
            "1..=",
        );

        // A cluster member is named after its machine unless told; a lone
        // node is `payvisor`; a name goes into a page's dedup key, so its
        // alphabet is a host name's.
        let config = parse(&clustered).unwrap();
        assert_eq!(config.watchdog.node_name, host_name().unwrap());
        assert_eq!(parse(&bank).unwrap().watchdog.node_name, "payvisor");
        let named = parse(&[&clustered[..], &["--node-name", "payvisor-2"]].concat()).unwrap();
        assert_eq!(named.watchdog.node_name, "payvisor-2");
        refused(
            &[&clustered[..], &["--node-name", "a/b"]].concat(),
            "--node-name",
        );
        refused(&[&bank[..], &["--node-name", ""]].concat(), "--node-name");
        // Idempotency records are kept from a day to a year.
        refused(
            &[&bank[..], &["--idempotency-retention", "1h"]].concat(),
            "--idempotency-retention",
        );
        let week = parse(&[&bank[..], &["--idempotency-retention", "7d"]].concat()).unwrap();
        assert_eq!(week.idempotency_retention, Duration::from_secs(7 * 86_400));
        let cluster = config.cluster.expect("a cluster member");
        assert_eq!(cluster.advertise, "127.0.0.1:50051");
        assert_eq!(cluster.shards, limits::CLUSTER_SHARDS_DEFAULT);
        assert_eq!(cluster.timeouts.dead_after, 5_000);
        assert_eq!(cluster.timeouts.self_demote_after, 2_500);
        assert_ne!(
            cluster.node_id,
            parse(&clustered).unwrap().cluster.unwrap().node_id,
            "a fresh node id every start"
        );
        let behind_nat = parse(
            &[
                &clustered[..],
                &[
                    "--listen",
                    "0.0.0.0:7000",
                    "--advertise-addr",
                    "10.0.0.5:7000",
                    // Beyond loopback a server needs an access list, or this.
                    "--insecure-no-auth",
                ],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(behind_nat.cluster.unwrap().advertise, "10.0.0.5:7000");
        // `auto`: the address of this machine's default route (this machine
        // has one: the test command fetches packages), at the listen port.
        let auto = parse(
            &[
                &clustered[..],
                &[
                    "--listen",
                    "0.0.0.0:7000",
                    "--advertise-addr",
                    "auto",
                    "--insecure-no-auth",
                ],
            ]
            .concat(),
        )
        .unwrap();
        let advertise: std::net::SocketAddr = auto.cluster.unwrap().advertise.parse().unwrap();
        assert_eq!(advertise.port(), 7000);
        assert!(
            !advertise.ip().is_unspecified() && !advertise.ip().is_loopback(),
            "{advertise}"
        );
        assert!(
            parse(&[]).unwrap().cluster.is_none(),
            "single node by default"
        );
    }

    #[test]
    fn spans_go_to_a_collector_named_by_its_address_alone_and_only_if_asked() {
        assert_eq!(parse(&[]).unwrap().otlp, None, "off by default");
        let otlp = parse(&[
            "--otlp-endpoint",
            "http://otel:4317",
            "--otlp-sample-ratio",
            "0.25",
        ])
        .unwrap()
        .otlp
        .unwrap();
        assert_eq!(otlp.endpoint, "http://otel:4317");
        assert_eq!(otlp.sample_ratio, 0.25);
        for endpoint in [
            "otel:4317",
            "grpc://otel:4317",
            "http://user:token@otel:4317",
            "http://otel:4317/v1/traces",
            "http://otel:4317?x=1",
        ] {
            assert!(
                matches!(
                    parse(&["--otlp-endpoint", endpoint]),
                    Err(ConfigError::OtlpEndpoint(_))
                ),
                "{endpoint}"
            );
        }
        for ratio in ["-0.1", "1.5", "NaN"] {
            let with = parse(&[
                "--otlp-endpoint",
                "https://otel",
                "--otlp-sample-ratio",
                ratio,
            ]);
            let without = parse(&["--otlp-sample-ratio", ratio]);
            for refused in [with, without] {
                assert!(
                    matches!(refused, Err(ConfigError::OtlpSampleRatio(_))),
                    "{ratio}"
                );
            }
        }
        let with_token = parse(&["--otlp-endpoint", "http://user:s3cret@otel:4317/x"]);
        let shown = with_token.unwrap_err().to_string();
        assert!(
            !shown.contains("s3cret") && shown.contains("[redacted]@otel:4317/x"),
            "{shown}"
        );
    }

    #[test]
    fn durations_have_units() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86_400)));
        for bad in ["", "s", "2", "2 s", "-1s", "1.5s", "99999999999999999999d"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn stall_deadlines_and_redrives_are_flags() {
        let config = parse(&[
            "--stall-deadline",
            "sent=2s",
            "--stall-deadline",
            "in_review=1d",
            "--redrive-max",
            "5",
        ])
        .unwrap();
        let stalls = &config.policy.stalls;
        assert_eq!(stalls.deadline_ms(Stage::Sent), 2_000);
        assert_eq!(stalls.deadline_ms(Stage::InReview), 86_400_000);
        assert_eq!(
            stalls.deadline_ms(Stage::Refunding),
            limits::STALL_DEADLINE_REFUNDING_DEFAULT.as_millis() as i64
        );
        assert_eq!(stalls.redrive_max, 5);
        assert!(matches!(config.watchdog.pager, PagerConfig::Log));
        for bad in [
            &["--stall-deadline", "processed=2s"][..],
            &["--stall-deadline", "sent"],
            &["--stall-deadline", "sent=0s"],
            &["--redrive-max", "11"],
            &["--watchdog-interval", "1ms"],
            &["--pagerduty-routing-key", "k", "--pagerduty-url", "ftp://x"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        let paged = parse(&["--pagerduty-routing-key", "secret-key"]).unwrap();
        assert!(!format!("{:?}", paged.watchdog.pager).contains("secret"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 128, ..Default::default() })]

        /// Banks and webhooks files of any shape: accepted or refused with
        /// a message, never a panic, and never the secret echoed.
        #[test]
        fn banks_and_webhooks_files_load_or_are_refused(
            name in "\\PC{0,70}",
            url in "(https?://)?[a-z0-9:@./\\[\\]-]{0,40}",
            secret in "[0-9]{12,20}|\\PC{0,40}",
            numeric in proptest::prelude::any::<bool>(),
            extra in "\\PC{0,20}",
        ) {
            let dir = tempfile::tempdir().unwrap();
            let secret_json = if numeric && secret.chars().all(|c| c.is_ascii_digit()) {
                secret.clone()
            } else {
                serde_json::Value::String(secret.clone()).to_string()
            };
            let entry = format!(
                r#"{{"name": {}, "url": {}, "secret": {secret_json}{extra}}}"#,
                serde_json::Value::String(name),
                serde_json::Value::String(url)
            );
            let webhooks = dir.path().join("webhooks.json");
            std::fs::write(&webhooks, format!(r#"{{"endpoints": [{entry}]}}"#)).unwrap();
            if let Err(error) = parse(&["--webhooks", webhooks.to_str().unwrap()]) {
                let told = error.to_string();
                proptest::prop_assert!(secret.len() < 12 || !told.contains(&secret), "{told}");
            }
            let banks = dir.path().join("banks.json");
            std::fs::write(&banks, format!(r#"{{"banks": [{entry}]}}"#)).unwrap();
            if let Err(error) = parse(&["--banks", banks.to_str().unwrap()]) {
                let told = error.to_string();
                proptest::prop_assert!(secret.len() < 12 || !told.contains(&secret), "{told}");
            }
        }
    }
}
