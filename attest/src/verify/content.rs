//! Verifying content (docs/DESIGN.md sections 3b and 8): every opening a
//! source gives must open its record's commitment, and every committed
//! record without its opening must be covered by an erasure record after it
//! (or the bundle must say it is redacted). Each record's part,
//! [`ContentFact::of`], runs on the hashing threads (one body walk and one
//! SHA-256 per committed record); [`ContentAudit`] then sees the facts in
//! seq order and keeps only ranges: the seqs whose opening is absent, and
//! what the erasures cover.

use crate::content::{commitment_of_opening, BodyFacts, ContentError, SeqRanges};

/// What one record says about its content, computed from its bytes and
/// the opening that came with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ContentFact {
    /// No commitment and no opening: nothing to check.
    #[default]
    Plain,
    /// A commitment, and an opening that opens it.
    Opened,
    /// A commitment, and an opening that does not open it.
    Mismatch,
    /// A commitment and no opening (erased, redacted, or removed).
    Absent,
    /// An opening for a record without a commitment (a format error).
    Unexpected,
    /// A `tally.erasure` record and the seqs it names.
    Erasure(SeqRanges),
    /// The body is not a readable record body.
    Malformed(ContentError),
}

impl ContentFact {
    /// The fact of `record` (header and body) given `opening`.
    pub fn of(record: &[u8], opening: Option<&[u8]>) -> ContentFact {
        let body = record.get(crate::record::HEADER_LEN..).unwrap_or_default();
        let facts = match BodyFacts::parse(body) {
            Ok(facts) => facts,
            Err(error) => return ContentFact::Malformed(error),
        };
        match (facts.content_commitment, opening, facts.erasure) {
            // The contract gives erasure records no content of their own;
            // one with a commitment is checked like any committed record
            // before its ranges would count, so nothing is taken on faith.
            (None, None, Some(ranges)) => ContentFact::Erasure(ranges),
            (None, None, None) => ContentFact::Plain,
            (None, Some(_), _) => ContentFact::Unexpected,
            (Some(_), None, _) => ContentFact::Absent,
            (Some(commitment), Some(opening), erasure) => {
                if commitment_of_opening(opening).ok() != Some(commitment) {
                    ContentFact::Mismatch
                } else if let Some(ranges) = erasure {
                    ContentFact::Erasure(ranges)
                } else {
                    ContentFact::Opened
                }
            }
        }
    }
}

/// The first content violation, naming the seq. Any of these is a FAIL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContentDamage {
    #[error("seq {seq}: its content does not open the record's commitment (the content was changed or swapped)")]
    ContentMismatch { seq: u64 },
    #[error("seq {seq}: its content is absent and no erasure record covers it (content removed without an erasure: tampering)")]
    ContentMissing { seq: u64 },
    /// The erasure record names `seq`, yet the source holds `seq`'s content
    /// (or `seq` never had a commitment, which no erasure may name).
    #[error("seq {seq}: erasure record {erasure_seq} names it, yet its content is present or it never had any (the erasure did not take effect)")]
    ErasedContentPresent { seq: u64, erasure_seq: u64 },
    #[error("erasure record {erasure_seq} names seqs at or after its own (malformed erasure)")]
    ErasureBeyondItself { erasure_seq: u64 },
    #[error("seq {seq}: the record body is malformed: {error}")]
    MalformedBody { seq: u64, error: ContentError },
}

impl ContentDamage {
    /// The damaged record (for an erasure that names its own future, the
    /// erasure record).
    pub fn seq(&self) -> u64 {
        match self {
            ContentDamage::ContentMismatch { seq }
            | ContentDamage::ContentMissing { seq }
            | ContentDamage::ErasedContentPresent { seq, .. }
            | ContentDamage::MalformedBody { seq, .. } => *seq,
            ContentDamage::ErasureBeyondItself { erasure_seq } => *erasure_seq,
        }
    }
}

/// What the content checks found, when nothing failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContentSummary {
    /// Records with a content commitment.
    pub committed: u64,
    /// Openings checked against their commitment (all opened).
    pub opened: u64,
    /// Committed records without their opening that an erasure record in
    /// the source covers.
    pub erased: u64,
    /// Committed records without their opening, not covered by an erasure,
    /// in a bundle whose header says it is redacted (left out on purpose).
    pub redacted: u64,
    /// Range bundles only: committed records without their opening, not
    /// covered by an erasure record in the range; the erasure may lie
    /// outside it, so the absence is neither proven erased nor tampering.
    pub unproven: u64,
    /// The first such seq.
    pub first_unproven: Option<u64>,
    /// Erasure records seen.
    pub erasure_records: u64,
}

/// The verdict on content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentVerdict {
    Checked(ContentSummary),
    Damaged(ContentDamage),
    /// The chain replay stopped early (its damage is the verdict).
    NotChecked(&'static str),
}

/// The content side of a replay, fed in seq order.
#[derive(Debug, Clone, Default)]
pub struct ContentAudit {
    redacted: bool,
    /// The first seq the source holds: erasures' seqs below it are not
    /// the source's to check.
    first_seq: u64,
    summary: ContentSummary,
    /// Committed records whose opening was absent.
    absent: SeqRanges,
    /// What the erasure records seen so far cover.
    cover: SeqRanges,
    damage: Option<ContentDamage>,
    /// The first record that came with an opening but has no commitment.
    unexpected: Option<u64>,
}

impl ContentAudit {
    /// An audit of a source that starts at `first_seq`; `redacted`: the
    /// source's header says content was left out on purpose.
    pub fn new(first_seq: u64, redacted: bool) -> ContentAudit {
        ContentAudit {
            redacted,
            first_seq,
            ..ContentAudit::default()
        }
    }

    /// Takes the fact of record `seq` (seqs in increasing order).
    pub fn observe(&mut self, seq: u64, fact: ContentFact) {
        if self.damage.is_some() {
            return;
        }
        match fact {
            ContentFact::Plain => {}
            ContentFact::Opened => {
                self.summary.committed += 1;
                self.summary.opened += 1;
            }
            ContentFact::Mismatch => {
                self.damage = Some(ContentDamage::ContentMismatch { seq });
            }
            ContentFact::Absent => {
                self.summary.committed += 1;
                self.absent.insert(seq, seq + 1);
            }
            ContentFact::Unexpected => {
                self.unexpected.get_or_insert(seq);
            }
            ContentFact::Malformed(error) => {
                self.damage = Some(ContentDamage::MalformedBody { seq, error });
            }
            ContentFact::Erasure(ranges) => self.erasure(seq, ranges),
        }
    }

    fn erasure(&mut self, erasure_seq: u64, ranges: SeqRanges) {
        self.summary.erasure_records += 1;
        // Ranges are ordered, so the last one reaches furthest.
        if ranges
            .ranges()
            .last()
            .is_some_and(|&(_, to)| to > erasure_seq)
        {
            self.damage = Some(ContentDamage::ErasureBeyondItself { erasure_seq });
            return;
        }
        // Every seq it names, from the source's first on, was seen already
        // (they are below its own seq) and must have had its opening absent.
        let mut within = SeqRanges::default();
        for &(from, to) in ranges.ranges() {
            within.insert(from.max(self.first_seq), to);
        }
        if let Some(seq) = within.first_not_in(&self.absent) {
            self.damage = Some(ContentDamage::ErasedContentPresent { seq, erasure_seq });
            return;
        }
        self.cover.extend(&within);
    }

    /// The first record that came with an opening but has no commitment:
    /// the source is malformed (a format error, not a verdict).
    pub fn unexpected_opening(&self) -> Option<u64> {
        self.unexpected
    }

    /// The verdict once every record was observed. `range`: the source is a
    /// range bundle, whose erasures may lie after its last record.
    pub fn finish(self, range: bool) -> ContentVerdict {
        if let Some(damage) = self.damage {
            return ContentVerdict::Damaged(damage);
        }
        let mut summary = self.summary;
        let absent = self.absent.count();
        let uncovered = absent - covered_count(&self.absent, &self.cover);
        summary.erased = absent - uncovered;
        if uncovered > 0 {
            if self.redacted {
                summary.redacted = uncovered;
            } else if range {
                summary.unproven = uncovered;
                summary.first_unproven = self.absent.first_not_in(&self.cover);
            } else if let Some(seq) = self.absent.first_not_in(&self.cover) {
                return ContentVerdict::Damaged(ContentDamage::ContentMissing { seq });
            }
        }
        ContentVerdict::Checked(summary)
    }
}

/// How many seqs of `set` `cover` contains.
fn covered_count(set: &SeqRanges, cover: &SeqRanges) -> u64 {
    let mut count = 0;
    let mut covers = cover.ranges().iter().peekable();
    for &(from, to) in set.ranges() {
        while let Some(&&(cfrom, cto)) = covers.peek() {
            if cto <= from {
                covers.next();
                continue;
            }
            if cfrom >= to {
                break;
            }
            count += cto.min(to) - cfrom.max(from);
            if cto <= to {
                covers.next();
            } else {
                break;
            }
        }
    }
    count
}

#[cfg(test)]
#[path = "content_tests.rs"]
pub(crate) mod tests;
