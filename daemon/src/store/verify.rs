//! [`Store::verify`], the pass `tallyd check` runs over every record: dense
//! seqs and every link, then the head, the frontier and the Merkle root,
//! then the `times` index walked beside the records (`times_check.rs`).
//!
//! The pass is a three-stage pipeline over chunks of [`CHUNK`] records,
//! all slices into one read snapshot: while the entry hashes of chunk `k`
//! (with each record's parsed header and receive time, read while its bytes
//! are in that core's cache) are computed on every core
//! (`tally_attest::parallel`, the code `tally verify` uses), this thread
//! checks chunk `k - 1` in seq order with what was computed, then reads chunk `k + 1` from the
//! cursor. Only the hashing is parallel; every check that depends on the
//! order (each link, the `times` walk, the first fault named) runs on one
//! thread in seq order exactly as a one-record-at-a-time loop would, and a
//! read error is reported where that loop would have met it: after every
//! record before it was checked.
//!
//! Memory: the map is advised sequential for the pass, and the pages of a
//! chunk are dropped from this process once the chunk is checked
//! (`map_advice.rs`), so the file-backed RSS stays at a few chunks' pages
//! instead of growing to the store's size.

use std::mem;

use tally_attest::merkle::Frontier;
use tally_attest::record::RecordError;
use tally_attest::{entry_hash, parallel, Hash, RecordHeader, GENESIS_PREV};

use super::map_advice::MapRegion;
use super::records::decode_head;
use super::times::record_time;
use super::times_check::TimesCheck;
use super::{Head, Store, StoreError, META_FRONTIER, META_HEAD};

/// Records per chunk: about 6 MB of ~350-byte records, so a thread's start
/// (~20 us) is noise beside hashing the chunk (~2 ms per core), and a few
/// chunks' pages are all the map keeps resident.
const CHUNK: usize = 16_384;

/// The chunk size, for tests that put faults at a boundary.
#[cfg(test)]
pub(super) const TEST_CHUNK: usize = CHUNK;

/// A run of consecutive records read from the snapshot.
#[derive(Default)]
struct Chunk<'t> {
    seqs: Vec<u64>,
    bytes: Vec<&'t [u8]>,
    /// What the hashing stage derives from `bytes`, record by record.
    hashed: Vec<Hashed>,
    /// The read error that ended the chunk, met after its records.
    end: Option<heed::Error>,
}

impl<'t> Chunk<'t> {
    /// Reads up to [`CHUNK`] records; false once the cursor is done or
    /// failed (nothing more is to be read).
    fn fill<I>(&mut self, entries: &mut I) -> bool
    where
        I: Iterator<Item = heed::Result<(u64, &'t [u8])>>,
    {
        while self.seqs.len() < CHUNK {
            match entries.next() {
                Some(Ok((seq, bytes))) => {
                    self.seqs.push(seq);
                    self.bytes.push(bytes);
                }
                Some(Err(err)) => {
                    self.end = Some(err);
                    return false;
                }
                None => return false,
            }
        }
        true
    }

    fn is_empty(&self) -> bool {
        self.seqs.is_empty() && self.end.is_none()
    }

    fn clear(&mut self) {
        self.seqs.clear();
        self.bytes.clear();
        self.hashed.clear();
        self.end = None;
    }
}

/// One record as the hashing stage leaves it: its entry hash, its header
/// (or why it does not parse) and its receive time, computed on the worker
/// that has the record's bytes in its cache, so the in-order checks read
/// only this compact array.
#[derive(Clone)]
struct Hashed {
    hash: Hash,
    header: Result<RecordHeader, RecordError>,
    time: Option<i64>,
}

impl Hashed {
    const EMPTY: Hashed = Hashed {
        hash: GENESIS_PREV,
        header: Err(RecordError::TooShort { len: 0 }),
        time: None,
    };

    fn of(bytes: &&[u8]) -> Hashed {
        Hashed {
            hash: entry_hash(bytes),
            header: RecordHeader::parse(bytes).map(|(header, _)| header),
            time: record_time(bytes),
        }
    }
}

/// The in-order checks: what a one-record-at-a-time loop would keep.
struct Walk<I> {
    /// Entry hash of the last record checked.
    running: Hash,
    /// Records checked (the next seq expected).
    size: u64,
    times: TimesCheck<I>,
}

impl<'t, I> Walk<I>
where
    I: Iterator<Item = heed::Result<(&'t [u8], &'t [u8])>>,
{
    /// Checks a hashed chunk's records in seq order, then its read error.
    fn check(&mut self, chunk: &mut Chunk<'_>) -> Result<(), StoreError> {
        for (&seq, hashed) in chunk.seqs.iter().zip(&chunk.hashed) {
            let header = hashed
                .header
                .as_ref()
                .map_err(|source| StoreError::RecordUnreadable {
                    seq,
                    source: source.clone(),
                })?;
            if seq != self.size || header.seq != seq || header.prev_hash != self.running {
                return Err(StoreError::ChainBroken { seq });
            }
            self.times.record(seq, hashed.time)?;
            self.running = hashed.hash;
            self.size += 1;
        }
        match chunk.end.take() {
            Some(err) => Err(err.into()),
            None => Ok(()),
        }
    }
}

impl Store {
    /// Checks the records from 0 on: dense seqs and every link; then that
    /// the `head` meta value holds their number and the last one's entry
    /// hash, and that the frontier's size and the Merkle root recomputed
    /// from the stored tree agree with them; then that the `times` index,
    /// walked beside the records in the same pass, makes every `since` seek
    /// exact (`times_check.rs`). Entry hashes are computed on every core;
    /// the checks run in seq order and name the first fault (module doc).
    /// Used by `tallyd check` and by tests.
    pub fn verify(&self) -> Result<Head, StoreError> {
        let _gate = self.read_gate();
        let rtxn = self.env.read_txn()?;
        let (running, size, times_found) = {
            let mut walk = Walk {
                running: GENESIS_PREV,
                size: 0,
                times: TimesCheck::new(self.times.iter(&rtxn)?)?,
            };
            self.walk_records(&rtxn, &mut walk)?;
            // Judged after the head (below): a chain or head fault is the
            // graver finding. Finished here, as the walk holds the
            // snapshot's cursor.
            let found = walk.times.finish(walk.size, self.times_size(&rtxn)?);
            (walk.running, walk.size, found)
        };
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
        let head = decode_head(&head_bytes, frontier.root())
            .ok_or(StoreError::CorruptMeta("head is not 40 bytes"))?;
        if head.size != size
            || head.hash != running
            || frontier.size() != size
            || self.root_at(size)? != head.root
        {
            return Err(StoreError::HeadMismatch {
                head: head.size,
                records: size,
            });
        }
        times_found.map_err(StoreError::TimesUnsound)?;
        Ok(head)
    }

    /// The pipeline of the module doc over every record of `rtxn`.
    fn walk_records<'t, I>(
        &self,
        rtxn: &'t heed::RoTxn<'_, heed::WithoutTls>,
        walk: &mut Walk<I>,
    ) -> Result<(), StoreError>
    where
        I: Iterator<Item = heed::Result<(&'t [u8], &'t [u8])>>,
    {
        let mut entries = self.records.iter(rtxn)?;
        // `current` is read, not hashed; `previous` hashed, not checked.
        let (mut previous, mut current, mut next) =
            (Chunk::default(), Chunk::default(), Chunk::default());
        let mut more = current.fill(&mut entries);
        // As /proc/self/maps names it.
        let data = self.dir.join("data.mdb");
        let data = std::fs::canonicalize(&data).unwrap_or(data);
        let map = (current.bytes.first()).and_then(|first| MapRegion::of(&data, first.as_ptr()));
        let _sequential = map.as_ref().map(MapRegion::sequential);
        while !(previous.is_empty() && current.is_empty()) {
            std::thread::scope(|scope| {
                let (bytes, hashed) = (&current.bytes, &mut current.hashed);
                scope.spawn(move || parallel::map(bytes, hashed, Hashed::EMPTY, Hashed::of));
                walk.check(&mut previous)?;
                if more {
                    more = next.fill(&mut entries);
                }
                Ok::<_, StoreError>(())
            })?;
            if let Some(map) = &map {
                map.drop_pages(previous.bytes.iter().copied());
            }
            previous.clear();
            // previous <- current <- next <- (the emptied) previous.
            mem::swap(&mut previous, &mut current);
            mem::swap(&mut current, &mut next);
        }
        Ok(())
    }
}
