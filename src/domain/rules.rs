//! TEMPORARY STUB: replaced by the real rule engine.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{AccountId, Money, Timestamp};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Approve,
    Review,
    Decline,
}

#[derive(Clone, Debug)]
pub struct RuleSet {
    version: String,
}

#[derive(Debug, thiserror::Error)]
#[error("bad rules")]
pub struct RulesError {
    pub problems: Vec<String>,
}

impl RuleSet {
    pub fn parse(_text: &str) -> Result<RuleSet, RulesError> {
        Ok(RuleSet::approve_all())
    }
    pub fn approve_all() -> RuleSet {
        RuleSet {
            version: "none".into(),
        }
    }
    pub fn version(&self) -> &str {
        &self.version
    }
    pub fn len(&self) -> usize {
        0
    }
    pub fn keep_millis(&self) -> i64 {
        0
    }
    pub fn evaluate(&self, _c: &Candidate<'_>, _log: &VelocityLog, _now: Timestamp) -> Evaluation {
        Evaluation {
            action: Action::Approve,
            fired: Vec::new(),
            rules_version: self.version.clone(),
        }
    }
}

pub struct Candidate<'a> {
    pub account: &'a AccountId,
    pub amount: Money,
    pub payer_id: Option<&'a str>,
    pub payer_country: Option<&'a str>,
    pub metadata: &'a BTreeMap<String, String>,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct FiredRule {
    pub rule: String,
    pub action: Action,
    pub detail: String,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Evaluation {
    pub action: Action,
    pub fired: Vec<FiredRule>,
    pub rules_version: String,
}

#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct VelocityLog {}

impl VelocityLog {
    pub fn record(&mut self, _at: Timestamp, _amount: Money, _keep_millis: i64) {}
}
