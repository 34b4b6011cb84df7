//! The approval rules in force on this node: parsed and validated from a
//! file at start (a bad file stops the start with every problem listed),
//! and reloaded without a restart when the file changes. A changed file
//! that does not validate is refused with its problems logged; the rules
//! in force stay as they were. Evaluation itself is pure
//! ([`crate::domain::rules`]) and reads only the account's own state.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::domain::rules::RuleSet;
use crate::limits;
use crate::shutdown::Shutdown;

/// Why a rules file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesFileError {
    #[error("cannot read rules file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("rules file {path} is larger than {max} bytes", max = limits::RULES_FILE_BYTES_MAX)]
    TooLarge { path: String },
    #[error("rules file {path} is invalid:\n  {}", problems.join("\n  "))]
    Invalid { path: String, problems: Vec<String> },
}

/// Reads and validates a rules file.
pub fn load_rules_file(path: &Path) -> Result<(RuleSet, String), RulesFileError> {
    let shown = path.display().to_string();
    let size = std::fs::metadata(path)
        .map_err(|error| RulesFileError::Read {
            path: shown.clone(),
            reason: error.to_string(),
        })?
        .len();
    if size > limits::RULES_FILE_BYTES_MAX as u64 {
        return Err(RulesFileError::TooLarge { path: shown });
    }
    let text = std::fs::read_to_string(path).map_err(|error| RulesFileError::Read {
        path: shown.clone(),
        reason: error.to_string(),
    })?;
    let rules = RuleSet::parse(&text).map_err(|error| RulesFileError::Invalid {
        path: shown,
        problems: error.problems,
    })?;
    Ok((rules, text))
}

/// The rule set actors evaluate, swapped atomically on reload.
pub struct RulesInForce {
    path: Option<PathBuf>,
    current: RwLock<Arc<RuleSet>>,
    /// The text the rules in force were parsed from (to notice changes).
    loaded_text: Mutex<Option<String>>,
}

impl RulesInForce {
    /// No file: every payment is approved.
    pub fn approve_all() -> RulesInForce {
        RulesInForce::fixed(RuleSet::approve_all())
    }

    /// Rules that never change (tests, benchmarks).
    pub fn fixed(rules: RuleSet) -> RulesInForce {
        RulesInForce {
            path: None,
            current: RwLock::new(Arc::new(rules)),
            loaded_text: Mutex::new(None),
        }
    }

    /// Loads `path`; fails on any problem (start-up must not run with rules
    /// other than the ones the operator wrote).
    pub fn from_file(path: PathBuf) -> Result<RulesInForce, RulesFileError> {
        let (rules, text) = load_rules_file(&path)?;
        tracing::info!(path = %path.display(), version = rules.version(), rules = rules.len(), "approval rules loaded");
        Ok(RulesInForce {
            path: Some(path),
            current: RwLock::new(Arc::new(rules)),
            loaded_text: Mutex::new(Some(text)),
        })
    }

    pub fn current(&self) -> Arc<RuleSet> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(|poison| poison.into_inner()),
        )
    }

    /// Reloads the file if its content changed. `Ok(true)`: new rules are in
    /// force; `Err`: the new content was refused, the old rules stay.
    pub fn reload_if_changed(&self) -> Result<bool, RulesFileError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let mut loaded = self
            .loaded_text
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let text = std::fs::read_to_string(path).map_err(|error| RulesFileError::Read {
            path: path.display().to_string(),
            reason: error.to_string(),
        })?;
        if loaded.as_deref() == Some(text.as_str()) {
            return Ok(false);
        }
        // Remember a refused text too: it is reported once, not every tick.
        *loaded = Some(text.clone());
        if text.len() > limits::RULES_FILE_BYTES_MAX {
            return Err(RulesFileError::TooLarge {
                path: path.display().to_string(),
            });
        }
        let rules = RuleSet::parse(&text).map_err(|error| RulesFileError::Invalid {
            path: path.display().to_string(),
            problems: error.problems,
        })?;
        tracing::info!(path = %path.display(), version = rules.version(), rules = rules.len(), "approval rules reloaded");
        *self
            .current
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = Arc::new(rules);
        Ok(true)
    }

    /// Checks the file every `every` until `shutdown` fires (at once if
    /// the rules came from no file).
    pub async fn watch_until(self: Arc<Self>, every: Duration, shutdown: Shutdown) {
        if self.path.is_none() {
            return;
        }
        let mut ticks = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = shutdown.signalled() => return,
                _ = ticks.tick() => {}
            }
            Arc::clone(&self).reload_logged().await;
        }
    }

    /// Reloads off the async threads (it reads a file); a refusal is logged.
    async fn reload_logged(self: Arc<Self>) {
        let reloaded = tokio::task::spawn_blocking(move || self.reload_if_changed()).await;
        if let Ok(Err(error)) = reloaded {
            tracing::error!(%error, "approval rules not reloaded; the previous rules stay in force");
        }
    }
}
