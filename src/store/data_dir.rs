//! The embedded store's data directory is one process's: a second server
//! on it would run a second watchdog, simulator and set of dispatchers
//! (conditional writes keep the money right, but re-drives and webhook
//! deliveries would double). `payvisor serve` takes an exclusive lock on
//! `payvisor.lock` in it for as long as it runs, and writes its pid there
//! so that the next one can say who holds it. The lock is the operating
//! system's (`flock`): it goes with the process, `kill -9` included, so a
//! stale file never blocks a restart.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Held while the server runs; the lock is released when it is dropped
/// (or the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Why the data directory could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "data directory {dir} is in use by another payvisor process{holder}; \
         stop it first, or give this one another --data-dir"
    )]
    Held { dir: PathBuf, holder: String },
    #[error(
        "data directory {dir} cannot be written ({why}): payvisor needs to write it; \
         mount it read-write or give this user write access"
    )]
    ReadOnly { dir: PathBuf, why: &'static str },
    #[error("cannot lock data directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DataDirLock {
    /// Takes `data_dir` (created if missing) for this process, or says
    /// which process holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LockError> {
        let io = |source| LockError::Io {
            dir: data_dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(data_dir.join("payvisor.lock"))
            .map_err(|error| {
                let why = match error.kind() {
                    std::io::ErrorKind::ReadOnlyFilesystem => "a read-only mount",
                    std::io::ErrorKind::PermissionDenied => "this user may not write there",
                    _ => return io(error),
                };
                LockError::ReadOnly {
                    dir: data_dir.to_path_buf(),
                    why,
                }
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::Held {
                    dir: data_dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {holder})")
                    },
                });
            }
            Err(std::fs::TryLockError::Error(error)) => return Err(io(error)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(DataDirLock { _file: file })
    }
}

/// The data directory's record of the store it holds (either embedded
/// store): a directory that had a store and lost it refuses to open
/// instead of starting a new, empty store in its place.
pub const IDENTITY_FILE: &str = "payvisor.id";

/// The identity recorded in `data_dir`, if any. An empty file (a crash
/// while an older build wrote it) is no record.
pub fn read_identity(data_dir: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(data_dir.join(IDENTITY_FILE)) {
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Records `store_id` in `data_dir`, crash-safely: a whole new file is
/// written and synced beside the old one, then renamed over it, and the
/// rename synced; a crash leaves the old record or the new one.
pub fn write_identity(data_dir: &Path, store_id: &str) -> std::io::Result<()> {
    let staged = data_dir.join(format!("{IDENTITY_FILE}.new"));
    let mut file = File::create(&staged)?;
    writeln!(file, "{store_id}")?;
    file.sync_all()?;
    std::fs::rename(&staged, data_dir.join(IDENTITY_FILE))?;
    File::open(data_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_is_taken_once_and_free_again_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let held = DataDirLock::acquire(dir.path()).unwrap();
        let refused = DataDirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            refused.contains(&format!("(pid {})", std::process::id())),
            "{refused}"
        );
        assert!(refused.contains("--data-dir"), "{refused}");
        drop(held);
        DataDirLock::acquire(dir.path()).expect("free once dropped");
    }
}
