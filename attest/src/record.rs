//! The stored record and the entry-hash chain.
//!
//! A record is `version (1 byte) || seq (8 bytes, big-endian) || prev_hash
//! (32 bytes) || body`, where `body` is the protobuf encoding of
//! `tally.v1.RecordBody` made once by the daemon. The entry hash is the
//! record's RFC 6962 Merkle leaf hash, `SHA-256(0x00 || record)`: one hash
//! serves as the chain link (the next record's `prev_hash`) and as the leaf
//! of the log's Merkle tree. Because `seq` and `prev_hash` sit at fixed
//! offsets, a verifier checks the chain without decoding protobuf, and every
//! link can be checked independently of the others.

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// Version byte of the record format described in this module.
pub const RECORD_VERSION: u8 = 1;

/// Length of the fixed record header: version + seq + prev_hash.
pub const HEADER_LEN: usize = 1 + 8 + 32;

/// The `prev_hash` of record 0.
pub const GENESIS_PREV: Hash = [0u8; 32];

/// The fixed fields at the start of every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Position of the record in the log, dense from 0.
    pub seq: u64,
    /// Entry hash of record `seq - 1`, or [`GENESIS_PREV`] for record 0.
    pub prev_hash: Hash,
}

/// Why bytes are not a well-formed record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error("record is {len} bytes, shorter than the {HEADER_LEN}-byte header")]
    TooShort { len: usize },
    #[error("record format version {found} is not supported (this build reads version {RECORD_VERSION})")]
    UnsupportedVersion { found: u8 },
}

impl RecordHeader {
    /// Appends the header's encoding to `out`; the caller appends the body.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.prev_hash);
    }

    /// Parses the header of `record`, returning it and the body that follows.
    pub fn parse(record: &[u8]) -> Result<(RecordHeader, &[u8]), RecordError> {
        let Some((header, body)) = record.split_first_chunk::<HEADER_LEN>() else {
            return Err(RecordError::TooShort { len: record.len() });
        };
        let (version, rest) = header.split_at(1);
        if version[0] != RECORD_VERSION {
            return Err(RecordError::UnsupportedVersion { found: version[0] });
        }
        let (seq, prev) = rest.split_at(8);
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(seq);
        let mut prev_hash = [0u8; 32];
        prev_hash.copy_from_slice(prev);
        Ok((
            RecordHeader {
                seq: u64::from_be_bytes(seq_bytes),
                prev_hash,
            },
            body,
        ))
    }
}

/// The entry hash of a complete record (header and body): its RFC 6962
/// leaf hash, `SHA-256(0x00 || record)`.
pub fn entry_hash(record: &[u8]) -> Hash {
    crate::merkle::leaf_hash(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let header = RecordHeader {
            seq: 0x0102_0304_0506_0708,
            prev_hash: [0xab; 32],
        };
        let mut record = Vec::new();
        header.encode_into(&mut record);
        record.extend_from_slice(b"body");
        assert_eq!(record.len(), HEADER_LEN + 4);
        assert_eq!(record[0], RECORD_VERSION);
        assert_eq!(&record[1..9], &[1, 2, 3, 4, 5, 6, 7, 8]);
        let (parsed, body) = RecordHeader::parse(&record).unwrap();
        assert_eq!(parsed, header);
        assert_eq!(body, b"body");
    }

    #[test]
    fn short_and_unknown_version_are_rejected() {
        assert_eq!(
            RecordHeader::parse(&[1u8; HEADER_LEN - 1]),
            Err(RecordError::TooShort {
                len: HEADER_LEN - 1
            })
        );
        let mut record = vec![2u8];
        record.extend_from_slice(&[0u8; HEADER_LEN - 1]);
        assert_eq!(
            RecordHeader::parse(&record),
            Err(RecordError::UnsupportedVersion { found: 2 })
        );
    }

    #[test]
    fn entry_hash_is_the_rfc6962_leaf_hash() {
        // Known answer from an independent implementation (coreutils):
        // printf '\x00abc' | sha256sum
        assert_eq!(
            hex::encode(entry_hash(b"abc")),
            "609f6e36d2405585188d5cfd761f407c7cc46a7d3f314c88270469dde315fcd1"
        );
    }
}
