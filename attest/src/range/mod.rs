//! Range bundles: records `first_seq..first_seq + count` of a log, and what
//! proves them against one TPM-anchored checkpoint without the rest of the
//! log (docs/DESIGN.md sections 7 and 8).
//!
//! Layout (the section framing is the full bundle's, [`crate::bundle`]):
//!
//! ```text
//! MAGIC ("tally-range-v01\n", 16 bytes)
//! section*   where section = kind (1 byte) || len (u32 big-endian) || len bytes
//! ```
//!
//! Sections, in this order and no others: one `Header` (protobuf
//! [`RangeHeader`]), exactly one `Anchor` (the stored `AnchorRecord` whose
//! checkpoint covers `tree_size` records), one `Proof` (the Merkle range
//! proof: 32-byte hashes back to back, [`crate::merkle::verify_range`]),
//! `count` `Record` sections (the stored record bytes, verbatim, in seq
//! order), each committed record's followed by its `Content` section
//! (`seq u64 BE || opening`) unless its content was erased or the header
//! says `redacted`, then one `End` with no bytes and nothing after it.
//!
//! The magic is not the full bundle's, so a verifier that predates range
//! bundles refuses one ("bad magic") instead of replaying it as a log that
//! starts at seq 0, and [`crate::bundle::BundleReader`] refuses it by name.

mod verify;

use std::io::{self, BufRead, Read, Write};

use prost::Message;

use crate::bundle::{
    read_exact_or, read_section, write_content, write_section, BundleError, Opening, SectionKind,
};
use crate::record::Hash;

pub use verify::{
    verify_range_bundle, Disclosed, RangeAnchorVerdict, RangeDamage, RangeProven, RangeReport,
    UNPROVEN_ERASURE,
};

/// First bytes of every range bundle.
pub use crate::bundle::RANGE_MAGIC as MAGIC;

/// Version written into [`RangeHeader::format_version`].
pub const RANGE_FORMAT_VERSION: u32 = 1;

/// What the exporter said about the range. A verifier trusts none of it: the
/// anchor's checkpoint gives the log id, the tree size and the root, and the
/// records and the proof must lead to that root at exactly these seqs; so
/// each field is checked against something the TPM or the tree certifies.
///
/// Schema: `tally.formats.v1.RangeHeader` in
/// `attest/proto/tally/formats/v1/formats.proto`
/// (a test checks that this struct encodes exactly as that message).
#[derive(Clone, PartialEq, Message)]
pub struct RangeHeader {
    /// Range bundle format version; this module reads and writes
    /// [`RANGE_FORMAT_VERSION`] (1).
    #[prost(uint32, tag = "1")]
    pub format_version: u32,
    /// The log's random identity, 16 bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub log_id: Vec<u8>,
    /// Seq of the first record in the bundle.
    #[prost(uint64, tag = "3")]
    pub first_seq: u64,
    /// Number of records (at least 1): seqs `first_seq..first_seq + count`.
    #[prost(uint64, tag = "4")]
    pub count: u64,
    /// The anchored log size the range is proven against (the anchor's
    /// checkpoint size), at least `first_seq + count`.
    #[prost(uint64, tag = "5")]
    pub tree_size: u64,
    /// The exporter left every content out on purpose (`--redact`);
    /// otherwise each committed record is followed by its content section.
    #[prost(bool, tag = "6")]
    pub redacted: bool,
    // No informational fields (export time, producer) as the whole-log
    // header has: nothing would check them, and every byte of a range bundle
    // is meant to matter to its verdict (a test flips each one).
}

impl RangeHeader {
    /// One past the last seq, if it fits in a u64.
    pub fn end(&self) -> Option<u64> {
        self.first_seq.checked_add(self.count)
    }
}

/// Why a file is not a readable range bundle (format errors; damage inside a
/// well-formed one is a [`RangeDamage`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RangeFormatError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("not a range bundle (its magic is not tally-range-v01)")]
    NotRange,
    #[error("range bundle format version {found} is not supported (this build reads {RANGE_FORMAT_VERSION})")]
    UnsupportedVersion { found: u32 },
    #[error("range bundle header is malformed: {0}")]
    BadHeader(#[from] prost::DecodeError),
    #[error("range bundle header declares an empty range, or one that does not fit below its tree size (seqs {first_seq}+{count}, tree of {tree_size})")]
    BadRange {
        first_seq: u64,
        count: u64,
        tree_size: u64,
    },
    #[error("the range proof section is {len} bytes, not a whole number of 32-byte hashes")]
    ProofLength { len: usize },
    #[error("expected a {expected:?} section, found {found:?}")]
    UnexpectedSection {
        expected: SectionKind,
        found: SectionKind,
    },
    #[error("the content section after seq {seq} belongs to no commitment (the record has none)")]
    ContentWithoutCommitment { seq: u64 },
}

/// True when `prefix` (the first bytes of a file) is a range bundle's magic.
pub fn is_range_bundle(prefix: &[u8]) -> bool {
    prefix.starts_with(MAGIC)
}

/// Writes a range bundle: magic, header, the anchor and the proof up front,
/// then [`RangeWriter::record`] per record and [`RangeWriter::finish`].
#[derive(Debug)]
pub struct RangeWriter<W: Write> {
    out: W,
}

impl<W: Write> RangeWriter<W> {
    pub fn new(
        mut out: W,
        header: &RangeHeader,
        anchor: &[u8],
        proof: &[Hash],
    ) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        write_section(&mut out, SectionKind::Header, &header.encode_to_vec())?;
        write_section(&mut out, SectionKind::Anchor, anchor)?;
        write_section(&mut out, SectionKind::Proof, &proof.concat())?;
        Ok(RangeWriter { out })
    }

    /// Appends one stored record, verbatim.
    pub fn record(&mut self, record: &[u8]) -> io::Result<()> {
        write_section(&mut self.out, SectionKind::Record, record)
    }

    /// Appends the opening of record `seq`, right after that record.
    pub fn content(&mut self, seq: u64, opening: &[u8]) -> io::Result<()> {
        write_content(&mut self.out, seq, opening)
    }

    /// Writes the end section and returns the inner writer (flushed).
    pub fn finish(mut self) -> io::Result<W> {
        write_section(&mut self.out, SectionKind::End, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads a range bundle: header, anchor and proof on [`RangeReader::new`],
/// then the records one by one.
#[derive(Debug)]
pub struct RangeReader<R: BufRead> {
    input: R,
    header: RangeHeader,
    anchor: Vec<u8>,
    proof: Vec<Hash>,
    offset: u64,
    done: bool,
    /// The opening that followed the record last returned.
    opening: Opening,
    /// The section after the last record, read ahead, with its offset.
    pending: Option<(SectionKind, Vec<u8>, u64)>,
}

impl<R: BufRead> RangeReader<R> {
    pub fn new(mut input: R) -> Result<Self, RangeFormatError> {
        let mut magic = [0u8; MAGIC.len()];
        read_exact_or(&mut input, &mut magic, "in the magic")?;
        if &magic != MAGIC {
            return Err(RangeFormatError::NotRange);
        }
        let mut offset = MAGIC.len() as u64;
        let mut next = |input: &mut R, expected: SectionKind| {
            let mut buf = Vec::new();
            let found = read_section(input, &mut buf, offset)?;
            offset += 5 + buf.len() as u64;
            if found != expected {
                return Err(RangeFormatError::UnexpectedSection { expected, found });
            }
            Ok(buf)
        };
        let header = RangeHeader::decode(next(&mut input, SectionKind::Header)?.as_slice())?;
        if header.format_version != RANGE_FORMAT_VERSION {
            return Err(RangeFormatError::UnsupportedVersion {
                found: header.format_version,
            });
        }
        if header.count == 0 || header.end().is_none_or(|end| end > header.tree_size) {
            return Err(RangeFormatError::BadRange {
                first_seq: header.first_seq,
                count: header.count,
                tree_size: header.tree_size,
            });
        }
        let anchor = next(&mut input, SectionKind::Anchor)?;
        let proof_bytes = next(&mut input, SectionKind::Proof)?;
        let (chunks, rest) = proof_bytes.as_chunks::<32>();
        if !rest.is_empty() {
            return Err(RangeFormatError::ProofLength {
                len: proof_bytes.len(),
            });
        }
        let proof = chunks.to_vec();
        Ok(RangeReader {
            input,
            header,
            anchor,
            proof,
            offset,
            done: false,
            opening: Opening::default(),
            pending: None,
        })
    }

    pub fn header(&self) -> &RangeHeader {
        &self.header
    }

    /// The anchor section's bytes (a stored `AnchorRecord`).
    pub fn anchor(&self) -> &[u8] {
        &self.anchor
    }

    /// The range proof's hashes, left to right.
    pub fn proof(&self) -> &[Hash] {
        &self.proof
    }

    /// Reads the next record into `buf`. `Ok(false)` after the end section,
    /// having checked nothing follows it.
    pub fn next_record(&mut self, buf: &mut Vec<u8>) -> Result<bool, RangeFormatError> {
        self.opening.clear();
        if self.done {
            return Ok(false);
        }
        let (kind, offset) = match self.pending.take() {
            Some((kind, bytes, offset)) => {
                *buf = bytes;
                (kind, offset)
            }
            None => (self.section(buf)?, self.offset_before(buf)),
        };
        match kind {
            SectionKind::Record => {
                let offset = self.offset;
                let mut next = std::mem::take(&mut self.opening.spare);
                let kind = self.section(&mut next)?;
                if !self
                    .opening
                    .accept(kind, next, buf, self.header.redacted, offset)?
                {
                    self.pending = Some((kind, std::mem::take(&mut self.opening.spare), offset));
                }
                Ok(true)
            }
            SectionKind::Content => Err(BundleError::ContentOutOfPlace { offset }.into()),
            SectionKind::End => {
                self.done = true;
                let trailing = io::copy(&mut (&mut self.input).take(u64::MAX), &mut io::sink())
                    .map_err(BundleError::Io)?;
                if trailing > 0 {
                    return Err(BundleError::TrailingData(trailing).into());
                }
                Ok(false)
            }
            found => Err(RangeFormatError::UnexpectedSection {
                expected: SectionKind::Record,
                found,
            }),
        }
    }

    /// The opening (`salt || content`) whose content section followed the
    /// record last returned by [`RangeReader::next_record`], if one did.
    pub fn opening(&self) -> Option<&[u8]> {
        self.opening.get()
    }

    fn section(&mut self, buf: &mut Vec<u8>) -> Result<SectionKind, BundleError> {
        let kind = read_section(&mut self.input, buf, self.offset)?;
        self.offset += 5 + buf.len() as u64;
        Ok(kind)
    }

    /// The offset of the section just read into `buf`.
    fn offset_before(&self, buf: &[u8]) -> u64 {
        self.offset - 5 - buf.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> RangeHeader {
        RangeHeader {
            format_version: RANGE_FORMAT_VERSION,
            log_id: vec![7; 16],
            first_seq: 3,
            count: 2,
            tree_size: 9,
            redacted: false,
        }
    }

    fn bundle(header: &RangeHeader, records: &[&[u8]]) -> Vec<u8> {
        let mut writer =
            RangeWriter::new(Vec::new(), header, b"anchor", &[[1; 32], [2; 32]]).unwrap();
        for record in records {
            writer.record(record).unwrap();
        }
        writer.finish().unwrap()
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Vec<u8>>, RangeFormatError> {
        let mut reader = RangeReader::new(bytes)?;
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while reader.next_record(&mut buf)? {
            out.push(buf.clone());
        }
        Ok(out)
    }

    #[test]
    fn round_trip() {
        let bytes = bundle(&header(), &[b"r3", b"r4"]);
        let reader = RangeReader::new(bytes.as_slice()).unwrap();
        assert_eq!(reader.header(), &header());
        assert_eq!(reader.anchor(), b"anchor");
        assert_eq!(reader.proof(), &[[1; 32], [2; 32]]);
        assert_eq!(read_all(&bytes).unwrap(), [b"r3".to_vec(), b"r4".to_vec()]);
    }

    #[test]
    fn a_full_bundle_reader_refuses_a_range_bundle_by_name_and_vice_versa() {
        let bytes = bundle(&header(), &[b"r3", b"r4"]);
        assert!(matches!(
            crate::bundle::BundleReader::new(bytes.as_slice()),
            Err(BundleError::RangeBundle)
        ));
        let full = crate::bundle::BundleWriter::new(
            Vec::new(),
            &crate::bundle::BundleHeader {
                format_version: crate::bundle::BUNDLE_FORMAT_VERSION,
                head_hash: vec![0; 32],
                ..Default::default()
            },
        )
        .unwrap()
        .finish()
        .unwrap();
        assert!(matches!(
            RangeReader::new(full.as_slice()),
            Err(RangeFormatError::NotRange)
        ));
    }

    #[test]
    fn malformed_files_are_refused() {
        let good = bundle(&header(), &[b"r3", b"r4"]);
        for cut in 0..good.len() {
            assert!(read_all(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            read_all(&trailing),
            Err(RangeFormatError::Bundle(BundleError::TrailingData(1)))
        ));
        for bad in [
            RangeHeader {
                count: 0,
                ..header()
            },
            RangeHeader {
                tree_size: 4,
                ..header()
            },
            RangeHeader {
                first_seq: u64::MAX,
                ..header()
            },
        ] {
            assert!(matches!(
                read_all(&bundle(&bad, &[b"r3"])),
                Err(RangeFormatError::BadRange { .. })
            ));
        }
        assert!(matches!(
            read_all(&bundle(
                &RangeHeader {
                    format_version: 2,
                    ..header()
                },
                &[]
            )),
            Err(RangeFormatError::UnsupportedVersion { found: 2 })
        ));
        // A proof of 33 bytes.
        let mut out = MAGIC.to_vec();
        write_section(&mut out, SectionKind::Header, &header().encode_to_vec()).unwrap();
        write_section(&mut out, SectionKind::Anchor, b"a").unwrap();
        write_section(&mut out, SectionKind::Proof, &[0; 33]).unwrap();
        assert!(matches!(
            RangeReader::new(out.as_slice()),
            Err(RangeFormatError::ProofLength { len: 33 })
        ));
        // The proof before the anchor.
        let mut out = MAGIC.to_vec();
        write_section(&mut out, SectionKind::Header, &header().encode_to_vec()).unwrap();
        write_section(&mut out, SectionKind::Proof, &[]).unwrap();
        assert!(matches!(
            RangeReader::new(out.as_slice()),
            Err(RangeFormatError::UnexpectedSection {
                expected: SectionKind::Anchor,
                found: SectionKind::Proof
            })
        ));
    }
}
