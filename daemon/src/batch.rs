//! The write batch and the chain positions it moves between: the sequencer
//! chains records into a [`Batch`] (every hash is computed here, while the
//! previous batch commits), the ack journal and the store write it unchanged.
//!
//! A module of its own, below the sequencer, the journal and the store, so
//! that each depends on it and none on another for it: the sequencer builds
//! batches and hands them down; the store never reaches up to the sequencer.

use tally_attest::content::SeqRanges;
use tally_attest::merkle::{self, Frontier, MerkleError};
use tally_attest::{entry_hash, Hash, RecordHeader, GENESIS_PREV};

/// Merkle nodes below this level are not stored: a proof recomputes one
/// from at most 8 records. Storing only levels >= 4 costs one put per 16
/// records instead of one per record (the tree's puts were a fifth of the
/// writer's CPU), and keeps proofs at O(log n) reads plus a few records.
/// A batch keeps exactly the nodes the store's `tree` database holds.
pub const STORED_MIN_LEVEL: u8 = 4;

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

impl Head {
    /// The empty log.
    pub const EMPTY: Head = Head {
        size: 0,
        hash: GENESIS_PREV,
        root: merkle::EMPTY_ROOT,
    };
}

/// A position in the chain: the number of records and the last entry hash
/// (which pins every record before it). A [`Head`] without its Merkle root,
/// which costs a hash per level of the tree to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tip {
    pub size: u64,
    /// Entry hash of record `size - 1`; [`GENESIS_PREV`] when empty.
    pub hash: Hash,
}

impl From<Head> for Tip {
    fn from(head: Head) -> Tip {
        Tip {
            size: head.size,
            hash: head.hash,
        }
    }
}

/// [`Batch::absorb`] was given a batch that does not start where this one
/// ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a batch built on {base} records cannot follow one ending at {end}")]
pub struct NotContiguous {
    /// Size of the state the offered batch was built on.
    pub base: u64,
    /// Size after the batch it was to follow.
    pub end: u64,
}

/// A write batch: records chained onto a committed state, the Merkle nodes
/// they complete, and the state after them.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The committed state the batch builds on.
    base: Tip,
    base_frontier: Frontier,
    /// Concatenated record bytes.
    bytes: Vec<u8>,
    /// (seq, end offset in `bytes`) of each record.
    records: Vec<(u64, usize)>,
    /// Concatenated sealed openings (DESIGN 3b: never an opening in the
    /// clear), of the records that have content...
    sealed: Vec<u8>,
    /// ...and, per record (parallel to `records`), where its sealed opening
    /// ends in `sealed` (the same end as the record before: none).
    sealed_ends: Vec<usize>,
    /// The seqs whose content the commit of this batch erases (an erasure
    /// job's, DESIGN 3b): such a batch goes to LMDB, never to the journal.
    erased: SeqRanges,
    /// (level, index, hash) of the stored Merkle nodes the records complete.
    nodes: Vec<(u8, u64, Hash)>,
    /// Size and last entry hash after the records (the root is derived from
    /// `frontier` when asked for).
    head: Tip,
    frontier: Frontier,
    /// The largest receive time among the records, as their pushers said
    /// (`push_received`), so the commit's `times` entry needs no walk of
    /// every body (that walk was 5% of tallyd's CPU at full speed).
    max_receive_time: Option<i64>,
    /// Some record was pushed without its receive time (`push`: journal
    /// replay, tests): the commit reads the times from the bodies.
    untimed: bool,
}

/// What a batch knows of its records' receive times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveTimes {
    /// The largest receive time, exactly (None: no record has one).
    Max(Option<i64>),
    /// Unknown: read them from the records.
    Unknown,
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
            sealed: Vec::new(),
            sealed_ends: Vec::new(),
            erased: SeqRanges::default(),
            nodes: Vec::new(),
            head,
            frontier,
            max_receive_time: None,
            untimed: false,
        }
    }

    /// Empties the batch (keeping its buffers) and bases it on `head`.
    pub fn restart(&mut self, head: impl Into<Tip>, frontier: &Frontier) {
        let head = head.into();
        self.base = head;
        self.base_frontier.clone_from(frontier);
        self.bytes.clear();
        self.records.clear();
        self.sealed.clear();
        self.sealed_ends.clear();
        self.erased = SeqRanges::default();
        self.nodes.clear();
        self.head = head;
        self.frontier.clone_from(frontier);
        self.max_receive_time = None;
        self.untimed = false;
    }

    /// [`push`](Self::push) of a record whose body holds
    /// `receive_time_unix_nanos` (the daemon encoded it there): the batch
    /// keeps the largest for the commit's `times` entry.
    pub fn push_received(
        &mut self,
        receive_time_unix_nanos: i64,
        write_body: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(u64, Hash), MerkleError> {
        let untimed = self.untimed;
        let pushed = self.push(write_body)?;
        self.untimed = untimed;
        self.max_receive_time = self.max_receive_time.max(Some(receive_time_unix_nanos));
        Ok(pushed)
    }

    /// The records' largest receive time, when every pusher said it.
    pub fn receive_times(&self) -> ReceiveTimes {
        if self.untimed {
            ReceiveTimes::Unknown
        } else {
            ReceiveTimes::Max(self.max_receive_time)
        }
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
        self.sealed_ends.push(self.sealed.len());
        self.untimed = true;
        self.head.size = seq + 1;
        self.head.hash = hash;
        Ok((seq, hash))
    }

    /// Gives the last pushed record its sealed opening: `opening` is copied
    /// in and the copy returned, for the caller to seal in place at once.
    /// Nothing when no record was pushed.
    pub fn seal_last(&mut self, opening: &[u8]) -> &mut [u8] {
        let Some(end) = self.sealed_ends.last_mut() else {
            return &mut [];
        };
        let start = self.sealed.len();
        self.sealed.extend_from_slice(opening);
        *end = self.sealed.len();
        &mut self.sealed[start..]
    }

    /// Each record's seq, bytes and sealed opening (empty: none), in order.
    pub fn records_sealed(&self) -> impl Iterator<Item = (u64, &[u8], &[u8])> + '_ {
        let sealed_starts = std::iter::once(0).chain(self.sealed_ends.iter().copied());
        self.records()
            .zip(self.sealed_ends.iter().zip(sealed_starts))
            .map(|((seq, record), (&end, start))| (seq, record, &self.sealed[start..end]))
    }

    /// Bytes of the sealed openings.
    pub fn sealed_len(&self) -> usize {
        self.sealed.len()
    }

    /// Marks the content of `ranges` as erased by this batch's commit.
    pub fn erase(&mut self, ranges: &SeqRanges) {
        self.erased.extend(ranges);
    }

    /// The seqs whose content this batch's commit erases.
    pub fn erased(&self) -> &SeqRanges {
        &self.erased
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

    /// (level, index, hash) of each stored Merkle node (level >=
    /// [`STORED_MIN_LEVEL`]) the records complete, in the order they were
    /// completed.
    pub fn nodes(&self) -> &[(u8, u64, Hash)] {
        &self.nodes
    }

    /// Appends `next`, a batch built on this batch's head, keeping this
    /// batch's base: the two then commit as one. Fails, changing nothing,
    /// when `next` is built on another state.
    pub fn absorb(&mut self, next: &Batch) -> Result<(), NotContiguous> {
        if next.base != self.head {
            return Err(NotContiguous {
                base: next.base.size,
                end: self.head.size,
            });
        }
        let offset = self.bytes.len();
        self.bytes.extend_from_slice(&next.bytes);
        self.records
            .extend(next.records.iter().map(|&(seq, end)| (seq, offset + end)));
        let sealed_offset = self.sealed.len();
        self.sealed.extend_from_slice(&next.sealed);
        self.sealed_ends
            .extend(next.sealed_ends.iter().map(|end| sealed_offset + end));
        self.erased.extend(&next.erased);
        self.nodes.extend_from_slice(&next.nodes);
        self.head = next.head;
        self.frontier.clone_from(&next.frontier);
        self.max_receive_time = self.max_receive_time.max(next.max_receive_time);
        self.untimed |= next.untimed;
        Ok(())
    }
}
