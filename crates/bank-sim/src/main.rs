//! `payvisor-bank-sim`: parse arguments, set up logging, run the simulated
//! bank until SIGINT or SIGTERM.

use clap::Parser;
use payvisor_bank_sim::{BankSim, BankSimArgs};

#[derive(Parser)]
#[command(
    name = "payvisor-bank-sim",
    version,
    about = "A simulated bank speaking the HTTP bank protocol (docs/bank-protocol.md), with fault knobs for tests."
)]
struct Cli {
    #[command(flatten)]
    args: BankSimArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let options = cli.args.validate().map_err(anyhow::Error::msg)?;
    let bank = BankSim::open(options).await?;
    // The ready line tests and scripts wait for: the real port when asked
    // for port 0.
    println!(
        "bank-sim {} listening on {}",
        bank.name(),
        bank.local_addr()
    );
    bank.run(payvisor::server::shutdown_signal()).await?;
    Ok(())
}
