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

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::{
    validate_write, BoxFuture, Condition, IndexKey, IndexQuery, Item, Key, Page, Query, Store,
    StoreError, WriteOp,
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
    PRIMARY KEY (pk, sk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS items_by_index ON items (ipk, isk) WHERE ipk IS NOT NULL;
";

struct WriteRequest {
    ops: Vec<WriteOp>,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    /// Queue to the writer thread; bounded for back-pressure.
    writes: mpsc::Sender<WriteRequest>,
    /// Read connections, used round-robin from blocking tasks.
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: AtomicUsize,
    /// Group commits so far (each is one fsync): writes ÷ commits is the
    /// group-commit factor.
    commits: Arc<AtomicU64>,
}

fn unavailable(error: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

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

impl SqliteStore {
    /// Opens (creating if needed) the database `payvisor.db` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|error| StoreError::Unavailable(format!("{}: {error}", data_dir.display())))?;
        let path = data_dir.join("payvisor.db");
        let writer = open_connection(&path, limits::STORE_WRITER_CACHE_KIB)?;
        writer.execute_batch(SCHEMA).map_err(unavailable)?;
        let readers = (0..limits::STORE_READERS_MAX)
            .map(|_| open_connection(&path, limits::STORE_READER_CACHE_KIB).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        let (writes, queue) = mpsc::channel(limits::STORE_WRITE_QUEUE_MAX);
        let commits = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&commits);
        std::thread::Builder::new()
            .name("payvisor-sqlite-writer".into())
            .spawn(move || run_writer(writer, queue, &counter))
            .map_err(|error| StoreError::Unavailable(error.to_string()))?;
        let checkpointer = open_connection(&path, limits::STORE_READER_CACHE_KIB)?;
        let store_alive = writes.downgrade();
        std::thread::Builder::new()
            .name("payvisor-sqlite-checkpointer".into())
            .spawn(move || run_checkpointer(checkpointer, store_alive))
            .map_err(|error| StoreError::Unavailable(error.to_string()))?;
        Ok(SqliteStore {
            writes,
            readers: Arc::new(readers),
            next_reader: AtomicUsize::new(0),
            commits,
        })
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
        let index = self.next_reader.fetch_add(1, Ordering::Relaxed) % readers.len();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let connection = readers[index]
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner());
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

/// The writer thread: drains the queue into group commits until every
/// sender is gone.
fn run_writer(
    mut connection: Connection,
    mut queue: mpsc::Receiver<WriteRequest>,
    commits: &AtomicU64,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut group = vec![first];
        while group.len() < limits::GROUP_COMMIT_TRANSACTIONS_MAX {
            match queue.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        let results = commit_group(&mut connection, &group);
        commits.fetch_add(1, Ordering::Relaxed);
        for (request, result) in group.into_iter().zip(results) {
            // The caller may have gone away (request cancelled): the write
            // is committed all the same, which is what idempotency is for.
            let _ = request.reply.send(result);
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
                        "INSERT OR REPLACE INTO items (pk, sk, version, body, ipk, isk)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![
                        item.key.pk,
                        item.key.sk,
                        item.version as i64,
                        item.body,
                        ipk,
                        isk
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

fn item_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Item> {
    let ipk: Option<String> = row.get(4)?;
    let isk: Option<String> = row.get(5)?;
    Ok(Item {
        key: Key {
            pk: row.get(0)?,
            sk: row.get(1)?,
        },
        version: row.get::<_, i64>(2)? as u64,
        body: row.get(3)?,
        index: ipk.zip(isk).map(|(pk, sk)| IndexKey { pk, sk }),
    })
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
        Box::pin(async move {
            validate_write(&ops)?;
            let (reply, done) = oneshot::channel();
            self.writes
                .send(WriteRequest { ops, reply })
                .await
                .map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
            done.await
                .map_err(|_| StoreError::Unavailable("writer stopped".into()))?
        })
    }

    fn get(&self, key: Key) -> BoxFuture<'_, Result<Option<Item>, StoreError>> {
        self.read(move |connection| {
            connection
                .prepare_cached(
                    "SELECT pk, sk, version, body, ipk, isk FROM items WHERE pk = ?1 AND sk = ?2",
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
                "SELECT pk, sk, version, body, ipk, isk FROM items
                 WHERE pk = ?1 AND sk > ?2 AND sk < ?3 ORDER BY sk LIMIT ?4"
            } else {
                "SELECT pk, sk, version, body, ipk, isk FROM items
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
                    "SELECT pk, sk, version, body, ipk, isk FROM items
                     WHERE ipk = ?1 AND isk > ?2 ORDER BY isk LIMIT ?3"
                }
                (false, false) => {
                    "SELECT pk, sk, version, body, ipk, isk FROM items
                     WHERE ipk = ?1 AND isk >= ?2 ORDER BY isk LIMIT ?3"
                }
                (true, true) => {
                    "SELECT pk, sk, version, body, ipk, isk FROM items
                     WHERE ipk = ?1 AND isk > ?2 AND isk <= ?4 ORDER BY isk LIMIT ?3"
                }
                (false, true) => {
                    "SELECT pk, sk, version, body, ipk, isk FROM items
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

/// Cuts a result read with `limit + 1` rows into a page: the extra row only
/// tells whether another page exists.
fn page_of(mut items: Vec<Item>, limit: usize, position: impl Fn(&Item) -> String) -> Page {
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more {
        items.last().map(position)
    } else {
        None
    };
    Page { items, next }
}
