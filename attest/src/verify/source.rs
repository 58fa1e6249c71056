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

#[cfg(test)]
mod tests {
    //! A source that starts after seq 0 must come with a trusted origin:
    //! without one, records before the start would be taken on faith.
    use super::*;
    use crate::verify::{verify_sections, VerifyError, VerifyOptions};

    /// An empty source that claims to start at seq 5.
    struct FromFive(BundleHeader);

    impl RecordSource for FromFive {
        type Error = BundleError;
        fn next_record(&mut self, _: &mut Vec<u8>) -> Result<bool, BundleError> {
            Ok(false)
        }
    }

    impl Sections for FromFive {
        fn header(&self) -> &BundleHeader {
            &self.0
        }
        fn next_anchor(&mut self, _: &mut Vec<u8>) -> Result<bool, BundleError> {
            Ok(false)
        }
        fn start(&self) -> Option<&TrustedStart> {
            static START: TrustedStart = TrustedStart {
                seq: 5,
                prev: [7; 32],
                path: Vec::new(),
            };
            Some(&START)
        }
    }

    #[test]
    fn a_start_without_a_trusted_origin_is_refused() {
        //! Without this refusal, a source starting at 5 whose head is its
        //! own `prev` would replay as an intact chain of 5 records.
        let header = BundleHeader {
            format_version: crate::bundle::BUNDLE_FORMAT_VERSION,
            log_id: vec![1; 16],
            size: 5,
            head_hash: vec![7; 32],
            exported_at_unix_nanos: 0,
            producer: "test".into(),
            redacted: false,
        };
        let result = verify_sections(&mut FromFive(header), VerifyOptions::default(), |_, _| {});
        assert!(
            matches!(result, Err(VerifyError::UntrustedStart { seq: 5 })),
            "{result:?}"
        );
    }
}
