//! The flags of `payvisor-bank-sim`, validated into one [`Options`].

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::limits;
use payvisor::domain::money::Currency;
use payvisor::random::{Random, SeededRandom};

/// An inclusive range of whole numbers, written `MIN..MAX` (or `N` for
/// `N..N`) on the command line. The unit is the flag's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub min: u64,
    pub max: u64,
}

impl FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Span, String> {
        let number = |part: &str| {
            part.trim()
                .parse::<u64>()
                .map_err(|_| format!("{text:?}: expected MIN..MAX with whole numbers"))
        };
        let (min, max) = match text.split_once("..") {
            Some((min, max)) => (number(min)?, number(max)?),
            None => (number(text)?, number(text)?),
        };
        if min > max {
            return Err(format!("{text:?}: MIN is greater than MAX"));
        }
        Ok(Span { min, max })
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.min, self.max)
    }
}

/// `payvisor-bank-sim`: a simulated bank speaking docs/bank-protocol.md.
#[derive(clap::Args, Clone)]
pub struct BankSimArgs {
    /// Address to listen on (port 0 picks a free port; the ready line says
    /// which).
    #[arg(long, env = "PAYVISOR_BANK_SIM_LISTEN")]
    pub listen: SocketAddr,
    /// The bank's name: callbacks' `bank` and `message_id` prefix, and the
    /// settlement report's `bank`.
    #[arg(long, env = "PAYVISOR_BANK_SIM_NAME")]
    pub name: String,
    /// Directory of the durable record (`bank.db`); created if missing.
    #[arg(long, env = "PAYVISOR_BANK_SIM_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The secret callbacks are signed with (shared with payvisor; at least
    /// 16 bytes).
    #[arg(long, env = "PAYVISOR_BANK_SIM_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Time from submission to outcome, in ms (uniform in the range).
    #[arg(long, default_value = "5..50")]
    pub outcome_delay_ms: Span,
    /// Payments without a `bank_sim` behaviour fail with this probability,
    /// in thousandths ("declined by issuer").
    #[arg(long, default_value_t = 0)]
    pub decline_per_mille: u32,
    /// Currencies accepted (comma-separated ISO 4217 codes); others are
    /// refused with 422. Default: every currency payvisor knows.
    #[arg(long, value_delimiter = ',')]
    pub currencies: Vec<String>,
    /// Seed of every random draw (faults, delays); default from entropy. The
    /// seed in use is logged at start.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Extra time before answering each request, in ms.
    #[arg(long, default_value = "0..0")]
    pub latency_ms: Span,
    /// Requests answered 503 without being recorded, in thousandths.
    #[arg(long, default_value_t = 0)]
    pub error_per_mille: u32,
    /// Submissions recorded and then answered only after `--hold-ms` (so
    /// that the client times out), in thousandths.
    #[arg(long, default_value_t = 0)]
    pub timeout_per_mille: u32,
    /// How long a `--timeout-per-mille` answer is held, in ms.
    #[arg(long, default_value_t = 30_000)]
    pub hold_ms: u64,
    /// Callbacks never sent (the status query still knows the outcome), in
    /// thousandths.
    #[arg(long, default_value_t = 0)]
    pub drop_callback_per_mille: u32,
    /// Callbacks sent twice, in thousandths.
    #[arg(long, default_value_t = 0)]
    pub duplicate_callback_per_mille: u32,
    /// Delay each callback by a random 0..500 ms, so they arrive out of order.
    #[arg(long)]
    pub reorder_callbacks: bool,
    /// An outage `FROM_S..TO_S`, in seconds since start: every protocol
    /// request gets 503 during it. Repeatable.
    #[arg(long = "outage")]
    pub outages: Vec<Span>,
    /// Settlement reports add 1 minor unit to their first entry and to its
    /// total (for reconciliation tests).
    #[arg(long)]
    pub corrupt_settlement: bool,
}

/// The secret never appears in logs or `--help` output.
impl fmt::Debug for BankSimArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BankSimArgs")
            .field("listen", &self.listen)
            .field("name", &self.name)
            .field("data_dir", &self.data_dir)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A probability in thousandths, checked to be at most 1000.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerMille(u32);

impl PerMille {
    pub fn new(flag: &str, value: u32) -> Result<PerMille, String> {
        if value > 1000 {
            return Err(format!("--{flag} {value}: at most 1000"));
        }
        Ok(PerMille(value))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// The injected faults.
#[derive(Clone, Debug, Default)]
pub struct FaultOptions {
    pub latency: (Duration, Duration),
    pub error: PerMille,
    pub timeout: PerMille,
    pub hold: Duration,
    pub drop_callback: PerMille,
    pub duplicate_callback: PerMille,
    pub reorder_callbacks: bool,
    /// Outage windows since start.
    pub outages: Vec<(Duration, Duration)>,
    pub corrupt_settlement: bool,
}

/// Everything `bank-sim` runs with, validated.
#[derive(Clone)]
pub struct Options {
    pub listen: SocketAddr,
    /// `[A-Za-z0-9._-]`, at most [`limits::NAME_CHARS_MAX`].
    pub name: String,
    pub data_dir: PathBuf,
    /// Signs callbacks; never logged.
    secret: Vec<u8>,
    /// Time from submission to outcome.
    pub outcome_delay: (Duration, Duration),
    pub decline: PerMille,
    /// `None`: every currency payvisor knows.
    pub currencies: Option<BTreeSet<&'static str>>,
    pub seed: u64,
    pub faults: FaultOptions,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("listen", &self.listen)
            .field("name", &self.name)
            .field("data_dir", &self.data_dir)
            .field("secret", &"<redacted>")
            .field("outcome_delay", &self.outcome_delay)
            .field("decline", &self.decline)
            .field("currencies", &self.currencies)
            .field("seed", &self.seed)
            .field("faults", &self.faults)
            .finish()
    }
}

impl Options {
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// Whether submissions in `code` are accepted.
    pub fn accepts(&self, code: &str) -> bool {
        Currency::from_code(code).is_some()
            && self
                .currencies
                .as_ref()
                .is_none_or(|accepted| accepted.contains(code))
    }
}

fn millis(flag: &str, span: Span, max: Duration) -> Result<(Duration, Duration), String> {
    let (min, top) = (
        Duration::from_millis(span.min),
        Duration::from_millis(span.max),
    );
    if top > max {
        return Err(format!("--{flag} {span}: at most {} ms", max.as_millis()));
    }
    Ok((min, top))
}

impl BankSimArgs {
    /// Checks every flag; the error names the flag.
    pub fn validate(&self) -> Result<Options, String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= limits::NAME_CHARS_MAX
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(format!(
                "--name {:?}: 1..={} characters of [A-Za-z0-9._-]",
                self.name,
                limits::NAME_CHARS_MAX
            ));
        }
        if self.secret.len() < limits::WEBHOOK_SECRET_BYTES_MIN {
            return Err(format!(
                "--secret: at least {} bytes",
                limits::WEBHOOK_SECRET_BYTES_MIN
            ));
        }
        let currencies = if self.currencies.is_empty() {
            None
        } else {
            let mut accepted = BTreeSet::new();
            for code in &self.currencies {
                let currency = Currency::from_code(code.trim())
                    .ok_or_else(|| format!("--currencies: unknown currency {code:?}"))?;
                accepted.insert(currency.code());
            }
            Some(accepted)
        };
        if self.outages.len() > limits::OUTAGES_MAX {
            return Err(format!("--outage: at most {} windows", limits::OUTAGES_MAX));
        }
        let hold = Duration::from_millis(self.hold_ms);
        if hold > limits::HOLD_MAX {
            return Err(format!(
                "--hold-ms {}: at most {} ms",
                self.hold_ms,
                limits::HOLD_MAX.as_millis()
            ));
        }
        let seed = self
            .seed
            .unwrap_or_else(|| SeededRandom::from_entropy().next_u64());
        Ok(Options {
            listen: self.listen,
            name: self.name.clone(),
            data_dir: self.data_dir.clone(),
            secret: self.secret.as_bytes().to_vec(),
            outcome_delay: millis(
                "outcome-delay-ms",
                self.outcome_delay_ms,
                limits::OUTCOME_DELAY_MAX,
            )?,
            decline: PerMille::new("decline-per-mille", self.decline_per_mille)?,
            currencies,
            seed,
            faults: FaultOptions {
                latency: millis("latency-ms", self.latency_ms, limits::LATENCY_MAX)?,
                error: PerMille::new("error-per-mille", self.error_per_mille)?,
                timeout: PerMille::new("timeout-per-mille", self.timeout_per_mille)?,
                hold,
                drop_callback: PerMille::new(
                    "drop-callback-per-mille",
                    self.drop_callback_per_mille,
                )?,
                duplicate_callback: PerMille::new(
                    "duplicate-callback-per-mille",
                    self.duplicate_callback_per_mille,
                )?,
                reorder_callbacks: self.reorder_callbacks,
                outages: self
                    .outages
                    .iter()
                    .map(|span| (Duration::from_secs(span.min), Duration::from_secs(span.max)))
                    .collect(),
                corrupt_settlement: self.corrupt_settlement,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Harness {
        #[command(flatten)]
        args: BankSimArgs,
    }

    fn parse(extra: &[&str]) -> Result<Options, String> {
        parse_named("bank-a", "0123456789abcdef", extra)
    }

    fn parse_named(name: &str, secret: &str, extra: &[&str]) -> Result<Options, String> {
        let mut argv = vec![
            "bank-sim",
            "--listen",
            "127.0.0.1:0",
            "--name",
            name,
            "--data-dir",
            "/tmp/x",
            "--secret",
            secret,
        ];
        argv.extend_from_slice(extra);
        Harness::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .args
            .validate()
    }

    #[test]
    fn spans_parse_single_values_and_ranges() {
        assert_eq!("5..50".parse(), Ok(Span { min: 5, max: 50 }));
        assert_eq!("7".parse(), Ok(Span { min: 7, max: 7 }));
        assert!("50..5".parse::<Span>().is_err());
        assert!("a..5".parse::<Span>().is_err());
    }

    #[test]
    fn defaults_and_knobs_validate() {
        let options = parse(&[]).unwrap();
        assert_eq!(
            options.outcome_delay,
            (Duration::from_millis(5), Duration::from_millis(50))
        );
        assert_eq!(options.faults.hold, Duration::from_secs(30));
        assert!(options.accepts("GBP") && !options.accepts("XXX"));
        let options = parse(&[
            "--currencies",
            "USD,EUR",
            "--outage",
            "1..2",
            "--outage",
            "5..9",
            "--seed",
            "7",
        ])
        .unwrap();
        assert!(options.accepts("USD") && options.accepts("EUR") && !options.accepts("GBP"));
        assert_eq!(options.faults.outages.len(), 2);
        assert_eq!(options.seed, 7);
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        for (extra, flag) in [
            (&["--decline-per-mille", "1001"][..], "decline-per-mille"),
            (&["--currencies", "USD,XYZ"][..], "currencies"),
            (&["--hold-ms", "99999999"][..], "hold-ms"),
            (&["--latency-ms", "0..999999"][..], "latency-ms"),
        ] {
            let error = parse(extra).unwrap_err();
            assert!(error.contains(flag), "{extra:?}: {error}");
        }
        let short_secret = parse_named("bank-a", "short", &[]).unwrap_err();
        assert!(short_secret.contains("--secret"), "{short_secret}");
        let bad_name = parse_named("bad name", "0123456789abcdef", &[]).unwrap_err();
        assert!(bad_name.contains("--name"), "{bad_name}");
    }
}
