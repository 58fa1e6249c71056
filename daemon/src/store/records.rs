//! The `records` database and the `head` meta value: the batch commit, the
//! reads, and the start-up check that the head agrees with the last record
//! (the whole-log check is `verify.rs`).

use heed::types::Bytes;
use heed::PutFlags;
use prost::Message;
use tally_attest::{entry_hash, Hash};
use tally_client::proto;

use super::times::TimeEntries;
use super::tree::tree_key;
use super::{
    Batch, Head, Store, StoreError, Tip, META_FRONTIER, META_HEAD, META_SHRED_PENDING,
    META_TIMES_SIZE,
};
use tally_attest::content::SeqRanges;

/// A record read back from the store.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub seq: u64,
    pub bytes: Vec<u8>,
    /// The record's opening (salt || content, DESIGN 3b), decrypted, when it
    /// has content not erased; filled by [`Store::scan`] (not by
    /// [`Store::read`], which serves the hashed bytes only). Not checked
    /// against the commitment here: serving hashes nothing.
    pub content: Option<Vec<u8>>,
}

/// The `head` meta value: size u64 big-endian || the entry hash of record
/// size - 1 ([`GENESIS_PREV`] when empty).
pub(super) fn encode_head(tip: Tip) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[..8].copy_from_slice(&tip.size.to_be_bytes());
    out[8..].copy_from_slice(&tip.hash);
    out
}

/// The `head` meta value read back, with `root`, the Merkle root (which is
/// not stored there: it comes from the frontier).
pub(super) fn decode_head(bytes: &[u8], root: Hash) -> Option<Head> {
    let (size, hash) = bytes.split_first_chunk::<8>()?;
    Some(Head {
        size: u64::from_be_bytes(*size),
        hash: hash.try_into().ok()?,
        root,
    })
}

impl Store {
    /// The committed head.
    pub fn head(&self) -> Result<Head, StoreError> {
        let _gate = self.read_gate();
        let rtxn = self.env.read_txn()?;
        let bytes = self
            .meta
            .get(&rtxn, META_HEAD)?
            .ok_or(StoreError::CorruptMeta("head missing"))?;
        decode_head(bytes, self.frontier().root())
            .ok_or(StoreError::CorruptMeta("head is not 40 bytes"))
    }

    /// Start-up check: `head` agrees with the last stored record and with
    /// the frontier's size.
    pub(super) fn check_head(&self) -> Result<(), StoreError> {
        let head = self.head()?;
        let _gate = self.read_gate();
        let rtxn = self.env.read_txn()?;
        let last = self.records.last(&rtxn)?;
        let frontier = self.frontier().size();
        if frontier != head.size {
            return Err(StoreError::HeadFrontierMismatch {
                head: head.size,
                frontier,
            });
        }
        // A content row at or past the head belongs to no record: the store
        // was emptied or cut behind LMDB's back (its records went, their
        // content did not). Refused here, not left to a replay's put.
        if let Some((seq, _)) = self.content.last(&rtxn)? {
            if seq >= head.size {
                return Err(StoreError::ContentPastHead {
                    seq,
                    size: head.size,
                });
            }
        }
        match (head.size, last) {
            (0, None) => Ok(()),
            (size, Some((seq, bytes))) if seq + 1 == size && entry_hash(bytes) == head.hash => {
                Ok(())
            }
            (size, last) => Err(StoreError::HeadRecordMismatch {
                head: size,
                last: last.map(|(seq, _)| seq),
            }),
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
            let base = batch.base().0.size;
            if base != size {
                return Err(StoreError::StaleBatch { base, size });
            }
            size = batch.tip().size;
            bytes += batch.byte_len();
        }
        let Some(last) = batches.last() else {
            return Ok(());
        };
        self.grow_if_needed(bytes)?;
        let appended = match self.try_append(batches, last) {
            Err(StoreError::Lmdb(heed::Error::Mdb(heed::MdbError::MapFull))) => {
                self.grow(bytes)?;
                self.try_append(batches, last)
            }
            other => other,
        };
        // A full disk (ENOSPC, or LMDB's EIO for a short write) is named as such.
        appended.map_err(|err| self.classify(err, bytes))?;
        self.committed(bytes);
        Ok(())
    }

    /// One write transaction, in this order (docs/DESIGN.md, section 5):
    /// every record with `MDB_APPEND` in seq order and every stored Merkle
    /// node the records complete (`MDB_APPEND` too: nodes are completed in
    /// key order), each batch's `times` entry if it raises the running
    /// maximum of receive times, then `frontier`, `times_size` and `head`; the commit fsyncs the data
    /// pages and then the meta page. A crash at any point leaves either the
    /// whole transaction or none of it, so `head` always agrees with the
    /// last record. The in-memory frontier follows only a successful commit.
    fn try_append(&self, batches: &[&Batch], last: &Batch) -> Result<(), StoreError> {
        let mut wtxn = self.env.write_txn()?;
        // The same keys as `records` (u64 big-endian), encoded here on the
        // stack: heed's U64 codec allocates every key (5% of this thread).
        let records = self.records.remap_key_type::<Bytes>();
        let content = self.content.remap_key_type::<Bytes>();
        let mut times = TimeEntries {
            max: *self.time_max_lock(),
        };
        let mut erased = SeqRanges::default();
        for batch in batches {
            times.put_batch(self, &mut wtxn, batch)?;
            for (seq, record, sealed) in batch.records_sealed() {
                let key = seq.to_be_bytes();
                records.put_with_flags(&mut wtxn, PutFlags::APPEND, &key, record)?;
                if !sealed.is_empty() {
                    content.put_with_flags(&mut wtxn, PutFlags::APPEND, &key, sealed)?;
                }
            }
            erased.extend(batch.erased());
            for (level, index, node) in batch.nodes() {
                self.tree.put_with_flags(
                    &mut wtxn,
                    PutFlags::APPEND,
                    &tree_key(*level, *index),
                    node,
                )?;
            }
        }
        // An erasure (DESIGN 3b, step 2): its content rows go (after every
        // put above, so a row of this transaction's own batches too), and
        // `shred_pending` says which keys the commit is to destroy next.
        if !erased.is_empty() {
            for &(from, to) in erased.ranges() {
                self.content.delete_range(&mut wtxn, &(from..to))?;
            }
            self.meta
                .put(&mut wtxn, META_SHRED_PENDING, &encode_erasure(&erased))?;
        }
        self.meta
            .put(&mut wtxn, META_FRONTIER, &last.frontier().to_bytes())?;
        self.meta
            .put(&mut wtxn, META_TIMES_SIZE, &last.tip().size.to_be_bytes())?;
        self.meta
            .put(&mut wtxn, META_HEAD, &encode_head(last.tip()))?;
        wtxn.commit()?;
        self.frontier().clone_from(last.frontier());
        *self.time_max_lock() = times.max;
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
                content: None,
            });
        }
        Ok(out)
    }
}

/// The `shred_pending` value: the `Erasure` encoding of the ranges.
pub(super) fn encode_erasure(ranges: &SeqRanges) -> Vec<u8> {
    proto::Erasure {
        erased: ranges
            .ranges()
            .iter()
            .map(|&(from_seq, to_seq)| proto::SeqRange { from_seq, to_seq })
            .collect(),
    }
    .encode_to_vec()
}
