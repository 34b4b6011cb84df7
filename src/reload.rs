//! Configuration files that take effect without a restart (the approval
//! rules, the access list, the webhook endpoints): parsed and validated at start (a bad file stops
//! the start with every problem listed), then checked for changes and
//! reloaded. A changed file that does not validate is refused with its
//! problems logged; what was in force stays in force.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::shutdown::Shutdown;

/// A document that can be loaded from such a file.
pub trait Document: Sized + Send + Sync + 'static {
    /// What the file is, in messages: "rules file", "access list".
    const KIND: &'static str;
    /// Bytes the file may have.
    const BYTES_MAX: usize;
    /// Parses and validates; `Err` lists every problem.
    fn parse(text: &str) -> Result<Self, Vec<String>>;
    /// A short summary for the log line of a (re)load, e.g. "12 rules".
    fn summary(&self) -> String;
}

/// Why a file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {kind} {path}: {reason}")]
    Read {
        kind: &'static str,
        path: String,
        reason: String,
    },
    #[error("{kind} {path} is larger than {max} bytes")]
    TooLarge {
        kind: &'static str,
        path: String,
        max: usize,
    },
    #[error("{kind} {path} is invalid:\n  {}", problems.join("\n  "))]
    Invalid {
        kind: &'static str,
        path: String,
        problems: Vec<String>,
    },
}

/// Reads and validates a file; returns the document and its text.
pub fn load<T: Document>(path: &Path) -> Result<(T, String), FileError> {
    let shown = path.display().to_string();
    let unreadable = |error: std::io::Error| FileError::Read {
        kind: T::KIND,
        path: shown.clone(),
        reason: error.to_string(),
    };
    let size = std::fs::metadata(path).map_err(unreadable)?.len();
    if size > T::BYTES_MAX as u64 {
        return Err(too_large::<T>(shown));
    }
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    let document = parse::<T>(&text, &shown)?;
    Ok((document, text))
}

fn too_large<T: Document>(path: String) -> FileError {
    FileError::TooLarge {
        kind: T::KIND,
        path,
        max: T::BYTES_MAX,
    }
}

fn parse<T: Document>(text: &str, path: &str) -> Result<T, FileError> {
    if text.len() > T::BYTES_MAX {
        return Err(too_large::<T>(path.to_owned()));
    }
    T::parse(text).map_err(|problems| FileError::Invalid {
        kind: T::KIND,
        path: path.to_owned(),
        problems,
    })
}

/// The document in force, swapped atomically on reload.
pub struct InForce<T> {
    path: Option<PathBuf>,
    current: RwLock<Arc<T>>,
    /// The text the document in force was parsed from (to notice changes).
    loaded_text: Mutex<Option<String>>,
}

impl<T: Document> InForce<T> {
    /// A document that never changes (no file; tests, benchmarks).
    pub fn fixed(document: T) -> InForce<T> {
        InForce {
            path: None,
            current: RwLock::new(Arc::new(document)),
            loaded_text: Mutex::new(None),
        }
    }

    /// Loads `path`; fails on any problem (start-up must not run with a
    /// document other than the one the operator wrote).
    pub fn from_file(path: PathBuf) -> Result<InForce<T>, FileError> {
        let (document, text) = load::<T>(&path)?;
        tracing::info!(path = %path.display(), summary = %document.summary(), "{} loaded", T::KIND);
        Ok(InForce {
            path: Some(path),
            current: RwLock::new(Arc::new(document)),
            loaded_text: Mutex::new(Some(text)),
        })
    }

    /// Whether the document comes from a file (and may change).
    pub fn has_file(&self) -> bool {
        self.path.is_some()
    }

    pub fn current(&self) -> Arc<T> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(|poison| poison.into_inner()),
        )
    }

    /// Reloads the file if its content changed. `Ok(true)`: the new
    /// document is in force; `Err`: it was refused, the old one stays.
    pub fn reload_if_changed(&self) -> Result<bool, FileError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let shown = path.display().to_string();
        let mut loaded = self
            .loaded_text
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let text = std::fs::read_to_string(path).map_err(|error| FileError::Read {
            kind: T::KIND,
            path: shown.clone(),
            reason: error.to_string(),
        })?;
        if loaded.as_deref() == Some(text.as_str()) {
            return Ok(false);
        }
        // Remember a refused text too: it is reported once, not every tick.
        *loaded = Some(text.clone());
        let document = parse::<T>(&text, &shown)?;
        tracing::info!(path = %shown, summary = %document.summary(), "{} reloaded", T::KIND);
        *self
            .current
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = Arc::new(document);
        Ok(true)
    }

    /// Checks the file every `every` until `shutdown` fires (at once if
    /// the document came from no file).
    pub async fn watch_until(self: Arc<Self>, every: Duration, shutdown: Shutdown) {
        if self.path.is_none() {
            return;
        }
        let mut ticks = tokio::time::interval(every);
        loop {
            tokio::select! {
                biased;
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
            tracing::error!(%error, "{} not reloaded; the previous one stays in force", T::KIND);
        }
    }
}
