//! The LMDB store: the chain's records, the Merkle tree over them, the
//! anchors and the log's metadata, one file per table.
//!
//! Contract: [`Store::append`] returns only after the batch is committed and
//! fsynced; a batch is all-or-nothing. One writer (the sequencer's commit
//! thread) calls `append`; any number of tasks read concurrently.
//!
//! The databases, their keys and values are laid out in docs/DESIGN.md,
//! section 4: that table is the one description of them ([`FORMAT_VERSION`]
//! is its version; the key encodings are pinned by this module's tests).
//!
//! * `records.rs`: the `records` database and the `head` meta value, the
//!   batch commit (and its commit order), reads and the start-up check;
//! * `verify.rs`: the full check (`tallyd check`), hashing on every core;
//! * `map_advice.rs`: madvise on the map during that pass (its one unsafe);
//! * `tree.rs`: the `tree` database (stored Merkle subtrees), the frontier
//!   and the proofs;
//! * `anchors.rs`: the `anchors` database, the identity and the pending
//!   checkpoint;
//! * `times.rs`: the `times` database, where a `since` read starts;
//! * `times_check.rs`: `tallyd check`'s proof that it is sound;
//! * `scan.rs`: filtered reads, bounded per request;
//! * `content_keys.rs`, `seal.rs`, `content_state.rs`: the content beside
//!   the records (DESIGN 3b): the key file, the sealing, the `content`
//!   database, reading it back and the erase's shredding;
//! * `growth.rs`: the size of the memory map and its growth;
//! * `space.rs`: free space on the file system, a full disk told from other
//!   write errors, and the low-space warning.
//!
//! Two threads write: the sequencer (records, tree nodes, `frontier`,
//! `head`) and the anchorer (anchors, `pending_checkpoint` and, with the
//! genesis anchor, `identity`; one small transaction per anchor). No meta key
//! authorizes anything about the TPM counter: an anchor is committed only with
//! evidence at its counter value. LMDB serialises write transactions; both
//! open theirs under the resize gate.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use heed::types::{Bytes, Str, U64};
use heed::{byteorder::BigEndian, CommitOrAbort, Database, Env, EnvOpenOptions, WithoutTls};
use tally_attest::merkle::{Frontier, MerkleError};

mod anchors;
pub(crate) mod content_keys;
mod content_state;
mod erasable;
mod growth;
mod map_advice;
mod records;
mod scan;
pub mod seal;
mod space;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod tests_content;
#[cfg(test)]
mod tests_scan;
#[cfg(test)]
mod tests_times_check;
#[cfg(test)]
mod tests_verify;
mod times;
mod times_check;
mod tree;
mod verify;

pub use crate::batch::{Batch, Head, Tip};
pub use anchors::anchor_size;
pub use content_keys::{ContentKeys, ContentKeysError};
pub use erasable::{Erasable, Selected};
pub use records::StoredRecord;
pub use scan::{Scan, ScanPage};
pub use space::{
    free_bytes, is_out_of_space, watch_space, DiskSpace, OutOfSpace, SpaceReport,
    SPACE_CHECK_INTERVAL,
};
pub use times_check::TimesFault;

use records::encode_head;

/// Version of the on-disk layout (docs/DESIGN.md, section 4; its history in
/// section 12). A data directory written with another version is refused,
/// never silently reinterpreted.
pub const FORMAT_VERSION: u32 = 5;

/// The version before content was committed, not chained (issue 15): a store
/// of this version is upgraded in place at open (its `content` database and
/// key file created; its records keep their payloads inside the hashed
/// bytes, and have no content to erase).
const FORMAT_BEFORE_CONTENT: u32 = 4;

// The `meta` database's keys.
const META_FORMAT_VERSION: &str = "format_version";
const META_LOG_ID: &str = "log_id";
const META_HEAD: &str = "head";
const META_IDENTITY: &str = "identity";
const META_PENDING_CHECKPOINT: &str = "pending_checkpoint";
const META_FRONTIER: &str = "frontier";
const META_JOURNAL_KEY: &str = "journal_key";
const META_TIMES_SIZE: &str = "times_size";
const META_SHRED_PENDING: &str = "shred_pending";

/// A database keyed by a big-endian u64 (seq or counter value).
type SeqDb = Database<'static, U64<BigEndian>, Bytes>;
/// The metadata database, keyed by name.
type MetaDb = Database<'static, Str, Bytes>;
/// Merkle subtree hashes, keyed by last leaf u64 big-endian || level
/// (`tree::tree_key`).
type TreeDb = Database<'static, Bytes, Bytes>;
/// The running maximum of receive times, keyed as `times::times_key`.
type TimesDb = Database<'static, Bytes, Bytes>;

/// Sizing of the LMDB memory map.
#[derive(Debug, Clone, Copy)]
pub struct MapSizing {
    /// Map size when the store is created (bytes).
    pub initial: usize,
    /// The map is never grown past this (bytes).
    pub max: usize,
}

/// Store failures. [`StoreError::is_full`] tells "the disk or map is full"
/// (the batch was not written; retry later) from other failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("LMDB error: {0}")]
    Lmdb(#[from] heed::Error),
    #[error("data directory was written by format version {found}; this tallyd reads format version {FORMAT_VERSION} only")]
    IncompatibleFormat { found: u32 },
    #[error(
        "data directory was written by format {found} (anchoring v1: anchor intent and counter base); this tallyd \
         writes format {FORMAT_VERSION} (anchoring v2: closed counter values, owner key, log identity) and cannot read it. \
         Export the log with the old tallyd (tally export), keep the bundle, and start this tallyd on a new data directory"
    )]
    AnchoringV1 { found: u32 },
    #[error("store metadata is corrupt: {0}")]
    CorruptMeta(&'static str),
    #[error(transparent)]
    ContentKeys(#[from] ContentKeysError),
    /// Start-up: the `head` meta value and the frontier disagree on the size.
    #[error("store is inconsistent: head says {head} records, the Merkle frontier {frontier}")]
    HeadFrontierMismatch { head: u64, frontier: u64 },
    /// Start-up: the `head` meta value does not name the last stored record
    /// (its seq and entry hash).
    #[error("store is inconsistent: head says {head} records, last stored record is {last:?}")]
    HeadRecordMismatch { head: u64, last: Option<u64> },
    /// [`Store::verify`]: a stored record's header does not parse.
    #[error("store is inconsistent: seq {seq}: {source}")]
    RecordUnreadable {
        seq: u64,
        source: tally_attest::record::RecordError,
    },
    /// Start-up: the `content` database holds a row at or past the head.
    #[error(
        "store is inconsistent: a content row for seq {seq}, but the log holds {size} records"
    )]
    ContentPastHead { seq: u64, size: u64 },
    /// A stored record's body does not parse as the record format says.
    #[error("store is inconsistent: seq {seq}: {source}")]
    BodyUnreadable {
        seq: u64,
        source: tally_attest::content::ContentError,
    },
    /// [`Store::verify`]: the record at `seq` is not the next one of the
    /// chain (a gap in the seqs, a wrong seq or `prev_hash`).
    #[error("store is inconsistent: chain broken at seq {seq}")]
    ChainBroken { seq: u64 },
    /// [`Store::verify`]: the `head` meta value or the frontier does not
    /// describe the `records` stored records.
    #[error("store is inconsistent: head does not match the records (head says {head} records, {records} are stored)")]
    HeadMismatch { head: u64, records: u64 },
    /// [`Store::verify`]: every attempt to open the read snapshots of the
    /// check's threads saw a commit in between (a writer is running on the
    /// store; `tallyd check` runs with the daemon stopped).
    #[error("the store kept committing while the check opened its read snapshots ({tries} tries); is tallyd running on this data directory?")]
    SnapshotMoving { tries: u32 },
    /// [`Store::verify`]: the `times` index does not describe the records,
    /// so a `since` read could skip records that match (docs/DESIGN.md,
    /// section 4c). The records and their proofs are not affected.
    #[error(
        "the receive-time index (the store's `times` database) does not match the records: {0}. \
         Reads with --since could skip records that match; the records themselves are intact. \
         Rebuild the index from the records: with tallyd stopped, run `tallyd check --rebuild-times` \
         (docs/OPERATIONS.md, section 6a)"
    )]
    TimesUnsound(TimesFault),
    /// [`Store::append`]: a batch built on another state than the committed
    /// one (nothing was written).
    #[error(
        "store is inconsistent: a batch built on {base} records was offered to a log of {size}"
    )]
    StaleBatch { base: u64, size: u64 },
    #[error("the store's map is at its configured maximum of {max} bytes (map_max_bytes)")]
    MapAtMaximum { max: usize },
    /// A commit failed for lack of disk space or quota (`ENOSPC`, `EDQUOT`,
    /// or LMDB's `EIO` for a short write on a full file system): nothing of
    /// it was stored.
    #[error(transparent)]
    OutOfSpace(#[from] OutOfSpace),
    #[error("Merkle tree: {0}")]
    Merkle(#[from] MerkleError),
    /// [`Store::open`]: LMDB found the file damaged (a meta page, a B-tree
    /// page), or the head does not agree with the records: nothing is served.
    #[error(
        "the store {} is damaged: {detail}. tallyd will not serve it: keep a copy for investigation and \
         restore the data directory from a backup (docs/OPERATIONS.md, section 6a)",
        .file.display()
    )]
    Damaged {
        file: PathBuf,
        detail: Box<StoreError>,
    },
}

impl StoreError {
    /// Errors that say the store's file is damaged (LMDB's own checks of its
    /// pages, or the head against the records), not that it is unavailable.
    fn is_damage(&self) -> bool {
        use heed::MdbError as M;
        matches!(
            self,
            StoreError::Lmdb(heed::Error::Mdb(
                M::Corrupted | M::Invalid | M::PageNotFound | M::VersionMismatch | M::Panic
            )) | StoreError::CorruptMeta(_)
                | StoreError::HeadFrontierMismatch { .. }
                | StoreError::HeadRecordMismatch { .. }
                | StoreError::ContentPastHead { .. }
                | StoreError::Merkle(_)
        )
    }

    /// True when the write failed for lack of space (disk, quota or map).
    pub fn is_full(&self) -> bool {
        match self {
            StoreError::MapAtMaximum { .. } | StoreError::OutOfSpace(_) => true,
            StoreError::Lmdb(heed::Error::Mdb(heed::MdbError::MapFull)) => true,
            StoreError::Lmdb(heed::Error::Io(err)) => is_out_of_space(err),
            _ => false,
        }
    }
}

/// The LMDB environment and its databases.
#[derive(Debug)]
pub struct Store {
    env: Env<WithoutTls>,
    /// The environment's directory: where a full disk is measured.
    dir: PathBuf,
    records: SeqDb,
    /// `seq -> sealed opening` (DESIGN 3b), for records with content not
    /// erased; written in the records' transaction.
    content: SeqDb,
    /// One key per record, beside LMDB (DESIGN 3b): destroyed on erasure.
    content_keys: ContentKeys,
    meta: MetaDb,
    anchors: SeqDb,
    tree: TreeDb,
    times: TimesDb,
    /// The running maximum of the indexed receive times (the last `times`
    /// entry's); only the writer changes it, and only after a commit.
    time_max: Mutex<Option<i64>>,
    /// The Merkle tree's right edge as of the last commit; only the writer
    /// changes it, and only after a successful commit.
    frontier: Mutex<Frontier>,
    log_id: [u8; 16],
    sizing: MapSizing,
    /// Readers hold this shared while a read transaction is open; the writer
    /// takes it exclusively to resize the map, which LMDB allows only while
    /// no transaction is active in the process.
    resize_gate: RwLock<()>,
    /// Where the map is, for the madvise of bulk reads (`map_advice.rs`);
    /// forgotten on every resize.
    map_region: map_advice::RegionCache,
    /// Bytes committed since the writer last dropped the map's pages.
    committed_since_drop: Mutex<usize>,
}

impl Store {
    /// Opens (creating if needed) the store under `dir`, checks its format
    /// version and its head against the last record.
    pub fn open(dir: &Path, sizing: MapSizing) -> Result<Store, StoreError> {
        Store::open_with(dir, sizing, false)
    }

    /// [`Store::open`], first dropping the `times` index when
    /// `rebuild_times` (it is then rebuilt from the records, as for a store
    /// written before it): the repair `tallyd check --rebuild-times` runs.
    /// The index is dropped before it is read, so an index damaged in any
    /// way can be rebuilt.
    pub fn open_with(
        dir: &Path,
        sizing: MapSizing,
        rebuild_times: bool,
    ) -> Result<Store, StoreError> {
        Store::open_checked(dir, sizing, rebuild_times).map_err(|err| {
            if err.is_damage() {
                StoreError::Damaged {
                    file: dir.join("data.mdb"),
                    detail: Box::new(err),
                }
            } else {
                err
            }
        })
    }

    fn open_checked(
        dir: &Path,
        sizing: MapSizing,
        rebuild_times: bool,
    ) -> Result<Store, StoreError> {
        fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options
            .map_size(sizing.initial)
            .max_dbs(6)
            .max_readers(1024);
        // SAFETY: heed requires that the same environment is not opened twice
        // in one process with different options, and that the files are not
        // modified from outside LMDB. The daemon holds an exclusive lock on the
        // data directory (see `datadir::DataDirLock`) before it opens the store.
        let env = unsafe { options.open(dir) }?;
        let created = env.create_databases_and_commit(env.write_txn()?, |opener, wtxn| {
            let records = opener.create_database(wtxn, Some("records"))?;
            let meta = opener.create_database(wtxn, Some("meta"))?;
            let anchors = opener.create_database(wtxn, Some("anchors"))?;
            let tree = opener.create_database(wtxn, Some("tree"))?;
            let times = opener.create_database(wtxn, Some("times"))?;
            let content = opener.create_database(wtxn, Some("content"))?;
            Ok::<_, heed::Error>(CommitOrAbort::<_, std::convert::Infallible>::Commit((
                records, meta, anchors, tree, times, content,
            )))
        })?;
        type Databases = (SeqDb, MetaDb, SeqDb, TreeDb, TimesDb, SeqDb);
        let (records, meta, anchors, tree, times, content): Databases = match created {
            CommitOrAbort::Commit(databases) => databases,
            CommitOrAbort::Abort(never) => match never {},
        };
        let mut wtxn = env.write_txn()?;
        let log_id = match meta.get(&wtxn, META_FORMAT_VERSION)? {
            None => {
                if !records.is_empty(&wtxn)? {
                    return Err(StoreError::CorruptMeta(
                        "records exist but no format version",
                    ));
                }
                // A key file beside a store never committed: left by a crash
                // of a first start between creating the key file and
                // committing the log id it was made for. No record used it.
                forget_orphan_keys(dir)?;
                let log_id: [u8; 16] = rand::random();
                meta.put(
                    &mut wtxn,
                    META_FORMAT_VERSION,
                    &FORMAT_VERSION.to_be_bytes(),
                )?;
                meta.put(&mut wtxn, META_LOG_ID, &log_id)?;
                meta.put(&mut wtxn, META_HEAD, &encode_head(Head::EMPTY.into()))?;
                meta.put(&mut wtxn, META_FRONTIER, &Frontier::new().to_bytes())?;
                log_id
            }
            Some(version) => {
                if check_format_version(version)? == FORMAT_BEFORE_CONTENT {
                    meta.put(
                        &mut wtxn,
                        META_FORMAT_VERSION,
                        &FORMAT_VERSION.to_be_bytes(),
                    )?;
                    tracing::info!(
                        from = FORMAT_BEFORE_CONTENT,
                        to = FORMAT_VERSION,
                        "upgraded the store: content is now committed, not chained, for new records"
                    );
                }
                meta.get(&wtxn, META_LOG_ID)?
                    .and_then(|id| <[u8; 16]>::try_from(id).ok())
                    .ok_or(StoreError::CorruptMeta("log_id missing or not 16 bytes"))?
            }
        };
        let frontier = match meta.get(&wtxn, META_FRONTIER)? {
            Some(bytes) => Frontier::from_bytes(bytes)?,
            None => return Err(StoreError::CorruptMeta("frontier missing")),
        };
        let size = match meta.get(&wtxn, META_HEAD)? {
            Some(head) => {
                records::decode_head(head, [0; 32])
                    .ok_or(StoreError::CorruptMeta("head is not 40 bytes"))?
                    .size
            }
            None => return Err(StoreError::CorruptMeta("head missing")),
        };
        // The key file is created (or checked against this log) before the
        // upgrade commits: a refused key file leaves a format-4 store as it was.
        let content_keys = ContentKeys::open(dir, &log_id, size)?;
        wtxn.commit()?;
        let store = Store {
            env,
            dir: dir.to_owned(),
            records,
            content,
            content_keys,
            meta,
            anchors,
            tree,
            times,
            time_max: Mutex::new(None),
            frontier: Mutex::new(frontier),
            log_id,
            sizing,
            resize_gate: RwLock::new(()),
            map_region: Default::default(),
            committed_since_drop: Mutex::new(0),
        };
        store.check_head()?;
        // An erasure committed before a crash whose keys were not yet
        // destroyed: destroyed now, before anything is served (DESIGN 3b).
        if store.shred_pending()?.is_some() {
            tracing::warn!(
                "an erasure's keys were not destroyed before tallyd stopped: destroying them now"
            );
            store.finish_shred()?;
        }
        if rebuild_times {
            let dropped = store.drop_times()?;
            tracing::warn!(
                entries = dropped,
                "dropped the receive-time index to rebuild it from the records"
            );
        }
        // A store written before the time index (or appended to by such a
        // tallyd since): index what it lacks now, once.
        let indexed = store.index_times()?;
        if indexed > 0 {
            tracing::info!(
                records = indexed,
                "indexed the receive times of records written before the time index"
            );
        }
        let max = {
            let _gate = store.read_gate();
            let rtxn = store.env.read_txn()?;
            store.times_max(&rtxn)?
        };
        *store.time_max_lock() = max;
        Ok(store)
    }

    /// The environment's directory (`<data_dir>/store`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A failed write of about `incoming` bytes: [`StoreError::OutOfSpace`]
    /// when the disk is full (see `space.rs`), else unchanged.
    fn classify(&self, err: StoreError, incoming: usize) -> StoreError {
        match err {
            StoreError::Lmdb(heed::Error::Io(io)) => {
                match OutOfSpace::classify(&self.dir, io, incoming) {
                    Ok(full) => StoreError::OutOfSpace(full),
                    Err(io) => StoreError::Lmdb(heed::Error::Io(io)),
                }
            }
            other => other,
        }
    }

    /// The content key file (DESIGN 3b).
    pub fn content_keys(&self) -> &ContentKeys {
        &self.content_keys
    }

    /// The log's random identity.
    pub fn log_id(&self) -> [u8; 16] {
        self.log_id
    }

    /// The secret keying the ack journal's frame tags (crate::journal),
    /// created on first use.
    pub fn journal_key(&self) -> Result<[u8; 32], StoreError> {
        let _gate = self.read_gate();
        let mut wtxn = self.env.write_txn()?;
        if let Some(key) = self.meta.get(&wtxn, META_JOURNAL_KEY)? {
            return <[u8; 32]>::try_from(key)
                .map_err(|_| StoreError::CorruptMeta("journal_key is not 32 bytes"));
        }
        let key: [u8; 32] = rand::random();
        self.meta.put(&mut wtxn, META_JOURNAL_KEY, &key)?;
        wtxn.commit()?;
        Ok(key)
    }

    /// A small write transaction outside the sequencer, under the resize gate.
    fn write_meta(
        &self,
        write: impl FnOnce(&Store, &mut heed::RwTxn<'_>) -> Result<(), heed::Error>,
    ) -> Result<(), StoreError> {
        let _gate = self.read_gate();
        let written = (|| {
            let mut wtxn = self.env.write_txn()?;
            write(self, &mut wtxn)?;
            wtxn.commit()
        })();
        written.map_err(|err| self.classify(err.into(), 0))
    }

    fn time_max_lock(&self) -> std::sync::MutexGuard<'_, Option<i64>> {
        self.time_max
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_gate(&self) -> RwLockReadGuard<'_, ()> {
        self.resize_gate
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Removes the key file of a store that has no log id yet (see its caller).
fn forget_orphan_keys(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(content_keys::FILE_NAME);
    match fs::remove_file(&path) {
        Ok(()) => {
            tracing::warn!(path = %path.display(), "removed a content key file left by an interrupted first start");
            Ok(())
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::ContentKeys(ContentKeysError::Io {
            path,
            source,
        })),
    }
}

/// The stored `format_version`, when it is one this tallyd reads (the
/// current one, or the one before content, upgraded at open), or a named
/// refusal.
fn check_format_version(stored: &[u8]) -> Result<u32, StoreError> {
    let found = <[u8; 4]>::try_from(stored)
        .map(u32::from_be_bytes)
        .map_err(|_| StoreError::CorruptMeta("format_version is not 4 bytes"))?;
    if (1..FORMAT_BEFORE_CONTENT).contains(&found) {
        return Err(StoreError::AnchoringV1 { found });
    }
    if found != FORMAT_VERSION && found != FORMAT_BEFORE_CONTENT {
        return Err(StoreError::IncompatibleFormat { found });
    }
    Ok(found)
}

/// The stored log identity JSON as text.
fn identity_text(stored: Option<&[u8]>) -> Result<Option<String>, StoreError> {
    stored
        .map(|bytes| {
            String::from_utf8(bytes.to_vec())
                .map_err(|_| StoreError::CorruptMeta("identity is not UTF-8"))
        })
        .transpose()
}
