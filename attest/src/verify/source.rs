//! Where the verifier's sections come from. A bundle file
//! ([`BundleReader`]) is one source; the daemon, streamed by `tally verify
//! --live`, is another. Both yield the same sections in the same order
//! (header, anchors in counter order, records in seq order), and
//! [`verify_sections`](super::verify_sections) is the one verifier that
//! judges them: a source is trusted for nothing it says, only for bytes.

use std::io::BufRead;

use crate::bundle::{BundleError, BundleHeader, BundleReader};
use crate::chain::RecordSource;
use crate::record::Hash;

/// A verifier's input, section by section. Contract: [`Sections::header`]
/// is fixed before the first anchor is read; every anchor comes before the
/// first record; [`RecordSource::next_record`] yields the records from
/// [`Sections::start`]'s seq (0 without one) to the header's size, then
/// `Ok(false)`.
pub trait Sections: RecordSource {
    /// What the source says about the log (trusted for nothing).
    fn header(&self) -> &BundleHeader;
    /// Replaces `buf` with the next anchor's stored bytes; `Ok(false)` when
    /// the anchors are done.
    fn next_anchor(&mut self, buf: &mut Vec<u8>) -> Result<bool, Self::Error>;
    /// Where the records start when not at seq 0: a source that serves only
    /// the records after a checkpoint the verifier trusts.
    fn start(&self) -> Option<&TrustedStart> {
        None
    }
}

/// The records start at `seq`, the size of the trusted checkpoint: the
/// source claims `prev` is the entry hash of record `seq - 1` and proves it
/// with `path`, that leaf's inclusion proof in the tree of `seq` leaves. The
/// verifier rebuilds the trusted tree's frontier from the two and accepts
/// the start only if it hashes to the trusted anchor's root (docs/DESIGN.md
/// section 9b).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedStart {
    pub seq: u64,
    pub prev: Hash,
    pub path: Vec<Hash>,
}

impl<R: BufRead> Sections for BundleReader<R> {
    fn header(&self) -> &BundleHeader {
        BundleReader::header(self)
    }
    fn next_anchor(&mut self, buf: &mut Vec<u8>) -> Result<bool, BundleError> {
        BundleReader::next_anchor(self, buf)
    }
}
