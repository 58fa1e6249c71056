//! Content committed, not chained: the part of an event that can be erased.
//!
//! A record whose event had a payload (or attributes the daemon's
//! configuration marks as personal) carries, in its hashed body,
//! `RecordBody.content_commitment` =
//! `SHA-256("tally.content.v1\0" || salt || content)`, where `salt` is 32
//! random bytes and `content` the encoding of `tally.v1.Content`. The
//! *opening*, `salt || content`, is kept beside the record, never in it, so
//! deleting it changes no entry hash, no Merkle root and no anchor. Without
//! the salt, the commitment says nothing about the content (it hides it).
//!
//! Erasures are the daemon's own `tally.erasure` records, whose
//! `RecordBody.erasure` names the seqs they removed. A verifier accepts a
//! committed record without its opening only when an erasure record after it
//! covers its seq ([`SeqRanges`]). docs/DESIGN.md section 3b has the bytes.

use prost::bytes::Buf;
use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::record::Hash;

/// Domain prefix of a content commitment.
pub const COMMITMENT_DOMAIN: &[u8] = b"tally.content.v1\0";

/// Length of the salt at the start of an opening.
pub const SALT_LEN: usize = 32;

/// `RecordBody` field numbers this module reads (tally.proto).
const BODY_EVENT: u32 = 3;
const BODY_CONTENT_COMMITMENT: u32 = 4;
const BODY_ERASURE: u32 = 5;
/// `Event.kind`.
const EVENT_KIND: u32 = 1;

/// The kind of the daemon's erasure records.
pub const ERASURE_KIND: &str = "tally.erasure";

/// Why bytes are not a well-formed opening or record body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    #[error("an opening is {len} bytes, shorter than its {SALT_LEN}-byte salt")]
    OpeningTooShort { len: usize },
    #[error("the record body is not valid protobuf: {0}")]
    MalformedBody(String),
    #[error("the record body's content commitment is {len} bytes, not 32")]
    CommitmentLength { len: usize },
    #[error("the record body repeats field {field}")]
    RepeatedField { field: u32 },
    #[error("an erasure record's ranges are empty, overlapping or out of order")]
    ErasureRanges,
}

/// The commitment to `content` under `salt`.
pub fn commit(salt: &[u8; SALT_LEN], content: &[u8]) -> Hash {
    let mut sha = Sha256::new();
    sha.update(COMMITMENT_DOMAIN);
    sha.update(salt);
    sha.update(content);
    sha.finalize().into()
}

/// The commitment an opening (`salt || content`) opens.
pub fn commitment_of_opening(opening: &[u8]) -> Result<Hash, ContentError> {
    let (salt, content) = split_opening(opening)?;
    Ok(commit(salt, content))
}

/// An opening's salt and content.
pub fn split_opening(opening: &[u8]) -> Result<(&[u8; SALT_LEN], &[u8]), ContentError> {
    opening
        .split_first_chunk::<SALT_LEN>()
        .ok_or(ContentError::OpeningTooShort { len: opening.len() })
}

/// What a verifier needs from a record body, read without decoding the rest:
/// the top-level fields are walked, the event only as far as its kind when
/// the body has an erasure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodyFacts {
    /// `RecordBody.content_commitment`, when set.
    pub content_commitment: Option<Hash>,
    /// `RecordBody.erasure`'s ranges, when set and the event's kind is
    /// [`ERASURE_KIND`] (a body with the field under another kind is refused:
    /// only the daemon writes either).
    pub erasure: Option<SeqRanges>,
}

impl BodyFacts {
    /// Reads `body` (a record's bytes after its header).
    pub fn parse(body: &[u8]) -> Result<BodyFacts, ContentError> {
        let mut buf = body;
        let mut facts = BodyFacts::default();
        // The event is walked (for its kind) only when the body has an
        // erasure: most records have none, and the walk over every event's
        // attributes was a sixth of a plain bundle's verify time.
        let mut event: Option<&[u8]> = None;
        let mut erasure: Option<&[u8]> = None;
        let malformed = |e: prost::DecodeError| ContentError::MalformedBody(e.to_string());
        while buf.has_remaining() {
            let (field, wire_type) = decode_key(&mut buf).map_err(malformed)?;
            match (field, wire_type) {
                (BODY_CONTENT_COMMITMENT, WireType::LengthDelimited) => {
                    let bytes = take_len(&mut buf)?;
                    if facts.content_commitment.is_some() {
                        return Err(ContentError::RepeatedField { field });
                    }
                    let hash: Hash = bytes
                        .try_into()
                        .map_err(|_| ContentError::CommitmentLength { len: bytes.len() })?;
                    facts.content_commitment = Some(hash);
                }
                (BODY_ERASURE, WireType::LengthDelimited) => {
                    let bytes = take_len(&mut buf)?;
                    if erasure.replace(bytes).is_some() {
                        return Err(ContentError::RepeatedField { field });
                    }
                }
                (BODY_EVENT, WireType::LengthDelimited) => {
                    // The last occurrence's kind, as the walk below keeps.
                    event = Some(take_len(&mut buf)?);
                }
                (_, wire_type) => {
                    skip_field(wire_type, field, &mut buf, DecodeContext::default())
                        .map_err(malformed)?;
                }
            }
        }
        if let Some(bytes) = erasure {
            let kind_is_erasure = match event {
                Some(event) => event_kind(event)? == Some(ERASURE_KIND.as_bytes()),
                None => false,
            };
            if !kind_is_erasure {
                return Err(ContentError::MalformedBody(format!(
                    "an erasure field in a record whose kind is not {ERASURE_KIND}"
                )));
            }
            let decoded = ErasureView::decode(bytes).map_err(malformed)?;
            facts.erasure = Some(SeqRanges::from_ordered(
                decoded.erased.iter().map(|r| (r.from_seq, r.to_seq)),
            )?);
        }
        Ok(facts)
    }
}

/// The bytes of a length-delimited field whose key was just read.
fn take_len<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], ContentError> {
    let len = decode_varint(buf).map_err(|e| ContentError::MalformedBody(e.to_string()))?;
    let len = usize::try_from(len)
        .ok()
        .filter(|len| *len <= buf.len())
        .ok_or_else(|| ContentError::MalformedBody("a length runs past the body".into()))?;
    let (bytes, rest) = buf.split_at(len);
    *buf = rest;
    Ok(bytes)
}

/// `Event.kind`'s bytes (the last occurrence, as protobuf decoding keeps).
fn event_kind(mut event: &[u8]) -> Result<Option<&[u8]>, ContentError> {
    let malformed = |e: prost::DecodeError| ContentError::MalformedBody(e.to_string());
    let mut kind = None;
    while event.has_remaining() {
        let (field, wire_type) = decode_key(&mut event).map_err(malformed)?;
        if field == EVENT_KIND && wire_type == WireType::LengthDelimited {
            kind = Some(take_len(&mut event)?);
        } else {
            skip_field(wire_type, field, &mut event, DecodeContext::default())
                .map_err(malformed)?;
        }
    }
    Ok(kind)
}

/// `tally.v1.Erasure`, as this crate reads it (attest does not depend on the
/// client crate's generated types; the schema test in `schema_tests.rs`
/// keeps the two equal).
#[derive(Clone, PartialEq, Message)]
pub struct ErasureView {
    #[prost(message, repeated, tag = "1")]
    pub erased: Vec<SeqRangeView>,
}

/// `tally.v1.SeqRange`: seqs `[from_seq, to_seq)`.
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct SeqRangeView {
    #[prost(uint64, tag = "1")]
    pub from_seq: u64,
    #[prost(uint64, tag = "2")]
    pub to_seq: u64,
}

/// A set of seqs as disjoint, non-adjacent ranges `[from, to)`, kept in
/// order: what erasures cover, or what a verifier found missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqRanges {
    /// Sorted by start; no two overlap or touch.
    ranges: Vec<(u64, u64)>,
}

impl SeqRanges {
    /// The ranges of an erasure record: each non-empty, in increasing order
    /// and disjoint, as the daemon writes them.
    pub fn from_ordered(
        ranges: impl IntoIterator<Item = (u64, u64)>,
    ) -> Result<SeqRanges, ContentError> {
        let mut out = SeqRanges::default();
        let mut last_end = None;
        for (from, to) in ranges {
            if from >= to || last_end.is_some_and(|end| from < end) {
                return Err(ContentError::ErasureRanges);
            }
            last_end = Some(to);
            out.insert(from, to);
        }
        Ok(out)
    }

    /// Adds `[from, to)` (nothing when empty), merging with what it touches.
    pub fn insert(&mut self, from: u64, to: u64) {
        if from >= to {
            return;
        }
        // Fast path: appending in order (the common case while streaming).
        if let Some(last) = self.ranges.last_mut() {
            if from >= last.0 {
                if from <= last.1 {
                    last.1 = last.1.max(to);
                    return;
                }
                self.ranges.push((from, to));
                return;
            }
        } else {
            self.ranges.push((from, to));
            return;
        }
        // First range ending at or after `from`, and first starting after `to`.
        let start = self.ranges.partition_point(|r| r.1 < from);
        let end = self.ranges.partition_point(|r| r.0 <= to);
        if start == end {
            self.ranges.insert(start, (from, to));
            return;
        }
        let merged = (
            from.min(self.ranges[start].0),
            to.max(self.ranges[end - 1].1),
        );
        self.ranges.splice(start..end, [merged]);
    }

    /// Adds every range of `other`.
    pub fn extend(&mut self, other: &SeqRanges) {
        for &(from, to) in &other.ranges {
            self.insert(from, to);
        }
    }

    pub fn contains(&self, seq: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.1 <= seq);
        self.ranges.get(i).is_some_and(|r| r.0 <= seq)
    }

    /// The first seq of `self` that `cover` does not contain.
    pub fn first_not_in(&self, cover: &SeqRanges) -> Option<u64> {
        for &(from, to) in &self.ranges {
            let mut seq = from;
            while seq < to {
                let i = cover.ranges.partition_point(|r| r.1 <= seq);
                match cover.ranges.get(i) {
                    Some(&(cfrom, cto)) if cfrom <= seq => seq = cto,
                    _ => return Some(seq),
                }
            }
        }
        None
    }

    /// Number of seqs.
    pub fn count(&self) -> u64 {
        self.ranges.iter().map(|(from, to)| to - from).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges, in order.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(v: u64, out: &mut Vec<u8>) {
        prost::encoding::encode_varint(v, out);
    }

    fn len_field(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
        prost::encoding::encode_key(field, WireType::LengthDelimited, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    fn event(kind: &str) -> Vec<u8> {
        let mut e = Vec::new();
        len_field(1, kind.as_bytes(), &mut e);
        len_field(5, b"payload bytes that end like 22 20", &mut e);
        e
    }

    #[test]
    fn commitment_is_sha256_of_domain_salt_and_content() {
        // Independent answer: printf 'tally.content.v1\0' > x;
        // printf '\x07%.0s' $(seq 32) >> x; printf 'hi' >> x; sha256sum x
        let salt = [7u8; 32];
        let mut opening = salt.to_vec();
        opening.extend_from_slice(b"hi");
        let mut sha = Sha256::new();
        sha.update(b"tally.content.v1\x00\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07hi");
        let expected: Hash = sha.finalize().into();
        assert_eq!(commit(&salt, b"hi"), expected);
        assert_eq!(commitment_of_opening(&opening), Ok(expected));
        assert_eq!(
            commitment_of_opening(&[0u8; 31]),
            Err(ContentError::OpeningTooShort { len: 31 })
        );
        assert_ne!(commit(&[8u8; 32], b"hi"), expected, "the salt counts");
    }

    #[test]
    fn body_facts_reads_the_commitment_and_an_erasure_only_at_top_level() {
        // A body whose event's payload holds bytes shaped like field 4 is
        // not a committed body.
        let mut body = Vec::new();
        prost::encoding::encode_key(1, WireType::Varint, &mut body);
        varint(12345, &mut body);
        let mut tricky = event("prompt");
        len_field(4, &[9u8; 32], &mut tricky);
        len_field(BODY_EVENT, &tricky, &mut body);
        assert_eq!(BodyFacts::parse(&body).unwrap(), BodyFacts::default());

        let mut committed = body.clone();
        len_field(BODY_CONTENT_COMMITMENT, &[3u8; 32], &mut committed);
        let facts = BodyFacts::parse(&committed).unwrap();
        assert_eq!(facts.content_commitment, Some([3u8; 32]));
        assert_eq!(facts.erasure, None);

        let mut twice = committed.clone();
        len_field(BODY_CONTENT_COMMITMENT, &[4u8; 32], &mut twice);
        assert_eq!(
            BodyFacts::parse(&twice),
            Err(ContentError::RepeatedField { field: 4 })
        );
        let mut short = body.clone();
        len_field(BODY_CONTENT_COMMITMENT, &[3u8; 31], &mut short);
        assert_eq!(
            BodyFacts::parse(&short),
            Err(ContentError::CommitmentLength { len: 31 })
        );
        assert!(matches!(
            BodyFacts::parse(&committed[..committed.len() - 1]),
            Err(ContentError::MalformedBody(_))
        ));
    }

    #[test]
    fn an_erasure_counts_only_in_a_tally_erasure_record() {
        let erasure = ErasureView {
            erased: vec![
                SeqRangeView {
                    from_seq: 2,
                    to_seq: 5,
                },
                SeqRangeView {
                    from_seq: 9,
                    to_seq: 10,
                },
            ],
        }
        .encode_to_vec();
        let mut body = Vec::new();
        len_field(BODY_EVENT, &event(ERASURE_KIND), &mut body);
        len_field(BODY_ERASURE, &erasure, &mut body);
        let facts = BodyFacts::parse(&body).unwrap();
        let ranges = facts.erasure.unwrap();
        assert_eq!(ranges.ranges(), &[(2, 5), (9, 10)]);
        assert_eq!(ranges.count(), 4);

        let mut forged = Vec::new();
        len_field(BODY_EVENT, &event("prompt"), &mut forged);
        len_field(BODY_ERASURE, &erasure, &mut forged);
        assert!(matches!(
            BodyFacts::parse(&forged),
            Err(ContentError::MalformedBody(_))
        ));

        let unordered = ErasureView {
            erased: vec![
                SeqRangeView {
                    from_seq: 9,
                    to_seq: 10,
                },
                SeqRangeView {
                    from_seq: 2,
                    to_seq: 5,
                },
            ],
        }
        .encode_to_vec();
        let mut bad = Vec::new();
        len_field(BODY_EVENT, &event(ERASURE_KIND), &mut bad);
        len_field(BODY_ERASURE, &unordered, &mut bad);
        assert_eq!(BodyFacts::parse(&bad), Err(ContentError::ErasureRanges));
    }

    #[test]
    fn seq_ranges_merge_and_answer_membership() {
        let mut set = SeqRanges::default();
        set.insert(10, 20);
        set.insert(30, 40);
        set.insert(0, 5);
        set.insert(20, 25); // touches [10, 20)
        set.insert(3, 12); // bridges [0, 5) and [10, 25)
        set.insert(7, 7); // empty
        assert_eq!(set.ranges(), &[(0, 25), (30, 40)]);
        assert_eq!(set.count(), 35);
        assert!(set.contains(0) && set.contains(24) && set.contains(30));
        assert!(!set.contains(25) && !set.contains(29) && !set.contains(40));
        set.insert(24, 31);
        assert_eq!(set.ranges(), &[(0, 40)]);

        let mut missing = SeqRanges::default();
        missing.insert(3, 6);
        missing.insert(41, 42);
        assert_eq!(missing.first_not_in(&set), Some(41));
        let mut cover = set.clone();
        cover.insert(41, 50);
        assert_eq!(missing.first_not_in(&cover), None);
        assert_eq!(missing.first_not_in(&SeqRanges::default()), Some(3));
    }
}
