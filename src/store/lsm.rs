//! The log-structured embedded store (`--store lsm`): the same contract as
//! [`super::sqlite`], on an LSM tree (`fjall`) instead of a B-tree.
//!
//! **Why.** A B-tree writes a whole 4 KB page to its log for every item it
//! changes, and the same pages again when it checkpoints: about 120 KB
//! written per payment for about 4 KB of content (BENCHMARKS.md, issue
//! 16). An LSM tree appends each group of writes to one journal as it is,
//! and later writes its memory table out as sorted, compressed files,
//! merged in the background: a payment costs its own bytes a few times
//! over, not twenty pages.
//!
//! **Group commit.** As in the SQLite store, one writer thread takes every
//! write waiting in its queue, checks each one's conditions (a write whose
//! condition fails applies nothing) and commits the whole group as one
//! journal batch with one `fsync`. Conditions are checked against the
//! store and against the writes before it in the same group (the
//! group's *pending* state), and the batch carries each key's final state
//! once (an LSM batch stamps all its entries with one sequence number, so
//! two entries for one key would be ambiguous).
//!
//! **Layout.** Four keyspaces (each its own LSM tree) in `<data-dir>/lsm`:
//! - `items`: key `len(pk) as u16 BE ‖ pk ‖ sk` (an account's items are
//!   adjacent), value a record (below); records of
//!   `limits::LSM_SEPARATED_VALUE_BYTES_MIN` or more live in blob files
//!   beside the tree (key-value separation), so the background merges,
//!   which rewrite more levels as the store grows, move keys and
//!   pointers rather than payment and event bodies;
//! - `index`: the sparse secondary index, key `len(ipk) ‖ ipk ‖ isk ‖ 0 ‖
//!   item key`, no value (index sort keys hold no control characters, so
//!   the `0` ends the sort key and nothing sorts between `isk` and the
//!   next one);
//! - `expiry`: key `expires_at (offset binary, BE) ‖ item key`, no value,
//!   for the sweep of expired items;
//! - `meta`: the store's identity and format.
//!
//! Index and expiry entries change in the same batch as their item, so they
//! never disagree with it after a commit; reads of the index go through
//! one snapshot of both.
//!
//! **Damage is detected, not served.** Every record carries a CRC-32 of
//! its key and contents, checked on every read, and the tables' blocks
//! carry checksums of their own: damage is `StoreError::Corrupt`. The
//! journal's batches carry checksums (xxh3): a batch torn by a crash (the
//! tail of the journal) is dropped whole on recovery, and was never
//! acknowledged, since a write is acknowledged only after its batch's
//! `fsync`. A batch whose contents changed refuses the open. **Known
//! limit:** fjall reads damage to a batch's framing (its tags and lengths)
//! as the end of the journal, so such damage drops the batches after it
//! instead of refusing the open (ARCHITECTURE.md, known limits).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use tokio::sync::mpsc;

use super::group_commit::{run_writer, submit, WriteRequest};
use super::{
    page_of, validate_write, BoxFuture, Condition, IndexKey, IndexQuery, Item, Key, Page, Query,
    Store, StoreError, WriteOp,
};
use crate::limits;

/// The directory of the LSM store inside the data directory.
pub const LSM_DIR: &str = "lsm";
/// The layout this build writes (`meta` key `format`).
const FORMAT: u32 = 1;
/// The first byte of every record: its encoding.
const RECORD_FORMAT: u8 = 1;
use super::data_dir::IDENTITY_FILE;

/// The four keyspaces.
#[derive(Clone)]
struct Trees {
    db: Database,
    items: Keyspace,
    index: Keyspace,
    expiry: Keyspace,
}

/// LSM-backed [`Store`].
pub struct LsmStore {
    /// Queue to the writer thread; bounded for back-pressure.
    writes: mpsc::Sender<WriteRequest>,
    trees: Trees,
    /// Group commits so far (each is one fsync).
    commits: Arc<AtomicU64>,
    /// The writer thread, joined when the store is dropped.
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LsmStore {
    /// Stops the writer (it finishes the group in hand) and syncs the
    /// journal, so that the files are closed, and the store can be opened
    /// again, once the store is dropped.
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.writes, closed));
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        if let Err(error) = self.trees.db.persist(PersistMode::SyncAll) {
            tracing::warn!(?error, "the journal could not be synced at close");
        }
    }
}

/// A failure of the LSM tree as the store's error: damage (a checksum,
/// tag, header or decompression failure in the journal or a table) is
/// corruption, not worth a retry; only I/O and lock failures are
/// unavailability.
fn storage(error: fjall::Error) -> StoreError {
    match error {
        fjall::Error::Io(error) | fjall::Error::Storage(fjall::LsmError::Io(error)) => {
            StoreError::Unavailable(error.to_string())
        }
        fjall::Error::Locked | fjall::Error::KeyspaceDeleted => {
            StoreError::Unavailable(format!("{error:?}"))
        }
        // fjall's advice: a failed journal write or fsync leaves the
        // database in memory ahead of the disk; only a restart (which
        // recovers from the journal) is safe.
        fjall::Error::Poisoned => StoreError::Corrupt(
            "an earlier write to the store's journal failed (its fsync did not succeed): nothing \
             more is written until the server restarts and recovers the journal"
                .into(),
        ),
        fjall::Error::InvalidVersion(_)
        | fjall::Error::Storage(fjall::LsmError::InvalidVersion(_)) => StoreError::Corrupt(
            format!("the store's files are of a format this build does not read ({error:?})"),
        ),
        other => StoreError::Corrupt(format!(
            "the store's files are damaged ({other:?}): run `payvisor store check`, or restore \
             from a backup"
        )),
    }
}

/// `len(pk) as u16 BE ‖ pk ‖ sk`.
fn item_key(key: &Key) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(2 + key.pk.len() + key.sk.len());
    bytes.extend_from_slice(&(key.pk.len() as u16).to_be_bytes());
    bytes.extend_from_slice(key.pk.as_bytes());
    bytes.extend_from_slice(key.sk.as_bytes());
    bytes
}

fn key_of(bytes: &[u8]) -> Result<Key, StoreError> {
    let corrupt = || StoreError::Corrupt("an item key is malformed".into());
    let length = u16::from_be_bytes(bytes.get(..2).ok_or_else(corrupt)?.try_into().unwrap());
    let pk = bytes.get(2..2 + length as usize).ok_or_else(corrupt)?;
    let sk = &bytes[2 + length as usize..];
    Ok(Key {
        pk: String::from_utf8(pk.to_vec()).map_err(|_| corrupt())?,
        sk: String::from_utf8(sk.to_vec()).map_err(|_| corrupt())?,
    })
}

/// `len(ipk) as u16 BE ‖ ipk ‖ isk`: the prefix of an index entry.
fn index_prefix(index_pk: &str, index_sk: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(2 + index_pk.len() + index_sk.len() + 1);
    bytes.extend_from_slice(&(index_pk.len() as u16).to_be_bytes());
    bytes.extend_from_slice(index_pk.as_bytes());
    bytes.extend_from_slice(index_sk.as_bytes());
    bytes
}

fn index_entry(index: &IndexKey, item_key: &[u8]) -> Vec<u8> {
    let mut bytes = index_prefix(&index.pk, &index.sk);
    bytes.push(0);
    bytes.extend_from_slice(item_key);
    bytes
}

fn expiry_entry(expires_at: i64, item_key: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + item_key.len());
    bytes.extend_from_slice(&((expires_at as u64) ^ (1 << 63)).to_be_bytes());
    bytes.extend_from_slice(item_key);
    bytes
}

/// What conditions and index upkeep need of a stored item.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    version: u64,
    index: Option<IndexKey>,
    expires_at: Option<i64>,
}

/// `RECORD_FORMAT ‖ version u64 LE ‖ flags ‖ [index: u16 LE len ‖ ipk ‖
/// u16 LE len ‖ isk] ‖ [expires_at i64 LE] ‖ body ‖ crc32 LE`, the CRC
/// over the item key and everything before it.
fn encode_record(item_key: &[u8], item: &Item) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(32 + item.body.len());
    bytes.push(RECORD_FORMAT);
    bytes.extend_from_slice(&item.version.to_le_bytes());
    let flags = u8::from(item.index.is_some()) | (u8::from(item.expires_at.is_some()) << 1);
    bytes.push(flags);
    if let Some(index) = &item.index {
        for part in [&index.pk, &index.sk] {
            bytes.extend_from_slice(&(part.len() as u16).to_le_bytes());
            bytes.extend_from_slice(part.as_bytes());
        }
    }
    if let Some(expires_at) = item.expires_at {
        bytes.extend_from_slice(&expires_at.to_le_bytes());
    }
    bytes.extend_from_slice(&item.body);
    let crc = record_crc(item_key, &bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

fn record_crc(item_key: &[u8], contents: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&(item_key.len() as u64).to_le_bytes());
    hasher.update(item_key);
    hasher.update(contents);
    hasher.finalize()
}

/// A record as its header and body, its checksum verified.
fn decode_record<'a>(item_key: &[u8], bytes: &'a [u8]) -> Result<(Header, &'a [u8]), StoreError> {
    let damaged = |why: &str| {
        StoreError::Corrupt(format!(
            "{:?}: the stored record {why} (damaged on disk)",
            key_of(item_key).map_or_else(|_| "an item".to_owned(), |key| format!("{key:?}"))
        ))
    };
    if bytes.len() < 1 + 8 + 1 + 4 {
        return Err(damaged("is too short"));
    }
    let (contents, crc) = bytes.split_at(bytes.len() - 4);
    if u32::from_le_bytes(crc.try_into().unwrap()) != record_crc(item_key, contents) {
        return Err(damaged("does not match its checksum"));
    }
    if contents[0] != RECORD_FORMAT {
        return Err(StoreError::UnsupportedFormat {
            key: key_of(item_key)?,
            format: u64::from(contents[0]),
        });
    }
    let version = u64::from_le_bytes(contents[1..9].try_into().unwrap());
    let flags = contents[9];
    let mut rest = &contents[10..];
    let mut take = |n: usize| -> Result<&[u8], StoreError> {
        if rest.len() < n {
            return Err(damaged("is truncated"));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let index = if flags & 1 != 0 {
        let mut parts = [String::new(), String::new()];
        for part in &mut parts {
            let length = u16::from_le_bytes(take(2)?.try_into().unwrap()) as usize;
            *part = String::from_utf8(take(length)?.to_vec())
                .map_err(|_| damaged("has an index key that is not text"))?;
        }
        let [pk, sk] = parts;
        Some(IndexKey { pk, sk })
    } else {
        None
    };
    let expires_at = if flags & 2 != 0 {
        Some(i64::from_le_bytes(take(8)?.try_into().unwrap()))
    } else {
        None
    };
    Ok((
        Header {
            version,
            index,
            expires_at,
        },
        rest,
    ))
}

fn decode_item(item_key: &[u8], bytes: &[u8]) -> Result<Item, StoreError> {
    let (header, body) = decode_record(item_key, bytes)?;
    Ok(Item {
        key: key_of(item_key)?,
        version: header.version,
        body: body.to_vec(),
        index: header.index,
        expires_at: header.expires_at,
    })
}

/// What `payvisor store check` found in an LSM store.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub items: u64,
    pub problems: Vec<String>,
}

impl LsmStore {
    /// Whether `data_dir` holds an LSM store.
    pub fn exists_in(data_dir: &Path) -> bool {
        data_dir.join(LSM_DIR).is_dir()
    }

    /// Opens (creating if needed) the store in `data_dir/lsm`. Refuses a
    /// directory that holds the SQLite store (its data would be hidden, not
    /// moved), and one whose store was lost.
    pub fn open(data_dir: &Path) -> Result<LsmStore, StoreError> {
        LsmStore::open_with_identity(data_dir, None)
    }

    /// Opens the store; a new one takes `new_store_id` as its identity (a
    /// migrated store keeps the identity of the store it was copied from),
    /// or a random one.
    pub(crate) fn open_with_identity(
        data_dir: &Path,
        new_store_id: Option<&str>,
    ) -> Result<LsmStore, StoreError> {
        let unavailable = |error: std::io::Error| {
            StoreError::Unavailable(format!("{}: {error}", data_dir.display()))
        };
        std::fs::create_dir_all(data_dir).map_err(unavailable)?;
        let sqlite = data_dir.join("payvisor.db");
        if sqlite.is_file() {
            return Err(StoreError::Unavailable(format!(
                "{} holds the SQLite store ({}); --store lsm would start a new, empty store beside it. \
                 Copy it over with `payvisor store migrate --data-dir {}` (the server stopped), \
                 or keep running it with --store sqlite",
                data_dir.display(),
                sqlite.display(),
                data_dir.display()
            )));
        }
        let path = data_dir.join(LSM_DIR);
        let remembered = read_identity(data_dir)?;
        if remembered.is_some() && !path.is_dir() {
            return Err(StoreError::Corrupt(format!(
                "this data directory held store {} ({}), but {} is missing: restore it from a \
                 backup. payvisor will not start a new, empty store in its place (every payment \
                 and idempotency key would be gone)",
                remembered.unwrap_or_default(),
                data_dir.join(IDENTITY_FILE).display(),
                path.display()
            )));
        }
        let db = Database::builder(&path)
            .cache_size(limits::LSM_CACHE_BYTES)
            .worker_threads(limits::LSM_WORKER_THREADS)
            .max_journaling_size(limits::LSM_JOURNAL_BYTES)
            .open()
            .map_err(|error| match error {
                fjall::Error::Locked => StoreError::Unavailable(format!(
                    "the store in {} is open in another process (a running server?): the \
                     log-structured store is one process's at a time; stop it first",
                    path.display()
                )),
                other => storage(other),
            })?;
        let keyspace = |name: &str, memtable: u64| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(memtable)
            })
            .map_err(storage)
        };
        let separated = fjall::KvSeparationOptions::default()
            .separation_threshold(limits::LSM_SEPARATED_VALUE_BYTES_MIN);
        let trees = Trees {
            items: db
                .keyspace("items", || {
                    KeyspaceCreateOptions::default()
                        .max_memtable_size(limits::LSM_ITEMS_MEMTABLE_BYTES)
                        .with_kv_separation(Some(separated.clone()))
                })
                .map_err(storage)?,
            index: keyspace("index", limits::LSM_ENTRIES_MEMTABLE_BYTES)?,
            expiry: keyspace("expiry", limits::LSM_ENTRIES_MEMTABLE_BYTES)?,
            db: db.clone(),
        };
        let meta = keyspace("meta", limits::LSM_ENTRIES_MEMTABLE_BYTES)?;
        establish_identity(&db, &meta, data_dir, remembered, new_store_id)?;
        let (writes, queue) = mpsc::channel(limits::STORE_WRITE_QUEUE_MAX);
        let commits = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&commits);
        let writer_trees = trees.clone();
        let writer = std::thread::Builder::new()
            .name("payvisor-lsm-writer".into())
            .spawn(move || run_writer(queue, &counter, |group| commit_group(&writer_trees, group)))
            .map_err(|error| StoreError::Unavailable(error.to_string()))?;
        Ok(LsmStore {
            writes,
            trees,
            commits,
            writer: Some(writer),
        })
    }

    /// Closes the store: its files are closed when this returns (what
    /// dropping it does, by name).
    pub fn close(self) {
        drop(self);
    }

    /// Group commits so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Reads every item (checksums) and looks up its index and expiry
    /// entries, and every index and expiry entry and looks up its item:
    /// each must agree with the other. Point reads, not maps of the whole
    /// store: memory stays flat however large the store is.
    pub fn check(&self) -> Result<CheckReport, StoreError> {
        let snapshot = self.trees.db.snapshot();
        let mut report = CheckReport::default();
        let present = |tree: &Keyspace, entry: &[u8]| -> Result<bool, StoreError> {
            snapshot.contains_key(tree, entry).map_err(storage)
        };
        for guard in snapshot.iter(&self.trees.items) {
            let (key, value) = match guard.into_inner() {
                Ok(pair) => pair,
                Err(error) => {
                    report.problems.push(storage(error).to_string());
                    continue;
                }
            };
            report.items += 1;
            let header = match decode_record(&key, &value) {
                Ok((header, _)) => header,
                Err(error) => {
                    report.problems.push(error.to_string());
                    continue;
                }
            };
            if let Some(index) = &header.index {
                if !present(&self.trees.index, &index_entry(index, &key))? {
                    report
                        .problems
                        .push(format!("{:?} is missing from the index", key_of(&key)?));
                }
            }
            if let Some(expires_at) = header.expires_at {
                if !present(&self.trees.expiry, &expiry_entry(expires_at, &key))? {
                    report.problems.push(format!(
                        "{:?} is missing from the expiry list",
                        key_of(&key)?
                    ));
                }
            }
        }
        for guard in snapshot.iter(&self.trees.index) {
            let entry = guard.key().map_err(storage)?;
            if let Err(error) = index_entry_item(&snapshot, &self.trees, &entry) {
                report.problems.push(error.to_string());
            }
        }
        for guard in snapshot.iter(&self.trees.expiry) {
            let entry = guard.key().map_err(storage)?;
            if let Err(error) = expiry_entry_item(&snapshot, &self.trees, &entry) {
                report.problems.push(error.to_string());
            }
        }
        Ok(report)
    }

    /// Up to `limit + 1` items of a key range, from one snapshot (an atomic
    /// write is seen whole or not at all).
    fn read_items(
        &self,
        range: (std::ops::Bound<Vec<u8>>, std::ops::Bound<Vec<u8>>),
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        let snapshot = self.trees.db.snapshot();
        let mut items = Vec::new();
        for guard in snapshot.range(&self.trees.items, range) {
            let (key, value) = guard.into_inner().map_err(storage)?;
            items.push(decode_item(&key, &value)?);
            if items.len() > limit {
                break;
            }
        }
        Ok(items)
    }
}

/// The stored record of the item an index or expiry entry (`entry_kind`)
/// names; an entry naming no item is damage.
fn named_item(
    snapshot: &fjall::Snapshot,
    trees: &Trees,
    key: &[u8],
    entry_kind: &str,
) -> Result<fjall::UserValue, StoreError> {
    snapshot
        .get(&trees.items, key)
        .map_err(storage)?
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "{entry_kind} names {}, which does not exist",
                key_of(key).map_or_else(|_| "a malformed key".into(), |key| format!("{key:?}"))
            ))
        })
}

/// The item an index entry names, which must carry that entry's key.
fn index_entry_item(
    snapshot: &fjall::Snapshot,
    trees: &Trees,
    entry: &[u8],
) -> Result<Item, StoreError> {
    let malformed = || StoreError::Corrupt("an index entry is malformed".into());
    let partition = entry.get(..2).ok_or_else(malformed)?;
    let prefix = 2 + usize::from(u16::from_be_bytes([partition[0], partition[1]]));
    let key_at = entry
        .get(prefix..)
        .and_then(|rest| rest.iter().position(|&byte| byte == 0))
        .map(|at| prefix + at + 1)
        .ok_or_else(malformed)?;
    let key = &entry[key_at..];
    let item = decode_item(key, &named_item(snapshot, trees, key, "an index entry")?)?;
    match &item.index {
        Some(index) if index_entry(index, key) == entry => Ok(item),
        _ => Err(StoreError::Corrupt(format!(
            "an index entry names {:?}, which is not indexed under it",
            item.key
        ))),
    }
}

/// The item an expiry entry names, with its verified header; it must
/// expire at that entry's time.
fn expiry_entry_item(
    snapshot: &fjall::Snapshot,
    trees: &Trees,
    entry: &[u8],
) -> Result<(Key, Header), StoreError> {
    let key = entry
        .get(8..)
        .ok_or_else(|| StoreError::Corrupt("an expiry entry is malformed".into()))?;
    let value = named_item(snapshot, trees, key, "an expiry entry")?;
    let (header, _) = decode_record(key, &value)?;
    match header.expires_at {
        Some(at) if expiry_entry(at, key) == entry => Ok((key_of(key)?, header)),
        _ => Err(StoreError::Corrupt(format!(
            "an expiry entry names {:?}, which does not expire then",
            key_of(key)?
        ))),
    }
}

fn read_identity(data_dir: &Path) -> Result<Option<String>, StoreError> {
    super::data_dir::read_identity(data_dir).map_err(|error| {
        StoreError::Unavailable(format!(
            "{}: {error}",
            data_dir.join(IDENTITY_FILE).display()
        ))
    })
}

/// Records the store's identity and format in a new store (and in the
/// data directory), and refuses a store that is not the one the directory
/// held, or of a newer format.
fn establish_identity(
    db: &Database,
    meta: &Keyspace,
    data_dir: &Path,
    remembered: Option<String>,
    new_store_id: Option<&str>,
) -> Result<(), StoreError> {
    let text = |key: &str| -> Result<Option<String>, StoreError> {
        meta.get(key)
            .map_err(storage)?
            .map(|value| {
                String::from_utf8(value.to_vec())
                    .map_err(|_| StoreError::Corrupt(format!("the store's {key} is unreadable")))
            })
            .transpose()
    };
    let recorded = text("store_id")?;
    let store_id = match (recorded, remembered) {
        (Some(recorded), Some(remembered)) if recorded != remembered => {
            return Err(StoreError::Corrupt(format!(
                "{} holds store {recorded}, but this data directory held store {remembered} \
                 ({}): the store was replaced; put the right one back",
                data_dir.join(LSM_DIR).display(),
                data_dir.join(IDENTITY_FILE).display()
            )))
        }
        (None, Some(remembered)) => {
            return Err(StoreError::Corrupt(format!(
                "this data directory held store {remembered} ({}), but {} is empty: restore it \
                 from a backup. payvisor will not start a new, empty store in its place",
                data_dir.join(IDENTITY_FILE).display(),
                data_dir.join(LSM_DIR).display()
            )))
        }
        (Some(recorded), _) => recorded,
        (None, None) => {
            let store_id = match new_store_id {
                Some(store_id) => store_id.to_owned(),
                None => {
                    let mut bytes = [0u8; 16];
                    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                        .map_err(|_| {
                            StoreError::Unavailable("no randomness for a store id".into())
                        })?;
                    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
                }
            };
            let mut batch = db.batch().durability(Some(PersistMode::SyncAll));
            batch.insert(meta, "store_id", store_id.as_bytes());
            batch.insert(meta, "format", FORMAT.to_string().as_bytes());
            batch.commit().map_err(storage)?;
            store_id
        }
    };
    match text("format")?.map(|format| format.parse::<u32>()) {
        Some(Ok(format)) if format == FORMAT => {}
        Some(Ok(format)) if format > FORMAT => {
            return Err(StoreError::Corrupt(format!(
                "the store is of format {format}, written by a newer payvisor; this one reads up to {FORMAT}"
            )))
        }
        _ => return Err(StoreError::Corrupt("the store's format is unreadable".into())),
    }
    if read_identity(data_dir)?.as_deref() != Some(store_id.as_str()) {
        super::data_dir::write_identity(data_dir, &store_id).map_err(|error| {
            StoreError::Unavailable(format!(
                "{}: {error}",
                data_dir.join(IDENTITY_FILE).display()
            ))
        })?;
    }
    Ok(())
}

/// A group's writes so far, per key its final state: what later writes of
/// the group check their conditions against, and what the batch carries.
#[derive(Default)]
struct Pending {
    /// Item key → its header and record, or `None` once deleted.
    items: HashMap<Vec<u8>, Option<(Header, Vec<u8>)>>,
    /// Index and expiry entry → present (inserted) or not (removed).
    index: HashMap<Vec<u8>, bool>,
    expiry: HashMap<Vec<u8>, bool>,
}

impl Pending {
    fn header(&self, trees: &Trees, key: &[u8]) -> Result<Option<Header>, StoreError> {
        if let Some(state) = self.items.get(key) {
            return Ok(state.as_ref().map(|(header, _)| header.clone()));
        }
        match trees.items.get(key).map_err(storage)? {
            Some(value) => Ok(Some(decode_record(key, &value)?.0)),
            None => Ok(None),
        }
    }

    /// Drops the index and expiry entries of `old`.
    fn unlink(&mut self, key: &[u8], old: &Header) {
        if let Some(index) = &old.index {
            self.index.insert(index_entry(index, key), false);
        }
        if let Some(expires_at) = old.expires_at {
            self.expiry.insert(expiry_entry(expires_at, key), false);
        }
    }
}

fn commit_group(trees: &Trees, group: &[WriteRequest]) -> Vec<Result<(), StoreError>> {
    let mut pending = Pending::default();
    let mut results = Vec::with_capacity(group.len());
    for request in group {
        match apply_one(trees, &mut pending, &request.ops) {
            Ok(result) => results.push(result),
            // A read of the store failed: nothing of the group is written.
            Err(error) => return group.iter().map(|_| Err(error.clone())).collect(),
        }
    }
    if pending.items.is_empty() {
        return results;
    }
    let mut batch = trees.db.batch().durability(Some(PersistMode::SyncAll));
    for (key, state) in pending.items {
        match state {
            Some((_, record)) => batch.insert(&trees.items, key, record),
            None => batch.remove(&trees.items, key),
        }
    }
    for (tree, entries) in [
        (&trees.index, pending.index),
        (&trees.expiry, pending.expiry),
    ] {
        for (entry, present) in entries {
            if present {
                batch.insert(tree, entry, []);
            } else {
                batch.remove(tree, entry);
            }
        }
    }
    match batch.commit() {
        Ok(()) => results,
        Err(error) => {
            let error = storage(error);
            group.iter().map(|_| Err(error.clone())).collect()
        }
    }
}

/// Checks one write's conditions against the store and the group so far,
/// and, if all hold, adds its actions to the group. The outer `Result` is
/// a failed read (fails the whole group); the inner one this write's own
/// outcome.
fn apply_one(
    trees: &Trees,
    pending: &mut Pending,
    ops: &[WriteOp],
) -> Result<Result<(), StoreError>, StoreError> {
    if let Err(error) = validate_write(ops) {
        return Ok(Err(error));
    }
    let mut current = Vec::with_capacity(ops.len());
    for (index, op) in ops.iter().enumerate() {
        let (key, condition) = match op {
            WriteOp::Put { item, condition } => (&item.key, condition),
            WriteOp::Delete { key, condition } | WriteOp::Check { key, condition } => {
                (key, condition)
            }
        };
        let bytes = item_key(key);
        let header = match pending.header(trees, &bytes) {
            Ok(header) => header,
            // A damaged item fails the write that reads it, not the
            // group; a failed read of the disk fails the group.
            Err(error @ StoreError::Unavailable(_)) => return Err(error),
            Err(error) => return Ok(Err(error)),
        };
        let holds = match condition {
            Condition::NotExists => header.is_none(),
            Condition::VersionIs(expected) => {
                header.as_ref().map(|header| header.version) == Some(*expected)
            }
        };
        if !holds {
            return Ok(Err(StoreError::ConditionFailed {
                index,
                key: key.clone(),
            }));
        }
        current.push((bytes, header));
    }
    for (op, (key, old)) in ops.iter().zip(current) {
        match op {
            WriteOp::Put { item, .. } => {
                if let Some(old) = &old {
                    pending.unlink(&key, old);
                }
                let header = Header {
                    version: item.version,
                    index: item.index.clone(),
                    expires_at: item.expires_at,
                };
                if let Some(index) = &header.index {
                    pending.index.insert(index_entry(index, &key), true);
                }
                if let Some(expires_at) = header.expires_at {
                    pending.expiry.insert(expiry_entry(expires_at, &key), true);
                }
                let record = encode_record(&key, item);
                pending.items.insert(key, Some((header, record)));
            }
            WriteOp::Delete { .. } => {
                if let Some(old) = &old {
                    pending.unlink(&key, old);
                }
                pending.items.insert(key, None);
            }
            WriteOp::Check { .. } => {}
        }
    }
    Ok(Ok(()))
}

/// The first key after every key starting with `prefix`, or unbounded.
fn after_prefix(prefix: &[u8]) -> std::ops::Bound<Vec<u8>> {
    let mut bytes = prefix.to_vec();
    while let Some(last) = bytes.pop() {
        if last < u8::MAX {
            bytes.push(last + 1);
            return std::ops::Bound::Excluded(bytes);
        }
    }
    std::ops::Bound::Unbounded
}

/// Whether a key can be stored at all (see `validate_write`): a read of
/// a longer one finds nothing, and is not framed.
fn within_key_bounds(partition: &str, sort: &str) -> bool {
    partition.len() <= limits::STORE_PARTITION_KEY_BYTES_MAX
        && sort.len() <= limits::STORE_SORT_KEY_BYTES_MAX
}

/// A page of the index, from one snapshot of the index and the items;
/// each entry's item must carry it (else the store is damaged).
fn read_index(trees: &Trees, query: &IndexQuery) -> Result<Page, StoreError> {
    use std::ops::Bound;
    let limit = query.limit.max(1);
    let partition = index_prefix(&query.index_pk, "");
    // Index sort keys hold no control characters: `isk ‖ 1` is past every
    // entry of `isk` (`isk ‖ 0 ‖ item key`) and before every longer sort
    // key.
    let past = |isk: &str| {
        let mut bytes = index_prefix(&query.index_pk, isk);
        bytes.push(1);
        bytes
    };
    let lower = match &query.start_after {
        Some(after) => Bound::Included(past(after)),
        None => Bound::Included(partition.clone()),
    };
    let upper = match &query.end_at {
        Some(end) => Bound::Excluded(past(end)),
        None => after_prefix(&partition),
    };
    if let (Bound::Included(from), Bound::Excluded(to)) = (&lower, &upper) {
        if from >= to {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
    }
    let snapshot = trees.db.snapshot();
    let mut items = Vec::new();
    for guard in snapshot.range(&trees.index, (lower, upper)) {
        let entry = guard.key().map_err(storage)?;
        items.push(index_entry_item(&snapshot, trees, &entry)?);
        if items.len() > limit {
            break;
        }
    }
    Ok(page_of(items, limit, |item| {
        item.index
            .as_ref()
            .map(|index| index.sk.clone())
            .unwrap_or_default()
    }))
}

/// Up to `limit` items that expired before `now_unix_seconds`, with the
/// versions read, by the expiry list (each checked by the item's own
/// verified expiry: a damaged entry never deletes an item).
fn read_expired(
    trees: &Trees,
    now_unix_seconds: i64,
    limit: usize,
) -> Result<Vec<(Key, u64)>, StoreError> {
    let end = ((now_unix_seconds as u64) ^ (1 << 63))
        .to_be_bytes()
        .to_vec();
    let snapshot = trees.db.snapshot();
    let mut expired = Vec::new();
    for guard in snapshot.range(&trees.expiry, ..end) {
        if expired.len() >= limit {
            break;
        }
        let entry = guard.key().map_err(storage)?;
        let (key, header) = expiry_entry_item(&snapshot, trees, &entry)?;
        expired.push((key, header.version));
    }
    Ok(expired)
}

impl Store for LsmStore {
    fn transact(&self, ops: Vec<WriteOp>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(submit(&self.writes, ops))
    }

    // Point reads and partition queries run on the caller's task: a read
    // of an LSM tree is a lookup in memory tables and cached blocks (a
    // page-cache read at worst), cheaper than the hand-off to a blocking
    // thread it would take to move it off the task. Index reads and the
    // expiry sweep, which read an item per entry, run on a blocking thread.
    fn get(&self, key: Key) -> BoxFuture<'_, Result<Option<Item>, StoreError>> {
        Box::pin(async move {
            if !within_key_bounds(&key.pk, &key.sk) {
                return Ok(None);
            }
            let bytes = item_key(&key);
            let snapshot = self.trees.db.snapshot();
            match snapshot.get(&self.trees.items, &bytes).map_err(storage)? {
                Some(value) => decode_item(&bytes, &value).map(Some),
                None => Ok(None),
            }
        })
    }

    fn query(&self, query: Query) -> BoxFuture<'_, Result<Page, StoreError>> {
        Box::pin(async move {
            let limit = query.limit.max(1);
            if !within_key_bounds(&query.pk, &query.sk_prefix) {
                return Ok(Page {
                    items: Vec::new(),
                    next: None,
                });
            }
            let prefix = item_key(&Key::new(query.pk.as_str(), query.sk_prefix.as_str()));
            let lower = match &query.start_after {
                Some(after) if after.as_str() >= query.sk_prefix.as_str() => {
                    std::ops::Bound::Excluded(item_key(&Key::new(
                        query.pk.as_str(),
                        after.as_str(),
                    )))
                }
                _ => std::ops::Bound::Included(prefix.clone()),
            };
            let upper = after_prefix(&prefix);
            if let (std::ops::Bound::Excluded(from), std::ops::Bound::Excluded(to)) =
                (&lower, &upper)
            {
                if from >= to {
                    return Ok(Page {
                        items: Vec::new(),
                        next: None,
                    });
                }
            }
            let items = self.read_items((lower, upper), limit)?;
            Ok(page_of(items, limit, |item| item.key.sk.clone()))
        })
    }

    fn query_index(&self, query: IndexQuery) -> BoxFuture<'_, Result<Page, StoreError>> {
        let trees = self.trees.clone();
        Box::pin(async move {
            if !within_key_bounds(&query.index_pk, "") {
                return Ok(Page {
                    items: Vec::new(),
                    next: None,
                });
            }
            tokio::task::spawn_blocking(move || read_index(&trees, &query))
                .await
                .map_err(|error| StoreError::Unavailable(format!("index read: {error}")))?
        })
    }

    /// Reads the expired items (by the expiry list), then deletes them
    /// through the writer like any write, each on the version read: an
    /// item rewritten meanwhile is left alone.
    fn expire(
        &self,
        now_unix_seconds: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        let trees = self.trees.clone();
        Box::pin(async move {
            let expired =
                tokio::task::spawn_blocking(move || read_expired(&trees, now_unix_seconds, limit))
                    .await
                    .map_err(|error| StoreError::Unavailable(format!("expiry read: {error}")))??;
            super::delete_expired(self, &expired).await
        })
    }

    fn settle(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.trees.db.persist(PersistMode::SyncAll).map_err(storage) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    #[test]
    fn a_record_round_trips_and_a_changed_byte_is_caught() {
        let item = Item {
            key: Key::new("A#acct", "P#1"),
            version: 7,
            body: b"body".to_vec(),
            index: Some(IndexKey {
                pk: "ix".into(),
                sk: "0001".into(),
            }),
            expires_at: Some(-5),
        };
        let key = item_key(&item.key);
        let record = encode_record(&key, &item);
        assert_eq!(decode_item(&key, &record).unwrap(), item);
        for at in 0..record.len() {
            let mut damaged = record.clone();
            damaged[at] ^= 0x10;
            assert!(decode_item(&key, &damaged).is_err(), "byte {at}");
        }
        // The same record under another key is damage too.
        let other = item_key(&Key::new("A#acct", "P#2"));
        assert!(decode_item(&other, &record).is_err());
    }

    fn indexed(sk: &str, version: u64, index_sk: &str, expires_at: i64) -> Item {
        Item {
            key: Key::new("A#acct", sk),
            version,
            body: b"x".to_vec(),
            index: Some(IndexKey {
                pk: "DUE".into(),
                sk: index_sk.into(),
            }),
            expires_at: Some(expires_at),
        }
    }

    fn put(item: Item, condition: Condition) -> WriteOp {
        WriteOp::Put { item, condition }
    }

    /// Writes as one group of the writer (their replies dropped).
    fn group(writes: Vec<Vec<WriteOp>>) -> Vec<WriteRequest> {
        writes
            .into_iter()
            .map(|ops| WriteRequest {
                ops,
                reply: oneshot::channel().0,
            })
            .collect()
    }

    /// Items that move in the index and the expiry list, within one group
    /// and across groups, leave no stale entry behind; and a stale entry
    /// (damage) is found by `check` and refused by reads, never served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn moved_items_leave_no_stale_entries_and_a_stale_one_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LsmStore::open(dir.path()).unwrap());
        // Created and moved twice in one group, then moved again in a
        // group of its own.
        let results = commit_group(
            &store.trees,
            &group(vec![
                vec![put(indexed("P#1", 1, "0001", 10), Condition::NotExists)],
                vec![put(indexed("P#1", 2, "0002", 20), Condition::VersionIs(1))],
                vec![put(indexed("P#1", 3, "0003", 30), Condition::VersionIs(2))],
            ]),
        );
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        store
            .transact(vec![put(
                indexed("P#1", 4, "0004", 40),
                Condition::VersionIs(3),
            )])
            .await
            .unwrap();
        let report = store.check().unwrap();
        assert_eq!(
            (report.items, report.problems.len()),
            (1, 0),
            "{:?}",
            report.problems
        );

        // Damage: an index entry and an expiry entry whose item does not
        // carry them.
        let key = item_key(&Key::new("A#acct", "P#1"));
        let stale = IndexKey {
            pk: "DUE".into(),
            sk: "0000".into(),
        };
        store
            .trees
            .index
            .insert(index_entry(&stale, &key), [])
            .unwrap();
        store
            .trees
            .expiry
            .insert(expiry_entry(5, &key), [])
            .unwrap();
        let report = store.check().unwrap();
        assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
        let read = store
            .query_index(IndexQuery {
                index_pk: "DUE".into(),
                start_after: None,
                end_at: None,
                limit: 10,
            })
            .await;
        assert!(matches!(read, Err(StoreError::Corrupt(_))), "{read:?}");
        assert!(matches!(
            store.expire(100, 10).await,
            Err(StoreError::Corrupt(_))
        ));
    }

    /// A damaged item fails the write that reads it, not the other writes
    /// of its group.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_item_fails_only_the_write_that_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LsmStore::open(dir.path()).unwrap());
        let damaged = item_key(&Key::new("A#acct", "P#bad"));
        store
            .trees
            .items
            .insert(damaged, b"not a record".as_slice())
            .unwrap();
        let writes = (0..50)
            .map(|n| {
                let sk = if n == 25 {
                    "P#bad".to_owned()
                } else {
                    format!("P#{n}")
                };
                vec![put(
                    indexed(&sk, 1, &format!("{n:04}"), 1),
                    Condition::NotExists,
                )]
            })
            .collect();
        let results = commit_group(&store.trees, &group(writes));
        for (n, result) in results.iter().enumerate() {
            if n == 25 {
                assert!(matches!(result, Err(StoreError::Corrupt(_))), "{result:?}");
            } else {
                assert_eq!(result, &Ok(()), "write {n}");
            }
        }
        assert!(store
            .get(Key::new("A#acct", "P#24"))
            .await
            .unwrap()
            .is_some());
    }

    #[test]
    fn expiry_entries_sort_by_time_across_zero() {
        let key = item_key(&Key::new("p", "s"));
        let entries: Vec<_> = [-10i64, -1, 0, 1, 1_900_000_000]
            .iter()
            .map(|at| expiry_entry(*at, &key))
            .collect();
        let mut sorted = entries.clone();
        sorted.sort();
        assert_eq!(entries, sorted);
    }
}
