//! The export bundle: a self-contained file holding a log prefix and what a
//! verifier needs to check it offline.
//!
//! Layout (docs/DESIGN.md has the byte-level description):
//!
//! ```text
//! MAGIC ("tally-bundle-v2\n", 16 bytes)
//! section*   where section = kind (1 byte) || len (u32 big-endian) || len bytes
//! ```
//!
//! Sections, in this order: one [`SectionKind::Header`] (protobuf
//! [`BundleHeader`]), zero or more [`SectionKind::Anchor`] (protobuf
//! `AnchorRecord`, in counter order), `header.size` [`SectionKind::Record`]
//! sections (the stored record bytes, verbatim), each committed record's
//! followed by its [`SectionKind::Content`] section (`seq u64 BE ||
//! opening`) unless its content was erased or the bundle is redacted, then one
//! [`SectionKind::End`] with no bytes, and nothing after it. A missing end
//! section means the file was cut short. Range bundles ([`crate::range`])
//! share the section framing under their own magic, which this reader
//! refuses by name ([`BundleError::RangeBundle`]).

use std::io::{self, BufRead, Read, Write};

use prost::Message;

use crate::record::Hash;

/// First bytes of every bundle file.
pub const MAGIC: &[u8; 16] = b"tally-bundle-v2\n";

/// The magic of version 1 (anchoring v1), refused with its own message.
const MAGIC_V1: &[u8; 16] = b"tally-bundle-v1\n";

/// First bytes of every range bundle ([`crate::range`]), here beside the
/// others so that this reader can refuse one by name.
pub const RANGE_MAGIC: &[u8; 16] = b"tally-range-v01\n";

/// Most anchor sections a reader accepts: 2^24, over five years of anchors
/// every 10 s. Anchors are streamed ([`BundleReader::next_anchor`]), so this
/// bounds what a verifier keeps per anchor (a few dozen bytes), not the
/// sections themselves.
pub const MAX_ANCHORS: u64 = 1 << 24;

/// Largest section a reader accepts (a record is far smaller; this bounds
/// memory when reading a hostile file).
pub const MAX_SECTION_LEN: u32 = 64 << 20;

/// Sections up to this length are read into a buffer sized up front; longer
/// ones grow the buffer as bytes arrive.
const EAGER_SECTION_LEN: u32 = 64 << 10;

/// Kind byte of a section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SectionKind {
    Header = 0x01,
    Record = 0x02,
    Anchor = 0x03,
    /// Range bundles only ([`crate::range`]): the Merkle range proof.
    Proof = 0x04,
    /// A record's opening (`seq u64 big-endian || salt || content`), right
    /// after the record it opens (docs/DESIGN.md sections 3b and 7).
    Content = 0x05,
    End = 0x7f,
}

/// What the exporting daemon said about the log when the bundle was made.
/// A verifier trusts none of it until the chain (and, with anchoring, the TPM
/// evidence) confirms it.
///
/// Schema: `tally.formats.v1.BundleHeader` in
/// `attest/proto/tally/formats/v1/formats.proto`
/// (a test checks that this struct encodes exactly as that message).
#[derive(Clone, PartialEq, Message)]
pub struct BundleHeader {
    /// Bundle format version; this module writes and reads
    /// [`BUNDLE_FORMAT_VERSION`] (2).
    #[prost(uint32, tag = "1")]
    pub format_version: u32,
    /// The log's random identity.
    #[prost(bytes = "vec", tag = "2")]
    pub log_id: Vec<u8>,
    /// Number of records in the bundle (records 0..size).
    #[prost(uint64, tag = "3")]
    pub size: u64,
    /// The chain head: the entry hash of record size-1 (32 zero bytes when
    /// size is 0). Not a Merkle root.
    #[prost(bytes = "vec", tag = "4")]
    pub head_hash: Vec<u8>,
    /// When the export was made, Unix time in nanoseconds (informational).
    #[prost(int64, tag = "5")]
    pub exported_at_unix_nanos: i64,
    /// Who made it, e.g. "tallyd/0.1.0" (informational).
    #[prost(string, tag = "6")]
    pub producer: String,
    /// The exporter left every content out on purpose (`--redact`): no
    /// content section follows any record (docs/DESIGN.md section 7).
    #[prost(bool, tag = "7")]
    pub redacted: bool,
}

/// Version written into [`BundleHeader::format_version`].
pub const BUNDLE_FORMAT_VERSION: u32 = 2;

/// Why a file is not a readable bundle. These are format errors; damage to the
/// log inside a well-formed bundle is a [`crate::Damage`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error("I/O error reading the bundle: {0}")]
    Io(#[from] io::Error),
    #[error("not a Tally bundle (bad magic)")]
    BadMagic,
    #[error("this is a version 1 bundle (anchoring v1, whose guarantee did not hold against root); this build reads version 2 only: export the log again with a current tallyd")]
    VersionOne,
    #[error("this is a range bundle (some records and their Merkle range proof, `tally export --from/--to`), not a whole-log bundle: `tally verify` checks it")]
    RangeBundle,
    #[error("more than {MAX_ANCHORS} anchor sections")]
    TooManyAnchors,
    #[error(
        "bundle format version {found} is not supported (this build reads {BUNDLE_FORMAT_VERSION})"
    )]
    UnsupportedVersion { found: u32 },
    #[error("bundle is cut short: {what}")]
    Truncated { what: &'static str },
    #[error("unknown section kind 0x{kind:02x} at offset {offset}")]
    UnknownSection { kind: u8, offset: u64 },
    #[error(
        "section at offset {offset} declares {len} bytes, more than the {MAX_SECTION_LEN} allowed"
    )]
    SectionTooLarge { offset: u64, len: u32 },
    #[error("expected a {expected:?} section at offset {offset}, found {found:?}")]
    UnexpectedSection {
        expected: SectionKind,
        found: SectionKind,
        offset: u64,
    },
    #[error("bundle header is malformed: {0}")]
    BadHeader(#[from] prost::DecodeError),
    #[error("bundle header's head hash is {len} bytes, not 32")]
    BadHeadHash { len: usize },
    #[error("{0} bytes of data follow the end section")]
    TrailingData(u64),
    /// A content section that does not follow a record: it comes twice for
    /// one record, or before the first.
    #[error("the content section at offset {offset} does not follow a record (a second content section for one record, or one before any record)")]
    ContentOutOfPlace { offset: u64 },
    #[error("the content section at offset {offset} is {len} bytes, shorter than its 8-byte seq")]
    ContentTooShort { offset: u64, len: usize },
    /// The content section names another seq than the record before it.
    #[error(
        "the content section at offset {offset} is for seq {found}, but follows record {record:?}"
    )]
    ContentSeq {
        offset: u64,
        found: u64,
        /// The preceding record's seq (`None`: its header does not parse).
        record: Option<u64>,
    },
    #[error("the bundle says it is redacted, yet holds a content section at offset {offset}")]
    ContentInRedacted { offset: u64 },
}

impl BundleHeader {
    /// The declared chain head ([`BundleHeader::head_hash`]) as a fixed array.
    pub fn head(&self) -> Result<Hash, BundleError> {
        self.head_hash
            .as_slice()
            .try_into()
            .map_err(|_| BundleError::BadHeadHash {
                len: self.head_hash.len(),
            })
    }
}

/// Writes a bundle section by section. Call [`BundleWriter::finish`] at the end;
/// a bundle without its end section is reported as truncated by readers.
#[derive(Debug)]
pub struct BundleWriter<W: Write> {
    out: W,
}

impl<W: Write> BundleWriter<W> {
    /// Writes the magic and the header.
    pub fn new(mut out: W, header: &BundleHeader) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        let mut writer = BundleWriter { out };
        writer.section(SectionKind::Header, &header.encode_to_vec())?;
        Ok(writer)
    }

    /// Appends one anchor record; all anchors come before the first record.
    pub fn anchor(&mut self, anchor: &[u8]) -> io::Result<()> {
        self.section(SectionKind::Anchor, anchor)
    }

    /// Appends one stored record, verbatim.
    pub fn record(&mut self, record: &[u8]) -> io::Result<()> {
        self.section(SectionKind::Record, record)
    }

    /// Appends the opening of record `seq`, right after that record.
    pub fn content(&mut self, seq: u64, opening: &[u8]) -> io::Result<()> {
        write_content(&mut self.out, seq, opening)
    }

    /// Writes the end section and returns the inner writer (flushed).
    pub fn finish(mut self) -> io::Result<W> {
        self.section(SectionKind::End, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn section(&mut self, kind: SectionKind, bytes: &[u8]) -> io::Result<()> {
        write_section(&mut self.out, kind, bytes)
    }
}

/// Reads a bundle: the header first, then records until the end section.
#[derive(Debug)]
pub struct BundleReader<R: BufRead> {
    input: R,
    header: BundleHeader,
    /// Anchor sections read so far.
    anchors_read: u64,
    /// Set once the anchors are over (anchors after a record are an error).
    anchors_done: bool,
    /// The first section after the anchors, read ahead.
    pending: Option<(SectionKind, Vec<u8>, u64)>,
    /// Byte offset of the next section, for error messages.
    offset: u64,
    /// Set once the end section was read.
    done: bool,
    /// The opening that followed the record last returned.
    opening: Opening,
}

impl<R: BufRead> BundleReader<R> {
    /// Checks the magic and reads the header section.
    pub fn new(mut input: R) -> Result<Self, BundleError> {
        let mut magic = [0u8; MAGIC.len()];
        read_exact_or(&mut input, &mut magic, "in the magic")?;
        if &magic == MAGIC_V1 {
            return Err(BundleError::VersionOne);
        }
        if &magic == RANGE_MAGIC {
            return Err(BundleError::RangeBundle);
        }
        if &magic != MAGIC {
            return Err(BundleError::BadMagic);
        }
        let mut reader = BundleReader {
            input,
            header: BundleHeader::default(),
            anchors_read: 0,
            anchors_done: false,
            pending: None,
            offset: MAGIC.len() as u64,
            done: false,
            opening: Opening::default(),
        };
        let mut buf = Vec::new();
        let kind = reader.section(&mut buf)?;
        if kind != SectionKind::Header {
            return Err(BundleError::UnexpectedSection {
                expected: SectionKind::Header,
                found: kind,
                offset: MAGIC.len() as u64,
            });
        }
        let header = BundleHeader::decode(buf.as_slice())?;
        if header.format_version != BUNDLE_FORMAT_VERSION {
            return Err(BundleError::UnsupportedVersion {
                found: header.format_version,
            });
        }
        header.head()?;
        reader.header = header;
        Ok(reader)
    }

    /// Reads the next anchor section (protobuf `AnchorRecord` bytes) into
    /// `buf`. Returns `Ok(false)` once the anchors are over (the section after
    /// them is kept for [`BundleReader::next_record`]). Anchors are streamed so
    /// that memory does not grow with their number.
    pub fn next_anchor(&mut self, buf: &mut Vec<u8>) -> Result<bool, BundleError> {
        if self.anchors_done {
            return Ok(false);
        }
        let offset = self.offset;
        match self.section(buf)? {
            SectionKind::Anchor => {
                self.anchors_read += 1;
                if self.anchors_read > MAX_ANCHORS {
                    return Err(BundleError::TooManyAnchors);
                }
                Ok(true)
            }
            kind => {
                self.anchors_done = true;
                self.pending = Some((kind, std::mem::take(buf), offset));
                Ok(false)
            }
        }
    }

    /// Skips the anchor sections not read yet.
    pub fn skip_anchors(&mut self) -> Result<(), BundleError> {
        let mut buf = Vec::new();
        while self.next_anchor(&mut buf)? {}
        Ok(())
    }

    /// The bundle's header.
    pub fn header(&self) -> &BundleHeader {
        &self.header
    }

    /// Reads the next record into `buf` (replacing its contents). Returns
    /// `Ok(false)` after the end section, having checked nothing follows it.
    pub fn next_record(&mut self, buf: &mut Vec<u8>) -> Result<bool, BundleError> {
        self.opening.clear();
        if self.done {
            return Ok(false);
        }
        self.skip_anchors()?;
        let (kind, offset) = match self.pending.take() {
            Some((kind, bytes, offset)) => {
                *buf = bytes;
                (kind, offset)
            }
            None => {
                let offset = self.offset;
                (self.section(buf)?, offset)
            }
        };
        match kind {
            SectionKind::Record => {
                let offset = self.offset;
                let mut next = std::mem::take(&mut self.opening.spare);
                let kind = self.section(&mut next)?;
                // The section after a record is its content section, or
                // the next one's to read (kept as pending).
                if !self
                    .opening
                    .accept(kind, next, buf, self.header.redacted, offset)?
                {
                    self.pending = Some((kind, std::mem::take(&mut self.opening.spare), offset));
                }
                Ok(true)
            }
            SectionKind::Content => Err(BundleError::ContentOutOfPlace { offset }),
            SectionKind::End => {
                self.done = true;
                let trailing = io::copy(&mut self.input, &mut io::sink())?;
                if trailing > 0 {
                    return Err(BundleError::TrailingData(trailing));
                }
                Ok(false)
            }
            found @ (SectionKind::Header | SectionKind::Anchor | SectionKind::Proof) => {
                Err(BundleError::UnexpectedSection {
                    expected: SectionKind::Record,
                    found,
                    offset,
                })
            }
        }
    }

    /// The opening (`salt || content`) whose content section followed the
    /// record last returned by [`BundleReader::next_record`], if one did.
    pub fn opening(&self) -> Option<&[u8]> {
        self.opening.get()
    }

    fn section(&mut self, buf: &mut Vec<u8>) -> Result<SectionKind, BundleError> {
        let kind = read_section(&mut self.input, buf, self.offset)?;
        self.offset += 5 + buf.len() as u64;
        Ok(kind)
    }
}

/// The content section after a record, shared by the whole-log and the
/// range reader: each reads the section after every record and hands it
/// here, which keeps it as the record's opening when it is one.
#[derive(Debug, Default)]
pub(crate) struct Opening {
    /// The section bytes: `seq || opening`, valid when `present`.
    bytes: Vec<u8>,
    present: bool,
    /// The buffer of a section that was not a content section, kept for
    /// reuse by the caller.
    pub(crate) spare: Vec<u8>,
}

impl Opening {
    /// Takes `section` (of `kind`, read at `offset` right after `record`):
    /// `Ok(true)` when it was the record's content section (checked: not in
    /// a redacted bundle, and for this record's seq); `Ok(false)` when it is
    /// another kind, left in `self.spare` for the caller to read next.
    pub(crate) fn accept(
        &mut self,
        kind: SectionKind,
        section: Vec<u8>,
        record: &[u8],
        redacted: bool,
        offset: u64,
    ) -> Result<bool, BundleError> {
        if kind != SectionKind::Content {
            self.present = false;
            self.spare = section;
            return Ok(false);
        }
        if redacted {
            return Err(BundleError::ContentInRedacted { offset });
        }
        let Some((seq, _)) = section.split_first_chunk::<8>() else {
            return Err(BundleError::ContentTooShort {
                offset,
                len: section.len(),
            });
        };
        let found = u64::from_be_bytes(*seq);
        let record = crate::record::RecordHeader::parse(record)
            .ok()
            .map(|(header, _)| header.seq);
        if record != Some(found) {
            return Err(BundleError::ContentSeq {
                offset,
                found,
                record,
            });
        }
        self.spare = std::mem::replace(&mut self.bytes, section);
        self.present = true;
        Ok(true)
    }

    /// Forgets the opening (the next record has none until shown otherwise).
    pub(crate) fn clear(&mut self) {
        self.present = false;
    }

    pub(crate) fn get(&self) -> Option<&[u8]> {
        self.present.then(|| &self.bytes[8..])
    }
}

/// Writes one content section: `seq u64 BE || opening`.
pub(crate) fn write_content(out: &mut impl Write, seq: u64, opening: &[u8]) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(8 + opening.len());
    bytes.extend_from_slice(&seq.to_be_bytes());
    bytes.extend_from_slice(opening);
    write_section(out, SectionKind::Content, &bytes)
}

/// Reads one section (`kind || len || bytes`) at byte `offset` (for error
/// messages) into `buf`, returning its kind. Shared with range bundles.
pub(crate) fn read_section(
    input: &mut impl Read,
    buf: &mut Vec<u8>,
    offset: u64,
) -> Result<SectionKind, BundleError> {
    let mut head = [0u8; 5];
    read_exact_or(input, &mut head, "no end section")?;
    let kind = match head[0] {
        0x01 => SectionKind::Header,
        0x02 => SectionKind::Record,
        0x03 => SectionKind::Anchor,
        0x04 => SectionKind::Proof,
        0x05 => SectionKind::Content,
        0x7f => SectionKind::End,
        kind => return Err(BundleError::UnknownSection { kind, offset }),
    };
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len > MAX_SECTION_LEN {
        return Err(BundleError::SectionTooLarge { offset, len });
    }
    buf.clear();
    if len <= EAGER_SECTION_LEN {
        // Records are small: size the buffer and read exactly.
        buf.resize(len as usize, 0);
        read_exact_or(input, buf, "inside a section")?;
    } else {
        // Read what is there rather than allocating the declared length
        // up front: a tiny hostile file must not cost 64 MiB.
        (&mut *input).take(u64::from(len)).read_to_end(buf)?;
        if buf.len() != len as usize {
            return Err(BundleError::Truncated {
                what: "inside a section",
            });
        }
    }
    Ok(kind)
}

/// Writes one section: `kind || len (u32 big-endian) || bytes`.
pub(crate) fn write_section(
    out: &mut impl Write,
    kind: SectionKind,
    bytes: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|len| *len <= MAX_SECTION_LEN)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "section too large"))?;
    out.write_all(&[kind as u8])?;
    out.write_all(&len.to_be_bytes())?;
    out.write_all(bytes)
}

pub(crate) fn read_exact_or(
    input: &mut impl Read,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), BundleError> {
    input.read_exact(buf).map_err(|err| match err.kind() {
        io::ErrorKind::UnexpectedEof => BundleError::Truncated { what },
        _ => BundleError::Io(err),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(size: u64) -> BundleHeader {
        BundleHeader {
            format_version: BUNDLE_FORMAT_VERSION,
            log_id: vec![7; 16],
            size,
            head_hash: vec![0; 32],
            exported_at_unix_nanos: 1,
            producer: "test".into(),
            redacted: false,
        }
    }

    fn bundle(records: &[&[u8]]) -> Vec<u8> {
        let mut writer = BundleWriter::new(Vec::new(), &header(records.len() as u64)).unwrap();
        for record in records {
            writer.record(record).unwrap();
        }
        writer.finish().unwrap()
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Vec<u8>>, BundleError> {
        let mut reader = BundleReader::new(bytes)?;
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while reader.next_record(&mut buf)? {
            out.push(buf.clone());
        }
        Ok(out)
    }

    #[test]
    fn round_trip() {
        let bytes = bundle(&[b"one", b"", b"three"]);
        let reader = BundleReader::new(bytes.as_slice()).unwrap();
        assert_eq!(reader.header(), &header(3));
        assert_eq!(
            read_all(&bytes).unwrap(),
            vec![b"one".to_vec(), vec![], b"three".to_vec()]
        );
    }

    #[test]
    fn anchors_come_before_records() {
        let mut writer = BundleWriter::new(Vec::new(), &header(1)).unwrap();
        writer.anchor(b"a1").unwrap();
        writer.anchor(b"a2").unwrap();
        writer.record(b"r").unwrap();
        let bytes = writer.finish().unwrap();
        let mut reader = BundleReader::new(bytes.as_slice()).unwrap();
        let mut buf = Vec::new();
        let mut anchors = Vec::new();
        while reader.next_anchor(&mut buf).unwrap() {
            anchors.push(buf.clone());
        }
        assert_eq!(anchors, [b"a1".to_vec(), b"a2".to_vec()]);
        assert!(!reader.next_anchor(&mut buf).unwrap(), "stays over");
        assert!(reader.next_record(&mut buf).unwrap());
        assert_eq!(buf, b"r");
        assert!(!reader.next_record(&mut buf).unwrap());

        let mut writer = BundleWriter::new(Vec::new(), &header(1)).unwrap();
        writer.record(b"r").unwrap();
        writer.anchor(b"late").unwrap();
        let bytes = writer.finish().unwrap();
        assert!(matches!(
            read_all(&bytes),
            Err(BundleError::UnexpectedSection {
                found: SectionKind::Anchor,
                ..
            })
        ));
    }

    #[test]
    fn every_truncation_is_reported() {
        let bytes = bundle(&[b"one", b"two"]);
        for cut in 0..bytes.len() {
            match read_all(&bytes[..cut]) {
                Err(BundleError::Truncated { .. }) | Err(BundleError::BadMagic) => {}
                other => panic!("cut at {cut}: expected a truncation error, got {other:?}"),
            }
        }
    }

    #[test]
    fn bad_magic_trailing_data_and_unknown_sections_are_rejected() {
        let mut bytes = bundle(&[b"one"]);
        bytes[0] ^= 1;
        assert!(matches!(read_all(&bytes), Err(BundleError::BadMagic)));

        let mut bytes = bundle(&[b"one"]);
        bytes[..16].copy_from_slice(MAGIC_V1);
        assert!(matches!(read_all(&bytes), Err(BundleError::VersionOne)));

        let mut bytes = bundle(&[b"one"]);
        bytes.push(0);
        assert!(matches!(
            read_all(&bytes),
            Err(BundleError::TrailingData(1))
        ));

        let mut bytes = bundle(&[b"one"]);
        let first_record = bytes.len() - 5 - (5 + 3);
        bytes[first_record] = 0x33;
        assert!(matches!(
            read_all(&bytes),
            Err(BundleError::UnknownSection { kind: 0x33, .. })
        ));
    }

    #[test]
    fn oversized_section_is_rejected_before_allocating() {
        let mut bytes = bundle(&[]);
        let end = bytes.len() - 5;
        bytes.truncate(end);
        bytes.push(SectionKind::Record as u8);
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            read_all(&bytes),
            Err(BundleError::SectionTooLarge { len: u32::MAX, .. })
        ));
    }
}
