//! [`Store::verify`], the pass `tallyd check` runs over every record: dense
//! seqs and every link, then the head, the frontier and the Merkle root,
//! then the `times` index walked beside the records (`times_check.rs`).
//!
//! The pass splits the seqs into chunks of [`CHUNK`] (`[k·CHUNK, (k+1)·CHUNK)`
//! by key). One worker thread per core (at most
//! [`parallel::MAX_THREADS`](tally_attest::parallel::MAX_THREADS)), each on
//! its own read transaction of the *same* snapshot (their txn ids are
//! compared), claims the next chunk, reads it with its own cursor, and
//! derives each record's entry hash, parsed header and receive time while
//! its bytes are in that core's cache. The calling thread takes the chunks
//! back in key order and checks them exactly as a loop over one record at
//! a time would: each link, the `times` walk, the first fault named. Only
//! reading and hashing are parallel; every check that depends on the order
//! runs on one thread in seq order, and a read error is reported where that
//! loop would have met it: after every record before it was checked. A
//! chunk with fewer than [`CHUNK`] records ends the dense run: the first
//! record past it, if any, is the one such a loop would have found out of
//! place, and it is read and checked as that loop would.
//!
//! Workers claim at most [`AHEAD_PER_THREAD`] chunks per thread ahead of the
//! in-order checks, so memory stays at a few chunks whatever the store's
//! size, and a fault stops them within that many chunks.
//!
//! Memory: the map is advised sequential for the pass, and each worker drops
//! the pages of a chunk from this process once it has read them
//! (`map_advice.rs`, spanning the gaps between them: the content rows and
//! Merkle nodes written beside the records are mapped with them by the
//! kernel's fault-around), so the file-backed RSS stays at a few chunks'
//! pages instead of growing to the store's size.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Condvar, Mutex, MutexGuard};

use heed::WithoutTls;
use tally_attest::merkle::Frontier;
use tally_attest::record::RecordError;
use tally_attest::{entry_hash, parallel, Hash, RecordHeader, GENESIS_PREV};

use super::map_advice::{MapRegion, BULK_GAP};
use super::records::decode_head;
use super::times::record_time;
use super::times_check::TimesCheck;
use super::{Head, Store, StoreError, META_FRONTIER, META_HEAD};

/// Records per chunk: 2 to 6 MB of records and their content rows, so a
/// chunk's claim and hand-back are noise beside reading and hashing it
/// (~2 ms), and a few chunks' pages are all the map keeps resident.
const CHUNK: usize = 16_384;

/// The chunk size, for tests that put faults at a boundary.
#[cfg(test)]
pub(super) const TEST_CHUNK: usize = CHUNK;

/// Chunks each worker may be ahead of the in-order checks.
const AHEAD_PER_THREAD: usize = 2;

/// Each worker drops the whole map once per this many chunks it read: the
/// B-tree's branch pages its cursor passed through (and the pages mapped
/// around them) are in no chunk's slices; they grew the check's RssFile by
/// about 13 bytes per record.
const CHUNKS_PER_WHOLE_DROP: u64 = 8;

/// Times the snapshots are opened again when a commit came between them.
const SNAPSHOT_TRIES: u32 = 100;

type RoTxn<'e> = heed::RoTxn<'e, WithoutTls>;

/// One chunk as a worker hands it back: the records' seqs and what was
/// derived from each, then the read error that ended it, met after them.
struct Chunk {
    index: u64,
    seqs: Vec<u64>,
    hashed: Vec<Hashed>,
    end: Option<heed::Error>,
}

impl Chunk {
    /// Whether the chunk holds all of its seqs' range: the dense run may go on.
    fn is_full(&self) -> bool {
        self.seqs.len() == CHUNK && self.end.is_none()
    }
}

/// One record as a worker leaves it: its entry hash, its header (or why it
/// does not parse) and its receive time, computed on the core that has the
/// record's bytes in its cache, so the in-order checks read only this
/// compact array.
struct Hashed {
    hash: Hash,
    header: Result<RecordHeader, RecordError>,
    time: Option<i64>,
}

impl Hashed {
    fn of(bytes: &[u8]) -> Hashed {
        Hashed {
            hash: entry_hash(bytes),
            header: RecordHeader::parse(bytes).map(|(header, _)| header),
            time: record_time(bytes),
        }
    }
}

/// Which chunks the workers may take: the next unclaimed one, as long as it
/// is within [`AHEAD_PER_THREAD`] per worker of the in-order checks.
struct Claims {
    state: Mutex<ClaimState>,
    changed: Condvar,
    ahead: u64,
}

struct ClaimState {
    next: u64,
    checked: u64,
    stopped: bool,
}

impl Claims {
    fn new(workers: usize) -> Claims {
        Claims {
            state: Mutex::new(ClaimState {
                next: 0,
                checked: 0,
                stopped: false,
            }),
            changed: Condvar::new(),
            ahead: (workers * AHEAD_PER_THREAD) as u64,
        }
    }

    fn lock(&self) -> MutexGuard<'_, ClaimState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next chunk to read, once the window allows; `None` once stopped.
    fn claim(&self) -> Option<u64> {
        let mut state = self.lock();
        loop {
            if state.stopped {
                return None;
            }
            if state.next < state.checked + self.ahead {
                state.next += 1;
                return Some(state.next - 1);
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Chunks `[0, checked)` were checked: the window moves.
    fn checked(&self, checked: u64) {
        self.lock().checked = checked;
        self.changed.notify_all();
    }

    fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
    }
}

/// Stops the workers however the in-order checks end (a fault, a panic).
struct StopOnDrop<'c>(&'c Claims);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
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
    /// Checks a chunk's records in seq order, then its read error.
    fn check(&mut self, chunk: &mut Chunk) -> Result<(), StoreError> {
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
    /// exact (`times_check.rs`). Records are read and hashed on every core;
    /// the checks run in seq order and name the first fault (module doc).
    /// Used by `tallyd check` and by tests.
    pub fn verify(&self) -> Result<Head, StoreError> {
        let _gate = self.read_gate();
        let (rtxn, workers) = self.snapshots(parallel::threads())?;
        let (running, size, times_found) = {
            let mut walk = Walk {
                running: GENESIS_PREV,
                size: 0,
                times: TimesCheck::new(self.times.iter(&rtxn)?)?,
            };
            self.walk_records(&rtxn, workers, &mut walk)?;
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

    /// A read transaction for the calling thread and `workers` more, all of
    /// one snapshot: opened again while a commit came between them.
    fn snapshots(&self, workers: usize) -> Result<(RoTxn<'_>, Vec<RoTxn<'_>>), StoreError> {
        for _ in 0..SNAPSHOT_TRIES {
            let main = self.env.read_txn()?;
            let others = (0..workers)
                .map(|_| self.env.read_txn())
                .collect::<heed::Result<Vec<_>>>()?;
            if others.iter().all(|txn| txn.id() == main.id()) {
                return Ok((main, others));
            }
        }
        Err(StoreError::SnapshotMoving {
            tries: SNAPSHOT_TRIES,
        })
    }

    /// The pass of the module doc over every record of the snapshot: the
    /// workers read and hash chunks on their transactions while this thread
    /// checks them in order.
    fn walk_records<'t, I>(
        &self,
        rtxn: &'t RoTxn<'_>,
        workers: Vec<RoTxn<'_>>,
        walk: &mut Walk<I>,
    ) -> Result<(), StoreError>
    where
        I: Iterator<Item = heed::Result<(&'t [u8], &'t [u8])>>,
    {
        let map = match self.records.first(rtxn)? {
            Some((_, first)) => self.map_region(first),
            None => None,
        };
        let _sequential = map.as_ref().map(MapRegion::sequential);
        let claims = Claims::new(workers.len());
        let (done_tx, done_rx) = mpsc::channel::<Chunk>();
        std::thread::scope(|scope| {
            for txn in workers {
                let (claims, done_tx) = (&claims, done_tx.clone());
                scope.spawn(move || self.read_chunks(&txn, claims, map, &done_tx));
            }
            drop(done_tx);
            let _stop = StopOnDrop(&claims);
            let mut waiting = BTreeMap::new();
            let mut index = 0u64;
            loop {
                let mut chunk = match waiting.remove(&index) {
                    Some(chunk) => chunk,
                    None => match done_rx.recv() {
                        Ok(chunk) if chunk.index == index => chunk,
                        Ok(chunk) => {
                            waiting.insert(chunk.index, chunk);
                            continue;
                        }
                        // Every worker ended without it: one panicked
                        // (re-raised when the scope joins it).
                        Err(_) => return Ok(()),
                    },
                };
                index += 1;
                claims.checked(index);
                let full = chunk.is_full();
                walk.check(&mut chunk)?;
                if !full {
                    return self.check_past_the_run(rtxn, walk);
                }
            }
        })
    }

    /// A worker: reads and hashes the chunks it claims, on its own
    /// transaction, until the claims stop or the checks went away.
    fn read_chunks(
        &self,
        txn: &RoTxn<'_>,
        claims: &Claims,
        map: Option<MapRegion>,
        done: &mpsc::Sender<Chunk>,
    ) {
        // A panic here must not leave the in-order checks waiting for this
        // worker's chunk: the others stop, the channel closes.
        let _stop = StopOnDrop(claims);
        let mut bytes: Vec<&[u8]> = Vec::with_capacity(CHUNK);
        let mut chunks_read = 0u64;
        while let Some(index) = claims.claim() {
            let mut chunk = Chunk {
                index,
                seqs: Vec::with_capacity(CHUNK),
                hashed: Vec::with_capacity(CHUNK),
                end: None,
            };
            let from = index.saturating_mul(CHUNK as u64);
            let to = from.saturating_add(CHUNK as u64);
            match self.records.range(txn, &(from..to)) {
                Ok(entries) => {
                    for entry in entries {
                        match entry {
                            Ok((seq, record)) => {
                                chunk.seqs.push(seq);
                                bytes.push(record);
                            }
                            Err(err) => {
                                chunk.end = Some(err);
                                break;
                            }
                        }
                    }
                }
                Err(err) => chunk.end = Some(err),
            }
            chunk
                .hashed
                .extend(bytes.iter().map(|record| Hashed::of(record)));
            if let Some(map) = map {
                chunks_read += 1;
                if chunks_read.is_multiple_of(CHUNKS_PER_WHOLE_DROP) {
                    map.drop_all();
                } else {
                    map.drop_pages_across(bytes.iter().copied(), BULK_GAP);
                }
            }
            bytes.clear();
            if done.send(chunk).is_err() {
                return;
            }
        }
    }

    /// After a chunk that did not hold all its seqs: the dense run ended at
    /// `walk.size`. A loop over one record at a time would read the next
    /// stored record (if any) and find it out of place; so it is read and
    /// checked here the same way, and its finding returned.
    fn check_past_the_run<'t, I>(
        &self,
        rtxn: &'t RoTxn<'_>,
        walk: &mut Walk<I>,
    ) -> Result<(), StoreError>
    where
        I: Iterator<Item = heed::Result<(&'t [u8], &'t [u8])>>,
    {
        let mut chunk = Chunk {
            index: 0,
            seqs: Vec::new(),
            hashed: Vec::new(),
            end: None,
        };
        match self
            .records
            .range(rtxn, &(walk.size..))
            .map(|mut entries| entries.next())
        {
            Ok(None) => return Ok(()),
            Ok(Some(Ok((seq, record)))) => {
                chunk.seqs.push(seq);
                chunk.hashed.push(Hashed::of(record));
            }
            Ok(Some(Err(err))) | Err(err) => chunk.end = Some(err),
        }
        walk.check(&mut chunk)
    }
}
