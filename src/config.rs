//! One validated configuration for `payvisor serve`: flags and environment
//! variables, parsed in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::connectors::simulator::SimulatorConfig;
use crate::domain::payment::{ApprovalPolicy, Fee, FeeSchedule, Policy};
use crate::domain::{Currency, Money};

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to serve gRPC on (port 0 picks a free port).
    #[arg(long, env = "PAYVISOR_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Directory of the embedded store (created if missing).
    #[arg(long, env = "PAYVISOR_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Approval limit per currency in major units, e.g. `USD=5000.00`;
    /// larger payments are DECLINED. Repeatable. No limit by default.
    #[arg(
        long = "approval-max",
        env = "PAYVISOR_APPROVAL_MAX",
        value_delimiter = ','
    )]
    pub approval_max: Vec<String>,
    /// Fee in basis points of each processed payment (default 0).
    #[arg(long, env = "PAYVISOR_FEE_BASIS_POINTS", default_value_t = 0)]
    pub fee_basis_points: u32,
    /// Fixed fee per processed payment, in minor units (default 0).
    #[arg(long, env = "PAYVISOR_FEE_FIXED_MINOR", default_value_t = 0)]
    pub fee_fixed_minor: i64,
    /// Bank simulator latency range in milliseconds, `MIN..MAX`.
    #[arg(long, env = "PAYVISOR_BANK_LATENCY_MS", default_value = "5..50")]
    pub bank_latency_ms: String,
    /// Share of payments the bank simulator fails, in thousandths.
    #[arg(long, env = "PAYVISOR_BANK_FAILURE_PER_MILLE", default_value_t = 0)]
    pub bank_failure_per_mille: u32,
    /// Account actors idle this many seconds stop and free their memory.
    #[arg(long, env = "PAYVISOR_PASSIVATE_AFTER_SECS", default_value_t = crate::limits::ACCOUNT_IDLE_PASSIVATE.as_secs())]
    pub passivate_after_secs: u64,
    /// Log format: `text` or `json`.
    #[arg(long, env = "PAYVISOR_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// Validated settings of a server.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub policy: Policy,
    pub simulator: SimulatorConfig,
    pub passivate_after: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--approval-max {0:?}: {1}")]
    ApprovalMax(String, String),
    #[error("--bank-latency-ms {0:?}: expected MIN..MAX in milliseconds, MIN <= MAX")]
    Latency(String),
    #[error("--bank-failure-per-mille must be at most 1000")]
    FailureRate,
    #[error("--fee-fixed-minor must not be negative; --fee-basis-points at most 10000")]
    Fee,
}

impl ServeArgs {
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let mut approval = ApprovalPolicy::default();
        for entry in &self.approval_max {
            let bad = |why: &str| ConfigError::ApprovalMax(entry.clone(), why.to_owned());
            let (code, amount) = entry
                .split_once('=')
                .ok_or_else(|| bad("expected CURRENCY=AMOUNT"))?;
            let currency =
                Currency::from_code(code.trim()).ok_or_else(|| bad("unknown currency"))?;
            let max =
                Money::parse_major(currency, amount).map_err(|error| bad(&error.to_string()))?;
            approval.max_amount.insert(currency, max);
        }
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
        Ok(Config {
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            policy: Policy { approval, fees },
            simulator: SimulatorConfig {
                latency_min: Duration::from_millis(min),
                latency_max: Duration::from_millis(max),
                failure_per_mille: self.bank_failure_per_mille,
            },
            passivate_after: Duration::from_secs(self.passivate_after_secs),
        })
    }
}
