//! The LMDB store: the chain's records and the log's metadata.
//!
//! Contract: [`Store::append`] returns only after the batch is committed and
//! fsynced; a batch is all-or-nothing. One writer (the sequencer's commit thread) calls
//! `append`; any number of tasks read concurrently.
//!
//! Key layout (docs/DESIGN.md has the full description):
//!
//! | database  | key                   | value                                  |
//! |-----------|-----------------------|----------------------------------------|
//! | `records` | seq, u64 big-endian   | the record bytes, exactly as hashed    |
//! | `meta`    | `"format_version"`    | u32 big-endian                         |
//! | `meta`    | `"log_id"`            | 16 random bytes                        |
//! | `meta`    | `"head"`              | size u64 big-endian \|\| head hash (32) |
//! | `anchors` | TPM counter, u64 BE   | `AnchorRecord` protobuf (attest::anchor), the bytes hashed |
//! | `meta`    | `"identity"`          | the log identity JSON (attest::identity), written with the genesis anchor |
//! | `meta`    | `"pending_checkpoint"` | counter u64 BE \|\| the signed checkpoint about to be certified at it; deleted with the anchor's commit |
//! | `tree`    | last leaf u64 BE \|\| level u8 | hash of the complete Merkle subtree (level >= 4) |
//! | `meta`    | `"frontier"`          | the Merkle tree's right edge (attest::merkle::Frontier) |
//! | `meta`    | `"journal_key"`       | 32 random bytes keying the ack journal's frame tags |
//!
//! Merkle nodes of levels 0-3 are not stored: a proof recomputes them from
//! the records (level 0 is a record's entry hash).
//!
//! Two threads write: the sequencer (records, `head`) and the anchorer
//! (anchors and, with the genesis anchor, `identity`; one small transaction
//! per anchor). No meta key authorizes anything about the TPM counter: an
//! anchor is committed only with evidence at its counter value. LMDB
//! serialises write transactions; both open theirs under the resize gate.
//!
//! Commit order of a batch: records are put with `MDB_APPEND` in seq order,
//! then `head`, in one write transaction; the commit fsyncs the data pages and
//! then the meta page. A crash at any point leaves either the whole batch or
//! none of it, and `head` always agrees with the last record.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};

use heed::types::{Bytes, Str, U64};
use heed::{
    byteorder::BigEndian, CommitOrAbort, Database, Env, EnvOpenOptions, PutFlags, WithoutTls,
};
use tally_attest::merkle::{self, Frontier, MerkleError};
use tally_attest::{entry_hash, Hash, RecordHeader, GENESIS_PREV};

mod anchors;

pub use anchors::anchor_size;

/// Version of the on-disk layout described above. A data directory written
/// with another version is refused, never silently reinterpreted.
pub const FORMAT_VERSION: u32 = 4;

const META_FORMAT_VERSION: &str = "format_version";
const META_LOG_ID: &str = "log_id";
const META_HEAD: &str = "head";
const META_IDENTITY: &str = "identity";
const META_PENDING_CHECKPOINT: &str = "pending_checkpoint";
const META_FRONTIER: &str = "frontier";
const META_JOURNAL_KEY: &str = "journal_key";

/// A database keyed by a big-endian u64 (seq or counter value).
type SeqDb = Database<'static, U64<BigEndian>, Bytes>;
/// The metadata database, keyed by name.
type MetaDb = Database<'static, Str, Bytes>;
/// Merkle subtree hashes, keyed by level || index.
type TreeDb = Database<'static, Bytes, Bytes>;

/// Merkle nodes below this level are not stored: a proof recomputes one
/// from at most 8 records. Storing only levels >= 4 costs one put per 16
/// records instead of one per record (the tree's puts were a fifth of the
/// writer's CPU), and keeps proofs at O(log n) reads plus a few records.
const STORED_MIN_LEVEL: u8 = 4;

/// Key of Merkle node `(level, index)`: the number of the last leaf it
/// covers (the leaf whose append completes it), big-endian, then its level.
/// Nodes are completed in exactly this order (leaf by leaf, bottom up), so
/// every insert lands at the end of the database and can use MDB_APPEND.
fn tree_key(level: u8, index: u64) -> [u8; 9] {
    let last_leaf = (index.wrapping_add(1) << level).wrapping_sub(1);
    let mut key = [0u8; 9];
    key[..8].copy_from_slice(&last_leaf.to_be_bytes());
    key[8] = level;
    key
}

/// The log's size, the entry hash of its last record, and its Merkle root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Number of records; the next seq.
    pub size: u64,
    /// Entry hash of record `size - 1`; [`GENESIS_PREV`] when empty.
    pub hash: Hash,
    /// RFC 6962 root of the Merkle tree over the `size` entry hashes.
    pub root: Hash,
}

/// A position in the chain: the number of records and the last entry hash
/// (which pins every record before it). A [`Head`] without its Merkle root,
/// which costs a hash per level of the tree to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tip {
    pub size: u64,
    pub hash: Hash,
}

impl Tip {
    /// The `head` meta value: size u64 big-endian || hash.
    fn encode(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[..8].copy_from_slice(&self.size.to_be_bytes());
        out[8..].copy_from_slice(&self.hash);
        out
    }
}

impl From<Head> for Tip {
    fn from(head: Head) -> Tip {
        Tip {
            size: head.size,
            hash: head.hash,
        }
    }
}

impl Head {
    const EMPTY: Head = Head {
        size: 0,
        hash: GENESIS_PREV,
        root: merkle::EMPTY_ROOT,
    };

    /// The stored (size, hash); the root comes from the frontier.
    fn decode(bytes: &[u8], root: Hash) -> Option<Head> {
        let (size, hash) = bytes.split_first_chunk::<8>()?;
        Some(Head {
            size: u64::from_be_bytes(*size),
            hash: hash.try_into().ok()?,
            root,
        })
    }
}

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
    #[error("store is inconsistent: {0}")]
    Inconsistent(String),
    #[error("the store's map is at its configured maximum of {max} bytes")]
    MapAtMaximum { max: usize },
    #[error("Merkle tree: {0}")]
    Merkle(#[from] MerkleError),
    #[error("ack journal: {0}")]
    Journal(std::io::Error),
}

impl StoreError {
    /// True when the write failed for lack of space (disk, quota or map).
    pub fn is_full(&self) -> bool {
        match self {
            StoreError::MapAtMaximum { .. } => true,
            StoreError::Lmdb(heed::Error::Mdb(heed::MdbError::MapFull)) => true,
            StoreError::Lmdb(heed::Error::Io(err)) | StoreError::Journal(err) => matches!(
                err.raw_os_error(),
                Some(code) if code == nix::libc::ENOSPC || code == nix::libc::EDQUOT
            ),
            _ => false,
        }
    }
}

/// A record read back from the store.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub seq: u64,
    pub bytes: Vec<u8>,
}

/// The LMDB environment and its databases.
#[derive(Debug)]
pub struct Store {
    env: Env<WithoutTls>,
    records: SeqDb,
    meta: MetaDb,
    anchors: SeqDb,
    tree: TreeDb,
    /// The Merkle tree's right edge as of the last commit; only the writer
    /// changes it, and only after a successful commit.
    frontier: std::sync::Mutex<Frontier>,
    log_id: [u8; 16],
    sizing: MapSizing,
    /// Readers hold this shared while a read transaction is open; the writer
    /// takes it exclusively to resize the map, which LMDB allows only while
    /// no transaction is active in the process.
    resize_gate: RwLock<()>,
}

/// A write batch: records chained onto a committed state, the Merkle nodes
/// they complete, and the state after them. The sequencer builds it (every
/// hash is computed here, while the previous batch commits) and
/// [`Store::append`] writes it unchanged.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The committed state the batch builds on.
    base: Tip,
    base_frontier: Frontier,
    /// Concatenated record bytes.
    bytes: Vec<u8>,
    /// (seq, end offset in `bytes`) of each record.
    records: Vec<(u64, usize)>,
    /// (level, index, hash) of the stored Merkle nodes the records complete.
    nodes: Vec<(u8, u64, Hash)>,
    /// Size and last entry hash after the records (the root is derived from
    /// `frontier` when asked for).
    head: Tip,
    frontier: Frontier,
}

impl Batch {
    /// An empty batch on the state `head`, whose Merkle edge is `frontier`.
    pub fn new(head: impl Into<Tip>, frontier: Frontier) -> Batch {
        let head = head.into();
        Batch {
            base: head,
            base_frontier: frontier.clone(),
            bytes: Vec::new(),
            records: Vec::new(),
            nodes: Vec::new(),
            head,
            frontier,
        }
    }

    /// Empties the batch (keeping its buffers) and bases it on `head`.
    pub fn restart(&mut self, head: impl Into<Tip>, frontier: &Frontier) {
        let head = head.into();
        self.base = head;
        self.base_frontier.clone_from(frontier);
        self.bytes.clear();
        self.records.clear();
        self.nodes.clear();
        self.head = head;
        self.frontier.clone_from(frontier);
    }

    /// Appends one record: its header (the next seq, the previous entry
    /// hash), then the body `write_body` appends. Returns the record's seq
    /// and entry hash. Fails only when the Merkle tree is full (2^64
    /// leaves), leaving the batch unchanged.
    pub fn push(
        &mut self,
        write_body: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(u64, Hash), MerkleError> {
        let start = self.bytes.len();
        let seq = self.head.size;
        RecordHeader {
            seq,
            prev_hash: self.head.hash,
        }
        .encode_into(&mut self.bytes);
        write_body(&mut self.bytes);
        let hash = entry_hash(&self.bytes[start..]);
        let nodes = &mut self.nodes;
        let pushed = self.frontier.push(hash, |level, index, node| {
            if level >= STORED_MIN_LEVEL {
                nodes.push((level, index, *node));
            }
        });
        if let Err(err) = pushed {
            self.bytes.truncate(start);
            return Err(err);
        }
        self.records.push((seq, self.bytes.len()));
        self.head.size = seq + 1;
        self.head.hash = hash;
        Ok((seq, hash))
    }

    /// Whether `count` more records fit in the log (2^64 - 1 at most).
    pub fn has_room(&self, count: usize) -> bool {
        u64::try_from(count)
            .ok()
            .and_then(|count| self.head.size.checked_add(count))
            .is_some_and(|end| end < u64::MAX)
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes of the records.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// The committed state the batch builds on.
    pub fn base(&self) -> (Tip, &Frontier) {
        (self.base, &self.base_frontier)
    }

    /// The state after the batch's records, root included (a hash per
    /// level of the tree).
    pub fn head(&self) -> Head {
        Head {
            size: self.head.size,
            hash: self.head.hash,
            root: self.frontier.root(),
        }
    }

    /// The state after the batch's records, without the root.
    pub fn tip(&self) -> Tip {
        self.head
    }

    /// The Merkle edge after the batch's records.
    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    /// Each record's seq and bytes, in order.
    pub fn records(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        let starts = std::iter::once(0).chain(self.records.iter().map(|&(_, end)| end));
        self.records
            .iter()
            .zip(starts)
            .map(|(&(seq, end), start)| (seq, &self.bytes[start..end]))
    }

    /// Appends `next`, a batch built on this batch's head, keeping this
    /// batch's base: the two then commit as one. Fails, changing nothing,
    /// when `next` is built on another state.
    pub fn absorb(&mut self, next: &Batch) -> Result<(), StoreError> {
        if next.base != self.head {
            return Err(StoreError::Inconsistent(format!(
                "a batch built on {} records cannot follow one ending at {}",
                next.base.size, self.head.size
            )));
        }
        let offset = self.bytes.len();
        self.bytes.extend_from_slice(&next.bytes);
        self.records
            .extend(next.records.iter().map(|&(seq, end)| (seq, offset + end)));
        self.nodes.extend_from_slice(&next.nodes);
        self.head = next.head;
        self.frontier.clone_from(&next.frontier);
        Ok(())
    }
}

impl Store {
    /// Opens (creating if needed) the store under `dir`, checks its format
    /// version and its head against the last record.
    pub fn open(dir: &Path, sizing: MapSizing) -> Result<Store, StoreError> {
        fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options
            .map_size(sizing.initial)
            .max_dbs(4)
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
            Ok::<_, heed::Error>(CommitOrAbort::<_, std::convert::Infallible>::Commit((
                records, meta, anchors, tree,
            )))
        })?;
        let (records, meta, anchors, tree): (SeqDb, MetaDb, SeqDb, TreeDb) = match created {
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
                let log_id: [u8; 16] = rand::random();
                meta.put(
                    &mut wtxn,
                    META_FORMAT_VERSION,
                    &FORMAT_VERSION.to_be_bytes(),
                )?;
                meta.put(&mut wtxn, META_LOG_ID, &log_id)?;
                meta.put(&mut wtxn, META_HEAD, &Tip::from(Head::EMPTY).encode())?;
                meta.put(&mut wtxn, META_FRONTIER, &Frontier::new().to_bytes())?;
                log_id
            }
            Some(version) => {
                let version = <[u8; 4]>::try_from(version)
                    .map_err(|_| StoreError::CorruptMeta("format_version is not 4 bytes"))?;
                let found = u32::from_be_bytes(version);
                if (1..FORMAT_VERSION).contains(&found) {
                    return Err(StoreError::AnchoringV1 { found });
                }
                if found != FORMAT_VERSION {
                    return Err(StoreError::IncompatibleFormat { found });
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
        wtxn.commit()?;
        let store = Store {
            env,
            records,
            meta,
            anchors,
            tree,
            frontier: std::sync::Mutex::new(frontier),
            log_id,
            sizing,
            resize_gate: RwLock::new(()),
        };
        store.check_head()?;
        Ok(store)
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

    /// The committed head.
    pub fn head(&self) -> Result<Head, StoreError> {
        let _gate = self.read_gate();
        let rtxn = self.env.read_txn()?;
        let bytes = self
            .meta
            .get(&rtxn, META_HEAD)?
            .ok_or(StoreError::CorruptMeta("head missing"))?;
        Head::decode(bytes, self.frontier().root())
            .ok_or(StoreError::CorruptMeta("head is not 40 bytes"))
    }

    /// Start-up check: `head` agrees with the last stored record.
    fn check_head(&self) -> Result<(), StoreError> {
        let head = self.head()?;
        let _gate = self.read_gate();
        let rtxn = self.env.read_txn()?;
        let last = self.records.last(&rtxn)?;
        if self.frontier().size() != head.size {
            return Err(StoreError::Inconsistent(format!(
                "head says {} records, the Merkle frontier {}",
                head.size,
                self.frontier().size()
            )));
        }
        match (head.size, last) {
            (0, None) => Ok(()),
            (size, Some((seq, bytes))) if seq + 1 == size && entry_hash(bytes) == head.hash => {
                Ok(())
            }
            (size, last) => Err(StoreError::Inconsistent(format!(
                "head says {size} records, last stored record is {:?}",
                last.map(|(seq, _)| seq)
            ))),
        }
    }

    /// An empty batch on the committed state.
    pub fn start_batch(&self) -> Result<Batch, StoreError> {
        Ok(Batch::new(self.head()?, self.frontier().clone()))
    }

    /// Commits a batch built on the committed state (its records, the Merkle
    /// nodes they complete, the frontier and head after them). Grows the map
    /// first when it is nearly full. All or nothing: on error nothing of the
    /// batch is stored and the committed state is unchanged.
    pub fn append(&self, batch: &Batch) -> Result<(), StoreError> {
        self.append_all(&[batch])
    }

    /// Commits batches, each built on the one before and the first on the
    /// committed state, in one transaction: all or nothing.
    pub fn append_all(&self, batches: &[&Batch]) -> Result<(), StoreError> {
        let mut size = self.frontier().size();
        let mut bytes = 0;
        for batch in batches {
            if batch.base.size != size {
                return Err(StoreError::Inconsistent(format!(
                    "a batch built on {} records was offered to a log of {size}",
                    batch.base.size
                )));
            }
            size = batch.head.size;
            bytes += batch.bytes.len();
        }
        let Some(last) = batches.last() else {
            return Ok(());
        };
        self.grow_if_needed(bytes)?;
        match self.try_append(batches, last) {
            Err(StoreError::Lmdb(heed::Error::Mdb(heed::MdbError::MapFull))) => {
                self.grow(bytes)?;
                self.try_append(batches, last)
            }
            other => other,
        }
    }

    fn try_append(&self, batches: &[&Batch], last: &Batch) -> Result<(), StoreError> {
        let mut wtxn = self.env.write_txn()?;
        // The same keys as `records` (u64 big-endian), encoded here on the
        // stack: heed's U64 codec allocates every key (5% of this thread).
        let records = self.records.remap_key_type::<Bytes>();
        for batch in batches {
            for (seq, record) in batch.records() {
                records.put_with_flags(&mut wtxn, PutFlags::APPEND, &seq.to_be_bytes(), record)?;
            }
            for (level, index, node) in &batch.nodes {
                self.tree.put_with_flags(
                    &mut wtxn,
                    PutFlags::APPEND,
                    &tree_key(*level, *index),
                    node,
                )?;
            }
        }
        self.meta
            .put(&mut wtxn, META_FRONTIER, &last.frontier.to_bytes())?;
        self.meta.put(&mut wtxn, META_HEAD, &last.head.encode())?;
        wtxn.commit()?;
        self.frontier().clone_from(&last.frontier);
        Ok(())
    }

    fn frontier(&self) -> std::sync::MutexGuard<'_, Frontier> {
        self.frontier
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `prove` with a Merkle node store over one read transaction:
    /// level 0 from the records' entry hashes, higher levels from `tree`.
    fn with_nodes<T>(
        &self,
        prove: impl FnOnce(&dyn merkle::NodeStore) -> Result<T, MerkleError>,
    ) -> Result<T, StoreError> {
        let _gate = self.read_gate();
        let rtxn = self.env.read_txn()?;
        let nodes = |level: u8, index: u64| -> Option<Hash> {
            if level < STORED_MIN_LEVEL {
                // Recomputed from at most 2^(STORED_MIN_LEVEL-1) records.
                let first = index.checked_shl(u32::from(level))?;
                let leaves: Option<Vec<Hash>> = (first..first + (1u64 << level))
                    .map(|seq| self.records.get(&rtxn, &seq).ok().flatten().map(entry_hash))
                    .collect();
                return Some(merkle::root_from_leaf_hashes(&leaves?));
            }
            let bytes = self
                .tree
                .get(&rtxn, &tree_key(level, index))
                .ok()
                .flatten()?;
            <[u8; 32]>::try_from(bytes).ok()
        };
        Ok(prove(&nodes)?)
    }

    /// The Merkle root of the first `size` records.
    pub fn root_at(&self, size: u64) -> Result<Hash, StoreError> {
        self.with_nodes(|nodes| merkle::root(nodes, size))
    }

    /// The inclusion proof of record `seq` in the tree of the first `size` records.
    pub fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        self.with_nodes(|nodes| merkle::inclusion_proof(nodes, seq, size))
    }

    /// The consistency proof from the tree of `old_size` records to `new_size`.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, StoreError> {
        self.with_nodes(|nodes| merkle::consistency_proof(nodes, old_size, new_size))
    }

    /// Bytes in use by the environment (pages up to the last used one).
    pub fn used_bytes(&self) -> u64 {
        let info = self.env.info();
        (info.last_page_number as u64 + 1) * page_size()
    }

    /// Current map size in bytes.
    pub fn map_bytes(&self) -> u64 {
        self.env.info().map_size as u64
    }

    fn grow_if_needed(&self, incoming: usize) -> Result<(), StoreError> {
        let info = self.env.info();
        let used = (info.last_page_number + 1) * page_size() as usize;
        // LMDB needs room for copy-on-write pages of the batch as well as its
        // data: keep a margin of several times the batch plus a quarter of the map.
        if used + incoming * 4 + info.map_size / 4 > info.map_size {
            self.grow(incoming)?;
        }
        Ok(())
    }

    fn grow(&self, incoming: usize) -> Result<(), StoreError> {
        let current = self.env.info().map_size;
        if current >= self.sizing.max {
            return Err(StoreError::MapAtMaximum {
                max: self.sizing.max,
            });
        }
        // LMDB takes only whole pages (heed refuses other sizes).
        let page = page_size() as usize;
        let wanted = current
            .saturating_mul(2)
            .max(current.saturating_add(incoming.saturating_mul(8)));
        let new_size = wanted
            .div_ceil(page)
            .saturating_mul(page)
            .min(self.sizing.max / page * page);
        if new_size <= current {
            return Err(StoreError::MapAtMaximum {
                max: self.sizing.max,
            });
        }
        let _exclusive = self
            .resize_gate
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // SAFETY: LMDB allows resizing only when no transaction is active in
        // this process. Every read transaction is opened under a shared
        // `resize_gate` guard and the only writer is the caller's thread, so
        // holding the gate exclusively guarantees there is none.
        unsafe { self.env.resize(new_size) }?;
        tracing::info!(from = current, to = new_size, "grew the LMDB map");
        Ok(())
    }

    /// Reads records from `from` on: at most `max_records`, and no more once
    /// `max_bytes` are reached (but always at least one record, if any).
    pub fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let _gate = self.read_gate();
        let rtxn = self.env.read_txn()?;
        let mut out = Vec::with_capacity(max_records.min(4096));
        let mut bytes_read = 0;
        for entry in self.records.range(&rtxn, &(from..))?.take(max_records) {
            let (seq, bytes) = entry?;
            if !out.is_empty() && bytes_read + bytes.len() > max_bytes {
                break;
            }
            bytes_read += bytes.len();
            out.push(StoredRecord {
                seq,
                bytes: bytes.to_vec(),
            });
        }
        Ok(out)
    }

    /// Checks the records from 0 to the head: dense seqs, every link, and the
    /// head hash. Used by `tallyd check` and by tests.
    pub fn verify(&self) -> Result<Head, StoreError> {
        let _gate = self.read_gate();
        let rtxn = self.env.read_txn()?;
        let mut running = GENESIS_PREV;
        let mut size = 0u64;
        for entry in self.records.iter(&rtxn)? {
            let (seq, bytes) = entry?;
            let (header, _) = RecordHeader::parse(bytes)
                .map_err(|err| StoreError::Inconsistent(format!("seq {seq}: {err}")))?;
            if seq != size || header.seq != seq || header.prev_hash != running {
                return Err(StoreError::Inconsistent(format!(
                    "chain broken at seq {seq}"
                )));
            }
            running = entry_hash(bytes);
            size += 1;
        }
        // The head and the frontier from the same snapshot as the records:
        // a live store may commit meanwhile.
        let head_bytes = self
            .meta
            .get(&rtxn, META_HEAD)?
            .ok_or(StoreError::CorruptMeta("head missing"))?
            .to_vec();
        let frontier = Frontier::from_bytes(
            self.meta
                .get(&rtxn, META_FRONTIER)?
                .ok_or(StoreError::CorruptMeta("frontier missing"))?,
        )?;
        drop(rtxn);
        let head = Head::decode(&head_bytes, frontier.root())
            .ok_or(StoreError::CorruptMeta("head is not 40 bytes"))?;
        if head.size != size
            || head.hash != running
            || frontier.size() != size
            || self.root_at(size)? != head.root
        {
            return Err(StoreError::Inconsistent(
                "head does not match the records".into(),
            ));
        }
        Ok(head)
    }

    /// A small write transaction outside the sequencer, under the resize gate.
    fn write_meta(
        &self,
        write: impl FnOnce(&Store, &mut heed::RwTxn<'_>) -> Result<(), heed::Error>,
    ) -> Result<(), StoreError> {
        let _gate = self.read_gate();
        let mut wtxn = self.env.write_txn()?;
        write(self, &mut wtxn)?;
        wtxn.commit()?;
        Ok(())
    }

    fn read_gate(&self) -> RwLockReadGuard<'_, ()> {
        self.resize_gate
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|size| u64::try_from(size).ok())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: MapSizing = MapSizing {
        initial: 1 << 20,
        max: 1 << 30,
    };

    /// `n` records of `payload` bytes on the store's committed state, and
    /// their entry hashes.
    fn batch_of(store: &Store, n: usize, payload: usize) -> (Batch, Vec<Hash>) {
        let mut batch = store.start_batch().unwrap();
        let hashes = (0..n)
            .map(|_| {
                let (_, hash) = batch
                    .push(|bytes| bytes.extend(std::iter::repeat_n(b'x', payload)))
                    .unwrap();
                hash
            })
            .collect();
        (batch, hashes)
    }

    #[test]
    fn appends_survive_reopen_and_the_map_grows() {
        let dir = tempfile::tempdir().unwrap();
        let log_id;
        let mut head = Head::EMPTY;
        {
            let store = Store::open(dir.path(), SMALL).unwrap();
            log_id = store.log_id();
            // 64 batches of 100 records of 1 KiB: ~6.5 MiB through a 1 MiB map.
            for _ in 0..64 {
                let (batch, _) = batch_of(&store, 100, 1024);
                store.append(&batch).unwrap();
                head = batch.head();
            }
            assert!(store.map_bytes() > 1 << 20, "map should have grown");
        }
        let store = Store::open(dir.path(), SMALL).unwrap();
        assert_eq!(store.log_id(), log_id);
        assert_eq!(store.head().unwrap(), head);
        assert_eq!(store.verify().unwrap(), head);
        let page = store.read(6395, 10, usize::MAX).unwrap();
        assert_eq!(store.read(0, 1000, 5000).unwrap().len(), 4, "byte bound");
        assert_eq!(
            page.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (6395..6400).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_batch_larger_than_an_eighth_of_the_map_grows_it_by_whole_pages() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), SMALL).unwrap();
        // 300 records of 1,001 bytes: the map grows by 8 x the batch, which
        // is no multiple of the page size.
        let (batch, _) = batch_of(&store, 300, 1001);
        store.append(&batch).unwrap();
        assert_eq!(store.map_bytes() % page_size(), 0);
        assert_eq!(store.verify().unwrap(), batch.head());
    }

    #[test]
    fn the_stored_tree_matches_the_records_and_proves_inclusion_and_consistency() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), SMALL).unwrap();
        let mut head = Head::EMPTY;
        let mut leaves = Vec::new();
        // Uneven batches so subtrees complete across commits.
        for n in [1usize, 2, 7, 1, 13, 64, 3] {
            let (batch, hashes) = batch_of(&store, n, 10);
            leaves.extend(hashes);
            store.append(&batch).unwrap();
            head = batch.head();
            assert_eq!(head.root, merkle::root_from_leaf_hashes(&leaves));
            assert_eq!(store.head().unwrap(), head);
        }
        let size = leaves.len() as u64;
        assert_eq!(store.head().unwrap().root, head.root);
        for at in [1, 2, 3, 10, 24, 64, 90, size] {
            let root = store.root_at(at).unwrap();
            assert_eq!(root, merkle::root_from_leaf_hashes(&leaves[..at as usize]));
            for seq in [0, at / 2, at - 1] {
                let proof = store.inclusion_proof(seq, at).unwrap();
                merkle::verify_inclusion(seq, at, &leaves[seq as usize], &proof, &root).unwrap();
            }
            let proof = store.consistency_proof(at, size).unwrap();
            merkle::verify_consistency(at, size, &root, &head.root, &proof).unwrap();
        }
        // Reopened, the frontier continues where it was.
        drop(store);
        let store = Store::open(dir.path(), SMALL).unwrap();
        assert_eq!(store.head().unwrap(), head);
        assert_eq!(store.verify().unwrap(), head);
    }

    #[test]
    fn a_batch_built_on_a_stale_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), SMALL).unwrap();
        let (first, _) = batch_of(&store, 3, 10);
        let (stale, _) = batch_of(&store, 2, 10);
        store.append(&first).unwrap();
        let err = store.append(&stale).unwrap_err();
        assert!(matches!(err, StoreError::Inconsistent(_)), "{err}");
        assert_eq!(store.head().unwrap(), first.head());
        assert_eq!(store.verify().unwrap(), first.head());
    }

    #[test]
    fn map_at_maximum_is_a_full_error_and_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let tiny = MapSizing {
            initial: 1 << 20,
            max: 2 << 20,
        };
        let store = Store::open(dir.path(), tiny).unwrap();
        let mut head = Head::EMPTY;
        let err = loop {
            let (batch, _) = batch_of(&store, 50, 4000);
            match store.append(&batch) {
                Ok(()) => head = batch.head(),
                Err(err) => break err,
            }
        };
        assert!(err.is_full(), "{err}");
        assert_eq!(store.head().unwrap(), head);
        assert_eq!(store.verify().unwrap(), head);
    }

    #[test]
    fn other_format_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), SMALL).unwrap();
            let mut wtxn = store.env.write_txn().unwrap();
            store
                .meta
                .put(&mut wtxn, META_FORMAT_VERSION, &7u32.to_be_bytes())
                .unwrap();
            wtxn.commit().unwrap();
        }
        match Store::open(dir.path(), SMALL) {
            Err(StoreError::IncompatibleFormat { found: 7 }) => {}
            other => panic!("expected IncompatibleFormat, got {other:?}"),
        }
    }

    #[test]
    fn a_format_3_store_is_refused_naming_anchoring_v1_and_the_way_out() {
        //! Format 3 kept `anchor_intent` / `tpm_counter_base`; anchoring v2 cannot
        //! continue its anchors, so it is refused with what to do.
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), SMALL).unwrap();
            let mut wtxn = store.env.write_txn().unwrap();
            store
                .meta
                .put(&mut wtxn, META_FORMAT_VERSION, &3u32.to_be_bytes())
                .unwrap();
            wtxn.commit().unwrap();
        }
        let err = Store::open(dir.path(), SMALL).unwrap_err();
        assert!(
            matches!(err, StoreError::AnchoringV1 { found: 3 }),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("format 3"), "{message}");
        assert!(message.contains("anchoring v2"), "{message}");
        assert!(message.contains("export"), "{message}");
        assert!(message.contains("old tallyd"), "{message}");
    }
}
