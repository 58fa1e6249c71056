//! [`verify_range_bundle`]: that a range bundle's records are exactly entries
//! `first_seq..first_seq + count` of the log whose root at `tree_size` the
//! anchor's TPM evidence certifies (docs/DESIGN.md section 8).
//!
//! Steps: the anchor verifies with the pinned keys (without them it is only
//! parsed: PARTIAL); its checkpoint is for the header's log and size; the
//! records carry seqs `first_seq..` in order and each links to the one before;
//! and their entry hashes with the proof rehash into the checkpoint's root.

use std::io::BufRead;

use crate::anchor::checks::parse_anchor_unverified;
use crate::anchor::{verify_anchor, AnchorError, AnchorPolicy, VerifiedAnchor};
use crate::merkle::{root_from_range_proof, MerkleError};
use crate::range::{RangeFormatError, RangeHeader, RangeReader};
use crate::record::{entry_hash, Hash, RecordError, RecordHeader};
use crate::verify::content::{ContentAudit, ContentFact, ContentVerdict};
use crate::verify::Verdict;

/// Verdict on the range bundle's one anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeAnchorVerdict {
    /// Its TPM evidence and checkpoint signature verify with the pinned keys.
    Valid { counter: u64, tree_size: u64 },
    /// Parsed, not verified (no identity given): the root is the anchor's
    /// word only.
    NotChecked {
        why: &'static str,
        counter: u64,
        tree_size: u64,
    },
    /// Its evidence does not verify (another TPM, another log, edited bytes).
    Invalid(AnchorError),
    /// Its checkpoint is for another log than the header names.
    WrongLog { counter: u64, found: [u8; 16] },
    /// Its checkpoint covers another size than the range is proven against.
    SizeMismatch {
        counter: u64,
        checkpoint: u64,
        header: u64,
    },
}

/// What the records were proven to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeProven {
    pub first_seq: u64,
    /// Inclusive.
    pub last_seq: u64,
    /// The anchored log size (tree size) they were proven against.
    pub tree_size: u64,
    /// The checkpoint's Merkle root the records and the proof lead to.
    pub root: Hash,
}

/// The first thing wrong with the records of a range bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RangeDamage {
    #[error("record at position {position} of the range is malformed: {reason}")]
    Malformed { position: u64, reason: RecordError },
    #[error("position {position} of the range holds seq {found}, not seq {expected} (a record removed, inserted or moved)")]
    WrongSeq {
        position: u64,
        expected: u64,
        found: u64,
    },
    #[error("seq {seq}: its previous-hash field is not the entry hash of seq {} (one of the two was modified)", .seq - 1)]
    LinkBroken { seq: u64 },
    #[error("range truncated: {declared} records declared, only {found} present")]
    Truncated { declared: u64, found: u64 },
    #[error("the range holds more than the {declared} records declared")]
    Extended { declared: u64 },
    #[error("the records and the proof do not lead to the anchored root of {tree_size} records (a record or a proof hash was changed, or the records are not entries {first_seq}.. of that log): {source}")]
    NotInTree {
        first_seq: u64,
        tree_size: u64,
        #[source]
        source: MerkleError,
    },
    #[error("the anchor cannot be read, so there is no root to check the records against")]
    NoCheckpoint,
}

/// Every verdict on one range bundle.
#[derive(Debug, Clone)]
pub struct RangeReport {
    pub header: RangeHeader,
    pub anchor: RangeAnchorVerdict,
    pub records: Result<RangeProven, RangeDamage>,
    /// Openings against commitments; absent content whose erasure record
    /// is not in the range is `unproven` (PARTIAL, never PASS).
    pub content: ContentVerdict,
    /// A one-record range whose content opened (`tally disclose`): what
    /// was disclosed.
    pub disclosed: Option<Disclosed>,
}

/// The content a one-record range bundle discloses, once it opened the
/// commitment inside the proven record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disclosed {
    pub seq: u64,
    /// Bytes of the `Content` encoding (the opening less its salt).
    pub content_len: usize,
    /// The commitment it opens.
    pub commitment: Hash,
}

impl RangeReport {
    /// PASS when the anchor verified and the records are proven; PARTIAL
    /// when the records lead to the anchor's root but the anchor was not
    /// verified; FAIL otherwise.
    pub fn verdict(&self) -> Verdict {
        if matches!(self.content, ContentVerdict::Damaged(_)) {
            return Verdict::Fail;
        }
        let mut missing = Vec::new();
        if let ContentVerdict::Checked(summary) = &self.content {
            if summary.unproven > 0 {
                missing.push(UNPROVEN_ERASURE);
            }
        }
        match (&self.anchor, &self.records) {
            (_, Err(_)) => Verdict::Fail,
            (RangeAnchorVerdict::Valid { .. }, Ok(_)) if missing.is_empty() => Verdict::Pass,
            (RangeAnchorVerdict::Valid { .. }, Ok(_)) => Verdict::Partial(missing),
            (RangeAnchorVerdict::NotChecked { why, .. }, Ok(_)) => {
                missing.insert(0, why);
                Verdict::Partial(missing)
            }
            _ => Verdict::Fail,
        }
    }
}

/// Why a range whose absent content is not covered by an erasure inside it
/// is not a PASS: the erasure record, if there is one, comes after the range.
pub const UNPROVEN_ERASURE: &str = "that the absent content was erased (its erasure record, if any, lies after the range: export a range up to it, or the whole log)";

/// Reads and verifies a range bundle. With `policy` (the log's identity) the
/// anchor's TPM evidence is verified; without it, only parsed. Returns `Err`
/// only when the file is not a readable range bundle.
pub fn verify_range_bundle<R: BufRead>(
    input: R,
    policy: Option<&AnchorPolicy>,
) -> Result<RangeReport, RangeFormatError> {
    let mut reader = RangeReader::new(input)?;
    let header = reader.header().clone();
    let (anchor, checkpoint) = judge_anchor(&header, reader.anchor(), policy);
    let mut audit = ContentAudit::new(header.first_seq, header.redacted);
    let mut disclosed = None;
    let records = match checkpoint {
        None => {
            // Still read to the end: a format error outranks the verdict.
            let mut buf = Vec::new();
            while reader.next_record(&mut buf)? {}
            Err(RangeDamage::NoCheckpoint)
        }
        Some(checkpoint) => check_records(
            &mut reader,
            &header,
            &checkpoint,
            &mut audit,
            &mut disclosed,
        )?,
    };
    if let Some(seq) = audit.unexpected_opening() {
        return Err(RangeFormatError::ContentWithoutCommitment { seq });
    }
    let content = match &records {
        Ok(_) => audit.finish(true),
        Err(_) => ContentVerdict::NotChecked("the records are not proven"),
    };
    if !matches!(content, ContentVerdict::Checked(_)) || records.is_err() {
        disclosed = None;
    }
    Ok(RangeReport {
        header,
        anchor,
        records,
        content,
        disclosed,
    })
}

/// The anchor's verdict and the checkpoint (size, root) the records are
/// checked against, if the anchor can be read at all.
fn judge_anchor(
    header: &RangeHeader,
    bytes: &[u8],
    policy: Option<&AnchorPolicy>,
) -> (RangeAnchorVerdict, Option<(u64, Hash)>) {
    let parsed: Result<VerifiedAnchor, AnchorError> = match policy {
        Some(policy) => verify_anchor(policy, bytes),
        None => parse_anchor_unverified(bytes),
    };
    let anchor = match parsed {
        Ok(anchor) => anchor,
        Err(error) => {
            // Unverifiable evidence may still carry a readable checkpoint;
            // the verdict is FAIL either way, so no root is offered.
            return (RangeAnchorVerdict::Invalid(error), None);
        }
    };
    let counter = anchor.counter;
    let checkpoint = (anchor.checkpoint.size, anchor.checkpoint.root);
    let verdict = if anchor.checkpoint.log_id.as_slice() != header.log_id.as_slice() {
        RangeAnchorVerdict::WrongLog {
            counter,
            found: anchor.checkpoint.log_id,
        }
    } else if anchor.checkpoint.size != header.tree_size {
        RangeAnchorVerdict::SizeMismatch {
            counter,
            checkpoint: anchor.checkpoint.size,
            header: header.tree_size,
        }
    } else if policy.is_some() {
        RangeAnchorVerdict::Valid {
            counter,
            tree_size: anchor.checkpoint.size,
        }
    } else {
        RangeAnchorVerdict::NotChecked {
            why: "the anchor's TPM evidence (no identity given: --identity)",
            counter,
            tree_size: anchor.checkpoint.size,
        }
    };
    (verdict, Some(checkpoint))
}

/// Seqs, links, count, then the Merkle root at the checkpoint's size.
fn check_records<R: BufRead>(
    reader: &mut RangeReader<R>,
    header: &RangeHeader,
    (tree_size, root): &(u64, Hash),
    audit: &mut ContentAudit,
    disclosed: &mut Option<Disclosed>,
) -> Result<Result<RangeProven, RangeDamage>, RangeFormatError> {
    let declared = header.count;
    // 32 bytes per record: a range of a million records needs 32 MiB.
    let mut leaves: Vec<Hash> =
        Vec::with_capacity(usize::try_from(declared.min(1 << 20)).unwrap_or(0));
    let mut buf = Vec::new();
    let mut damage = None;
    while reader.next_record(&mut buf)? {
        if damage.is_some() {
            continue;
        }
        let position = leaves.len() as u64;
        if position == declared {
            damage = Some(RangeDamage::Extended { declared });
            continue;
        }
        let expected = header.first_seq + position;
        match RecordHeader::parse(&buf) {
            Err(reason) => damage = Some(RangeDamage::Malformed { position, reason }),
            Ok((record, _)) if record.seq != expected => {
                damage = Some(RangeDamage::WrongSeq {
                    position,
                    expected,
                    found: record.seq,
                })
            }
            Ok((record, _)) => match leaves.last() {
                Some(prev) if record.prev_hash != *prev => {
                    damage = Some(RangeDamage::LinkBroken { seq: expected })
                }
                // The first record's prev_hash is inside its leaf, which
                // the tree commits to.
                _ => {
                    let fact = ContentFact::of(&buf, reader.opening());
                    if let (true, ContentFact::Opened, Some(opening)) =
                        (declared == 1, &fact, reader.opening())
                    {
                        *disclosed =
                            crate::content::commitment_of_opening(opening)
                                .ok()
                                .map(|commitment| Disclosed {
                                    seq: expected,
                                    content_len: opening.len() - crate::content::SALT_LEN,
                                    commitment,
                                });
                    }
                    audit.observe(expected, fact);
                    leaves.push(entry_hash(&buf));
                }
            },
        }
    }
    if let Some(damage) = damage {
        return Ok(Err(damage));
    }
    if (leaves.len() as u64) < declared {
        return Ok(Err(RangeDamage::Truncated {
            declared,
            found: leaves.len() as u64,
        }));
    }
    let proven = root_from_range_proof(header.first_seq, *tree_size, &leaves, reader.proof())
        .and_then(|computed| {
            if computed == *root {
                Ok(())
            } else {
                Err(MerkleError::RootMismatch {
                    expected: *root,
                    computed,
                })
            }
        });
    Ok(match proven {
        Ok(()) => Ok(RangeProven {
            first_seq: header.first_seq,
            last_seq: header.first_seq + declared - 1,
            tree_size: *tree_size,
            root: *root,
        }),
        Err(source) => Err(RangeDamage::NotInTree {
            first_seq: header.first_seq,
            tree_size: *tree_size,
            source,
        }),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::merkle::{inclusion_proof, range_proof_from_paths, root_from_leaf_hashes, Frontier};
    use crate::range::{RangeWriter, RANGE_FORMAT_VERSION};
    use crate::record::GENESIS_PREV;

    /// A valid chain of `n` records with distinct bodies.
    fn chain(n: u64) -> Vec<Vec<u8>> {
        let mut prev = GENESIS_PREV;
        (0..n)
            .map(|seq| {
                let mut record = Vec::new();
                RecordHeader {
                    seq,
                    prev_hash: prev,
                }
                .encode_into(&mut record);
                record.extend_from_slice(format!("event number {seq}").as_bytes());
                prev = entry_hash(&record);
                record
            })
            .collect()
    }

    /// The range proof of `first..end` in the tree of all of `records`.
    fn proof(records: &[Vec<u8>], first: u64, end: u64) -> Vec<Hash> {
        let mut nodes = HashMap::new();
        let mut frontier = Frontier::new();
        for record in records {
            frontier
                .push(entry_hash(record), |level, index, hash| {
                    nodes.insert((level, index), *hash);
                })
                .unwrap();
        }
        let store = |level: u8, index: u64| nodes.get(&(level, index)).copied();
        let size = records.len() as u64;
        let first_path = inclusion_proof(&store, first, size).unwrap();
        let last_path = inclusion_proof(&store, end - 1, size).unwrap();
        range_proof_from_paths(first, end, size, &first_path, &last_path).unwrap()
    }

    struct Case {
        header: RangeHeader,
        proof: Vec<Hash>,
        records: Vec<Vec<u8>>,
        checkpoint: (u64, Hash),
    }

    /// Records 5..9 of a 16-record log, as exported.
    fn case() -> Case {
        let log = chain(16);
        let root = root_from_leaf_hashes(&log.iter().map(|r| entry_hash(r)).collect::<Vec<_>>());
        Case {
            header: RangeHeader {
                format_version: RANGE_FORMAT_VERSION,
                log_id: vec![1; 16],
                first_seq: 5,
                count: 4,
                tree_size: 16,
                redacted: false,
            },
            proof: proof(&log, 5, 9),
            records: log[5..9].to_vec(),
            checkpoint: (16, root),
        }
    }

    fn check(case: &Case) -> Result<RangeProven, RangeDamage> {
        let mut writer =
            RangeWriter::new(Vec::new(), &case.header, b"anchor", &case.proof).unwrap();
        for record in &case.records {
            writer.record(record).unwrap();
        }
        let bytes = writer.finish().unwrap();
        let mut reader = RangeReader::new(bytes.as_slice()).unwrap();
        check_records(
            &mut reader,
            &case.header,
            &case.checkpoint,
            &mut ContentAudit::default(),
            &mut None,
        )
        .unwrap()
    }

    #[test]
    fn an_intact_range_is_proven_at_its_seqs() {
        let case = case();
        assert_eq!(
            check(&case),
            Ok(RangeProven {
                first_seq: 5,
                last_seq: 8,
                tree_size: 16,
                root: case.checkpoint.1
            })
        );
    }

    #[test]
    fn removed_moved_or_extra_records_are_named() {
        let mut removed = case();
        removed.records.remove(1);
        assert_eq!(
            check(&removed),
            Err(RangeDamage::WrongSeq {
                position: 1,
                expected: 6,
                found: 7
            })
        );
        removed.header.count = 3;
        assert!(matches!(check(&removed), Err(RangeDamage::WrongSeq { .. })));

        let mut cut = case();
        cut.records.pop();
        assert_eq!(
            check(&cut),
            Err(RangeDamage::Truncated {
                declared: 4,
                found: 3
            })
        );
        // The last one dropped and the count fixed: only the root tells.
        cut.header.count = 3;
        assert!(matches!(check(&cut), Err(RangeDamage::NotInTree { .. })));

        let mut extra = case();
        extra.records.push(chain(16)[9].clone());
        assert_eq!(check(&extra), Err(RangeDamage::Extended { declared: 4 }));

        let mut shifted = case();
        shifted.header.first_seq = 6;
        assert!(matches!(check(&shifted), Err(RangeDamage::WrongSeq { .. })));
    }

    #[test]
    fn edits_break_a_link_or_the_root() {
        let mut middle = case();
        let last = middle.records[1].len() - 1;
        middle.records[1][last] ^= 1;
        assert_eq!(check(&middle), Err(RangeDamage::LinkBroken { seq: 7 }));

        for edit in [
            |case: &mut Case| *case.records[3].last_mut().unwrap() ^= 1,
            |case: &mut Case| case.proof.swap(0, 1),
            |case: &mut Case| case.proof[0][0] ^= 1,
            |case: &mut Case| case.checkpoint.1[31] ^= 1,
        ] {
            let mut case = case();
            edit(&mut case);
            assert!(
                matches!(check(&case), Err(RangeDamage::NotInTree { .. })),
                "{:?}",
                check(&case)
            );
        }
        // The first record's prev_hash: nothing in the range links to it, its
        // leaf hash does (and so does the next record's link).
        let mut first = case();
        first.records[0][20] ^= 1;
        assert_eq!(check(&first), Err(RangeDamage::LinkBroken { seq: 6 }));
        first.records.truncate(1);
        first.header.count = 1;
        first.proof = proof(&chain(16), 5, 6);
        assert!(matches!(check(&first), Err(RangeDamage::NotInTree { .. })));

        let mut short = case();
        short.proof.pop();
        assert!(matches!(
            check(&short),
            Err(RangeDamage::NotInTree {
                source: MerkleError::WrongProofSize { .. },
                ..
            })
        ));
    }

    /// A range of `entries` (a whole log) from `first` to `end`, each
    /// record followed by its opening when it has one; checked.
    fn content_of_range(
        entries: &[crate::verify::content::tests::Entry],
        first: u64,
        end: u64,
        redacted: bool,
    ) -> ContentVerdict {
        let log = crate::verify::content::tests::records(entries);
        let root = root_from_leaf_hashes(&log.iter().map(|r| entry_hash(r)).collect::<Vec<_>>());
        let header = RangeHeader {
            format_version: RANGE_FORMAT_VERSION,
            log_id: vec![1; 16],
            first_seq: first,
            count: end - first,
            tree_size: log.len() as u64,
            redacted,
        };
        let proof = proof(&log, first, end);
        let mut writer = RangeWriter::new(Vec::new(), &header, b"anchor", &proof).unwrap();
        for seq in first..end {
            writer.record(&log[seq as usize]).unwrap();
            if let Some(opening) = &entries[seq as usize].opening {
                writer.content(seq, opening).unwrap();
            }
        }
        let bytes = writer.finish().unwrap();
        let mut reader = RangeReader::new(bytes.as_slice()).unwrap();
        let mut audit = ContentAudit::new(first, redacted);
        let checkpoint = (log.len() as u64, root);
        let records =
            check_records(&mut reader, &header, &checkpoint, &mut audit, &mut None).unwrap();
        assert!(records.is_ok(), "{records:?}");
        audit.finish(true)
    }

    #[test]
    fn absent_content_whose_erasure_lies_outside_the_range_is_unproven() {
        //! A range cannot see an erasure after its end: the absence is
        //! neither erased nor tampered for it, and the verdict says so.
        use crate::verify::content::tests::{committed, erasure, plain};
        use crate::verify::content::{ContentDamage, ContentSummary};
        let entries = vec![
            plain(0),
            committed(1, b"one"),
            crate::verify::content::tests::Entry {
                opening: None,
                ..committed(2, b"two")
            },
            committed(3, b"three"),
            erasure(&[(2, 3)]),
            plain(5),
        ];
        let outside = content_of_range(&entries, 1, 4, false);
        assert_eq!(
            outside,
            ContentVerdict::Checked(ContentSummary {
                committed: 3,
                opened: 2,
                unproven: 1,
                first_unproven: Some(2),
                ..ContentSummary::default()
            })
        );
        let report = RangeReport {
            header: RangeHeader::default(),
            anchor: RangeAnchorVerdict::Valid {
                counter: 1,
                tree_size: 6,
            },
            records: Ok(RangeProven {
                first_seq: 1,
                last_seq: 3,
                tree_size: 6,
                root: [0; 32],
            }),
            content: outside,
            disclosed: None,
        };
        assert_eq!(report.verdict(), Verdict::Partial(vec![UNPROVEN_ERASURE]));

        // With the erasure inside the range it is proven erased.
        assert!(matches!(
            content_of_range(&entries, 2, 6, false),
            ContentVerdict::Checked(ContentSummary {
                erased: 1,
                unproven: 0,
                ..
            })
        ));
        // An erasure inside the range naming a seq before it is not the
        // range's to check; one naming a present content is.
        assert!(matches!(
            content_of_range(&entries, 3, 6, false),
            ContentVerdict::Checked(ContentSummary { opened: 1, .. })
        ));
        let mut present = entries;
        present[2].opening = Some({
            let mut o = vec![2u8; 32];
            o.extend_from_slice(b"two");
            o
        });
        assert_eq!(
            content_of_range(&present, 1, 6, false),
            ContentVerdict::Damaged(ContentDamage::ErasedContentPresent {
                seq: 2,
                erasure_seq: 4
            })
        );
        // Redacted: absent content is redacted, not unproven.
        let mut redacted = present;
        for entry in &mut redacted {
            entry.opening = None;
        }
        assert!(matches!(
            content_of_range(&redacted, 1, 4, true),
            ContentVerdict::Checked(ContentSummary {
                redacted: 3,
                unproven: 0,
                ..
            })
        ));
    }
}
