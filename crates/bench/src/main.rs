//! `payvisor-bench`: load a running payvisor over gRPC, print the summary,
//! and fail unless the verification found nothing lost, doubled or
//! unbalanced.

use clap::Parser;
use payvisor_bench::BenchArgs;

#[derive(Parser)]
#[command(
    name = "payvisor-bench",
    version,
    about = "Load a running server over gRPC and verify nothing was lost or doubled."
)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let summary = payvisor_bench::run(cli.args).await?;
    anyhow::ensure!(
        summary.lost == 0
            && summary.duplicated == 0
            && summary.unsettled == 0
            && summary.ledger_mismatches == 0,
        "verification failed: {} lost, {} duplicated, {} not settled within --settle-timeout, \
         {} ledger mismatches",
        summary.lost,
        summary.duplicated,
        summary.unsettled,
        summary.ledger_mismatches
    );
    Ok(())
}
