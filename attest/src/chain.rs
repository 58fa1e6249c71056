//! Replaying a hash chain and naming the first damage.
//!
//! Every record carries its own seq and its predecessor's entry hash, so a
//! single edit leaves a recognisable pattern:
//!
//! | damage to record j            | what the replay sees                                   |
//! |-------------------------------|--------------------------------------------------------|
//! | body bytes changed            | link j -> j+1 broken (or the head), link j-1 -> j intact |
//! | prev_hash field changed       | links j-1 -> j and j -> j+1 both broken                |
//! | seq field changed             | wrong seq at position j, link j-1 -> j intact          |
//! | record deleted                | seq j+1 at position j, seq j nowhere                   |
//! | records j and k swapped       | seq k at position j, seq j later in the file           |
//! | tail cut                      | fewer records than declared                            |
//!
//! The replay looks one record ahead to tell these apart, and reports the
//! earliest record that cannot be genuine.

use crate::record::{entry_hash, Hash, RecordError, RecordHeader, GENESIS_PREV};
use crate::verify::content::{ContentAudit, ContentFact};

/// Where records come from: a bundle file, a store, a test vector.
pub trait RecordSource {
    type Error;
    /// Replaces `buf` with the next record; `Ok(false)` at the end.
    fn next_record(&mut self, buf: &mut Vec<u8>) -> Result<bool, Self::Error>;
    /// The opening (`salt || content`, docs/DESIGN.md section 3b) that came
    /// with the record last read, if the source had one for it.
    fn opening(&self) -> Option<&[u8]> {
        None
    }
}

impl<R: std::io::BufRead> RecordSource for crate::bundle::BundleReader<R> {
    type Error = crate::bundle::BundleError;
    fn next_record(&mut self, buf: &mut Vec<u8>) -> Result<bool, Self::Error> {
        crate::bundle::BundleReader::next_record(self, buf)
    }
    fn opening(&self) -> Option<&[u8]> {
        crate::bundle::BundleReader::opening(self)
    }
}

/// In-memory records, e.g. for tests and for data already loaded.
impl RecordSource for std::slice::Iter<'_, Vec<u8>> {
    type Error = std::convert::Infallible;
    fn next_record(&mut self, buf: &mut Vec<u8>) -> Result<bool, Self::Error> {
        match self.next() {
            Some(record) => {
                buf.clear();
                buf.extend_from_slice(record);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// What a successful replay established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// Number of records replayed.
    pub size: u64,
    /// Entry hash of the last record ([`GENESIS_PREV`] when empty).
    pub head_hash: Hash,
}

/// The first damage found in a chain, naming the record and the kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Damage {
    #[error("record at position {position} is malformed: {reason}")]
    Malformed { position: u64, reason: RecordError },
    #[error("seq {seq}: record modified (its bytes do not match the hash that {committed_by} commits to)")]
    RecordModified { seq: u64, committed_by: CommittedBy },
    #[error("seq {seq}: previous-hash field modified (it links to neither its predecessor nor its successor)")]
    PrevHashModified { seq: u64 },
    #[error("seq {seq}: seq field modified (the record sits at position {seq} of the chain but says seq {found})")]
    SeqModified { seq: u64, found: u64 },
    #[error("seq {seq}: record deleted (the next record present is seq {next})")]
    Missing { seq: u64, next: u64 },
    #[error("records reordered: position {position} holds seq {found}, and seq {position} is at position {expected_at}")]
    Reordered {
        position: u64,
        found: u64,
        expected_at: u64,
    },
    #[error("seq {seq}: duplicated at position {position}")]
    Duplicate { seq: u64, position: u64 },
    #[error("log truncated: {declared} records declared, only {found} present (seq {found} onwards missing)")]
    Truncated { declared: u64, found: u64 },
    #[error("log has {found} records but only {declared} were declared")]
    Extended { declared: u64, found: u64 },
}

impl Damage {
    /// The seq (or position) of the first bad entry.
    pub fn first_bad_seq(&self) -> u64 {
        match *self {
            Damage::Malformed { position, .. } => position,
            Damage::RecordModified { seq, .. }
            | Damage::PrevHashModified { seq }
            | Damage::SeqModified { seq, .. }
            | Damage::Missing { seq, .. } => seq,
            Damage::Reordered { position, .. } | Damage::Duplicate { position, .. } => position,
            Damage::Truncated { found, .. } => found,
            Damage::Extended { declared, .. } => declared,
        }
    }
}

/// What a record's hash is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommittedBy {
    /// The next record's previous-hash field.
    Successor,
    /// The chain head the log declares: the bundle header's `head_hash`, the
    /// entry hash of its last record. (Checkpoints carry a Merkle root, which
    /// the replay does not check: see `verify`.)
    DeclaredHead,
}

impl std::fmt::Display for CommittedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CommittedBy::Successor => "the next record",
            CommittedBy::DeclaredHead => "the declared log head",
        })
    }
}

/// A replay failed: either the log is damaged, or its source failed.
#[derive(Debug, thiserror::Error)]
pub enum ChainError<E> {
    #[error(transparent)]
    Damaged(Damage),
    #[error(transparent)]
    Source(E),
}

/// Replays every record from `source`, checking seqs are dense from 0, each
/// record links to its predecessor, the count equals `declared_size` and the
/// last entry hash equals `declared_head`. `progress` is called with the
/// number of records replayed so far, every 65,536 records and at the end.
pub fn verify_chain<S: RecordSource>(
    source: &mut S,
    declared_size: u64,
    declared_head: &Hash,
    progress: impl FnMut(u64),
) -> Result<ChainSummary, ChainError<S::Error>> {
    verify_chain_observed(source, declared_size, declared_head, progress, |_, _| {})
}

/// [`verify_chain`], calling `observe(size, head)` after each record with the
/// log size so far and the entry hash of its last record (so a caller can
/// compare checkpoints at those sizes).
pub fn verify_chain_observed<S: RecordSource>(
    source: &mut S,
    declared_size: u64,
    declared_head: &Hash,
    progress: impl FnMut(u64),
    observe: impl FnMut(u64, &Hash),
) -> Result<ChainSummary, ChainError<S::Error>> {
    verify_chain_from(
        source,
        ChainStart::GENESIS,
        declared_size,
        declared_head,
        progress,
        observe,
    )
}

/// Where a replay starts: at seq 0 after [`GENESIS_PREV`], or at a seq whose
/// predecessor's entry hash the caller has already proven (a trusted
/// checkpoint and an inclusion proof: `verify`'s trusted start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainStart {
    /// The seq of the first record the source yields.
    pub seq: u64,
    /// The entry hash of record `seq - 1` ([`GENESIS_PREV`] for seq 0).
    pub prev: Hash,
}

impl ChainStart {
    /// The whole log: seq 0, linked to [`GENESIS_PREV`].
    pub const GENESIS: ChainStart = ChainStart {
        seq: 0,
        prev: GENESIS_PREV,
    };
}

/// [`verify_chain_observed`] over a source whose first record is
/// `start.seq` (it must link to `start.prev`); `declared_size` is still the
/// log's whole size, so the source holds `declared_size - start.seq` records.
pub fn verify_chain_from<S: RecordSource>(
    source: &mut S,
    start: ChainStart,
    declared_size: u64,
    declared_head: &Hash,
    progress: impl FnMut(u64),
    observe: impl FnMut(u64, &Hash),
) -> Result<ChainSummary, ChainError<S::Error>> {
    replay(
        source,
        start,
        declared_size,
        declared_head,
        progress,
        observe,
        None,
    )
}

/// [`verify_chain_from`], also auditing each record's content (its
/// commitment against the source's opening, and erasures) on the hashing
/// threads: `audit` sees every record the replay accepts, in seq order.
pub fn verify_chain_with_content<S: RecordSource>(
    source: &mut S,
    start: ChainStart,
    declared_size: u64,
    declared_head: &Hash,
    progress: impl FnMut(u64),
    observe: impl FnMut(u64, &Hash),
    audit: &mut ContentAudit,
) -> Result<ChainSummary, ChainError<S::Error>> {
    replay(
        source,
        start,
        declared_size,
        declared_head,
        progress,
        observe,
        Some(audit),
    )
}

fn replay<S: RecordSource>(
    source: &mut S,
    start: ChainStart,
    declared_size: u64,
    declared_head: &Hash,
    mut progress: impl FnMut(u64),
    mut observe: impl FnMut(u64, &Hash),
    mut audit: Option<&mut ContentAudit>,
) -> Result<ChainSummary, ChainError<S::Error>> {
    let damaged = |damage| Err(ChainError::Damaged(damage));
    let mut records = Hashed::new(source, audit.is_some());
    let mut position: u64 = start.seq;
    // Entry hash of the last record replayed.
    let mut running = start.prev;
    // Set when the link into record `suspect` was broken; resolved by the
    // next record (or the declared head), which tells which side changed.
    let mut suspect: Option<u64> = None;

    while let Some((parsed, hash, fact)) = records.next().map_err(ChainError::Source)? {
        let header = match parsed {
            Ok(header) => header,
            Err(reason) => return damaged(Damage::Malformed { position, reason }),
        };
        if let Some(bad_link) = suspect {
            // `running` is the hash of record `bad_link`, whose incoming link broke.
            return damaged(if header.prev_hash == running {
                Damage::RecordModified {
                    seq: bad_link - 1,
                    committed_by: CommittedBy::Successor,
                }
            } else {
                Damage::PrevHashModified { seq: bad_link }
            });
        }
        if header.seq != position {
            if header.prev_hash == running {
                return damaged(Damage::SeqModified {
                    seq: position,
                    found: header.seq,
                });
            }
            return damaged(classify_misplaced(&mut records, position, header.seq));
        }
        if header.prev_hash != running {
            suspect = Some(position);
        }
        if let (Some(audit), Some(fact)) = (audit.as_deref_mut(), fact) {
            audit.observe(position, fact);
        }
        running = hash;
        position += 1;
        observe(position, &running);
        if position.is_multiple_of(65_536) {
            progress(position);
        }
    }
    progress(position);

    if let Some(bad_link) = suspect {
        return damaged(if &running == declared_head && position == declared_size {
            Damage::RecordModified {
                seq: bad_link - 1,
                committed_by: CommittedBy::Successor,
            }
        } else {
            Damage::PrevHashModified { seq: bad_link }
        });
    }
    if position < declared_size {
        return damaged(Damage::Truncated {
            declared: declared_size,
            found: position,
        });
    }
    if position > declared_size {
        return damaged(Damage::Extended {
            declared: declared_size,
            found: position,
        });
    }
    if &running != declared_head {
        // With the size right and every link intact, the last record is the
        // only one whose hash nothing else commits to.
        if position == start.seq {
            return damaged(Damage::Truncated {
                declared: declared_size,
                found: 0,
            });
        }
        return damaged(Damage::RecordModified {
            seq: position - 1,
            committed_by: CommittedBy::DeclaredHead,
        });
    }
    Ok(ChainSummary {
        size: position,
        head_hash: running,
    })
}

/// Records read ahead in chunks whose entry hashes are computed on every
/// core: each record's hash depends only on its own bytes, so hashing (the
/// cost of verification) runs in parallel while the links are still checked
/// in order.
struct Hashed<'s, S: RecordSource> {
    source: &'s mut S,
    /// Reused buffers of the current chunk; `filled` of them hold records.
    records: Vec<Vec<u8>>,
    hashes: Vec<Hash>,
    /// Set when content is audited: each record's opening (when the source
    /// had one) and what its body says, computed with its hash.
    content: Option<ChunkContent>,
    filled: usize,
    next: usize,
    exhausted: bool,
}

/// A record's parsed header (or why it does not parse), its entry hash and,
/// when content is audited, its content fact.
type HashedRecord = (Result<RecordHeader, RecordError>, Hash, Option<ContentFact>);

/// The content side of a chunk: openings as read, facts as computed.
#[derive(Default)]
struct ChunkContent {
    openings: Vec<Option<Vec<u8>>>,
    hashed: Vec<(Hash, ContentFact)>,
}

/// Records per chunk (hashed on every core by `parallel.rs`).
const CHUNK: usize = 8192;

impl<'s, S: RecordSource> Hashed<'s, S> {
    fn new(source: &'s mut S, audit: bool) -> Self {
        Hashed {
            source,
            records: Vec::new(),
            hashes: Vec::new(),
            content: audit.then(ChunkContent::default),
            filled: 0,
            next: 0,
            exhausted: false,
        }
    }

    /// The next record's parsed header and entry hash.
    fn next(&mut self) -> Result<Option<HashedRecord>, S::Error> {
        if self.next == self.filled && !self.fill()? {
            return Ok(None);
        }
        let index = self.next;
        self.next += 1;
        let header = RecordHeader::parse(&self.records[index]).map(|(header, _)| header);
        Ok(Some(match self.content.as_mut() {
            Some(content) => {
                let (hash, fact) = std::mem::take(&mut content.hashed[index]);
                (header, hash, Some(fact))
            }
            None => (header, self.hashes[index], None),
        }))
    }

    /// Reads and hashes the next chunk; false when the source is done.
    fn fill(&mut self) -> Result<bool, S::Error> {
        self.filled = 0;
        self.next = 0;
        while !self.exhausted && self.filled < CHUNK {
            if self.records.len() == self.filled {
                self.records.push(Vec::new());
            }
            if self.source.next_record(&mut self.records[self.filled])? {
                if let Some(content) = self.content.as_mut() {
                    if content.openings.len() == self.filled {
                        content.openings.push(None);
                    }
                    let slot = &mut content.openings[self.filled];
                    match (self.source.opening(), slot.as_mut()) {
                        (Some(opening), Some(buf)) => {
                            buf.clear();
                            buf.extend_from_slice(opening);
                        }
                        (Some(opening), None) => *slot = Some(opening.to_vec()),
                        (None, _) => *slot = None,
                    }
                }
                self.filled += 1;
            } else {
                self.exhausted = true;
            }
        }
        match self.content.as_mut() {
            // One SHA-256 more per committed record, while its bytes are
            // in the cache: the body walk and the opening's hash.
            Some(content) => {
                let pairs: Vec<(&[u8], Option<&[u8]>)> = self.records[..self.filled]
                    .iter()
                    .zip(&content.openings)
                    .map(|(record, opening)| (record.as_slice(), opening.as_deref()))
                    .collect();
                crate::parallel::map(
                    &pairs,
                    &mut content.hashed,
                    Default::default(),
                    |(record, opening)| (entry_hash(record), ContentFact::of(record, *opening)),
                );
            }
            None => crate::parallel::entry_hashes(&self.records[..self.filled], &mut self.hashes),
        }
        Ok(self.filled > 0)
    }
}

/// The records not yet replayed: the rest of the chunk, then the source.
impl<S: RecordSource> RecordSource for Hashed<'_, S> {
    type Error = S::Error;
    fn next_record(&mut self, buf: &mut Vec<u8>) -> Result<bool, Self::Error> {
        if self.next == self.filled && !self.fill()? {
            return Ok(false);
        }
        buf.clear();
        buf.extend_from_slice(&self.records[self.next]);
        self.next += 1;
        Ok(true)
    }
}

/// Position `position` holds seq `found`, which belongs elsewhere: scan the
/// rest to tell a deletion from a reordering or a duplicate.
fn classify_misplaced<S: RecordSource>(source: &mut S, position: u64, found: u64) -> Damage {
    let mut buf = Vec::new();
    let mut later = position + 1;
    while let Ok(true) = source.next_record(&mut buf) {
        if let Ok((header, _)) = RecordHeader::parse(&buf) {
            if header.seq == position {
                return Damage::Reordered {
                    position,
                    found,
                    expected_at: later,
                };
            }
        }
        later += 1;
    }
    if found < position {
        Damage::Duplicate {
            seq: found,
            position,
        }
    } else {
        Damage::Missing {
            seq: position,
            next: found,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordHeader;

    /// A valid chain of `n` records with distinct bodies.
    fn chain(n: u64) -> (Vec<Vec<u8>>, Hash) {
        let mut prev = GENESIS_PREV;
        let mut records = Vec::new();
        for seq in 0..n {
            let mut record = Vec::new();
            RecordHeader {
                seq,
                prev_hash: prev,
            }
            .encode_into(&mut record);
            record.extend_from_slice(format!("event number {seq}").as_bytes());
            prev = entry_hash(&record);
            records.push(record);
        }
        (records, prev)
    }

    fn verify(records: &[Vec<u8>], size: u64, head: &Hash) -> Result<ChainSummary, Damage> {
        verify_chain(&mut records.iter(), size, head, |_| {}).map_err(|err| match err {
            ChainError::Damaged(damage) => damage,
            ChainError::Source(never) => match never {},
        })
    }

    #[test]
    fn intact_chains_verify() {
        for n in [0, 1, 2, 10] {
            let (records, head) = chain(n);
            let summary = verify(&records, n, &head).unwrap();
            assert_eq!(
                summary,
                ChainSummary {
                    size: n,
                    head_hash: head
                }
            );
        }
    }

    #[test]
    fn every_body_byte_flip_names_the_modified_record() {
        let (records, head) = chain(5);
        for seq in 0..5 {
            for byte in crate::HEADER_LEN..records[seq].len() {
                let mut tampered = records.clone();
                tampered[seq][byte] ^= 0x01;
                let damage = verify(&tampered, 5, &head).unwrap_err();
                let committed_by = if seq == 4 {
                    CommittedBy::DeclaredHead
                } else {
                    CommittedBy::Successor
                };
                assert_eq!(
                    damage,
                    Damage::RecordModified {
                        seq: seq as u64,
                        committed_by
                    },
                    "byte {byte} of seq {seq}"
                );
            }
        }
    }

    #[test]
    fn header_flips_name_the_record_and_the_field() {
        let (records, head) = chain(4);
        for seq in 0..4u64 {
            let mut tampered = records.clone();
            tampered[seq as usize][1 + 8 + 5] ^= 0x80; // inside prev_hash
            assert_eq!(
                verify(&tampered, 4, &head).unwrap_err(),
                Damage::PrevHashModified { seq },
            );
            let mut tampered = records.clone();
            tampered[seq as usize][8] ^= 0x40; // low byte of seq
            assert_eq!(
                verify(&tampered, 4, &head).unwrap_err(),
                Damage::SeqModified {
                    seq,
                    found: seq ^ 0x40
                },
            );
            let mut tampered = records.clone();
            tampered[seq as usize][0] = 9; // version
            assert!(matches!(
                verify(&tampered, 4, &head).unwrap_err(),
                Damage::Malformed { position, .. } if position == seq
            ));
        }
    }

    #[test]
    fn deletion_reordering_duplication_truncation() {
        let (records, head) = chain(6);

        let mut deleted = records.clone();
        deleted.remove(2);
        assert_eq!(
            verify(&deleted, 6, &head).unwrap_err(),
            Damage::Missing { seq: 2, next: 3 }
        );

        let mut swapped = records.clone();
        swapped.swap(1, 4);
        assert_eq!(
            verify(&swapped, 6, &head).unwrap_err(),
            Damage::Reordered {
                position: 1,
                found: 4,
                expected_at: 4
            }
        );

        let mut duplicated = records.clone();
        duplicated[3] = records[2].clone();
        assert_eq!(
            verify(&duplicated, 6, &head).unwrap_err(),
            Damage::Duplicate {
                seq: 2,
                position: 3
            }
        );

        let truncated = &records[..4];
        assert_eq!(
            verify(truncated, 6, &head).unwrap_err(),
            Damage::Truncated {
                declared: 6,
                found: 4
            }
        );
        assert_eq!(
            verify(&[], 6, &head).unwrap_err(),
            Damage::Truncated {
                declared: 6,
                found: 0
            }
        );

        // The head declared for 4 records, with 6 present.
        let (_, head4) = chain(4);
        assert_eq!(
            verify(&records, 4, &head4).unwrap_err(),
            Damage::Extended {
                declared: 4,
                found: 6
            }
        );
    }

    #[test]
    fn damage_is_named_the_same_across_parallel_hashed_chunks() {
        // Larger than a chunk, so hashing runs in parallel and damage can
        // sit on a chunk boundary (CHUNK = 8192).
        let (records, head) = chain(20_000);
        assert_eq!(verify(&records, 20_000, &head).unwrap().head_hash, head);
        for seq in [0usize, 8191, 8192, 16_383, 19_999] {
            let mut tampered = records.clone();
            let last = tampered[seq].len() - 1;
            tampered[seq][last] ^= 1;
            let committed_by = if seq == 19_999 {
                CommittedBy::DeclaredHead
            } else {
                CommittedBy::Successor
            };
            assert_eq!(
                verify(&tampered, 20_000, &head).unwrap_err(),
                Damage::RecordModified {
                    seq: seq as u64,
                    committed_by
                },
                "seq {seq}"
            );
        }
        let mut deleted = records.clone();
        deleted.remove(8192);
        assert_eq!(
            verify(&deleted, 20_000, &head).unwrap_err(),
            Damage::Missing {
                seq: 8192,
                next: 8193
            }
        );
        let mut swapped = records.clone();
        swapped.swap(8000, 12_000);
        assert_eq!(
            verify(&swapped, 20_000, &head).unwrap_err(),
            Damage::Reordered {
                position: 8000,
                found: 12_000,
                expected_at: 12_000
            }
        );
        assert_eq!(
            verify(&records[..16_384], 20_000, &head).unwrap_err(),
            Damage::Truncated {
                declared: 20_000,
                found: 16_384
            }
        );
    }

    #[test]
    fn a_consistent_rewrite_is_caught_only_by_the_declared_head() {
        // An attacker who rewrites the last record and rehashes nothing after it
        // (there is nothing after it) is caught by the declared head alone.
        let (mut records, head) = chain(3);
        let last = records.len() - 1;
        records[last].push(b'!');
        assert_eq!(
            verify(&records, 3, &head).unwrap_err(),
            Damage::RecordModified {
                seq: 2,
                committed_by: CommittedBy::DeclaredHead
            }
        );
    }
}
