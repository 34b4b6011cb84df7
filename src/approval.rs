//! The approval rules in force on this node: a [`reload`](crate::reload)ed
//! file (a bad file stops the start with every problem listed; a bad
//! change is refused and the rules in force stay). Evaluation itself is
//! pure ([`crate::domain::rules`]) and reads only the account's own state.

use std::path::Path;

use crate::domain::rules::RuleSet;
use crate::limits;
use crate::reload::{self, Document, FileError, InForce};

/// The rule set actors evaluate, swapped atomically on reload.
pub type RulesInForce = InForce<RuleSet>;

impl Document for RuleSet {
    const KIND: &'static str = "rules file";
    const BYTES_MAX: usize = limits::RULES_FILE_BYTES_MAX;

    fn parse(text: &str) -> Result<RuleSet, Vec<String>> {
        RuleSet::parse(text).map_err(|error| error.problems)
    }

    fn summary(&self) -> String {
        format!("version {}, {} rules", self.version(), self.len())
    }
}

/// Reads and validates a rules file.
pub fn load_rules_file(path: &Path) -> Result<(RuleSet, String), FileError> {
    reload::load(path)
}

impl InForce<RuleSet> {
    /// No file: every payment is approved.
    pub fn approve_all() -> RulesInForce {
        InForce::fixed(RuleSet::approve_all())
    }
}
