//! The embedded store: SQLite in WAL mode with `synchronous=FULL`, so a
//! commit is on disk before it is acknowledged.
//!
//! **Group commit.** All writes go through one writer thread. It takes every
//! write waiting in its queue (up to [`limits::GROUP_COMMIT_TRANSACTIONS_MAX`]),
//! checks each write's conditions and applies it (a write whose condition
//! fails applies nothing), and commits them together: one fsync for the
//! whole group.
//! Durable throughput is therefore not capped at one fsync per write.
//!
//! Reads use a small pool of separate connections; WAL lets them run beside
//! the writer and see every committed write.
//!
//! **Damage is detected, not served.** Every row carries a CRC-32 of its
//! key, version, body and index key, written with it and checked on every
//! read: a changed byte is reported as corruption (`StoreError::Corrupt`),
//! never decoded. SQLite's own corruption errors are reported the same
//! way. The database records its identity and format (`meta`), and the data
//! directory keeps the identity in `payvisor.id`: a directory that had a
//! store and lost its database (deleted, or emptied) refuses to open
//! instead of starting a new, empty store in its place. `payvisor store
//! check` runs SQLite's integrity check and every row's checksum.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::mpsc;

use super::group_commit::{run_writer, submit, WriteRequest};
use super::{
    page_of, validate_write, BoxFuture, Condition, IndexKey, IndexQuery, Item, Key, Page, Query,
    Store, StoreError, WriteOp,
};
use crate::limits;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS items (
    pk      TEXT    NOT NULL,
    sk      TEXT    NOT NULL,
    version INTEGER NOT NULL,
    body    BLOB    NOT NULL,
    ipk     TEXT,
    isk     TEXT,
    crc     INTEGER,
    PRIMARY KEY (pk, sk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS items_by_index ON items (ipk, isk) WHERE ipk IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
";

/// The layout of the database this build writes (`meta.format`): 1 was
/// the items table without checksums, 2 added them (a database of format 1
/// is upgraded in place; its rows are checked once rewritten), 3 added the
/// expiry of items (`exp`, Unix seconds, with an index of the expiring
/// ones for the sweep).
const FORMAT: u32 = 3;
use super::data_dir::IDENTITY_FILE;
/// The columns every read selects, in `item_from_row`'s order.
const COLUMNS: &str = "pk, sk, version, body, ipk, isk, crc, exp";

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    /// Queue to the writer thread; bounded for back-pressure.
    writes: mpsc::Sender<WriteRequest>,
    /// Read connections, used from blocking tasks, a free one first.
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: AtomicUsize,
    /// One permit per read connection, taken before a blocking thread is:
    /// a burst of reads (a recovery sweep) waits here as cheap tasks rather
    /// than as hundreds of threads each blocked on a connection's lock.
    read_permits: Arc<tokio::sync::Semaphore>,
    /// Group commits so far (each is one fsync): writes ÷ commits is the
    /// group-commit factor.
    commits: Arc<AtomicU64>,
    /// The writer and checkpointer threads, joined by [`SqliteStore::close`].
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// A failed SQLite call as the store's error: damage is corruption (not
/// worth a retry), anything else unavailability.
fn unavailable(error: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    match &error {
        rusqlite::Error::SqliteFailure(failure, _)
            if matches!(failure.code, DatabaseCorrupt | NotADatabase) =>
        {
            StoreError::Corrupt(format!("the database file is damaged: {error}"))
        }
        rusqlite::Error::FromSqlConversionFailure(_, _, cause) => {
            StoreError::Corrupt(cause.to_string())
        }
        _ => StoreError::Unavailable(error.to_string()),
    }
}

/// The checksum of a row: its key, version, body and index key, each
/// length-prefixed so that no two rows share an encoding.
fn checksum(item: &Item) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    let mut field = |bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(item.key.pk.as_bytes());
    field(item.key.sk.as_bytes());
    field(&item.version.to_le_bytes());
    field(&item.body);
    match &item.index {
        Some(index) => {
            field(b"1");
            field(index.pk.as_bytes());
            field(index.sk.as_bytes());
        }
        None => field(b"0"),
    }
    // Rows without an expiry checksum as they did before expiry existed.
    if let Some(expires_at) = item.expires_at {
        field(b"e");
        field(&expires_at.to_le_bytes());
    }
    hasher.finalize()
}

/// A row whose checksum does not match what it holds.
#[derive(Debug)]
struct Damaged(String);

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Damaged {}

/// Opens a connection with a page cache of `cache_kib` (each connection
/// has its own; the operating system caches the file for all of them).
fn open_connection(path: &Path, cache_kib: usize) -> Result<Connection, StoreError> {
    let connection = Connection::open(path).map_err(unavailable)?;
    connection
        .execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             PRAGMA temp_store = MEMORY;
             PRAGMA cache_size = -{cache_kib};
             PRAGMA wal_autocheckpoint = 16384;
             PRAGMA foreign_keys = OFF;"
        ))
        .map_err(unavailable)?;
    Ok(connection)
}

/// Records the store's identity and format in a new database (and in the
/// data directory), upgrades a database of an older format, and refuses a
/// database that is not the one the directory held, or of a newer format.
fn establish_identity(connection: &Connection, data_dir: &Path) -> Result<(), StoreError> {
    let meta = |key: &str| -> Result<Option<String>, StoreError> {
        connection
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .map_err(unavailable)
    };
    let identity_file = data_dir.join(IDENTITY_FILE);
    let remembered = super::data_dir::read_identity(data_dir).map_err(|error| {
        StoreError::Unavailable(format!("{}: {error}", identity_file.display()))
    })?;
    let recorded = meta("store_id")?;
    let store_id = match (recorded, remembered.clone()) {
        (Some(recorded), Some(remembered)) if recorded != remembered => {
            return Err(StoreError::Corrupt(format!(
                "{} holds store {recorded}, but this data directory held store {remembered} \
                 ({}): the database was replaced; put the right one back",
                data_dir.join("payvisor.db").display(),
                identity_file.display()
            )))
        }
        (None, Some(remembered)) => {
            return Err(StoreError::Corrupt(format!(
                "this data directory held store {remembered} ({}), but {} is missing or \
                 empty: restore it from a backup. payvisor will not start a new, empty store \
                 in its place (every payment and idempotency key would be gone)",
                identity_file.display(),
                data_dir.join("payvisor.db").display()
            )))
        }
        (Some(recorded), _) => recorded,
        (None, None) => {
            let mut bytes = [0u8; 16];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                .map_err(|_| StoreError::Unavailable("no randomness for a store id".into()))?;
            let store_id: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
            connection
                .execute(
                    "INSERT INTO meta (key, value) VALUES ('store_id', ?1)",
                    [&store_id],
                )
                .map_err(unavailable)?;
            store_id
        }
    };
    match meta("format")?.map(|format| format.parse::<u32>()) {
        Some(Ok(format)) if format > FORMAT => {
            return Err(StoreError::Corrupt(format!(
                "the store is of format {format}, written by a newer payvisor; this one reads up to {FORMAT}"
            )))
        }
        Some(Ok(format)) if format == FORMAT => {}
        Some(Err(_)) => return Err(StoreError::Corrupt("the store's format is unreadable".into())),
        _ => {
            // An older format (or new): add the columns where missing.
            for column in ["crc", "exp"] {
                let present = connection
                    .prepare("SELECT 1 FROM pragma_table_info('items') WHERE name = ?1")
                    .and_then(|mut statement| statement.exists([column]))
                    .map_err(unavailable)?;
                if !present {
                    connection
                        .execute_batch(&format!("ALTER TABLE items ADD COLUMN {column} INTEGER"))
                        .map_err(unavailable)?;
                }
            }
            connection
                .execute_batch(
                    "CREATE INDEX IF NOT EXISTS items_expiring ON items (exp) WHERE exp IS NOT NULL",
                )
                .map_err(unavailable)?;
            connection
                .execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('format', ?1)",
                    [FORMAT.to_string()],
                )
                .map_err(unavailable)?;
        }
    }
    if remembered.as_deref() != Some(store_id.as_str()) {
        super::data_dir::write_identity(data_dir, &store_id).map_err(|error| {
            StoreError::Unavailable(format!("{}: {error}", identity_file.display()))
        })?;
    }
    Ok(())
}

/// What `payvisor store check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub rows: u64,
    /// Rows written before checksums (nothing to verify them by).
    pub unchecked: u64,
    pub problems: Vec<String>,
}

impl SqliteStore {
    /// SQLite's quick check (page structure), as at every start: a
    /// damaged file is refused before anything is served from it.
    pub fn quick_check(&self) -> Result<(), StoreError> {
        let readers = Arc::clone(&self.readers);
        let connection = readers[0]
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let answer: String = connection
            .query_row("PRAGMA quick_check(1)", [], |row| row.get(0))
            .map_err(unavailable)?;
        if answer != "ok" {
            return Err(StoreError::Corrupt(format!(
                "the database file is damaged (SQLite quick_check: {answer}); run `payvisor store check`"
            )));
        }
        Ok(())
    }

    /// SQLite's full integrity check and every row's checksum.
    pub fn check(&self) -> Result<CheckReport, StoreError> {
        let readers = Arc::clone(&self.readers);
        let connection = readers[0]
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut report = CheckReport::default();
        let mut statement = connection
            .prepare("PRAGMA integrity_check(100)")
            .map_err(unavailable)?;
        let answers = statement
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(unavailable)?;
        for answer in answers {
            let answer = answer.map_err(unavailable)?;
            if answer != "ok" {
                report.problems.push(format!("SQLite: {answer}"));
            }
        }
        let mut statement = connection
            .prepare(&format!("SELECT {COLUMNS} FROM items"))
            .map_err(unavailable)?;
        let mut rows = statement.query([]).map_err(unavailable)?;
        loop {
            let row = match rows.next() {
                Ok(Some(row)) => row,
                Ok(None) => break,
                Err(error) => {
                    report.problems.push(unavailable(error).to_string());
                    break;
                }
            };
            report.rows += 1;
            if row.get::<_, Option<i64>>(6).ok().flatten().is_none() {
                report.unchecked += 1;
            }
            if let Err(error) = item_from_row(row) {
                report.problems.push(unavailable(error).to_string());
            }
        }
        Ok(report)
    }

    /// Up to `limit` items in key order, after `after` (every item, page by
    /// page, each checksum verified): for copying the store elsewhere.
    pub fn scan(&self, after: Option<&Key>, limit: usize) -> Result<Vec<Item>, StoreError> {
        let connection = self.readers[0]
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let (pk, sk) = after.map_or(("", ""), |key| (key.pk.as_str(), key.sk.as_str()));
        let strict = if after.is_some() { ">" } else { ">=" };
        let mut statement = connection
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM items WHERE (pk, sk) {strict} (?1, ?2) ORDER BY pk, sk LIMIT ?3"
            ))
            .map_err(unavailable)?;
        let rows = statement
            .query_map(params![pk, sk, limit as i64], item_from_row)
            .map_err(unavailable)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
    }

    /// The store's identity (`meta.store_id`).
    pub fn store_id(&self) -> Result<String, StoreError> {
        let connection = self.readers[0]
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        connection
            .query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |row| {
                row.get(0)
            })
            .map_err(unavailable)
    }

    /// Opens (creating if needed) the database `payvisor.db` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|error| StoreError::Unavailable(format!("{}: {error}", data_dir.display())))?;
        if super::lsm::LsmStore::exists_in(data_dir) {
            return Err(StoreError::Unavailable(format!(
                "{} holds the log-structured store ({}): run with --store lsm",
                data_dir.display(),
                data_dir.join(super::lsm::LSM_DIR).display()
            )));
        }
        let path = data_dir.join("payvisor.db");
        let writer = open_connection(&path, limits::STORE_WRITER_CACHE_KIB)?;
        if writer.is_readonly(rusqlite::MAIN_DB).map_err(unavailable)? {
            return Err(StoreError::Unavailable(format!(
                "{} can only be read (a read-only file or mount): payvisor needs to write it",
                path.display()
            )));
        }
        writer.execute_batch(SCHEMA).map_err(unavailable)?;
        establish_identity(&writer, data_dir)?;
        let readers = (0..limits::STORE_READERS_MAX)
            .map(|_| open_connection(&path, limits::STORE_READER_CACHE_KIB).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        let (writes, queue) = mpsc::channel(limits::STORE_WRITE_QUEUE_MAX);
        let commits = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&commits);
        let writer = std::thread::Builder::new()
            .name("payvisor-sqlite-writer".into())
            .spawn(move || {
                let mut writer = writer;
                run_writer(queue, &counter, |group| commit_group(&mut writer, group))
            })
            .map_err(|error| StoreError::Unavailable(error.to_string()))?;
        let checkpointer = open_connection(&path, limits::STORE_READER_CACHE_KIB)?;
        let store_alive = writes.downgrade();
        let checkpointer = std::thread::Builder::new()
            .name("payvisor-sqlite-checkpointer".into())
            .spawn(move || run_checkpointer(checkpointer, store_alive))
            .map_err(|error| StoreError::Unavailable(error.to_string()))?;
        Ok(SqliteStore {
            writes,
            read_permits: Arc::new(tokio::sync::Semaphore::new(readers.len())),
            readers: Arc::new(readers),
            next_reader: AtomicUsize::new(0),
            commits,
            threads: vec![writer, checkpointer],
        })
    }

    /// Closes the store: stops the writer and the checkpointer (each
    /// finishes what it is doing), folds the write-ahead log into the
    /// database and truncates it. When this returns, `payvisor.db` alone
    /// holds the store and nothing of this process writes to it.
    pub fn close(self) -> Result<(), StoreError> {
        let SqliteStore {
            writes,
            readers,
            threads,
            ..
        } = self;
        drop(writes);
        for thread in threads {
            let _ = thread.join();
        }
        let connection = readers[0]
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let busy: i64 = connection
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
            .map_err(unavailable)?;
        if busy != 0 {
            return Err(StoreError::Unavailable(
                "the write-ahead log is in use by another process; not truncated".into(),
            ));
        }
        Ok(())
    }

    /// Group commits (fsyncs) since the store was opened.
    pub fn commit_count(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        let readers = Arc::clone(&self.readers);
        let first = self.next_reader.fetch_add(1, Ordering::Relaxed) % readers.len();
        let permits = Arc::clone(&self.read_permits);
        Box::pin(async move {
            let permit = permits
                .acquire_owned()
                .await
                .map_err(|error| StoreError::Unavailable(error.to_string()))?;
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                // With a permit, at most readers.len() - 1 others hold a
                // connection: one of them is free (the last resort only
                // waits behind a reader outside `read`, such as `check`).
                let connection = (0..readers.len())
                    .map(|offset| &readers[(first + offset) % readers.len()])
                    .find_map(|reader| match reader.try_lock() {
                        Ok(connection) => Some(connection),
                        Err(std::sync::TryLockError::Poisoned(poison)) => Some(poison.into_inner()),
                        Err(std::sync::TryLockError::WouldBlock) => None,
                    })
                    .unwrap_or_else(|| {
                        readers[first]
                            .lock()
                            .unwrap_or_else(|poison| poison.into_inner())
                    });
                work(&connection)
            })
            .await
            .map_err(|error| StoreError::Unavailable(error.to_string()))?
        })
    }
}

/// Copies committed WAL frames into the database file, off the writer's
/// thread: with the writer checkpointing inline, every few seconds one
/// commit (and every write waiting behind it) stalled for a whole
/// checkpoint, the largest source of tail latency. Passive checkpoints never
/// block the writer; the writer's own auto-checkpoint stays as a backstop.
/// Stops when the store is dropped (its write queue closes).
fn run_checkpointer(connection: Connection, store_alive: mpsc::WeakSender<WriteRequest>) {
    while store_alive.upgrade().is_some() {
        std::thread::sleep(limits::STORE_CHECKPOINT_EVERY);
        if let Err(error) = connection.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
            tracing::warn!(%error, "background checkpoint failed; the writer's backstop remains");
        }
    }
}

fn commit_group(
    connection: &mut Connection,
    group: &[WriteRequest],
) -> Vec<Result<(), StoreError>> {
    let outcome = (|| -> Result<Vec<Result<(), StoreError>>, rusqlite::Error> {
        connection.execute_batch("BEGIN IMMEDIATE")?;
        let mut results = Vec::with_capacity(group.len());
        for request in group {
            results.push(apply_one(connection, &request.ops)?);
        }
        connection.execute_batch("COMMIT")?;
        Ok(results)
    })();
    match outcome {
        Ok(results) => results,
        Err(error) => {
            let _ = connection.execute_batch("ROLLBACK");
            let error = unavailable(error);
            group.iter().map(|_| Err(error.clone())).collect()
        }
    }
}

/// Applies one atomic write inside the open group transaction. The outer
/// `Result` is an SQLite failure (fails the whole group); the inner one is
/// this write's own outcome.
///
/// Every condition is checked before any action is applied, so a failed
/// condition has written nothing and needs no rollback. This is sound
/// because this thread is the only writer. (Savepoints would do the same at
/// the cost of journalling every page a second time: they were 12% of the
/// writer's time when measured.)
fn apply_one(
    connection: &Connection,
    ops: &[WriteOp],
) -> Result<Result<(), StoreError>, rusqlite::Error> {
    if let Err(error) = validate_write(ops) {
        return Ok(Err(error));
    }
    for (index, op) in ops.iter().enumerate() {
        let (key, condition) = match op {
            WriteOp::Put { item, condition } => (&item.key, condition),
            WriteOp::Delete { key, condition } | WriteOp::Check { key, condition } => {
                (key, condition)
            }
        };
        let current: Option<i64> = connection
            .prepare_cached("SELECT version FROM items WHERE pk = ?1 AND sk = ?2")?
            .query_row(params![key.pk, key.sk], |row| row.get(0))
            .optional()?;
        let holds = match condition {
            Condition::NotExists => current.is_none(),
            Condition::VersionIs(expected) => current == Some(*expected as i64),
        };
        if !holds {
            return Ok(Err(StoreError::ConditionFailed {
                index,
                key: key.clone(),
            }));
        }
    }
    for op in ops {
        match op {
            WriteOp::Put { item, .. } => {
                let (ipk, isk) = match &item.index {
                    Some(IndexKey { pk, sk }) => (Some(pk.as_str()), Some(sk.as_str())),
                    None => (None, None),
                };
                connection
                    .prepare_cached(
                        "INSERT OR REPLACE INTO items (pk, sk, version, body, ipk, isk, crc, exp)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )?
                    .execute(params![
                        item.key.pk,
                        item.key.sk,
                        item.version as i64,
                        item.body,
                        ipk,
                        isk,
                        i64::from(checksum(item)),
                        item.expires_at
                    ])?;
            }
            WriteOp::Delete { key, .. } => {
                connection
                    .prepare_cached("DELETE FROM items WHERE pk = ?1 AND sk = ?2")?
                    .execute(params![key.pk, key.sk])?;
            }
            WriteOp::Check { .. } => {}
        }
    }
    Ok(Ok(()))
}

/// A row of [`COLUMNS`] as an item, its checksum verified (a row written
/// before checksums has none to verify).
fn item_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Item> {
    let ipk: Option<String> = row.get(4)?;
    let isk: Option<String> = row.get(5)?;
    let crc: Option<i64> = row.get(6)?;
    let expires_at: Option<i64> = row.get(7)?;
    let item = Item {
        key: Key {
            pk: row.get(0)?,
            sk: row.get(1)?,
        },
        version: row.get::<_, i64>(2)? as u64,
        body: row.get(3)?,
        index: ipk.zip(isk).map(|(pk, sk)| IndexKey { pk, sk }),
        expires_at,
    };
    match crc {
        Some(crc) if crc != i64::from(checksum(&item)) => {
            Err(rusqlite::Error::FromSqlConversionFailure(
                6,
                rusqlite::types::Type::Integer,
                Box::new(Damaged(format!(
                    "{:?}: the stored record does not match its checksum (damaged on disk)",
                    item.key
                ))),
            ))
        }
        _ => Ok(item),
    }
}

/// The smallest string greater than every string starting with `prefix`
/// (for a half-open range scan), or `None` when there is none.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).ok();
        }
    }
    None
}

impl Store for SqliteStore {
    /// Reads the expired items (by the `exp` index), then deletes them
    /// through the writer like any write, each on the version read: an
    /// item rewritten meanwhile is left alone.
    fn expire(
        &self,
        now_unix_seconds: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            // Whole rows, their checksums verified, each checked expired by
            // its own verified expiry: a damaged index or cell never
            // deletes a row.
            let expired: Vec<(Key, u64)> = self
                .read(move |connection| {
                    let mut statement = connection
                        .prepare_cached(&format!(
                            "SELECT {COLUMNS} FROM items
                             WHERE exp IS NOT NULL AND exp < ?1 ORDER BY exp LIMIT ?2"
                        ))
                        .map_err(unavailable)?;
                    let rows = statement
                        .query_map(params![now_unix_seconds, limit as i64], item_from_row)
                        .map_err(unavailable)?;
                    let items = rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)?;
                    Ok(items
                        .into_iter()
                        .filter(|item| item.expires_at.is_some_and(|at| at < now_unix_seconds))
                        .map(|item| (item.key, item.version))
                        .collect())
                })
                .await?;
            super::delete_expired(self, &expired).await
        })
    }

    fn settle(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        // The write-ahead log only shrinks on a TRUNCATE checkpoint; left
        // as it is, a clean stop leaves a log of tens of MB beside the
        // database.
        self.read(|connection| {
            let (busy, _, _): (i64, i64, i64) = connection
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .map_err(unavailable)?;
            if busy != 0 {
                return Err(StoreError::Unavailable(
                    "the write-ahead log is in use; not truncated".into(),
                ));
            }
            Ok(())
        })
    }

    fn transact(&self, ops: Vec<WriteOp>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(submit(&self.writes, ops))
    }

    fn get(&self, key: Key) -> BoxFuture<'_, Result<Option<Item>, StoreError>> {
        self.read(move |connection| {
            connection
                .prepare_cached(
                    "SELECT pk, sk, version, body, ipk, isk, crc, exp FROM items WHERE pk = ?1 AND sk = ?2",
                )
                .and_then(|mut statement| {
                    statement
                        .query_row(params![key.pk, key.sk], item_from_row)
                        .optional()
                })
                .map_err(unavailable)
        })
    }

    fn query(&self, query: Query) -> BoxFuture<'_, Result<Page, StoreError>> {
        self.read(move |connection| {
            let lower = match &query.start_after {
                Some(after) if after.as_str() >= query.sk_prefix.as_str() => after.clone(),
                _ => query.sk_prefix.clone(),
            };
            let strict = query
                .start_after
                .as_ref()
                .is_some_and(|after| *after >= query.sk_prefix);
            let upper = prefix_end(&query.sk_prefix).unwrap_or_else(|| "\u{10ffff}".into());
            let sql = if strict {
                "SELECT pk, sk, version, body, ipk, isk, crc, exp FROM items
                 WHERE pk = ?1 AND sk > ?2 AND sk < ?3 ORDER BY sk LIMIT ?4"
            } else {
                "SELECT pk, sk, version, body, ipk, isk, crc, exp FROM items
                 WHERE pk = ?1 AND sk >= ?2 AND sk < ?3 ORDER BY sk LIMIT ?4"
            };
            let limit = query.limit.max(1);
            let items = connection
                .prepare_cached(sql)
                .and_then(|mut statement| {
                    statement
                        .query_map(
                            params![query.pk, lower, upper, (limit + 1) as i64],
                            item_from_row,
                        )?
                        .collect::<rusqlite::Result<Vec<Item>>>()
                })
                .map_err(unavailable)?;
            Ok(page_of(items, limit, |item| item.key.sk.clone()))
        })
    }

    fn query_index(&self, query: IndexQuery) -> BoxFuture<'_, Result<Page, StoreError>> {
        self.read(move |connection| {
            let limit = query.limit.max(1);
            let after = query.start_after.clone().unwrap_or_default();
            // The index (ipk, isk) makes both bounds a range seek.
            let sql = match (query.start_after.is_some(), query.end_at.is_some()) {
                (true, false) => {
                    "SELECT pk, sk, version, body, ipk, isk, crc, exp FROM items
                     WHERE ipk = ?1 AND isk > ?2 ORDER BY isk LIMIT ?3"
                }
                (false, false) => {
                    "SELECT pk, sk, version, body, ipk, isk, crc, exp FROM items
                     WHERE ipk = ?1 AND isk >= ?2 ORDER BY isk LIMIT ?3"
                }
                (true, true) => {
                    "SELECT pk, sk, version, body, ipk, isk, crc, exp FROM items
                     WHERE ipk = ?1 AND isk > ?2 AND isk <= ?4 ORDER BY isk LIMIT ?3"
                }
                (false, true) => {
                    "SELECT pk, sk, version, body, ipk, isk, crc, exp FROM items
                     WHERE ipk = ?1 AND isk >= ?2 AND isk <= ?4 ORDER BY isk LIMIT ?3"
                }
            };
            let end = query.end_at.clone().unwrap_or_default();
            let rows = (limit + 1) as i64;
            let mut bounds: Vec<&dyn rusqlite::ToSql> = vec![&query.index_pk, &after, &rows];
            if query.end_at.is_some() {
                bounds.push(&end);
            }
            let items = connection
                .prepare_cached(sql)
                .and_then(|mut statement| {
                    statement
                        .query_map(&bounds[..], item_from_row)?
                        .collect::<rusqlite::Result<Vec<Item>>>()
                })
                .map_err(unavailable)?;
            Ok(page_of(items, limit, |item| {
                item.index
                    .as_ref()
                    .map(|index| index.sk.clone())
                    .unwrap_or_default()
            }))
        })
    }
}
