//! The command line for people: customer-service staff and operators talk to
//! a running server (`payments …`, `accounts …`), and operators check the
//! books (`ledger verify`). Readable tables by default, JSON with `--json`,
//! and errors that say what to do.

mod keys;
pub mod render;

pub use keys::{auth, AuthCommand};

/// `println!` for a command's output. A reader that went away
/// (`payvisor … | head`) ends the command quietly, as it ends `cat` or
/// ripgrep, instead of a panic. SIGPIPE stays ignored (Rust's default):
/// restoring it would let a write to a reset gRPC or HTTP connection kill
/// the long-running commands (`events watch`, `webhooks listen`).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        if let Err(error) = writeln!(stdout, $($arg)*) {
            $crate::cli::output_failed(error)
        }
    }};
}
pub use crate::out;

/// Ends the command after its output failed: quietly when the reader went
/// away, else with the error.
pub fn output_failed(error: std::io::Error) -> ! {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: writing the output: {error}");
    std::process::exit(1);
}

use anyhow::Context;
use clap::{Args, Subcommand};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::domain::{parse_payment_name, AccountId, Currency, Money};
use crate::grpc::pb;
use crate::grpc::pb::payment_service_client::PaymentServiceClient;
use crate::random::{Random, SeededRandom};

/// Options shared by every client command.
#[derive(Args, Debug, Clone)]
pub struct ClientOptions {
    /// The payvisor server to talk to.
    #[arg(
        long,
        global = true,
        env = "PAYVISOR_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// API key (`pvk_...`) to authenticate with, sent as `authorization:
    /// Bearer`. Never sent in plaintext to an address beyond this machine.
    #[arg(long, global = true, env = "PAYVISOR_API_KEY", hide_env_values = true)]
    pub api_key: Option<crate::secret::Secret>,
    /// CA certificates (PEM) to check an `https://` server against
    /// (default: the system's roots).
    #[arg(long, global = true, env = "PAYVISOR_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM) for a server that requires one (mutual
    /// TLS), with --tls-client-key.
    #[arg(
        long,
        global = true,
        env = "PAYVISOR_TLS_CLIENT_CERT",
        requires = "tls_client_key"
    )]
    pub tls_client_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        global = true,
        env = "PAYVISOR_TLS_CLIENT_KEY",
        requires = "tls_client_cert"
    )]
    pub tls_client_key: Option<std::path::PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum PaymentsCommand {
    /// Create a payment (the reply comes once it is durably recorded).
    Create {
        /// The account the payment credits.
        #[arg(long)]
        account: String,
        /// Amount in major units, e.g. 12.50.
        #[arg(long)]
        amount: String,
        /// ISO 4217 currency code, e.g. USD.
        #[arg(long)]
        currency: String,
        /// Metadata entries KEY=VALUE (repeatable); bank_sim=fail steers the simulator.
        #[arg(long = "metadata", value_name = "KEY=VALUE")]
        metadata: Vec<String>,
        /// Payment id to use (generated when omitted).
        #[arg(long)]
        payment_id: Option<String>,
        /// Who pays (read by block-list rules).
        #[arg(long)]
        payer_id: Option<String>,
        /// The payer's country, ISO 3166-1 alpha-2 (e.g. DE).
        #[arg(long)]
        payer_country: Option<String>,
        /// Idempotency key; reuse it to retry safely. Generated when omitted.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Show one payment.
    Get {
        /// `accounts/{account}/payments/{payment}`.
        name: String,
    },
    /// List an account's payments.
    List {
        /// The account (`acme` or `accounts/acme`).
        #[arg(long)]
        account: String,
        /// At most this many per page (default 50, at most 500).
        #[arg(long, default_value_t = 50)]
        page_size: i32,
        /// Start from this page (a `next_page_token` printed before).
        #[arg(long, default_value = "")]
        page_token: String,
        /// Follow page tokens to the end.
        #[arg(long)]
        all: bool,
        /// Only payments in this state (e.g. in_review, sent, failed).
        #[arg(long)]
        state: Option<String>,
        /// Only payments created at or after this time, RFC 3339 (e.g.
        /// 2026-11-28T00:00:00Z or with an offset).
        #[arg(long)]
        since: Option<String>,
        /// Only payments created before this time, RFC 3339.
        #[arg(long)]
        until: Option<String>,
    },
    /// Refund all that remains of a payment, or --amount of it.
    Refund {
        /// accounts/{account}/payments/{payment}
        name: String,
        /// Amount in major units, in the payment's currency (default: all that remains).
        #[arg(long)]
        amount: Option<String>,
        /// Why the money goes back.
        #[arg(long)]
        reason: String,
        /// Idempotency key; reuse it to retry safely. Generated when omitted.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// On-call: list payments that missed a stall deadline (re-driven or paged).
    Stalled {
        /// At most this many per page (default 50, at most 500).
        #[arg(long, default_value_t = 50)]
        page_size: i32,
        /// Start from this page (a `next_page_token` printed before).
        #[arg(long, default_value = "")]
        page_token: String,
        /// Follow page tokens to the end.
        #[arg(long)]
        all: bool,
    },
    /// On-call: re-drive a stuck payment now.
    Retry {
        /// accounts/{account}/payments/{payment}
        name: String,
        /// Idempotency key; reuse it to retry safely. Generated when omitted.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// On-call: give up on a payment not yet processed (FAILED, funds released).
    Fail {
        /// accounts/{account}/payments/{payment}
        name: String,
        /// Why it is given up (recorded as the failure reason).
        #[arg(long)]
        reason: String,
        /// Idempotency key; reuse it to retry safely. Generated when omitted.
        #[arg(long)]
        request_id: Option<String>,
    },
}

/// The review queue: payments the approval rules sent to a person.
#[derive(Subcommand, Debug)]
pub enum ReviewsCommand {
    /// Payments waiting for review, across accounts (or of one account).
    List {
        /// Only this account's (default: every account's).
        #[arg(long)]
        account: Option<String>,
        /// At most this many per page (default 50, at most 500).
        #[arg(long, default_value_t = 50)]
        page_size: i32,
        /// Start from this page (a `next_page_token` printed before).
        #[arg(long, default_value = "")]
        page_token: String,
        /// Follow every page.
        #[arg(long)]
        all: bool,
    },
    /// Approve a payment in review: it goes to the bank at once.
    Approve {
        /// `accounts/{account}/payments/{payment}`.
        name: String,
        /// Why it is approved (kept on the payment).
        #[arg(long)]
        reason: String,
        /// Idempotency key: the same key again answers as the first call
        /// did (default: a new one per call).
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Decline a payment in review: it ends DECLINED with the reason.
    Decline {
        /// `accounts/{account}/payments/{payment}`.
        name: String,
        /// Why it is declined (becomes its failure reason).
        #[arg(long)]
        reason: String,
        /// Idempotency key: the same key again answers as the first call
        /// did (default: a new one per call).
        #[arg(long)]
        request_id: Option<String>,
    },
}

/// A payment's events and their webhook deliveries.
#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// A payment's events, oldest first, with delivery state per endpoint.
    List {
        /// `accounts/{account}/payments/{payment}`.
        payment: String,
    },
    /// Follow every payment event as it is committed (until interrupted;
    /// a dropped stream is resumed after the last event shown).
    Watch {
        /// Start after this event (an event's name, ending in
        /// /events/N) from the durable feed; default: live events only.
        #[arg(long)]
        after: Option<String>,
    },
    /// Deliver an event again (to one endpoint, or all), with a fresh
    /// retry period.
    Resend {
        /// `accounts/{account}/payments/{payment}/events/{n}`.
        event: String,
        /// Only to this configured endpoint (default: every endpoint).
        #[arg(long)]
        endpoint: Option<String>,
        /// Idempotency key: the same key again answers as the first call
        /// did and sends nothing more (default: a new one per call).
        #[arg(long)]
        request_id: Option<String>,
    },
}

/// Pages to on-call, live.
#[derive(Subcommand, Debug)]
pub enum AlertsCommand {
    /// Follow pages (trigger and resolve) as the watchdog decides them,
    /// until interrupted; a dropped stream is resumed (pages meanwhile are
    /// in `payments stalled`).
    Watch,
}

/// Webhooks for a merchant developing their receiver.
#[derive(Subcommand, Debug)]
pub enum WebhooksCommand {
    /// Forward the live event stream to a local endpoint, each event as
    /// the server's webhooks send it: the same body, signed the same way
    /// (as `stripe listen` does). Runs until interrupted.
    Listen {
        /// Where to POST each event, e.g. http://127.0.0.1:4242/webhooks.
        #[arg(long)]
        forward_to: String,
        /// The signing secret the receiver checks (at least 16 bytes);
        /// default: a new one, printed at start.
        #[arg(long, env = "PAYVISOR_LISTEN_SECRET", hide_env_values = true)]
        secret: Option<crate::secret::Secret>,
        /// Start after this event (an event's name, ending in
        /// /events/N) from the durable feed; default: live events only.
        #[arg(long)]
        after: Option<String>,
    },
}

/// Who did what: privileged actions with their actor.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// An account's refunds, reviews, retries and fails with who asked,
    /// oldest first.
    List {
        /// The account (`acme` or `accounts/acme`).
        #[arg(long)]
        account: String,
        /// From this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Before this time (RFC 3339; default now).
        #[arg(long)]
        until: Option<String>,
        /// At most this many per page (default 50, at most 500).
        #[arg(long, default_value_t = 50)]
        page_size: i32,
        /// Start from this page (a `next_page_token` printed before).
        #[arg(long, default_value = "")]
        page_token: String,
        /// Follow page tokens to the end.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AccountsCommand {
    /// Show an account's balances per currency.
    Get {
        /// The account (`acme` or `accounts/acme`).
        account: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// The cluster as the server sees it: nodes (address, start time,
    /// heartbeat age, shards owned) and every shard's owner and epoch.
    Status,
}

#[derive(Subcommand, Debug)]
pub enum LedgerCommand {
    /// Check an account's books in the store: every movement balances,
    /// balances equal the fold of movements and what the payments imply.
    Verify {
        #[command(flatten)]
        store: crate::config::StoreArgs,
        /// Accounts to check (repeatable).
        #[arg(long = "account", required = true)]
        accounts: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Every record's checksum, for the embedded store in --data-dir, with
    /// SQLite's full integrity check, or (log-structured store) that the
    /// index and the expiry list agree with the items (exit 1 on any
    /// damage). Run it with the
    /// server stopped, or on a copy.
    Check {
        /// Directory of the embedded store.
        #[arg(long, env = "PAYVISOR_DATA_DIR", default_value = "./data")]
        data_dir: std::path::PathBuf,
    },
    /// Copy the SQLite store in --data-dir into a log-structured one
    /// (`--store lsm`), with the server stopped. Safe to run again after a
    /// crash; the SQLite files are kept as `payvisor.db.migrated`.
    Migrate {
        /// Directory of the embedded store.
        #[arg(long, env = "PAYVISOR_DATA_DIR", default_value = "./data")]
        data_dir: std::path::PathBuf,
    },
}

/// Runs `store check` or `store migrate`.
pub async fn store(command: StoreCommand) -> anyhow::Result<()> {
    let data_dir = match command {
        StoreCommand::Check { data_dir } => data_dir,
        StoreCommand::Migrate { data_dir } => {
            // The server must not run on either store meanwhile.
            let _lock = crate::store::data_dir::DataDirLock::acquire(&data_dir)?;
            let migrated = crate::store::migrate::sqlite_to_lsm(&data_dir).await?;
            out!(
                "{} items copied into {}; the SQLite store is kept as {} (delete it once \
                 the server runs with --store lsm)",
                migrated.items,
                data_dir.join(crate::store::lsm::LSM_DIR).display(),
                migrated.kept_as.display()
            );
            return Ok(());
        }
    };
    // What each store read, and the problems it found.
    let (read, problems) = if crate::store::lsm::LsmStore::exists_in(&data_dir) {
        let report = crate::store::lsm::LsmStore::open(&data_dir)?.check()?;
        let read = format!("{} records read (log-structured store)", report.items);
        (read, report.problems)
    } else {
        anyhow::ensure!(
            data_dir.join("payvisor.db").is_file(),
            "no payvisor store in {} (neither payvisor.db nor lsm/): check --data-dir",
            data_dir.display()
        );
        let report = crate::store::sqlite::SqliteStore::open(&data_dir)?.check()?;
        let read = format!(
            "{} records read, {} without a checksum (written before checksums)",
            report.rows, report.unchecked
        );
        (read, report.problems)
    };
    for problem in &problems {
        out!("damaged: {problem}");
    }
    out!("{read}, {} problems", problems.len());
    anyhow::ensure!(
        problems.is_empty(),
        "the store is damaged: restore it from a backup (see docs/failure-modes.md)"
    );
    Ok(())
}

fn new_request_id() -> String {
    let random = SeededRandom::from_entropy();
    format!("cli-{:016x}{:016x}", random.next_u64(), random.next_u64())
}

/// A channel to the server that presents the API key on every call.
type Authenticated = InterceptedService<Channel, keys::Credentials>;

async fn connect(options: &ClientOptions) -> anyhow::Result<PaymentServiceClient<Authenticated>> {
    Ok(PaymentServiceClient::new(channel(options).await?))
}

async fn channel(options: &ClientOptions) -> anyhow::Result<Authenticated> {
    let server = keys::server_url(&options.server)?;
    let credentials = keys::Credentials::for_server(&server, options.api_key.as_ref())?;
    let mut endpoint = Channel::from_shared(server.clone())
        .with_context(|| format!("bad --server {:?}", options.server))?;
    if server.starts_with("https://") {
        endpoint = endpoint
            .tls_config(keys::client_tls(options)?)
            .context("TLS settings")?;
    }
    let channel = endpoint
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| {
            format!(
                "cannot reach payvisor at {} (is `payvisor serve` running?)",
                options.server
            )
        })?;
    Ok(InterceptedService::new(channel, credentials))
}

fn parse_amount(amount: &str, currency: &str) -> anyhow::Result<pb::Money> {
    let currency = Currency::from_code(&currency.to_ascii_uppercase()).with_context(|| {
        format!("unknown currency {currency:?} (use an ISO 4217 code such as USD)")
    })?;
    let money =
        Money::parse_major(currency, amount).with_context(|| format!("bad amount {amount:?}"))?;
    Ok(pb::Money {
        currency_code: currency.code().to_owned(),
        minor_units: money.minor_units(),
    })
}

/// Runs a `payments` command; the result is what to print.
pub async fn payments(options: &ClientOptions, command: PaymentsCommand) -> anyhow::Result<()> {
    let mut client = connect(options).await?;
    match command {
        PaymentsCommand::Create {
            account,
            amount,
            currency,
            metadata,
            payment_id,
            payer_id,
            payer_country,
            request_id,
        } => {
            AccountId::new(account.clone())
                .with_context(|| format!("bad account id {account:?}"))?;
            let metadata = metadata
                .iter()
                .map(|entry| {
                    entry
                        .split_once('=')
                        .map(|(key, value)| (key.to_owned(), value.to_owned()))
                        .with_context(|| format!("metadata {entry:?}: expected KEY=VALUE"))
                })
                .collect::<anyhow::Result<_>>()?;
            let request_id = request_id.unwrap_or_else(new_request_id);
            let request = pb::CreatePaymentRequest {
                parent: format!("accounts/{account}"),
                payment: Some(pb::Payment {
                    amount: Some(parse_amount(&amount, &currency)?),
                    metadata,
                    payer_id: payer_id.unwrap_or_default(),
                    payer_country: payer_country.unwrap_or_default(),
                    ..Default::default()
                }),
                request_id: request_id.clone(),
                payment_id: payment_id.unwrap_or_default(),
            };
            let payment = client
                .create_payment(request)
                .await
                .map_err(render::status_error)?
                .into_inner();
            render::payment(options.json, &payment, Some(&request_id));
        }
        PaymentsCommand::Get { name } => {
            let payment = client
                .get_payment(pb::GetPaymentRequest { name })
                .await
                .map_err(render::status_error)?;
            render::payment(options.json, &payment.into_inner(), None);
        }
        PaymentsCommand::List {
            account,
            page_size,
            page_token,
            all,
            state,
            since,
            until,
        } => {
            let state = state_filter(state.as_deref())?;
            let start_time = time_flag("since", since)?;
            let end_time = time_flag("until", until)?;
            let (payments, token) = collect_pages(page_token, all, async |page_token| {
                let request = pb::ListPaymentsRequest {
                    parent: format!("accounts/{account}"),
                    page_size,
                    page_token,
                    state,
                    start_time,
                    end_time,
                };
                let page = client.list_payments(request).await?.into_inner();
                Ok((page.payments, page.next_page_token))
            })
            .await?;
            render::payment_list(options.json, &payments, &token);
        }
        PaymentsCommand::Refund {
            name,
            amount,
            reason,
            request_id,
        } => {
            let amount = match amount {
                None => None,
                Some(amount) => {
                    // The amount is in the payment's currency: ask for it.
                    parse_payment_name(&name)
                        .with_context(|| format!("bad payment name {name:?}"))?;
                    let current = client
                        .get_payment(pb::GetPaymentRequest { name: name.clone() })
                        .await
                        .map_err(render::status_error)?
                        .into_inner();
                    let currency = current
                        .amount
                        .map(|money| money.currency_code)
                        .unwrap_or_default();
                    Some(parse_amount(&amount, &currency)?)
                }
            };
            let request_id = request_id.unwrap_or_else(new_request_id);
            let request = pb::RefundPaymentRequest {
                name,
                amount,
                reason,
                request_id: request_id.clone(),
            };
            let payment = client
                .refund_payment(request)
                .await
                .map_err(render::status_error)?
                .into_inner();
            render::payment(options.json, &payment, Some(&request_id));
        }
        PaymentsCommand::Stalled {
            page_size,
            page_token,
            all,
        } => {
            let (payments, token) = collect_pages(page_token, all, async |page_token| {
                let request = pb::ListStalledPaymentsRequest {
                    page_size,
                    page_token,
                };
                let page = client.list_stalled_payments(request).await?.into_inner();
                Ok((page.payments, page.next_page_token))
            })
            .await?;
            render::stalled_list(options.json, &payments, &token);
        }
        PaymentsCommand::Retry { name, request_id } => {
            send_command(options.json, request_id, async |request_id| {
                client
                    .retry_payment(pb::RetryPaymentRequest { name, request_id })
                    .await
            })
            .await?;
        }
        PaymentsCommand::Fail {
            name,
            reason,
            request_id,
        } => {
            send_command(options.json, request_id, async |request_id| {
                client
                    .fail_payment(pb::FailPaymentRequest {
                        name,
                        reason,
                        request_id,
                    })
                    .await
            })
            .await?;
        }
    }
    Ok(())
}

/// Sends an operator's or reviewer's command under `request_id` (generated
/// when none is given) and prints the payment, with the key to retry with.
async fn send_command(
    json: bool,
    request_id: Option<String>,
    send: impl AsyncFnOnce(String) -> Result<tonic::Response<pb::Payment>, tonic::Status>,
) -> anyhow::Result<()> {
    let request_id = request_id.unwrap_or_else(new_request_id);
    let payment = send(request_id.clone())
        .await
        .map_err(render::status_error)?
        .into_inner();
    render::payment(json, &payment, Some(&request_id));
    Ok(())
}

/// Reads a page from `page_token`, and with `all` every page after it;
/// returns the payments and the token of what is left (empty at the end).
async fn collect_pages(
    mut page_token: String,
    all: bool,
    mut fetch: impl AsyncFnMut(String) -> Result<(Vec<pb::Payment>, String), tonic::Status>,
) -> anyhow::Result<(Vec<pb::Payment>, String)> {
    let mut payments = Vec::new();
    loop {
        let (page, next) = fetch(page_token).await.map_err(render::status_error)?;
        payments.extend(page);
        page_token = next;
        if !all || page_token.is_empty() {
            return Ok((payments, page_token));
        }
    }
}

/// A time flag (`--since`, `--until`): RFC 3339, with `Z` or an offset.
fn time_flag(flag: &str, text: Option<String>) -> anyhow::Result<Option<prost_types::Timestamp>> {
    text.map(|text| {
        let at = crate::domain::time::parse_rfc3339(&text).with_context(|| {
            format!("--{flag} {text:?}: expected RFC 3339, like 2026-11-28T00:00:00Z")
        })?;
        Ok(crate::grpc::convert::timestamp(at))
    })
    .transpose()
}

/// `--state in_review` as the API's enum.
fn state_filter(state: Option<&str>) -> anyhow::Result<i32> {
    let Some(state) = state else { return Ok(0) };
    let wanted = state.to_ascii_lowercase();
    crate::domain::payment::PaymentState::ALL
        .iter()
        .find(|known| known.as_str() == wanted)
        .map(|known| crate::grpc::convert::state_to_pb(*known) as i32)
        .with_context(|| format!("unknown state {state:?} (e.g. in_review, sent, failed)"))
}

pub async fn reviews(options: &ClientOptions, command: ReviewsCommand) -> anyhow::Result<()> {
    let mut client = connect(options).await?;
    match command {
        ReviewsCommand::List {
            account,
            page_size,
            page_token,
            all,
        } => {
            let parent = match account {
                Some(account) => format!("accounts/{}", account.trim_start_matches("accounts/")),
                None => "accounts/-".into(),
            };
            let (payments, token) = collect_pages(page_token, all, async |page_token| {
                let request = pb::ListPaymentsRequest {
                    parent: parent.clone(),
                    page_size,
                    page_token,
                    state: pb::payment::State::InReview as i32,
                    start_time: None,
                    end_time: None,
                };
                let page = client.list_payments(request).await?.into_inner();
                Ok((page.payments, page.next_page_token))
            })
            .await?;
            render::review_list(options.json, &payments, &token);
        }
        ReviewsCommand::Approve {
            name,
            reason,
            request_id,
        } => {
            send_command(options.json, request_id, async |request_id| {
                client
                    .approve_payment(pb::ApprovePaymentRequest {
                        name,
                        reason,
                        request_id,
                    })
                    .await
            })
            .await?;
        }
        ReviewsCommand::Decline {
            name,
            reason,
            request_id,
        } => {
            send_command(options.json, request_id, async |request_id| {
                client
                    .decline_payment(pb::DeclinePaymentRequest {
                        name,
                        reason,
                        request_id,
                    })
                    .await
            })
            .await?;
        }
    }
    Ok(())
}

pub async fn events(options: &ClientOptions, command: EventsCommand) -> anyhow::Result<()> {
    let mut client = connect(options).await?;
    match command {
        EventsCommand::List { payment } => {
            // Every page: a payment's events are few (bounded by its
            // changes).
            let mut events = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_payment_events(pb::ListPaymentEventsRequest {
                        parent: payment.clone(),
                        page_size: crate::limits::PAGE_SIZE_MAX as i32,
                        page_token,
                    })
                    .await
                    .map_err(render::status_error)?
                    .into_inner();
                events.extend(page.events);
                page_token = page.next_page_token;
                if page_token.is_empty() {
                    break;
                }
            }
            render::events(options.json, &events);
        }
        EventsCommand::Watch { after } => {
            follow_events(&mut client, after, |event| {
                render::event_line(options.json, event);
                async {}
            })
            .await?;
        }
        EventsCommand::Resend {
            event,
            endpoint,
            request_id,
        } => {
            let event = client
                .resend_payment_event(pb::ResendPaymentEventRequest {
                    name: event,
                    endpoint: endpoint.unwrap_or_default(),
                    request_id: request_id.unwrap_or_else(new_request_id),
                })
                .await
                .map_err(render::status_error)?
                .into_inner();
            if options.json {
                // What the API returned: the event itself.
                render::event_line(true, &event);
            } else {
                render::events(false, &[event]);
            }
        }
    }
    Ok(())
}

/// Follows `WatchPaymentEvents` until interrupted, handing each event to
/// `each` once. A stream the server ends (a restart, a crash, a subscriber
/// that fell behind) is resumed after the last event handed on; the feed
/// replays a little before that point, and what was handed on already is
/// skipped.
async fn follow_events<F: std::future::Future<Output = ()>>(
    client: &mut PaymentServiceClient<Authenticated>,
    mut after: Option<String>,
    mut each: impl FnMut(&pb::PaymentEvent) -> F,
) -> anyhow::Result<()> {
    let mut seen = RecentNames::default();
    let mut failures = 0;
    loop {
        let request = pb::WatchPaymentEventsRequest {
            after_event: after.clone().unwrap_or_default(),
        };
        let opened = client.watch_payment_events(request).await;
        if opened.is_ok() {
            eprintln!(
                "following events after {}",
                after.as_deref().unwrap_or("now")
            );
        }
        let ended = read_stream(opened, &mut failures, async |event: pb::PaymentEvent| {
            if !seen.insert(&event.name) {
                return false;
            }
            each(&event).await;
            after = Some(event.name);
            true
        })
        .await;
        before_resuming(ended, &mut failures, "the event stream ended; resuming").await?;
    }
}

/// The names of the events handed on lately, the oldest forgotten first
/// (`CLI_STREAM_SEEN_MAX`).
#[derive(Default)]
struct RecentNames {
    order: std::collections::VecDeque<String>,
    names: std::collections::HashSet<String>,
}

impl RecentNames {
    /// Remembers `name`; false if it was remembered already.
    fn insert(&mut self, name: &str) -> bool {
        if !self.names.insert(name.to_owned()) {
            return false;
        }
        self.order.push_back(name.to_owned());
        if self.order.len() > crate::limits::CLI_STREAM_SEEN_MAX {
            if let Some(oldest) = self.order.pop_front() {
                self.names.remove(&oldest);
            }
        }
        true
    }
}

pub async fn alerts(options: &ClientOptions, command: AlertsCommand) -> anyhow::Result<()> {
    let AlertsCommand::Watch = command;
    let mut client = connect(options).await?;
    let mut failures = 0;
    loop {
        let opened = client.watch_alerts(pb::WatchAlertsRequest {}).await;
        if opened.is_ok() {
            eprintln!("following pages");
        }
        let ended = read_stream(opened, &mut failures, async |alert: pb::Alert| {
            render::alert_line(options.json, &alert);
            true
        })
        .await;
        before_resuming(
            ended,
            &mut failures,
            "the alert stream ended; following again (pages meanwhile: payvisor payments stalled)",
        )
        .await?;
    }
}

/// Reads a server stream to its end, each message to `each`, which says
/// whether it was news (news resets `failures`); returns the status the
/// stream ended with (`None`: the server closed it).
async fn read_stream<T>(
    opened: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
    failures: &mut u32,
    mut each: impl AsyncFnMut(T) -> bool,
) -> Option<tonic::Status> {
    let mut stream = match opened {
        Ok(stream) => stream.into_inner(),
        Err(status) => return Some(status),
    };
    loop {
        match stream.message().await {
            Ok(Some(message)) => {
                if each(message).await {
                    *failures = 0;
                }
            }
            Ok(None) => return None,
            Err(status) => return Some(status),
        }
    }
}

/// After a stream ended: the error that stops the command (a status not
/// worth resuming, or too many ends in a row without news), else a word
/// on stderr and the wait before resuming. Worth resuming: the server
/// going away or shedding a subscriber (UNAVAILABLE, ABORTED, CANCELLED),
/// or the connection breaking under it (UNKNOWN or INTERNAL without
/// payvisor's `ErrorInfo`: the transport's, after a crash).
async fn before_resuming(
    ended: Option<tonic::Status>,
    failures: &mut u32,
    resuming: &str,
) -> anyhow::Result<()> {
    let cause = match &ended {
        Some(status) if !status.message().is_empty() => format!(" ({})", status.message()),
        _ => String::new(),
    };
    worth_resuming(ended, failures)?;
    eprintln!("{resuming}{cause}");
    tokio::time::sleep(crate::limits::CLI_STREAM_RESUME_WAIT).await;
    Ok(())
}

/// Whether a stream that ended is worth resuming (see [`before_resuming`]);
/// counts the end.
fn worth_resuming(ended: Option<tonic::Status>, failures: &mut u32) -> anyhow::Result<()> {
    *failures += 1;
    let resumable = ended.as_ref().is_none_or(|status| match status.code() {
        tonic::Code::Unavailable | tonic::Code::Aborted | tonic::Code::Cancelled => true,
        tonic::Code::Unknown | tonic::Code::Internal => status.details().is_empty(),
        _ => false,
    });
    if !resumable || *failures > crate::limits::CLI_STREAM_RESUMES_MAX {
        return Err(match ended {
            Some(status) => render::status_error(status),
            None => anyhow::anyhow!("the server keeps ending the stream; giving up"),
        });
    }
    Ok(())
}

pub async fn webhooks(options: &ClientOptions, command: WebhooksCommand) -> anyhow::Result<()> {
    let WebhooksCommand::Listen {
        forward_to,
        secret,
        after,
    } = command;
    let secret = match secret {
        Some(secret) => secret.expose().to_owned(),
        None => {
            // 128 bits from the system's randomness.
            let mut bytes = [0u8; 16];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                .map_err(|_| anyhow::anyhow!("no system randomness for a secret; pass --secret"))?;
            let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
            let secret = format!("whsec_{hex}");
            eprintln!("signing with {secret} (give it to your receiver, or pass --secret)");
            secret
        }
    };
    let endpoint = crate::webhooks::Endpoint::new("listen", &forward_to, &secret)
        .map_err(|why| anyhow::anyhow!("--forward-to / --secret: {why}"))?;
    let sink = crate::webhooks::HttpWebhookSink::new(
        forward_to.starts_with("https://"),
        crate::grpc::json::webhook_body_format(),
    )?;
    let mut client = connect(options).await?;
    // The payment each body carries, read as the server's dispatcher reads
    // it: when the event is sent.
    let reader = client.clone();
    eprintln!("forwarding events to {forward_to} (Ctrl-C to stop)");
    follow_events(&mut client, after, |event| {
        let (sink, endpoint) = (&sink, &endpoint);
        let mut reader = reader.clone();
        let event = event.clone();
        async move {
            let request = pb::GetPaymentRequest {
                name: event.payment.clone(),
            };
            let payment = match reader.get_payment(request).await {
                Ok(payment) => Some(payment.into_inner()),
                Err(status) => {
                    eprintln!(
                        "{}: forwarded without its payment: {}",
                        event.name,
                        status.message()
                    );
                    None
                }
            };
            let (name, kind) = (event.name.clone(), event.r#type.clone());
            let body = match crate::grpc::json::webhook_body_of(event, payment) {
                Ok(body) => body,
                Err(error) => {
                    eprintln!("{name}: not forwarded: {error}");
                    return;
                }
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs() as i64);
            match sink.post_signed(endpoint, &name, body, now, None).await {
                Ok(()) => out!("--> {name} {kind} delivered"),
                Err(error) => out!("--> {name} {kind} failed: {error}"),
            }
        }
    })
    .await
}

/// `payvisor rules check FILE`: validates a rules file as the server would
/// (before it is deployed); every problem is listed.
pub fn check_rules(path: &std::path::Path) -> anyhow::Result<()> {
    let (rules, _) = crate::approval::load_rules_file(path)?;
    out!(
        "{}: valid, version {:?}, {} rules",
        path.display(),
        rules.version(),
        rules.len()
    );
    Ok(())
}

pub async fn accounts(options: &ClientOptions, command: AccountsCommand) -> anyhow::Result<()> {
    let mut client = connect(options).await?;
    match command {
        AccountsCommand::Get { account } => {
            let name = if account.starts_with("accounts/") {
                account
            } else {
                format!("accounts/{account}")
            };
            let account = client
                .get_account(pb::GetAccountRequest { name })
                .await
                .map_err(render::status_error)?;
            render::account(options.json, &account.into_inner());
        }
    }
    Ok(())
}

/// Runs `audit list`.
pub async fn audit(options: &ClientOptions, command: AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::List {
        account,
        since,
        until,
        page_size,
        mut page_token,
        all,
    } = command;
    let start_time = time_flag("since", since)?;
    let end_time = time_flag("until", until)?;
    let parent = if account.starts_with("accounts/") {
        account
    } else {
        format!("accounts/{account}")
    };
    let mut client = connect(options).await?;
    let mut records = Vec::new();
    loop {
        let page = client
            .list_audit_records(pb::ListAuditRecordsRequest {
                parent: parent.clone(),
                start_time,
                end_time,
                page_size,
                page_token,
            })
            .await
            .map_err(render::status_error)?
            .into_inner();
        records.extend(page.records);
        page_token = page.next_page_token;
        if !all || page_token.is_empty() {
            break;
        }
    }
    render::audit_records(options.json, &records, &page_token);
    if !page_token.is_empty() && !options.json {
        out!("next page: --page-token {page_token}");
    }
    Ok(())
}

/// Runs `cluster status`.
pub async fn cluster(options: &ClientOptions, command: ClusterCommand) -> anyhow::Result<()> {
    let mut client =
        crate::grpc::pb::cluster_service_client::ClusterServiceClient::new(channel(options).await?);
    match command {
        ClusterCommand::Status => {
            let status = client
                .get_cluster_status(pb::GetClusterStatusRequest {})
                .await
                .map_err(render::status_error)?;
            render::cluster_status(options.json, &status.into_inner());
        }
    }
    Ok(())
}

/// `payvisor reconcile`: a bank's settlement report against the store.
#[derive(Args, Debug)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub store: crate::config::StoreArgs,
    /// The bank (`docs/bank-protocol.md`).
    #[arg(long, env = "PAYVISOR_BANK_URL")]
    pub bank_url: String,
    /// The bank's name, as the server knows it (its incidents are kept
    /// under it).
    #[arg(long, env = "PAYVISOR_BANK_NAME", default_value = "bank")]
    pub bank_name: String,
    /// Start of the period, RFC 3339 such as `2026-11-28T00:00:00Z` or
    /// with an offset (default: `--period` before the end).
    #[arg(long, conflicts_with = "from_ms")]
    pub since: Option<String>,
    /// End of the period (exclusive), RFC 3339 (default: now).
    #[arg(long, conflicts_with = "to_ms")]
    pub until: Option<String>,
    /// Start of the period in Unix milliseconds (for scripts of 0.1.0).
    #[arg(long, hide = true)]
    pub from_ms: Option<i64>,
    /// End of the period in Unix milliseconds (for scripts of 0.1.0).
    #[arg(long, hide = true)]
    pub to_ms: Option<i64>,
    /// Length of the period when `--since` is not given.
    #[arg(long, default_value = "24h", conflicts_with_all = ["since", "from_ms"])]
    pub period: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `reconcile`; fails (exit 1) on any mismatch.
pub async fn reconcile(args: ReconcileArgs) -> anyhow::Result<()> {
    use crate::clock::Clock;
    let clock: std::sync::Arc<dyn Clock> = std::sync::Arc::new(crate::clock::SystemClock);
    let instant = |flag: &str, text: &Option<String>| -> anyhow::Result<Option<i64>> {
        text.as_deref()
            .map(|text| {
                let at = crate::domain::time::parse_rfc3339(text).with_context(|| {
                    format!("--{flag} {text:?}: expected RFC 3339, like 2026-11-28T00:00:00Z")
                })?;
                Ok(at.unix_millis())
            })
            .transpose()
    };
    let to = (instant("until", &args.until)?)
        .or(args.to_ms)
        .unwrap_or_else(|| clock.now().unix_millis());
    let period = crate::config::parse_duration(&args.period)
        .with_context(|| format!("bad --period {:?}", args.period))?;
    let from = (instant("since", &args.since)?)
        .or(args.from_ms)
        .unwrap_or(to - period.as_millis() as i64);
    anyhow::ensure!(
        from < to,
        "the period is empty: from {} to {}",
        render::when(from),
        render::when(to)
    );
    let store = args.store.validate()?.open_existing().await?;
    let bank = crate::connectors::http::HttpBankConnector::new(
        crate::connectors::http::BankEndpoint {
            name: args.bank_name.clone(),
            base_url: crate::http_client::parse_url(&args.bank_url)
                .map_err(|why| anyhow::anyhow!("bad --bank-url: {why}"))?,
            // Not used: reconciliation only reads the bank.
            callback_url: "http://127.0.0.1/unused".into(),
        },
        Default::default(),
        clock,
        std::sync::Arc::new(SeededRandom::from_entropy()),
    )?;
    let report = crate::reconcile::run(
        store.as_ref(),
        &bank,
        crate::domain::Timestamp::from_unix_millis(from),
        crate::domain::Timestamp::from_unix_millis(to),
    )
    .await
    .map_err(|why| anyhow::anyhow!(why))?;
    render::reconciliation(args.json, &report);
    anyhow::ensure!(
        report.is_clean(),
        "{} mismatches (see above)",
        report.mismatch_count
    );
    Ok(())
}

/// Runs `ledger verify`; fails (exit 1) when any account's books are off.
pub async fn ledger(json: bool, command: LedgerCommand) -> anyhow::Result<()> {
    let LedgerCommand::Verify { store, accounts } = command;
    let store = store.validate()?.open_existing().await?;
    let mut clean = true;
    let mut reports = Vec::new();
    for account in accounts {
        let id = AccountId::new(account.trim_start_matches("accounts/"))
            .with_context(|| format!("bad account {account:?}"))?;
        let report = crate::audit::audit_account(store.as_ref(), &id).await?;
        clean &= report.is_clean();
        reports.push((id, report));
    }
    render::audit(json, &reports);
    anyhow::ensure!(clean, "the books do not balance (see above)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resumed feed's replay is skipped: each event is handed on once,
    /// and the memory of what was seen is bounded.
    #[test]
    fn an_event_seen_already_is_skipped_and_the_oldest_are_forgotten() {
        let mut seen = RecentNames::default();
        assert!(seen.insert("accounts/a/payments/p/events/1"));
        assert!(!seen.insert("accounts/a/payments/p/events/1"));
        for n in 2..=(crate::limits::CLI_STREAM_SEEN_MAX + 1) {
            assert!(seen.insert(&format!("accounts/a/payments/p/events/{n}")));
        }
        assert_eq!(seen.names.len(), crate::limits::CLI_STREAM_SEEN_MAX);
        assert!(seen.insert("accounts/a/payments/p/events/1"), "forgotten");
    }

    /// A stream that breaks (the server gone, a crash's transport error)
    /// is resumed; one the server refuses for good is not, nor one that
    /// keeps ending without news.
    #[test]
    fn a_broken_stream_is_resumed_and_a_refused_one_is_not() {
        let mut failures = 0;
        for resumable in [
            Some(tonic::Status::unavailable("going away")),
            Some(tonic::Status::unknown("h2 protocol error")),
            None,
        ] {
            assert!(worth_resuming(resumable, &mut failures).is_ok());
        }
        let refused = tonic::Status::permission_denied("no");
        assert!(worth_resuming(Some(refused), &mut failures).is_err());
        let mut failures = crate::limits::CLI_STREAM_RESUMES_MAX;
        assert!(worth_resuming(None, &mut failures).is_err());
    }
}
