//! `payvisor`: parse arguments, set up logging, run the chosen command.

use clap::{Parser, Subcommand};
use payvisor::cli::{
    self, AccountsCommand, ClientOptions, ClusterCommand, EventsCommand, LedgerCommand,
    PaymentsCommand, ReviewsCommand,
};
use payvisor::config::{DynamoDbArgs, ServeArgs};

/// mimalloc, not glibc's malloc: see the workspace's `Cargo.toml`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "payvisor",
    version,
    about = "An actor-based payment orchestrator: persist first, then act."
)]
struct Cli {
    /// Show times in UTC instead of this machine's zone (`TZ`, else
    /// `/etc/localtime`); either way as RFC 3339 with the offset.
    #[arg(long, global = true)]
    utc: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a server (embedded store, built-in bank simulator).
    Serve(Box<ServeArgs>),
    /// Create, read, list and refund payments on a running server.
    Payments {
        #[command(flatten)]
        options: ClientOptions,
        #[command(subcommand)]
        command: PaymentsCommand,
    },
    /// The review queue: list, approve and decline payments in review.
    Reviews {
        #[command(flatten)]
        options: ClientOptions,
        #[command(subcommand)]
        command: ReviewsCommand,
    },
    /// A payment's events and their webhook deliveries; re-send one.
    Events {
        #[command(flatten)]
        options: ClientOptions,
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Pages to on-call, live (`alerts watch`).
    Alerts {
        #[command(flatten)]
        options: ClientOptions,
        #[command(subcommand)]
        command: cli::AlertsCommand,
    },
    /// Forward live events to a local receiver, signed as webhooks are
    /// (`webhooks listen --forward-to URL`).
    Webhooks {
        #[command(flatten)]
        options: ClientOptions,
        #[command(subcommand)]
        command: cli::WebhooksCommand,
    },
    /// Check an approval rules file as the server would load it.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Compare a bank's settlement report with the store, and the ledger
    /// with the payments (exit 1 on any mismatch).
    Reconcile(cli::ReconcileArgs),
    /// Read account balances on a running server.
    Accounts {
        #[command(flatten)]
        options: ClientOptions,
        #[command(subcommand)]
        command: AccountsCommand,
    },
    /// The cluster a server belongs to.
    Cluster {
        #[command(flatten)]
        options: ClientOptions,
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Who did what: refunds, reviews, retries and fails with who asked.
    Audit {
        #[command(flatten)]
        options: ClientOptions,
        #[command(subcommand)]
        command: cli::AuditCommand,
    },
    /// API keys and access lists (docs/security.md).
    Auth {
        #[command(subcommand)]
        command: cli::AuthCommand,
    },
    /// Manage the DynamoDB table.
    Dynamodb {
        #[command(subcommand)]
        command: DynamodbCommand,
    },
    /// Check the embedded store for damage.
    Store {
        #[command(subcommand)]
        command: cli::StoreCommand,
    },
    /// Check the books in a data directory.
    Ledger {
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: LedgerCommand,
    },
}

#[derive(Subcommand, Debug)]
enum RulesCommand {
    /// Validate a rules file; every problem is listed (exit 1 if any).
    Check {
        /// The rules file (JSON).
        file: std::path::PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum DynamodbCommand {
    /// Create the table and its index (idempotent); waits until active.
    CreateTable {
        /// The table to create.
        #[arg(long)]
        table: String,
        #[command(flatten)]
        dynamodb: DynamoDbArgs,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(payvisor::limits::BLOCKING_THREADS_MAX)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    cli::render::show_times_in_utc(cli.utc);
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => {
                let config = args.validate()?;
                let node = (config.cluster.as_ref()).map(|cluster| cluster.node_id.to_string());
                payvisor::logging::init(args.log_format == "json", node);
                payvisor::server::run(config, payvisor::server::shutdown_signal()).await
            }
            Command::Payments { options, command } => cli::payments(&options, command).await,
            Command::Accounts { options, command } => cli::accounts(&options, command).await,
            Command::Alerts { options, command } => cli::alerts(&options, command).await,
            Command::Webhooks { options, command } => cli::webhooks(&options, command).await,
            Command::Reviews { options, command } => cli::reviews(&options, command).await,
            Command::Events { options, command } => cli::events(&options, command).await,
            Command::Cluster { options, command } => cli::cluster(&options, command).await,
            Command::Rules {
                command: RulesCommand::Check { file },
            } => cli::check_rules(&file),
            Command::Ledger { json, command } => cli::ledger(json, command).await,
            Command::Store { command } => cli::store(command).await,
            Command::Auth { command } => cli::auth(command),
            Command::Audit { options, command } => cli::audit(&options, command).await,
            Command::Reconcile(args) => cli::reconcile(args).await,
            Command::Dynamodb {
                command: DynamodbCommand::CreateTable { table, dynamodb },
            } => {
                let settings = dynamodb.settings(&table)?;
                let store = payvisor::store::dynamodb::DynamoDbStore::connect(&settings).await;
                store.create_table().await?;
                payvisor::cli::out!("table {table} is active");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every argument of every command says what it is for (`--help`), so
    /// no one has to read the source to use the command line.
    #[test]
    fn every_argument_has_help_text() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                let help = arg.get_help().map(|help| help.to_string());
                if help.is_none_or(|help| help.trim().is_empty()) {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "payvisor", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:#?}");
    }
}
