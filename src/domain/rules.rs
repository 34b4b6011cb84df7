//! Approval rules: the fraud and compliance checks every new payment passes
//! before money moves, and the account history that velocity checks read.
//!
//! Rules are a document, not code, so that operators can change a threshold
//! or a block list in the middle of an incident without a deploy. The server
//! reads the file and reloads it; this module only turns text into a
//! [`RuleSet`] and evaluates a [`Candidate`] payment against it. A document
//! with any mistake is refused whole, with every problem listed: running half
//! of a fraud policy is worse than keeping the previous one.
//!
//! Velocity rules ("at most 10 payments an hour") need the account's recent
//! payments. The account actor keeps them in a [`VelocityLog`] inside the
//! account item, written in the same atomic write as the payments it counts,
//! so the log never disagrees with what was accepted. The log is bounded and,
//! when the bound forces it to summarise, only ever over-counts: a busy
//! account may be reviewed early, never waved through.
//!
//! **Invariant:** pure. No I/O, no clock, no randomness: `now` is passed in,
//! and the same rules, candidate, log and `now` always give the same
//! [`Evaluation`].
//!
//! # The document
//!
//! ```json
//! {
//!   "version": "2026-01-07.1",
//!   "rules": [
//!     {"name": "large-usd", "kind": "amount_above", "currency": "USD", "minor_units": 100000, "action": "review"},
//!     {"name": "burst", "kind": "velocity", "window_seconds": 3600, "max_count": 10, "action": "review"},
//!     {"name": "daily-usd", "kind": "velocity", "window_seconds": 86400, "currency": "USD", "max_minor_units": 500000, "action": "decline"},
//!     {"name": "sanctioned", "kind": "block_list", "field": "payer_country", "values": ["KP", "IR"], "action": "decline"},
//!     {"name": "risky-mcc", "kind": "block_list", "field": "metadata.mcc", "values": ["7995"], "action": "review"},
//!     {"name": "acme-daily", "kind": "account_limit", "account": "acme", "currency": "USD", "max_minor_units": 20000, "window_seconds": 86400, "action": "review"}
//!   ]
//! }
//! ```
//!
//! Every rule has a `name` (unique, 1..=64 of `[A-Za-z0-9_.-]`), a `kind` and
//! an `action` (`approve`, `review` or `decline`); unknown fields are errors.
//! A rule *fires* when:
//! - `amount_above`: the payment is in `currency` and its amount is strictly
//!   above `minor_units`.
//! - `velocity`: counting the account's accepted payments in the window plus
//!   this one, there are more than `max_count` (all currencies), or their sum
//!   in `currency` is above `max_minor_units` (this payment adds to the sum
//!   only if it is in `currency`). It has `max_count`, or `currency` with
//!   `max_minor_units`, or both.
//! - `block_list`: the payment's `field` (`account`, `payer_id`,
//!   `payer_country` or `metadata.<key>`) is one of `values`, exactly
//!   (countries compared upper case). A payment without the field never
//!   matches.
//! - `account_limit`: the payment is for `account` and in `currency`, and its
//!   amount is above `max_minor_units`; with `window_seconds`, the account's
//!   accepted amount in `currency` in the window plus this payment (if in
//!   `currency`) is.
//!
//! A window of `w` seconds evaluated at `now` holds the payments recorded at
//! `t` with `now - w < t`: a payment exactly `w` old has left it. The verdict
//! is the most severe action of the fired rules; none fired is `approve`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use rust_decimal::Decimal;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{AccountId, Currency, Money, Timestamp};
use crate::limits;

/// What a rule asks for when it fires. Declared from least to most severe:
/// the derived order is the severity order the verdict takes the maximum of.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Action {
    Approve,
    Review,
    Decline,
}

impl Action {
    const NAMES: &'static [(&'static str, Action)] = &[
        ("approve", Action::Approve),
        ("review", Action::Review),
        ("decline", Action::Decline),
    ];

    fn from_name(name: &str) -> Option<Action> {
        Action::NAMES
            .iter()
            .find(|(candidate, _)| *candidate == name)
            .map(|(_, action)| *action)
    }
}

/// Why a rules document was refused: every problem found, each naming the
/// rule (`rules[2] "daily-usd"`) and field, so one edit can fix them all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid approval rules: {}", .problems.join("; "))]
pub struct RulesError {
    pub problems: Vec<String>,
}

/// A validated set of approval rules, compiled for evaluation.
#[derive(Clone, Debug)]
pub struct RuleSet {
    /// The operator's label for the document, copied into every evaluation
    /// so that a decision can be traced to the rules that made it.
    version: String,
    /// The rules in document order, which is the order fired rules are
    /// reported in.
    rules: Vec<Rule>,
    /// The longest window of any rule: how far back the velocity log must
    /// remember (0 when no rule looks back).
    keep_millis: i64,
}

#[derive(Clone, Debug)]
struct Rule {
    name: String,
    action: Action,
    check: Check,
}

/// A rule's condition, with its thresholds parsed and its lists hashed.
#[derive(Clone, Debug)]
enum Check {
    AmountAbove {
        currency: Currency,
        minor_units_max: i64,
    },
    Velocity {
        window: Window,
        payments_max: Option<u64>,
        amount_max: Option<(Currency, i64)>,
    },
    BlockList(BlockList),
    AccountLimit {
        account: AccountId,
        currency: Currency,
        minor_units_max: i64,
        window: Option<Window>,
    },
}

#[derive(Clone, Copy, Debug)]
struct Window {
    /// As written, for details a person reads.
    seconds: u64,
    millis: i64,
}

/// The values of one block list, hashed once at load so that a lookup costs
/// the same for two values or ten thousand.
#[derive(Clone, Debug)]
enum BlockList {
    Account(HashSet<String>),
    PayerId(HashSet<String>),
    /// Upper case, as two bytes: compared without allocating.
    PayerCountry(HashSet<[u8; 2]>),
    Metadata {
        key: String,
        values: HashSet<String>,
    },
}

/// The payment being created, as the rules see it.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    pub account: &'a AccountId,
    pub amount: Money,
    pub payer_id: Option<&'a str>,
    /// ISO 3166-1 alpha-2; compared upper case whatever the case given.
    pub payer_country: Option<&'a str>,
    pub metadata: &'a BTreeMap<String, String>,
}

/// One rule that fired, and why, for the payment's approval record.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct FiredRule {
    pub rule: String,
    pub action: Action,
    /// A short sentence for a person: "amount 1500.00 USD above 1000.00 USD".
    pub detail: String,
}

/// The rules' verdict on one payment.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Evaluation {
    /// The most severe action of the fired rules; `Approve` if none fired.
    pub action: Action,
    /// Every rule that fired, in document order.
    pub fired: Vec<FiredRule>,
    /// The [`RuleSet::version`] that decided.
    pub rules_version: String,
}

impl RuleSet {
    /// Parses and validates a rules document (see the module documentation).
    pub fn parse(text: &str) -> Result<RuleSet, RulesError> {
        if text.len() > limits::RULES_FILE_BYTES_MAX {
            return Err(RulesError {
                problems: vec![format!(
                    "the document has {} bytes, at most {} allowed",
                    text.len(),
                    limits::RULES_FILE_BYTES_MAX
                )],
            });
        }
        let document: Json = serde_json::from_str(text).map_err(|error| RulesError {
            problems: vec![format!("not valid JSON: {error}")],
        })?;
        let mut problems = Problems::default();
        let rule_set = compile_document(&document, &mut problems);
        problems.finish(rule_set)
    }

    /// No rules: every payment is approved. What runs before an operator
    /// configures any.
    pub fn approve_all() -> RuleSet {
        RuleSet {
            version: "none".to_owned(),
            rules: Vec::new(),
            keep_millis: 0,
        }
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The longest window of any rule, in milliseconds: what callers pass to
    /// [`VelocityLog::record`]. 0 when no rule looks back, and then the log
    /// keeps nothing.
    pub fn keep_millis(&self) -> i64 {
        self.keep_millis
    }

    /// Evaluates `candidate`, given the account's accepted payments in `log`
    /// (not including the candidate itself) and the time `now`.
    ///
    /// Cost: one pass over the rules; a hash lookup per block list; per
    /// windowed rule, a binary search of the log and a walk over the entries
    /// inside the window only (at most [`limits::VELOCITY_LOG_ENTRIES_MAX`]).
    /// Allocates nothing unless a rule fires, beyond the version string.
    pub fn evaluate(
        &self,
        candidate: &Candidate<'_>,
        log: &VelocityLog,
        now: Timestamp,
    ) -> Evaluation {
        let payment = Payment {
            currency: candidate.amount.currency(),
            minor_units: candidate.amount.minor_units(),
        };
        let mut fired = Vec::new();
        for rule in &self.rules {
            if let Some(detail) = rule.check.fires(candidate, payment, log, now) {
                fired.push(FiredRule {
                    rule: rule.name.clone(),
                    action: rule.action,
                    detail,
                });
            }
        }
        Evaluation {
            action: fired
                .iter()
                .map(|rule| rule.action)
                .max()
                .unwrap_or(Action::Approve),
            fired,
            rules_version: self.version.clone(),
        }
    }
}

/// The candidate's amount, converted once per evaluation.
#[derive(Clone, Copy)]
struct Payment {
    currency: Currency,
    minor_units: i64,
}

impl Payment {
    /// What this payment adds to a sum in `currency`.
    fn minor_units_in(&self, currency: Currency) -> i128 {
        if self.currency == currency {
            i128::from(self.minor_units)
        } else {
            0
        }
    }
}

impl Check {
    /// `Some(detail)` if the rule fires. Details are only formatted then.
    fn fires(
        &self,
        candidate: &Candidate<'_>,
        payment: Payment,
        log: &VelocityLog,
        now: Timestamp,
    ) -> Option<String> {
        match self {
            Check::AmountAbove {
                currency,
                minor_units_max,
            } => amount_above(payment, *currency, *minor_units_max),
            Check::Velocity {
                window,
                payments_max,
                amount_max,
            } => {
                let totals =
                    log.window(now, window.millis, amount_max.map(|(currency, _)| currency));
                let payments = totals.payments.saturating_add(1);
                let too_many = payments_max.filter(|max| payments > *max).map(|max| {
                    format!("{payments} payments in {} s, at most {max}", window.seconds)
                });
                let too_much = amount_max.and_then(|(currency, max)| {
                    sum_above(totals.minor_units, payment, currency, max, *window)
                });
                match (too_many, too_much) {
                    (Some(many), Some(much)) => Some(format!("{many}; {much}")),
                    (many, much) => many.or(much),
                }
            }
            Check::BlockList(list) => list.matches(candidate),
            Check::AccountLimit {
                account,
                currency,
                minor_units_max,
                window,
            } => {
                if candidate.account != account {
                    return None;
                }
                match window {
                    None => amount_above(payment, *currency, *minor_units_max),
                    Some(window) => {
                        let totals = log.window(now, window.millis, Some(*currency));
                        sum_above(
                            totals.minor_units,
                            payment,
                            *currency,
                            *minor_units_max,
                            *window,
                        )
                    }
                }
            }
        }
    }
}

fn amount_above(payment: Payment, currency: Currency, minor_units_max: i64) -> Option<String> {
    (payment.currency == currency && payment.minor_units > minor_units_max).then(|| {
        format!(
            "amount {} above {}",
            money_text(payment.minor_units.into(), currency),
            money_text(minor_units_max.into(), currency)
        )
    })
}

/// Fires when the window's sum plus this payment is above `minor_units_max`.
fn sum_above(
    window_minor_units: i128,
    payment: Payment,
    currency: Currency,
    minor_units_max: i64,
    window: Window,
) -> Option<String> {
    // At most 128 entries of at most i64::MAX each, plus one: far inside i128.
    let total = window_minor_units + payment.minor_units_in(currency);
    (total > i128::from(minor_units_max)).then(|| {
        format!(
            "{} in {} s above {}",
            money_text(total, currency),
            window.seconds,
            money_text(minor_units_max.into(), currency)
        )
    })
}

/// "1500.00 USD", as [`Money`] prints, for sums that may not fit an `i64`.
fn money_text(minor_units: i128, currency: Currency) -> String {
    match Decimal::try_from_i128_with_scale(minor_units, currency.exponent()) {
        Ok(amount) => format!("{amount} {currency}"),
        Err(_) => format!("{minor_units} minor units of {currency}"),
    }
}

impl BlockList {
    fn matches(&self, candidate: &Candidate<'_>) -> Option<String> {
        match self {
            BlockList::Account(values) => {
                let account = candidate.account.as_str();
                values
                    .contains(account)
                    .then(|| format!("account {account:?} is block-listed"))
            }
            BlockList::PayerId(values) => {
                let payer = candidate.payer_id?;
                values
                    .contains(payer)
                    .then(|| format!("payer_id {payer:?} is block-listed"))
            }
            BlockList::PayerCountry(values) => {
                let country = country_code(candidate.payer_country?)?;
                values.contains(&country).then(|| {
                    let country = String::from_utf8_lossy(&country);
                    format!("payer_country {country:?} is block-listed")
                })
            }
            BlockList::Metadata { key, values } => {
                let value = candidate.metadata.get(key)?;
                values
                    .contains(value)
                    .then(|| format!("metadata.{key} {value:?} is block-listed"))
            }
        }
    }
}

/// An assigned ISO 3166-1 alpha-2 code in any case, upper-cased; `None`
/// for anything else.
fn country_code(text: &str) -> Option<[u8; 2]> {
    let code = super::country::country_code(text)?;
    let bytes = code.as_bytes();
    Some([bytes[0], bytes[1]])
}

// ---------------------------------------------------------------------------
// The velocity log

/// An account's accepted payments, as far back as the rules look: what
/// velocity and windowed account-limit rules count.
///
/// The caller records each payment once it is accepted and stores the log in
/// the account item. Entries are kept sorted by time; each holds a time, a
/// currency, a count of payments and their sum in minor units.
///
/// **Bounded, and never under-counts.** While the entries inside the kept
/// history number at most [`limits::VELOCITY_LOG_ENTRIES_MAX`], every entry
/// is one payment and the log is exact. Beyond that, it merges the two
/// oldest entries of one currency (of the currency whose second-oldest entry
/// is oldest) into one entry with their summed count and amount, stamped with
/// the *newer* of their times. A merged entry therefore stays inside any
/// window exactly as long as its newer part would, and its older part a
/// little longer: windows see at least every payment they should, possibly a
/// few older ones. Pruning drops an entry only once its time, hence both of
/// its parts, has left every window ending at or after the recording time.
///
/// The log keeps what the rules of the day look back over
/// ([`RuleSet::keep_millis`]): after a reload that lengthens the longest
/// window, the longer window sees only the shorter history until it fills.
///
/// An entry's count and sum saturate at `u32::MAX` and `i64::MAX` (over
/// 9,000 payments of the largest amount), far above any threshold a rule can
/// state, so saturation never silences a rule.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct VelocityLog {
    /// Sorted by time, oldest first; equal times in recording order.
    entries: Vec<VelocityEntry>,
}

/// 24 bytes in memory (the log is read on every create of its account).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct VelocityEntry {
    at: Timestamp,
    currency: CurrencyKey,
    /// Sum of the payments' amounts, in minor units of `currency`.
    minor_units: i64,
    /// Payments merged into this entry: 1 unless the log was full.
    payments: u32,
}

/// Payments the log holds at one time (one, unless the log was full and
/// merged them): its entries as plain values, to store and restore it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LoggedPayments {
    pub at: Timestamp,
    pub currency: Currency,
    /// Sum of the payments' amounts, in minor units of `currency`.
    pub minor_units: i64,
    pub payments: u32,
}

/// An entry the log never holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[error("entry with {payments} payments and {minor_units} minor units")]
pub struct BadLoggedPayments {
    pub payments: u32,
    pub minor_units: i64,
}

/// A currency as its three ASCII letters. Windows compare one per entry per
/// windowed rule: a 3-byte compare, where `Currency` compares a string
/// (benches/rules.rs, full log: 0.9 µs per evaluation against 2.5 µs).
/// Only ever made from a [`Currency`], so it always names one payvisor
/// accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
struct CurrencyKey([u8; 3]);

impl From<Currency> for CurrencyKey {
    fn from(currency: Currency) -> CurrencyKey {
        // ISO 4217 codes are three letters, and money.rs lists no others.
        let mut key = [0; 3];
        for (slot, byte) in key.iter_mut().zip(currency.code().bytes()) {
            *slot = byte;
        }
        CurrencyKey(key)
    }
}

impl CurrencyKey {
    fn code(&self) -> &str {
        // Copied from a code's ASCII letters: always valid UTF-8.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Debug for CurrencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Payments and their sum inside one window, see [`VelocityLog::window`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct WindowTotals {
    /// Payments in the window, in every currency.
    pub payments: u64,
    /// Their sum in the currency asked for (0 if none was).
    pub minor_units: i128,
}

impl VelocityLog {
    /// Records an accepted payment at `at`, and forgets entries older than
    /// `keep_millis` before it (those with a time `<= at - keep_millis`,
    /// which no window of at most `keep_millis` ending at `at` or later
    /// holds). With `keep_millis <= 0` (no rule looks back) the log is
    /// emptied and nothing is kept. A non-positive amount counts as a
    /// payment of zero.
    pub fn record(&mut self, at: Timestamp, amount: Money, keep_millis: i64) {
        if keep_millis <= 0 {
            self.entries.clear();
            return;
        }
        let cutoff = at.unix_millis().saturating_sub(keep_millis);
        let expired = self
            .entries
            .partition_point(|entry| entry.at.unix_millis() <= cutoff);
        self.entries.drain(..expired);
        let position = self.entries.partition_point(|entry| entry.at <= at);
        self.entries.insert(
            position,
            VelocityEntry {
                at,
                currency: amount.currency().into(),
                minor_units: amount.minor_units().max(0),
                payments: 1,
            },
        );
        self.enforce_cap();
    }

    /// Payments recorded inside the window of `window_millis` ending at
    /// `now` (times `t` with `now - window_millis < t`; entries after `now`
    /// count too), and their sum in `currency`.
    pub fn window(
        &self,
        now: Timestamp,
        window_millis: i64,
        currency: Option<Currency>,
    ) -> WindowTotals {
        let cutoff = now.unix_millis().saturating_sub(window_millis);
        let start = self
            .entries
            .partition_point(|entry| entry.at.unix_millis() <= cutoff);
        let inside = &self.entries[start..];
        // Sums of at most the cap of entries: u32 counts fit a u64, and i64
        // amounts an i128, with room to spare.
        let payments = inside.iter().map(|entry| u64::from(entry.payments)).sum();
        let minor_units = currency.map_or(0, |currency| {
            let key = CurrencyKey::from(currency);
            inside
                .iter()
                .filter(|entry| entry.currency == key)
                .map(|entry| i128::from(entry.minor_units))
                .sum()
        });
        WindowTotals {
            payments,
            minor_units,
        }
    }

    /// Entries held (each one payment unless the log was full).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Merges entries until the log is within its cap.
    fn enforce_cap(&mut self) {
        while self.entries.len() > limits::VELOCITY_LOG_ENTRIES_MAX {
            // Always finds a pair: the cap exceeds the number of currencies,
            // so a full log holds two entries of one (pigeonhole; tested).
            if !self.merge_oldest_pair() {
                break;
            }
        }
    }

    /// Merges the pair of same-currency entries whose newer entry is oldest:
    /// the merge that keeps old payments in windows for the least time. That
    /// newer entry is the first one with an earlier entry of its currency,
    /// and that earlier entry is the only one (an earlier pair would have
    /// been found first).
    fn merge_oldest_pair(&mut self) -> bool {
        for newer in 1..self.entries.len() {
            let currency = self.entries[newer].currency;
            let older = self.entries[..newer]
                .iter()
                .position(|entry| entry.currency == currency);
            if let Some(older) = older {
                let older = self.entries.remove(older);
                // The newer entry moved down by one; its time stays, so the
                // order is kept.
                let merged = &mut self.entries[newer - 1];
                merged.payments = merged.payments.saturating_add(older.payments);
                merged.minor_units = merged.minor_units.saturating_add(older.minor_units);
                return true;
            }
        }
        false
    }
}

impl VelocityLog {
    /// The entries, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = LoggedPayments> + '_ {
        self.entries.iter().map(|entry| LoggedPayments {
            at: entry.at,
            currency: Currency::from_code(entry.currency.code())
                .expect("a currency key is made from a currency"),
            minor_units: entry.minor_units,
            payments: entry.payments,
        })
    }

    /// A log of these entries, with its invariants restored whatever their
    /// order: sorted, and merged down to the cap (should a later version
    /// lower it). Refuses an entry of no payments or a negative sum.
    pub fn from_entries(
        entries: impl IntoIterator<Item = LoggedPayments>,
    ) -> Result<VelocityLog, BadLoggedPayments> {
        let mut entries = entries
            .into_iter()
            .map(|entry| {
                if entry.payments == 0 || entry.minor_units < 0 {
                    return Err(BadLoggedPayments {
                        payments: entry.payments,
                        minor_units: entry.minor_units,
                    });
                }
                Ok(VelocityEntry {
                    at: entry.at,
                    currency: entry.currency.into(),
                    minor_units: entry.minor_units,
                    payments: entry.payments,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|entry| entry.at);
        let mut log = VelocityLog { entries };
        log.enforce_cap();
        Ok(log)
    }
}

// ---------------------------------------------------------------------------
// Parsing and validation

/// A JSON value. Like `serde_json::Value`, except that an object refuses a
/// key given twice: serde_json keeps the last one silently, and
/// `"action": "decline", …, "action": "approve"` must not pass.
enum Json {
    Null,
    Bool,
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(BTreeMap<String, Json>),
}

impl Json {
    /// "a string", "an array": for "must be …, not …" messages.
    fn describe(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E: de::Error>(self, _value: bool) -> Result<Json, E> {
        Ok(Json::Bool)
    }
    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Json, E> {
        Ok(Json::Number(value.into()))
    }
    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Json, E> {
        Ok(Json::Number(value.into()))
    }
    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Json, E> {
        serde_json::Number::from_f64(value)
            .map(Json::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E: de::Error>(self, value: &str) -> Result<Json, E> {
        Ok(Json::String(value.to_owned()))
    }
    fn visit_string<E: de::Error>(self, value: String) -> Result<Json, E> {
        Ok(Json::String(value))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut fields = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            if fields.contains_key(&key) {
                return Err(de::Error::custom(format!("field {key:?} given twice")));
            }
            let value = map.next_value()?;
            fields.insert(key, value);
        }
        Ok(Json::Object(fields))
    }
}

/// Problems found so far, bounded by [`limits::RULES_PROBLEMS_MAX`].
#[derive(Default)]
struct Problems {
    listed: Vec<String>,
    unlisted: usize,
}

impl Problems {
    fn add(&mut self, problem: String) {
        if self.listed.len() < limits::RULES_PROBLEMS_MAX {
            self.listed.push(problem);
        } else {
            self.unlisted += 1;
        }
    }

    fn finish(mut self, rule_set: Option<RuleSet>) -> Result<RuleSet, RulesError> {
        if self.unlisted > 0 {
            self.listed
                .push(format!("and {} more problems", self.unlisted));
        }
        match rule_set {
            Some(rule_set) if self.listed.is_empty() => Ok(rule_set),
            _ => Err(RulesError {
                problems: self.listed,
            }),
        }
    }
}

/// Validates the whole document; `Some` only if every part was valid (the
/// caller also checks that no problem was recorded).
fn compile_document(document: &Json, problems: &mut Problems) -> Option<RuleSet> {
    let Json::Object(fields) = document else {
        problems.add(format!(
            "the document must be an object with \"version\" and \"rules\", not {}",
            document.describe()
        ));
        return None;
    };
    for key in fields.keys() {
        if key != "version" && key != "rules" {
            problems.add(format!(
                "unknown field {key:?} (a rules document has \"version\" and \"rules\")"
            ));
        }
    }
    let version = match fields.get("version") {
        None => {
            problems.add("missing field \"version\"".to_owned());
            None
        }
        Some(Json::String(version)) => {
            let chars = version.chars().count();
            if chars == 0
                || chars > limits::RULES_VERSION_CHARS_MAX
                || version.chars().any(char::is_control)
            {
                problems.add(format!(
                    "version must be 1..={} characters without control characters",
                    limits::RULES_VERSION_CHARS_MAX
                ));
                None
            } else {
                Some(version.clone())
            }
        }
        Some(other) => {
            problems.add(format!(
                "version must be a string, not {}",
                other.describe()
            ));
            None
        }
    };
    let items = match fields.get("rules") {
        None => {
            problems.add("missing field \"rules\"".to_owned());
            return None;
        }
        Some(Json::Array(items)) => items,
        Some(other) => {
            problems.add(format!("rules must be an array, not {}", other.describe()));
            return None;
        }
    };
    if items.len() > limits::RULES_MAX {
        problems.add(format!(
            "rules has {} entries, at most {} allowed",
            items.len(),
            limits::RULES_MAX
        ));
    }
    let mut names = HashMap::new();
    let mut rules = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        // Keep validating after a bad rule: the operator gets every problem.
        if let Some(rule) = compile_rule(index, item, &mut names, problems) {
            rules.push(rule);
        }
    }
    let version = version?;
    if rules.len() != items.len() || items.len() > limits::RULES_MAX {
        return None;
    }
    let keep_millis = rules
        .iter()
        .filter_map(|rule| match &rule.check {
            Check::Velocity { window, .. } => Some(window.millis),
            Check::AccountLimit { window, .. } => window.map(|window| window.millis),
            Check::AmountAbove { .. } | Check::BlockList(_) => None,
        })
        .max()
        .unwrap_or(0);
    Some(RuleSet {
        version,
        rules,
        keep_millis,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    AmountAbove,
    Velocity,
    BlockList,
    AccountLimit,
}

impl Kind {
    const ALL: &'static [(&'static str, Kind)] = &[
        ("amount_above", Kind::AmountAbove),
        ("velocity", Kind::Velocity),
        ("block_list", Kind::BlockList),
        ("account_limit", Kind::AccountLimit),
    ];

    /// Fields a rule of this kind may have besides name, kind and action.
    fn fields(self) -> &'static [&'static str] {
        match self {
            Kind::AmountAbove => &["currency", "minor_units"],
            Kind::Velocity => &["window_seconds", "max_count", "currency", "max_minor_units"],
            Kind::BlockList => &["field", "values"],
            Kind::AccountLimit => &["account", "currency", "max_minor_units", "window_seconds"],
        }
    }

    fn name(self) -> &'static str {
        Kind::ALL
            .iter()
            .find(|(_, kind)| *kind == self)
            .map_or("?", |(name, _)| name)
    }
}

const COMMON_FIELDS: &[&str] = &["name", "kind", "action"];

fn compile_rule<'a>(
    index: usize,
    item: &'a Json,
    names: &mut HashMap<&'a str, usize>,
    problems: &mut Problems,
) -> Option<Rule> {
    let Json::Object(fields) = item else {
        problems.add(format!(
            "rules[{index}]: must be an object, not {}",
            item.describe()
        ));
        return None;
    };
    let name = match fields.get("name") {
        Some(Json::String(name)) => Some(name.as_str()),
        _ => None,
    };
    let mut reader = RuleReader {
        label: match name {
            Some(name) => format!("rules[{index}] {name:?}"),
            None => format!("rules[{index}]"),
        },
        fields,
        problems,
        failed: false,
    };

    if reader.string("name", true).is_some() {
        if let Some(name) = name {
            if !valid_rule_name(name) {
                reader.problem(format_args!(
                    "name must be 1..={} characters of A-Z a-z 0-9 _ . -",
                    limits::RULE_NAME_CHARS_MAX
                ));
            } else if let Some(first) = names.get(name) {
                reader.problem(format_args!("name is also used by rules[{first}]"));
            } else {
                names.insert(name, index);
            }
        }
    }
    let action = reader.string("action", true).and_then(|text| {
        let action = Action::from_name(text);
        if action.is_none() {
            reader.problem(format_args!(
                "action {text:?} is not one of approve, review, decline"
            ));
        }
        action
    });
    let kind = reader.string("kind", true).and_then(|text| {
        let kind = Kind::ALL
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, kind)| *kind);
        if kind.is_none() {
            reader.problem(format_args!(
                "kind {text:?} is not one of amount_above, velocity, block_list, account_limit"
            ));
        }
        kind
    });
    // Without a known kind, which other fields belong is unknown.
    let kind = kind?;
    for key in fields.keys() {
        if !COMMON_FIELDS.contains(&key.as_str()) && !kind.fields().contains(&key.as_str()) {
            reader.problem(format_args!(
                "unknown field {key:?} ({} rules have {}, {})",
                kind.name(),
                COMMON_FIELDS.join(", "),
                kind.fields().join(", ")
            ));
        }
    }
    let check = match kind {
        Kind::AmountAbove => {
            let currency = reader.currency("currency", true);
            let minor_units_max = reader.amount("minor_units", true);
            Some(Check::AmountAbove {
                currency: currency?,
                minor_units_max: minor_units_max?,
            })
        }
        Kind::Velocity => compile_velocity(&mut reader),
        Kind::BlockList => compile_block_list(&mut reader).map(Check::BlockList),
        Kind::AccountLimit => {
            let account = reader.string("account", true).and_then(|account| {
                AccountId::new(account)
                    .map_err(|error| {
                        reader.problem(format_args!(
                            "account {account:?} is not a valid account id: {error}"
                        ))
                    })
                    .ok()
            });
            let currency = reader.currency("currency", true);
            let minor_units_max = reader.amount("max_minor_units", true);
            let window = reader.window(false);
            Some(Check::AccountLimit {
                account: account?,
                currency: currency?,
                minor_units_max: minor_units_max?,
                window,
            })
        }
    };
    if reader.failed {
        return None;
    }
    Some(Rule {
        name: name?.to_owned(),
        action: action?,
        check: check?,
    })
}

fn valid_rule_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= limits::RULE_NAME_CHARS_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn compile_velocity(reader: &mut RuleReader<'_, '_>) -> Option<Check> {
    let window = reader.window(true);
    let payments_max = reader.count("max_count");
    let currency = reader.currency("currency", false);
    let amount = reader.amount("max_minor_units", false);
    // Judged on presence, not validity, so a bad value is reported once.
    let has_count = reader.fields.contains_key("max_count");
    let has_currency = reader.fields.contains_key("currency");
    let has_amount = reader.fields.contains_key("max_minor_units");
    if has_currency != has_amount {
        reader.problem(format_args!(
            "currency and max_minor_units go together: give both or neither"
        ));
    } else if !has_count && !has_currency {
        reader.problem(format_args!(
            "needs max_count, or currency with max_minor_units, or both"
        ));
    }
    Some(Check::Velocity {
        window: window?,
        payments_max,
        amount_max: currency.zip(amount),
    })
}

fn compile_block_list(reader: &mut RuleReader<'_, '_>) -> Option<BlockList> {
    let field = reader.string("field", true);
    let field = field.and_then(|field| match field {
        "account" => Some(ListField::Account),
        "payer_id" => Some(ListField::PayerId),
        "payer_country" => Some(ListField::PayerCountry),
        _ => match field.strip_prefix("metadata.") {
            Some(key)
                if !key.is_empty()
                    && key.len() <= limits::METADATA_KEY_BYTES_MAX
                    && !key.chars().any(char::is_control) =>
            {
                Some(ListField::Metadata(key))
            }
            Some(_) => {
                reader.problem(format_args!(
                    "field {field:?}: a metadata key must be 1..={} bytes without control characters",
                    limits::METADATA_KEY_BYTES_MAX
                ));
                None
            }
            None => {
                reader.problem(format_args!(
                    "field {field:?} is not one of account, payer_id, payer_country, metadata.<key>"
                ));
                None
            }
        },
    });
    let values = match reader.field("values", true)? {
        Json::Array(values) => values,
        other => {
            reader.problem(format_args!(
                "values must be an array of strings, not {}",
                other.describe()
            ));
            return None;
        }
    };
    if values.len() > limits::BLOCK_LIST_VALUES_MAX {
        reader.problem(format_args!(
            "values has {} entries, at most {} allowed",
            values.len(),
            limits::BLOCK_LIST_VALUES_MAX
        ));
        return None;
    }
    let mut strings = Vec::with_capacity(values.len());
    for (index, value) in values.iter().enumerate() {
        match value {
            Json::String(value) => strings.push((index, value.as_str())),
            other => reader.problem(format_args!(
                "values[{index}] must be a string, not {}",
                other.describe()
            )),
        }
    }
    match field? {
        ListField::PayerCountry => {
            let mut countries = HashSet::with_capacity(strings.len());
            for (index, value) in strings {
                match country_code(value) {
                    Some(country) => {
                        countries.insert(country);
                    }
                    None => reader.problem(format_args!(
                        "values[{index}] {value:?} is not a country code (an assigned ISO 3166-1 alpha-2 code)"
                    )),
                }
            }
            Some(BlockList::PayerCountry(countries))
        }
        ListField::Account => {
            for (index, value) in &strings {
                if let Err(error) = AccountId::new(*value) {
                    reader.problem(format_args!(
                        "values[{index}] {value:?} is not a valid account id: {error}"
                    ));
                }
            }
            Some(BlockList::Account(owned_set(strings)))
        }
        ListField::Metadata(key) => {
            for (index, value) in &strings {
                if value.len() > limits::METADATA_VALUE_BYTES_MAX {
                    reader.problem(format_args!(
                        "values[{index}] is longer than a metadata value can be ({} bytes)",
                        limits::METADATA_VALUE_BYTES_MAX
                    ));
                }
            }
            Some(BlockList::Metadata {
                key: key.to_owned(),
                values: owned_set(strings),
            })
        }
        ListField::PayerId => {
            for (index, value) in &strings {
                if !valid_payer_id(value) {
                    reader.problem(format_args!(
                        "values[{index}] {value:?} is not a payer id (1..={} characters of A-Z a-z 0-9 . _ : -)",
                        limits::PAYER_ID_CHARS_MAX
                    ));
                }
            }
            Some(BlockList::PayerId(owned_set(strings)))
        }
    }
}

/// The payment field a block list reads, as named in the document.
enum ListField<'a> {
    Account,
    PayerId,
    PayerCountry,
    /// The key, after `metadata.`.
    Metadata(&'a str),
}

/// What the API accepts as a payer id: a value that is not one can never
/// match, so it is a typo.
fn valid_payer_id(id: &str) -> bool {
    !id.is_empty()
        && id.chars().count() <= limits::PAYER_ID_CHARS_MAX
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

fn owned_set(values: Vec<(usize, &str)>) -> HashSet<String> {
    values
        .into_iter()
        .map(|(_, value)| value.to_owned())
        .collect()
}

/// Reads the fields of one rule, recording each problem under the rule's
/// label (`rules[2] "daily-usd": …`).
struct RuleReader<'a, 'p> {
    label: String,
    fields: &'a BTreeMap<String, Json>,
    problems: &'p mut Problems,
    /// Whether any problem was found in this rule.
    failed: bool,
}

impl<'a> RuleReader<'a, '_> {
    fn problem(&mut self, message: fmt::Arguments<'_>) {
        self.failed = true;
        self.problems.add(format!("{}: {message}", self.label));
    }

    fn field(&mut self, key: &str, required: bool) -> Option<&'a Json> {
        let value = self.fields.get(key);
        if value.is_none() && required {
            self.problem(format_args!("missing field {key:?}"));
        }
        value
    }

    fn string(&mut self, key: &str, required: bool) -> Option<&'a str> {
        match self.field(key, required)? {
            Json::String(value) => Some(value),
            other => {
                self.problem(format_args!(
                    "{key} must be a string, not {}",
                    other.describe()
                ));
                None
            }
        }
    }

    /// A whole number within `min..=max`; `unit` names what it counts.
    fn whole_number(
        &mut self,
        key: &str,
        required: bool,
        min: i128,
        max: i128,
        unit: &str,
    ) -> Option<i128> {
        let number = match self.field(key, required)? {
            Json::Number(number) => number,
            other => {
                self.problem(format_args!(
                    "{key} must be a whole number of {unit}, not {}",
                    other.describe()
                ));
                return None;
            }
        };
        let Some(value) = number
            .as_i64()
            .map(i128::from)
            .or_else(|| number.as_u64().map(i128::from))
        else {
            self.problem(format_args!(
                "{key} must be a whole number of {unit}, not {number}"
            ));
            return None;
        };
        if !(min..=max).contains(&value) {
            self.problem(format_args!(
                "{key} must be {min}..={max} {unit}, not {value}"
            ));
            return None;
        }
        Some(value)
    }

    /// A positive amount in minor units, at most [`limits::AMOUNT_MINOR_MAX`].
    fn amount(&mut self, key: &str, required: bool) -> Option<i64> {
        let value = self.whole_number(
            key,
            required,
            1,
            limits::AMOUNT_MINOR_MAX.into(),
            "minor units",
        )?;
        i64::try_from(value).ok()
    }

    fn count(&mut self, key: &str) -> Option<u64> {
        let value =
            self.whole_number(key, false, 1, limits::VELOCITY_COUNT_MAX.into(), "payments")?;
        u64::try_from(value).ok()
    }

    fn window(&mut self, required: bool) -> Option<Window> {
        let max = limits::VELOCITY_WINDOW_MAX.as_secs();
        let seconds = self.whole_number("window_seconds", required, 1, max.into(), "seconds")?;
        let seconds = u64::try_from(seconds).ok()?;
        Some(Window {
            seconds,
            // At most 30 days: fits easily.
            millis: i64::try_from(seconds).ok()?.checked_mul(1000)?,
        })
    }

    fn currency(&mut self, key: &str, required: bool) -> Option<Currency> {
        let code = self.string(key, required)?;
        let currency = Currency::from_code(code);
        if currency.is_none() {
            self.problem(format_args!(
                "{key} {code:?} is not an ISO 4217 code payvisor accepts"
            ));
        }
        currency
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_767_225_600_000;
    const HOUR_MS: i64 = 3_600_000;

    fn usd(minor: i64) -> Money {
        Money::from_minor(Currency::from_code("USD").unwrap(), minor)
    }
    fn eur(minor: i64) -> Money {
        Money::from_minor(Currency::from_code("EUR").unwrap(), minor)
    }
    fn at(millis: i64) -> Timestamp {
        Timestamp::from_unix_millis(millis)
    }
    fn account(id: &str) -> AccountId {
        AccountId::new(id).unwrap()
    }

    /// A document holding `rules` (JSON objects separated by commas).
    fn rules(rules: &str) -> RuleSet {
        let text = format!(r#"{{"version": "test", "rules": [{rules}]}}"#);
        RuleSet::parse(&text).unwrap_or_else(|error| panic!("{error}"))
    }

    fn problems(text: &str) -> Vec<String> {
        RuleSet::parse(text).unwrap_err().problems
    }

    /// What a payment would look like; adjust the fields a test is about.
    struct Example {
        account: AccountId,
        amount: Money,
        payer_id: Option<&'static str>,
        payer_country: Option<&'static str>,
        metadata: BTreeMap<String, String>,
    }

    fn payment(amount: Money) -> Example {
        Example {
            account: account("acme"),
            amount,
            payer_id: None,
            payer_country: None,
            metadata: BTreeMap::new(),
        }
    }

    fn check(rule_set: &RuleSet, payment: &Example, log: &VelocityLog) -> Evaluation {
        check_at(rule_set, payment, log, NOW)
    }

    /// Evaluates `payment` at `now` against `rule_set` with `log`: the one
    /// place tests call `evaluate`.
    fn check_at(rule_set: &RuleSet, payment: &Example, log: &VelocityLog, now: i64) -> Evaluation {
        let candidate = Candidate {
            account: &payment.account,
            amount: payment.amount,
            payer_id: payment.payer_id,
            payer_country: payment.payer_country,
            metadata: &payment.metadata,
        };
        rule_set.evaluate(&candidate, log, at(now))
    }

    /// The names of the rules that fired.
    fn fired(rule_set: &RuleSet, payment: &Example, log: &VelocityLog) -> Vec<String> {
        check(rule_set, payment, log)
            .fired
            .into_iter()
            .map(|fired| fired.rule)
            .collect()
    }

    /// A log of `payments` recorded at the given times, keeping 30 days.
    fn log_of(payments: &[(i64, Money)]) -> VelocityLog {
        let mut log = VelocityLog::default();
        for (time, amount) in payments {
            log.record(at(*time), *amount, 30 * 24 * HOUR_MS);
        }
        log
    }

    #[test]
    fn the_documented_example_parses() {
        let text = r#"{
          "version": "2026-01-07.1",
          "rules": [
            {"name": "large-usd", "kind": "amount_above", "currency": "USD", "minor_units": 100000, "action": "review"},
            {"name": "burst", "kind": "velocity", "window_seconds": 3600, "max_count": 10, "action": "review"},
            {"name": "daily-usd", "kind": "velocity", "window_seconds": 86400, "currency": "USD", "max_minor_units": 500000, "action": "decline"},
            {"name": "sanctioned", "kind": "block_list", "field": "payer_country", "values": ["KP", "IR"], "action": "decline"},
            {"name": "bad-payers", "kind": "block_list", "field": "payer_id", "values": ["payer-666"], "action": "decline"},
            {"name": "bad-accounts", "kind": "block_list", "field": "account", "values": ["fraudco"], "action": "decline"},
            {"name": "risky-mcc", "kind": "block_list", "field": "metadata.mcc", "values": ["7995"], "action": "review"},
            {"name": "acme-cap", "kind": "account_limit", "account": "acme", "currency": "USD", "max_minor_units": 5000, "action": "decline"},
            {"name": "acme-daily", "kind": "account_limit", "account": "acme", "currency": "USD", "max_minor_units": 20000, "window_seconds": 86400, "action": "review"}
          ]
        }"#;
        let rule_set = RuleSet::parse(text).unwrap();
        assert_eq!(rule_set.version(), "2026-01-07.1");
        assert_eq!(rule_set.len(), 9);
        assert_eq!(rule_set.keep_millis(), 24 * HOUR_MS);
        let evaluation = check(&rule_set, &payment(usd(100)), &VelocityLog::default());
        assert_eq!(evaluation.action, Action::Approve);
        assert!(evaluation.fired.is_empty());
        assert_eq!(evaluation.rules_version, "2026-01-07.1");
    }

    #[test]
    fn approve_all_has_no_rules_and_keeps_no_history() {
        let rule_set = RuleSet::approve_all();
        assert!(rule_set.is_empty());
        assert_eq!(rule_set.version(), "none");
        assert_eq!(rule_set.keep_millis(), 0);
        let evaluation = check(&rule_set, &payment(usd(i64::MAX)), &VelocityLog::default());
        assert_eq!(evaluation.action, Action::Approve);
        assert_eq!(evaluation.rules_version, "none");
    }

    #[test]
    fn amount_above_fires_strictly_above_the_threshold_in_its_currency() {
        let rule_set = rules(
            r#"{"name": "large-usd", "kind": "amount_above", "currency": "USD", "minor_units": 100000, "action": "review"}"#,
        );
        let none = VelocityLog::default();
        assert!(fired(&rule_set, &payment(usd(100_000)), &none).is_empty());
        assert!(fired(&rule_set, &payment(eur(100_001)), &none).is_empty());
        let evaluation = check(&rule_set, &payment(usd(100_001)), &none);
        assert_eq!(evaluation.action, Action::Review);
        assert_eq!(
            evaluation.fired,
            vec![FiredRule {
                rule: "large-usd".into(),
                action: Action::Review,
                detail: "amount 1000.01 USD above 1000.00 USD".into(),
            }]
        );
    }

    #[test]
    fn velocity_counts_payments_in_the_window_and_a_payment_exactly_window_old_has_left() {
        let rule_set = rules(
            r#"{"name": "burst", "kind": "velocity", "window_seconds": 3600, "max_count": 3, "action": "review"}"#,
        );
        assert_eq!(rule_set.keep_millis(), HOUR_MS);
        // Two payments inside the window (one in another currency: counts
        // are across currencies), one exactly an hour old (outside).
        let log = log_of(&[
            (NOW - HOUR_MS, usd(1)),
            (NOW - HOUR_MS + 1, eur(1)),
            (NOW - 10, usd(1)),
        ]);
        assert_eq!(log.window(at(NOW), HOUR_MS, None).payments, 2);
        // 2 + this one = 3: at most 3, does not fire.
        assert!(fired(&rule_set, &payment(usd(1)), &log).is_empty());
        // One more inside the window: 4 > 3.
        let mut busier = log.clone();
        busier.record(at(NOW - 5), usd(1), HOUR_MS);
        let evaluation = check(&rule_set, &payment(usd(1)), &busier);
        assert_eq!(evaluation.action, Action::Review);
        assert_eq!(
            evaluation.fired[0].detail,
            "4 payments in 3600 s, at most 3"
        );
        // A millisecond later the oldest of those falls out again.
        let later = check_at(&rule_set, &payment(usd(1)), &busier, NOW + 1);
        assert!(later.fired.is_empty(), "{later:?}");
    }

    #[test]
    fn velocity_sums_one_currency_in_the_window_plus_this_payment() {
        let rule_set = rules(
            r#"{"name": "daily-usd", "kind": "velocity", "window_seconds": 86400, "currency": "USD", "max_minor_units": 5000, "action": "decline"}"#,
        );
        let day = 24 * HOUR_MS;
        let log = log_of(&[
            (NOW - day, usd(100_000)), // exactly a day old: outside
            (NOW - day + 1, usd(2000)),
            (NOW - 1, eur(99_999)), // another currency: not summed
            (NOW - 1, usd(2000)),
        ]);
        // 4000 + 1000 = 5000: not above.
        assert!(fired(&rule_set, &payment(usd(1000)), &log).is_empty());
        let evaluation = check(&rule_set, &payment(usd(1001)), &log);
        assert_eq!(evaluation.action, Action::Decline);
        assert_eq!(
            evaluation.fired[0].detail,
            "50.01 USD in 86400 s above 50.00 USD"
        );
        // A payment in another currency adds nothing to the USD sum.
        assert!(fired(&rule_set, &payment(eur(1_000_000)), &log).is_empty());
    }

    #[test]
    fn velocity_with_count_and_sum_reports_both_when_both_fire() {
        let rule_set = rules(
            r#"{"name": "both", "kind": "velocity", "window_seconds": 60, "max_count": 1, "currency": "USD", "max_minor_units": 100, "action": "review"}"#,
        );
        let log = log_of(&[(NOW - 1000, usd(100))]);
        assert_eq!(
            check(&rule_set, &payment(usd(1)), &log).fired[0].detail,
            "2 payments in 60 s, at most 1; 1.01 USD in 60 s above 1.00 USD"
        );
        assert_eq!(
            check(&rule_set, &payment(eur(1)), &log).fired[0].detail,
            "2 payments in 60 s, at most 1"
        );
    }

    #[test]
    fn block_lists_match_each_field_exactly_and_never_a_missing_field() {
        let rule_set = rules(
            r#"{"name": "accounts", "kind": "block_list", "field": "account", "values": ["fraudco"], "action": "decline"},
               {"name": "payers", "kind": "block_list", "field": "payer_id", "values": ["payer-666"], "action": "decline"},
               {"name": "countries", "kind": "block_list", "field": "payer_country", "values": ["KP", "ir"], "action": "decline"},
               {"name": "mcc", "kind": "block_list", "field": "metadata.mcc", "values": ["7995"], "action": "review"}"#,
        );
        let none = VelocityLog::default();
        let clean = payment(usd(100));
        assert!(fired(&rule_set, &clean, &none).is_empty());

        let mut blocked_account = payment(usd(100));
        blocked_account.account = account("fraudco");
        assert_eq!(fired(&rule_set, &blocked_account, &none), ["accounts"]);

        let mut payer = payment(usd(100));
        payer.payer_id = Some("payer-666");
        assert_eq!(fired(&rule_set, &payer, &none), ["payers"]);
        payer.payer_id = Some("PAYER-666");
        assert!(
            fired(&rule_set, &payer, &none).is_empty(),
            "exact match only"
        );

        let mut country = payment(usd(100));
        for (given, blocked) in [
            ("KP", true),
            ("kp", true),
            ("Ir", true),
            ("US", false),
            ("KPX", false),
            ("", false),
        ] {
            country.payer_country = Some(given);
            let names = fired(&rule_set, &country, &none);
            assert_eq!(names == ["countries"], blocked, "{given:?}: {names:?}");
        }
        assert_eq!(
            check(&rule_set, &country_of("kp"), &none).fired[0].detail,
            "payer_country \"KP\" is block-listed"
        );

        let mut mcc = payment(usd(100));
        mcc.metadata.insert("mcc".into(), "7995".into());
        assert_eq!(fired(&rule_set, &mcc, &none), ["mcc"]);
        mcc.metadata.insert("mcc".into(), "5411".into());
        assert!(fired(&rule_set, &mcc, &none).is_empty());
        mcc.metadata.clear();
        mcc.metadata.insert("other".into(), "7995".into());
        assert!(fired(&rule_set, &mcc, &none).is_empty(), "other key");
    }

    fn country_of(country: &'static str) -> Example {
        let mut payment = payment(usd(100));
        payment.payer_country = Some(country);
        payment
    }

    #[test]
    fn account_limit_applies_to_its_account_only() {
        let rule_set = rules(
            r#"{"name": "acme-cap", "kind": "account_limit", "account": "acme", "currency": "USD", "max_minor_units": 5000, "action": "decline"}"#,
        );
        let none = VelocityLog::default();
        assert_eq!(rule_set.keep_millis(), 0);
        assert!(fired(&rule_set, &payment(usd(5000)), &none).is_empty());
        assert!(fired(&rule_set, &payment(eur(5001)), &none).is_empty());
        let evaluation = check(&rule_set, &payment(usd(5001)), &none);
        assert_eq!(evaluation.action, Action::Decline);
        assert_eq!(
            evaluation.fired[0].detail,
            "amount 50.01 USD above 50.00 USD"
        );
        let mut other = payment(usd(1_000_000));
        other.account = account("globex");
        assert!(fired(&rule_set, &other, &none).is_empty());
    }

    #[test]
    fn account_limit_with_a_window_sums_the_accounts_accepted_amount() {
        let rule_set = rules(
            r#"{"name": "acme-daily", "kind": "account_limit", "account": "acme", "currency": "USD", "max_minor_units": 20000, "window_seconds": 86400, "action": "review"}"#,
        );
        let day = 24 * HOUR_MS;
        assert_eq!(rule_set.keep_millis(), day);
        let log = log_of(&[(NOW - day, usd(50_000)), (NOW - HOUR_MS, usd(15_000))]);
        assert!(fired(&rule_set, &payment(usd(5000)), &log).is_empty());
        let evaluation = check(&rule_set, &payment(usd(5001)), &log);
        assert_eq!(evaluation.action, Action::Review);
        assert_eq!(
            evaluation.fired[0].detail,
            "200.01 USD in 86400 s above 200.00 USD"
        );
        let mut other = payment(usd(5001));
        other.account = account("globex");
        assert!(fired(&rule_set, &other, &log).is_empty());
    }

    #[test]
    fn the_most_severe_action_wins_and_every_fired_rule_is_listed_in_order() {
        let rule_set = rules(
            r#"{"name": "note", "kind": "amount_above", "currency": "USD", "minor_units": 1, "action": "approve"},
               {"name": "countries", "kind": "block_list", "field": "payer_country", "values": ["KP"], "action": "decline"},
               {"name": "quiet", "kind": "amount_above", "currency": "EUR", "minor_units": 1, "action": "decline"},
               {"name": "large", "kind": "amount_above", "currency": "USD", "minor_units": 1000, "action": "review"}"#,
        );
        let none = VelocityLog::default();
        let mut risky = payment(usd(5000));
        let evaluation = check(&rule_set, &risky, &none);
        assert_eq!(evaluation.action, Action::Review);
        assert_eq!(
            evaluation
                .fired
                .iter()
                .map(|f| f.rule.as_str())
                .collect::<Vec<_>>(),
            ["note", "large"]
        );
        risky.payer_country = Some("KP");
        let evaluation = check(&rule_set, &risky, &none);
        assert_eq!(evaluation.action, Action::Decline);
        assert_eq!(
            evaluation
                .fired
                .iter()
                .map(|f| (f.rule.as_str(), f.action))
                .collect::<Vec<_>>(),
            [
                ("note", Action::Approve),
                ("countries", Action::Decline),
                ("large", Action::Review)
            ]
        );
        // A fired approve rule alone leaves the verdict at approve.
        assert_eq!(
            check(&rule_set, &payment(usd(2)), &none).action,
            Action::Approve
        );
        assert!(Action::Approve < Action::Review && Action::Review < Action::Decline);
    }

    #[test]
    fn every_problem_is_reported_with_its_rule() {
        let text = r#"{
          "version": "",
          "rules": [
            {"name": "ok", "kind": "amount_above", "currency": "USD", "minor_units": 100, "action": "review"},
            {"name": "ok", "kind": "amount_above", "currency": "USD", "minor_units": 0, "action": "maybe"},
            {"name": "daily-usd", "kind": "velocity", "window_seconds": 2592001, "currency": "USX", "max_minor_units": 5, "action": "decline"},
            {"name": "bad name!", "kind": "teleport", "action": "review"},
            {"name": "lists", "kind": "block_list", "field": "payer_country", "values": ["KP", "KOR", 7], "action": "decline"},
            {"name": "keys", "kind": "block_list", "field": "metadata.", "values": [], "action": "decline"},
            {"name": "acme", "kind": "account_limit", "account": "acme/1", "currency": "USD", "max_minor_units": 1000000000000001, "action": "decline"},
            {"name": "lonely", "kind": "velocity", "window_seconds": 60, "currency": "USD", "action": "review"},
            {"kind": "velocity", "window_seconds": 1.5, "max_count": 0, "action": "review"},
            "not a rule",
            {"name": "payers", "kind": "block_list", "field": "payer_id", "values": ["ok-1", "has space"], "action": "decline"}
          ]
        }"#;
        let problems = problems(text);
        let expected = [
            "version must be 1..=64 characters",
            r#"rules[1] "ok": name is also used by rules[0]"#,
            r#"rules[1] "ok": action "maybe" is not one of approve, review, decline"#,
            r#"rules[1] "ok": minor_units must be 1..=1000000000000000 minor units, not 0"#,
            r#"rules[2] "daily-usd": window_seconds must be 1..=2592000 seconds, not 2592001"#,
            r#"rules[2] "daily-usd": currency "USX" is not an ISO 4217 code"#,
            r#"rules[3] "bad name!": name must be 1..=64 characters of A-Z a-z 0-9 _ . -"#,
            r#"rules[3] "bad name!": kind "teleport" is not one of"#,
            r#"rules[4] "lists": values[2] must be a string, not a number"#,
            r#"rules[4] "lists": values[1] "KOR" is not a country code"#,
            r#"rules[5] "keys": field "metadata.": a metadata key must be 1..=64 bytes"#,
            r#"rules[6] "acme": account "acme/1" is not a valid account id"#,
            r#"rules[6] "acme": max_minor_units must be 1..=1000000000000000 minor units, not 1000000000000001"#,
            r#"rules[7] "lonely": currency and max_minor_units go together"#,
            r#"rules[8]: missing field "name""#,
            r#"rules[8]: window_seconds must be a whole number of seconds, not 1.5"#,
            r#"rules[8]: max_count must be 1..=1000000 payments, not 0"#,
            r#"rules[9]: must be an object, not a string"#,
            r#"rules[10] "payers": values[1] "has space" is not a payer id"#,
        ];
        for wanted in expected {
            assert!(
                problems.iter().any(|problem| problem.starts_with(wanted)),
                "missing {wanted:?} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), expected.len(), "{problems:#?}");
        let error = RuleSet::parse(text).unwrap_err().to_string();
        assert!(
            error.starts_with("invalid approval rules: version must be"),
            "{error}"
        );
    }

    #[test]
    fn json_syntax_errors_say_where() {
        let problems =
            problems("{\n  \"version\": \"v1\",\n  \"rules\": [\n    {\"name\": \"x\",}\n  ]\n}");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("not valid JSON"), "{problems:?}");
        assert!(problems[0].contains("line 4 column"), "{problems:?}");
    }

    #[test]
    fn unknown_and_repeated_fields_are_refused() {
        let rule = problems(
            r#"{"version": "v", "rules": [{"name": "a", "kind": "amount_above", "currency": "USD", "minor_units": 1, "action": "review", "minor_unit": 2}]}"#,
        );
        assert_eq!(rule.len(), 1, "{rule:?}");
        assert!(
            rule[0].starts_with(r#"rules[0] "a": unknown field "minor_unit""#),
            "{rule:?}"
        );
        let top = problems(r#"{"version": "v", "rules": [], "rule": []}"#);
        assert!(top[0].starts_with(r#"unknown field "rule""#), "{top:?}");
        // A field of another kind is unknown too.
        let other_kind = problems(
            r#"{"version": "v", "rules": [{"name": "a", "kind": "amount_above", "currency": "USD", "minor_units": 1, "window_seconds": 60, "action": "review"}]}"#,
        );
        assert!(
            other_kind[0].contains(r#"unknown field "window_seconds""#),
            "{other_kind:?}"
        );
        // serde_json would keep the last of two; refusing is safer.
        let twice = problems(
            r#"{"version": "v", "rules": [{"name": "a", "action": "decline", "kind": "amount_above", "currency": "USD", "minor_units": 1, "action": "approve"}]}"#,
        );
        assert!(
            twice[0].contains(r#"field "action" given twice"#),
            "{twice:?}"
        );
        assert!(twice[0].contains("line 1 column"), "{twice:?}");
    }

    #[test]
    fn documents_and_lists_are_bounded() {
        let rule = r#"{"name": "r", "kind": "amount_above", "currency": "USD", "minor_units": 1, "action": "review"}"#;
        let many = vec![rule; limits::RULES_MAX + 1].join(",");
        let problems_found = problems(&format!(r#"{{"version": "v", "rules": [{many}]}}"#));
        assert!(problems_found[0].starts_with("rules has 257 entries, at most 256"));
        // One problem per duplicate name, cut off at the bound.
        assert_eq!(problems_found.len(), limits::RULES_PROBLEMS_MAX + 1);
        assert!(problems_found.last().unwrap().starts_with("and "));

        let values = vec!["\"p\""; limits::BLOCK_LIST_VALUES_MAX + 1].join(",");
        let long_list = problems(&format!(
            r#"{{"version": "v", "rules": [{{"name": "l", "kind": "block_list", "field": "payer_id", "values": [{values}], "action": "review"}}]}}"#
        ));
        assert_eq!(
            long_list,
            [r#"rules[0] "l": values has 10001 entries, at most 10000 allowed"#]
        );
        let huge = " ".repeat(limits::RULES_FILE_BYTES_MAX + 1);
        assert!(problems(&huge)[0].starts_with("the document has"));
    }

    #[test]
    fn keep_millis_is_the_longest_window() {
        let rule_set = rules(
            r#"{"name": "a", "kind": "velocity", "window_seconds": 60, "max_count": 5, "action": "review"},
               {"name": "b", "kind": "account_limit", "account": "acme", "currency": "USD", "max_minor_units": 1, "window_seconds": 7200, "action": "review"},
               {"name": "c", "kind": "velocity", "window_seconds": 3600, "max_count": 5, "action": "review"}"#,
        );
        assert_eq!(rule_set.keep_millis(), 2 * HOUR_MS);
    }

    #[test]
    fn the_log_prunes_what_no_window_needs() {
        let mut log = VelocityLog::default();
        log.record(at(0), usd(1), 1000);
        log.record(at(999), usd(2), 1000);
        log.record(at(1000), usd(4), 1000); // drops the entry at 0
        assert_eq!(log.len(), 2);
        assert_eq!(
            log.window(at(1000), 1000, Some(usd(0).currency())),
            WindowTotals {
                payments: 2,
                minor_units: 6
            }
        );
        log.record(at(5000), usd(8), 0); // no rule looks back: keep nothing
        assert!(log.is_empty());
    }

    #[test]
    fn a_full_log_merges_its_oldest_same_currency_pair_into_the_newer_time() {
        let mut log = VelocityLog::default();
        let keep = 1_000_000;
        // Oldest: EUR at 0, then USD from 1 on; the first same-currency pair
        // is the USD entries at 1 and 2 (EUR at 0 has no partner yet).
        log.record(at(0), eur(7), keep);
        for time in 1..limits::VELOCITY_LOG_ENTRIES_MAX as i64 {
            log.record(at(time), usd(10), keep);
        }
        assert_eq!(log.len(), limits::VELOCITY_LOG_ENTRIES_MAX);
        log.record(at(1000), usd(10), keep);
        assert_eq!(log.len(), limits::VELOCITY_LOG_ENTRIES_MAX);
        assert_eq!(
            log.entries[0],
            VelocityEntry {
                at: at(0),
                currency: eur(0).currency().into(),
                minor_units: 7,
                payments: 1
            }
        );
        assert_eq!(
            log.entries[1],
            VelocityEntry {
                at: at(2),
                currency: usd(0).currency().into(),
                minor_units: 20,
                payments: 2
            }
        );
        // A window that holds the newer part holds both parts; one that
        // holds neither holds neither.
        let usd_code = Some(usd(0).currency());
        assert_eq!(log.window(at(1000), 1000 - 1, usd_code).payments, 128);
        assert_eq!(log.window(at(1000), 1000 - 2, usd_code).payments, 126);
        // Exact totals: every payment still counted.
        assert_eq!(
            log.window(at(1000), 2000, usd_code),
            WindowTotals {
                payments: 129,
                minor_units: 1280
            }
        );
    }

    #[test]
    fn every_currency_fits_under_the_log_cap() {
        // The merge needs two entries of one currency in a full log.
        let letters = b'A'..=b'Z';
        let mut currencies = 0;
        for a in letters.clone() {
            for b in letters.clone() {
                for c in letters.clone() {
                    let code = String::from_utf8(vec![a, b, c]).unwrap();
                    currencies += usize::from(Currency::from_code(&code).is_some());
                }
            }
        }
        assert!(currencies > 0 && currencies < limits::VELOCITY_LOG_ENTRIES_MAX);
    }

    #[test]
    fn a_log_restored_from_its_entries_restores_its_invariants() {
        let log = log_of(&[(NOW, usd(1500)), (NOW + 1, eur(2))]);
        assert_eq!(VelocityLog::from_entries(log.entries()).unwrap(), log);
        // Unsorted: sorted on restore.
        let entry = |at_ms, amount: Money, payments| LoggedPayments {
            at: at(at_ms),
            currency: amount.currency(),
            minor_units: amount.minor_units(),
            payments,
        };
        let unsorted =
            VelocityLog::from_entries([entry(5, usd(1), 3), entry(1, eur(2), 1)]).unwrap();
        assert_eq!(unsorted.entries[0].at, at(1));
        assert_eq!(unsorted.window(at(5), 10, None).payments, 4);
        assert!(VelocityLog::from_entries([entry(1, usd(-1), 1)]).is_err());
        assert!(VelocityLog::from_entries([entry(1, usd(1), 0)]).is_err());
    }

    /// One recording: milliseconds since the previous one (may go back a
    /// little: clocks of two nodes differ), and the payment.
    fn recordings() -> impl Strategy<Value = Vec<(i64, u8, i64)>> {
        proptest::collection::vec(
            (-20i64..=200, 0u8..3, 1i64..=limits::AMOUNT_MINOR_MAX),
            1..600,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// The capped log never under-counts any window, is exact while the
        /// kept history fits under the cap, and never exceeds the cap.
        #[test]
        fn the_log_never_under_counts(
            steps in recordings(),
            keep in 1i64..=20_000,
            probes in proptest::collection::vec((0i64..=20_000, 0i64..=500, 0u8..4), 1..20),
        ) {
            let currencies = [usd(0).currency(), eur(0).currency(), Currency::from_code("JPY").unwrap()];
            let mut log = VelocityLog::default();
            // Every payment recorded, and the history a log without a cap
            // would keep: once that exceeds the cap, the log must merge.
            let mut all: Vec<(i64, Currency, i64)> = Vec::new();
            let mut uncapped: Vec<i64> = Vec::new();
            let mut overflowed = false;
            let mut time = NOW;
            let mut latest = time;
            for (delta, currency, minor) in steps {
                time += delta;
                latest = latest.max(time);
                let currency = currencies[usize::from(currency)];
                log.record(at(time), Money::from_minor(currency, minor), keep);
                all.push((time, currency, minor));
                uncapped.retain(|t| *t > time - keep);
                uncapped.push(time);
                overflowed |= uncapped.len() > limits::VELOCITY_LOG_ENTRIES_MAX;
                prop_assert!(log.len() <= limits::VELOCITY_LOG_ENTRIES_MAX);
                prop_assert!(log.entries.windows(2).all(|pair| pair[0].at <= pair[1].at));
            }
            for (window, after, currency) in probes {
                let window = window.min(keep);
                let now = latest + after;
                let currency = currencies.get(usize::from(currency)).copied();
                let inside = all.iter().filter(|(t, _, _)| *t > now - window);
                let payments = inside.clone().count() as u64;
                let minor_units: i128 = inside
                    .filter(|(_, c, _)| Some(*c) == currency)
                    .map(|(_, _, m)| i128::from(*m))
                    .sum();
                let totals = log.window(at(now), window, currency);
                prop_assert!(totals.payments >= payments);
                prop_assert!(totals.minor_units >= minor_units);
                if !overflowed {
                    prop_assert_eq!(totals, WindowTotals { payments, minor_units });
                }
            }
            let restored = VelocityLog::from_entries(log.entries()).unwrap();
            prop_assert_eq!(restored, log);
        }
    }
}
