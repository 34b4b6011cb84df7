//! `payvisor store migrate`: copies a data directory's SQLite store into a
//! log-structured one (`--store lsm`), with the server stopped.
//!
//! **Crash-safe by renames.** The copy is built in `migrating/` inside the
//! data directory, checked item by item against the source, and only then
//! moved to `lsm/` (one rename: the point where the migration happened).
//! The SQLite files are then renamed to `*.migrated`, `payvisor.db` last,
//! and kept until the operator deletes them. Run again after a crash, the
//! command starts the copy over (no `lsm/` yet) or finishes the renames
//! (`lsm/` there); neither store opens while the other's files are there.
//!
//! The copy keeps every item as it was (version, body, index key, expiry)
//! and the store's identity, so the data directory's `payvisor.id` still
//! names it. A source with damaged rows is refused before anything is
//! copied.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;

use super::lsm::{LsmStore, LSM_DIR};
use super::sqlite::SqliteStore;
use super::{Condition, Item, Key, Store, StoreError, WriteOp};
use crate::limits;

/// Where the copy is built.
const STAGING_DIR: &str = "migrating";
/// The SQLite store's files, in the order they step aside: the database
/// last, so that while it is there a re-run knows the renames are not done.
const SQLITE_FILES: [&str; 3] = ["payvisor.db-wal", "payvisor.db-shm", "payvisor.db"];
const SQLITE_DATABASE: &str = "payvisor.db";
const MIGRATED_SUFFIX: &str = ".migrated";

/// What a migration did.
#[derive(Debug, PartialEq, Eq)]
pub struct Migrated {
    /// Items copied by this run (0 when it only finished an earlier one).
    pub items: u64,
    /// Where the SQLite database is kept.
    pub kept_as: PathBuf,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |error| StoreError::Unavailable(format!("{}: {error}", path.display()))
}

/// Copies `data_dir`'s SQLite store into a log-structured store in the
/// same directory. The caller holds the data directory's lock.
pub async fn sqlite_to_lsm(data_dir: &Path) -> Result<Migrated, StoreError> {
    let sqlite = data_dir.join(SQLITE_DATABASE);
    let lsm = data_dir.join(LSM_DIR);
    let staged = data_dir.join(STAGING_DIR);
    let kept_as = data_dir.join(format!("{SQLITE_DATABASE}{MIGRATED_SUFFIX}"));
    let mut items = 0;
    if !lsm.is_dir() {
        if !sqlite.is_file() {
            return Err(StoreError::Unavailable(format!(
                "no SQLite store in {} ({} is missing): check --data-dir",
                data_dir.display(),
                sqlite.display()
            )));
        }
        items = copy(data_dir).await?;
        std::fs::rename(staged.join(LSM_DIR), &lsm).map_err(io(&lsm))?;
        sync_dir(data_dir)?;
    } else if !staged.exists() && !SQLITE_FILES.iter().any(|name| data_dir.join(name).exists()) {
        return Err(StoreError::Unavailable(format!(
            "{} already holds the log-structured store ({}) and no SQLite store: nothing to migrate",
            data_dir.display(),
            lsm.display()
        )));
    }
    // `lsm/` is in place: what is left of the SQLite store steps aside.
    for name in SQLITE_FILES {
        let file = data_dir.join(name);
        if file.exists() {
            let kept = data_dir.join(format!("{name}{MIGRATED_SUFFIX}"));
            std::fs::rename(&file, &kept).map_err(io(&file))?;
        }
    }
    if staged.exists() {
        std::fs::remove_dir_all(&staged).map_err(io(&staged))?;
    }
    sync_dir(data_dir)?;
    Ok(Migrated { items, kept_as })
}

/// Builds the copy in `migrating/`, checks it against the source, closes
/// both, and says how many items it holds.
async fn copy(data_dir: &Path) -> Result<u64, StoreError> {
    let staged = data_dir.join(STAGING_DIR);
    if staged.exists() {
        // What an interrupted run left: never moved into place, so never used.
        std::fs::remove_dir_all(&staged).map_err(io(&staged))?;
    }
    let source = SqliteStore::open(data_dir)?;
    let damage = source.check()?;
    if !damage.problems.is_empty() {
        return Err(StoreError::Corrupt(format!(
            "the SQLite store is damaged ({}); nothing was copied: restore it from a backup",
            damage.problems.join("; ")
        )));
    }
    let store_id = source.store_id()?;
    let target = LsmStore::open_with_identity(&staged, Some(&store_id))?;
    let mut copied = 0u64;
    let mut after: Option<Key> = None;
    loop {
        let page = source.scan(after.as_ref(), limits::MIGRATE_PAGE_ITEMS)?;
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        copied += page.len() as u64;
        let writes = page.chunks(limits::TRANSACT_ITEMS_MAX).map(|chunk| {
            chunk
                .iter()
                .map(|item| WriteOp::Put {
                    item: item.clone(),
                    condition: Condition::NotExists,
                })
                .collect::<Vec<_>>()
        });
        // Many writes in flight: the writer folds them into group commits.
        let mut results = futures_util::stream::iter(writes)
            .map(|ops| target.transact(ops))
            .buffer_unordered(limits::MIGRATE_WRITES_IN_FLIGHT);
        while let Some(result) = results.next().await {
            result?;
        }
    }
    verify(&source, &target, copied).await?;
    drop(target);
    source.close()?;
    Ok(copied)
}

/// Every item of the source reads back the same from the copy, the copy
/// holds no other, and its index and expiry list agree with its items.
async fn verify(source: &SqliteStore, target: &LsmStore, copied: u64) -> Result<(), StoreError> {
    let differs = |why: String| {
        StoreError::Corrupt(format!(
            "the copy does not match the SQLite store ({why}); the SQLite store is left as it was"
        ))
    };
    let mut after: Option<Key> = None;
    loop {
        let page: Vec<Item> = source.scan(after.as_ref(), limits::MIGRATE_PAGE_ITEMS)?;
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        for item in page {
            if target.get(item.key.clone()).await?.as_ref() != Some(&item) {
                return Err(differs(format!("{:?} reads back otherwise", item.key)));
            }
        }
    }
    let report = target.check()?;
    if !report.problems.is_empty() || report.items != copied {
        return Err(differs(format!(
            "{copied} items copied, {} in the copy; {}",
            report.items,
            report.problems.join("; ")
        )));
    }
    Ok(())
}

/// Makes the renames in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io(dir))
}
