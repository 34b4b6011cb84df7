//! `payvisor-cluster-bench`: measures a cluster of real `payvisor serve
//! --cluster` processes on one DynamoDB table (the endpoint comes the
//! standard AWS way, e.g. `AWS_ENDPOINT_URL_DYNAMODB` for the test server),
//! with a `payvisor-bank-sim`, all started by this binary from beside it:
//!
//! - `forwarding`: the latency of a create sent to its account's owner and
//!   of one sent to another node (forwarded), interleaved, in one run;
//! - `failover`: rounds of `kill -9` of the owner of a probe account, each
//!   timed from the kill to the first create on that account acknowledged
//!   through another node (the killed node is started again between
//!   rounds).

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use payvisor::domain::ownership::shard_of;
use payvisor::grpc::pb;
use payvisor::grpc::pb::cluster_service_client::ClusterServiceClient;
use payvisor::grpc::pb::payment_service_client::PaymentServiceClient;
use payvisor_bench::processes::{beside_me, free_port, start};
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
#[command(
    name = "payvisor-cluster-bench",
    about = "Forwarding cost and failover time of a payvisor cluster."
)]
struct Cli {
    #[command(subcommand)]
    measure: Measure,
    /// Nodes in the cluster.
    #[arg(long, global = true, default_value_t = 3)]
    nodes: usize,
}

#[derive(Subcommand)]
enum Measure {
    /// Creates to the owner vs to another node, interleaved.
    Forwarding {
        #[arg(long, default_value_t = 300)]
        calls: usize,
    },
    /// kill -9 rounds, each timed to the first commit through a survivor.
    Failover {
        #[arg(long, default_value_t = 10)]
        rounds: usize,
    },
}

const SECRET: &str = "bench-bank-secret-0123456789";
const SHARDS: u16 = payvisor::limits::CLUSTER_SHARDS_DEFAULT;

struct Node {
    process: Child,
    args: Vec<String>,
    address: String,
}

impl Node {
    fn start(payvisor: &PathBuf, table: &str, bank: &str) -> anyhow::Result<Node> {
        let address = format!("127.0.0.1:{}", free_port()?);
        let callbacks = format!("127.0.0.1:{}", free_port()?);
        let args: Vec<String> = [
            "serve",
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
            SECRET,
            "--bank-callback-listen",
            &callbacks,
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        let mut command = Command::new(payvisor);
        command.args(&args);
        let (process, _) = start(command, "payvisor listening on ")?;
        Ok(Node {
            process,
            args,
            address,
        })
    }

    fn restart(&mut self, payvisor: &PathBuf) -> anyhow::Result<()> {
        let mut command = Command::new(payvisor);
        command.args(&self.args);
        self.process = start(command, "payvisor listening on ")?.0;
        Ok(())
    }

    fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.address))
            .expect("an address")
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(20))
            .connect_lazy()
    }

    async fn status(&self) -> Option<pb::ClusterStatus> {
        ClusterServiceClient::new(self.channel())
            .get_cluster_status(pb::GetClusterStatusRequest {})
            .await
            .ok()
            .map(tonic::Response::into_inner)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Waits until every node in `live` sees `live.len()` live nodes and the
/// same owner for every shard, none free, shares even ±1 (no moves left);
/// returns the owners by shard.
async fn settled(nodes: &[Node], live: &[usize]) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut views = Vec::new();
        for &index in live {
            views.extend(nodes[index].status().await);
        }
        let owners = |view: &pb::ClusterStatus| -> Vec<String> {
            view.shards
                .iter()
                .map(|shard| shard.owner.clone())
                .collect()
        };
        if views.len() == live.len() {
            let first = owners(&views[0]);
            let mut held: std::collections::BTreeMap<&String, usize> = Default::default();
            for owner in &first {
                *held.entry(owner).or_default() += 1;
            }
            let even = usize::from(SHARDS) / live.len();
            if first.len() == usize::from(SHARDS)
                && first.iter().all(|owner| !owner.is_empty())
                && views.iter().all(|view| owners(view) == first)
                && held.len() == live.len()
                && held
                    .values()
                    .all(|count| *count == even || *count == even + 1)
                && views[0].nodes.iter().filter(|node| node.alive).count() == live.len()
            {
                return Ok(first);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "the cluster did not settle");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn create(account: &str, request: &str) -> pb::CreatePaymentRequest {
    pb::CreatePaymentRequest {
        parent: format!("accounts/{account}"),
        payment: Some(pb::Payment {
            amount: Some(pb::Money {
                currency_code: "USD".into(),
                minor_units: 1_000,
            }),
            ..Default::default()
        }),
        request_id: request.into(),
        payment_id: String::new(),
    }
}

fn account_owned_by(owners: &[String], owner: &str, prefix: &str) -> String {
    (0..)
        .map(|n| format!("{prefix}{n}"))
        .find(|account| owners[usize::from(shard_of(account, SHARDS))] == owner)
        .expect("some account hashes to every owner")
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(cli.nodes >= 2, "--nodes: at least 2");
    let payvisor = beside_me("payvisor")?;
    let table = format!("payvisor-cluster-bench-{}", std::process::id());
    let created = Command::new(&payvisor)
        .args(["dynamodb", "create-table", "--table", &table])
        .output()?;
    anyhow::ensure!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let bank_dir = std::env::temp_dir().join(&table);
    let mut bank_command = Command::new(beside_me("payvisor-bank-sim")?);
    bank_command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--name",
            "bank-a",
            "--secret",
            SECRET,
            "--data-dir",
        ])
        .arg(&bank_dir);
    let (mut bank, bank_address) = start(bank_command, " listening on ")?;
    let bank_url = format!("http://{bank_address}");
    let mut nodes = Vec::new();
    for _ in 0..cli.nodes {
        nodes.push(Node::start(&payvisor, &table, &bank_url)?);
    }
    let all: Vec<usize> = (0..cli.nodes).collect();
    let owners = settled(&nodes, &all).await?;
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for node in &nodes {
            ids.push(node.status().await.context("status")?.node);
        }
        ids
    };
    match cli.measure {
        Measure::Forwarding { calls } => {
            let account = account_owned_by(&owners, &ids[0], "forwarding-");
            let mut owner = PaymentServiceClient::new(nodes[0].channel());
            let mut other = PaymentServiceClient::new(nodes[1].channel());
            // Warm both paths (connections, the account's actor), through
            // the last moves of the start.
            for (n, client) in [&mut owner, &mut other].into_iter().enumerate() {
                while let Err(status) = client
                    .create_payment(create(&account, &format!("warm-{n}")))
                    .await
                {
                    anyhow::ensure!(status.code() == tonic::Code::Unavailable, "{status:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            let (mut direct, mut forwarded) = (Vec::new(), Vec::new());
            for n in 0..calls {
                let started = Instant::now();
                owner
                    .create_payment(create(&account, &format!("direct-{n}")))
                    .await?;
                direct.push(started.elapsed());
                let started = Instant::now();
                other
                    .create_payment(create(&account, &format!("forwarded-{n}")))
                    .await?;
                forwarded.push(started.elapsed());
            }
            direct.sort();
            forwarded.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1_000.0;
            println!("creates, {calls} each, interleaved, one client at a time:");
            println!("| sent to | p50 ms | p99 ms |");
            println!("|---|---:|---:|");
            println!(
                "| the owner | {:.2} | {:.2} |",
                ms(quantile(&direct, 0.5)),
                ms(quantile(&direct, 0.99))
            );
            println!(
                "| another node (forwarded) | {:.2} | {:.2} |",
                ms(quantile(&forwarded, 0.5)),
                ms(quantile(&forwarded, 0.99))
            );
            println!(
                "forwarded / direct: p50 {:.2}, p99 {:.2}",
                ms(quantile(&forwarded, 0.5)) / ms(quantile(&direct, 0.5)),
                ms(quantile(&forwarded, 0.99)) / ms(quantile(&direct, 0.99))
            );
        }
        Measure::Failover { rounds } => {
            let mut times = Vec::new();
            for round in 0..rounds {
                let owners = settled(&nodes, &all).await?;
                let victim = round % nodes.len();
                let victim_id = nodes[victim].status().await.context("status")?.node;
                let account = account_owned_by(&owners, &victim_id, &format!("failover-{round}-"));
                let survivor = (victim + 1) % nodes.len();
                let mut client = PaymentServiceClient::new(nodes[survivor].channel());
                client
                    .create_payment(create(&account, &format!("before-{round}")))
                    .await?;
                nodes[victim].process.kill()?;
                nodes[victim].process.wait()?;
                let killed = Instant::now();
                let request = format!("after-{round}");
                loop {
                    match client.create_payment(create(&account, &request)).await {
                        Ok(_) => break,
                        Err(status) if status.code() == tonic::Code::Unavailable => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(status) => anyhow::bail!("round {round}: {status:?}"),
                    }
                    anyhow::ensure!(
                        killed.elapsed() < Duration::from_secs(120),
                        "round {round}: no failover"
                    );
                }
                let took = killed.elapsed();
                println!("round {round}: {:.2} s", took.as_secs_f64());
                times.push(took);
                nodes[victim].restart(&payvisor)?;
            }
            times.sort();
            println!(
                "failover over {rounds} rounds: median {:.2} s, max {:.2} s, min {:.2} s",
                quantile(&times, 0.5).as_secs_f64(),
                times.last().map_or(0.0, Duration::as_secs_f64),
                times.first().map_or(0.0, Duration::as_secs_f64)
            );
        }
    }
    drop(nodes);
    let _ = bank.kill();
    let _ = bank.wait();
    let _ = std::fs::remove_dir_all(bank_dir);
    Ok(())
}
