//! `payvisor-sim --seed S` runs one seed; `--seeds N` runs N (fresh ones,
//! or from `--first`); `--corpus FILE` runs the seeds listed in a file.
//! Each seed prints one summary line; a failing seed prints its trace. The
//! exit status is non-zero if any seed found a violation.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "payvisor-sim",
    about = "Deterministic simulation of a payvisor cluster"
)]
struct Args {
    /// Run this one seed.
    #[arg(long, conflicts_with_all = ["seeds", "corpus"])]
    seed: Option<u64>,
    /// Run this many seeds.
    #[arg(long)]
    seeds: Option<u64>,
    /// The first of the `--seeds` (they follow on); fresh ones if not given.
    #[arg(long, requires = "seeds")]
    first: Option<u64>,
    /// Run the seeds listed in this file (one per line; `#` comments).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Then run fresh seeds until this many seconds (wall clock) have
    /// passed since the start: a fixed budget for the test command.
    #[arg(long)]
    budget_seconds: Option<u64>,
    /// Plant this bug (see payvisor's src/mutations.rs) and look for it.
    #[arg(long, value_parser = parse_mutation)]
    mutation: Option<payvisor::mutations::Mutation>,
    /// Print the trace's tail of passing seeds too.
    #[arg(long)]
    trace: bool,
}

fn parse_mutation(name: &str) -> Result<payvisor::mutations::Mutation, String> {
    payvisor::mutations::Mutation::named(name).ok_or_else(|| {
        let names: Vec<&str> = (payvisor::mutations::Mutation::ALL.iter())
            .map(|mutation| mutation.name())
            .collect();
        format!("one of {}", names.join(", "))
    })
}

/// A fresh seed (from the operating system's entropy).
fn fresh_seed() -> u64 {
    use payvisor::random::Random;
    payvisor::random::SeededRandom::from_entropy().next_u64() >> 1
}

fn seeds(args: &Args) -> Result<Vec<u64>, String> {
    if let Some(seed) = args.seed {
        return Ok(vec![seed]);
    }
    let mut seeds = Vec::new();
    if let Some(path) = &args.corpus {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if !line.is_empty() {
                seeds.push(
                    line.parse()
                        .map_err(|error| format!("{}: {line:?}: {error}", path.display()))?,
                );
            }
        }
    }
    if let Some(count) = args.seeds {
        let first = args.first.unwrap_or_else(fresh_seed);
        seeds.extend((0..count).map(|n| first.wrapping_add(n)));
    }
    if seeds.is_empty() && args.budget_seconds.is_none() {
        return Err("give --seed, --seeds, --corpus or --budget-seconds".into());
    }
    Ok(seeds)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seeds = match seeds(&args) {
        Ok(seeds) => seeds,
        Err(error) => {
            eprintln!("payvisor-sim: {error}");
            return ExitCode::from(2);
        }
    };
    let wall = std::time::Instant::now();
    let (mut failed, mut simulated) = (Vec::new(), std::time::Duration::ZERO);
    let budget = args.budget_seconds.map(std::time::Duration::from_secs);
    let mut listed = seeds.into_iter();
    let mut seeds = Vec::new();
    loop {
        let seed = match listed.next() {
            Some(seed) => seed,
            None if budget.is_some_and(|budget| wall.elapsed() < budget) => fresh_seed(),
            None => break,
        };
        seeds.push(seed);
        let seed = &seed;
        let report = payvisor_sim::run::run_with(*seed, args.mutation);
        simulated += report.simulated;
        if !report.violations.is_empty() || args.trace {
            for line in &report.trace_tail {
                println!("  {line}");
            }
        }
        for violation in &report.violations {
            println!("  VIOLATION {}: {}", violation.invariant, violation.detail);
        }
        println!("{}", report.summary());
        if !report.violations.is_empty() {
            failed.push(*seed);
        }
    }
    let wall = wall.elapsed();
    eprintln!(
        "payvisor-sim: {} seeds, {} failed{}; {:.1} s wall, {:.0} simulated s per wall s, {:.1} seeds per minute",
        seeds.len(),
        failed.len(),
        if failed.is_empty() { String::new() } else { format!(" ({failed:?})") },
        wall.as_secs_f64(),
        simulated.as_secs_f64() / wall.as_secs_f64().max(1e-9),
        seeds.len() as f64 * 60.0 / wall.as_secs_f64().max(1e-9),
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
