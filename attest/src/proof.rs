//! Proof files: an inclusion proof of one record, or a consistency proof
//! between two log sizes, each bound to TPM anchors so that a verifier needs
//! nothing but the log's identity (and about a kilobyte). With an identity
//! the policy pins the log id, so a proof from another log on the same TPM
//! fails as `WrongLog`.
//!
//! The roots a proof is checked against come only from anchors whose TPM
//! evidence verifies: a proof file cannot bring its own root.

use prost::Message;

use crate::anchor::{verify_anchor, AnchorError, AnchorPolicy, VerifiedAnchor};
use crate::merkle::{self, MerkleError};
use crate::record::{entry_hash, Hash, RecordError, RecordHeader};

/// What `tally prove` writes: exactly one of the two proofs.
///
/// Schema: `tally.formats.v1.ProofFile` in
/// `attest/proto/tally/formats/v1/formats.proto`
/// (a test checks that this struct encodes exactly as that message).
#[derive(Clone, PartialEq, Message)]
pub struct ProofFile {
    /// Set for `tally prove inclusion`.
    #[prost(message, optional, tag = "1")]
    pub inclusion: Option<InclusionProofFile>,
    /// Set for `tally prove consistency`.
    #[prost(message, optional, tag = "2")]
    pub consistency: Option<ConsistencyProofFile>,
}

/// A verified proof of either kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifiedProof {
    Inclusion(Box<VerifiedInclusion>),
    Consistency(Box<VerifiedConsistency>),
}

/// Verifies a [`ProofFile`] of either kind.
pub fn verify_proof_file(policy: &AnchorPolicy, bytes: &[u8]) -> Result<VerifiedProof, ProofError> {
    let file = ProofFile::decode(bytes).map_err(ProofError::Decode)?;
    match (file.inclusion, file.consistency) {
        (Some(inclusion), None) => verify_inclusion(policy, &inclusion)
            .map(|verified| VerifiedProof::Inclusion(Box::new(verified))),
        (None, Some(consistency)) => verify_consistency(policy, &consistency)
            .map(|verified| VerifiedProof::Consistency(Box::new(verified))),
        _ => Err(ProofError::NotExactlyOneProof),
    }
}

/// `tally prove inclusion` output.
///
/// Schema: `tally.formats.v1.InclusionProofFile` in
/// `attest/proto/tally/formats/v1/formats.proto`
/// (a test checks that this struct encodes exactly as that message).
#[derive(Clone, PartialEq, Message)]
pub struct InclusionProofFile {
    /// The record's seq (its leaf index).
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// The stored record bytes (its entry hash is the leaf).
    #[prost(bytes = "vec", tag = "2")]
    pub record: Vec<u8>,
    /// Sibling hashes from the leaf up (RFC 9162 audit path).
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub path: Vec<Vec<u8>>,
    /// The anchor (protobuf `AnchorRecord`) whose checkpoint gives the tree
    /// size and root the path leads to.
    #[prost(bytes = "vec", tag = "4")]
    pub anchor: Vec<u8>,
}

/// `tally prove consistency` output.
///
/// Schema: `tally.formats.v1.ConsistencyProofFile` in
/// `attest/proto/tally/formats/v1/formats.proto`
/// (a test checks that this struct encodes exactly as that message).
#[derive(Clone, PartialEq, Message)]
pub struct ConsistencyProofFile {
    /// RFC 9162 consistency proof from the old anchor's tree to the new one's.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub path: Vec<Vec<u8>>,
    /// The anchor (stored `AnchorRecord` bytes) of the old checkpoint...
    #[prost(bytes = "vec", tag = "2")]
    pub old_anchor: Vec<u8>,
    /// ... and of the new one.
    #[prost(bytes = "vec", tag = "3")]
    pub new_anchor: Vec<u8>,
}

/// Why a proof file does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    #[error("not a proof file: {0}")]
    Decode(#[source] prost::DecodeError),
    #[error("not a proof file: a proof file holds exactly one proof")]
    NotExactlyOneProof,
    #[error("anchor: {0}")]
    Anchor(#[from] AnchorError),
    #[error("record: {0}")]
    Record(#[from] RecordError),
    #[error("the record says seq {found}, the proof is for seq {expected}")]
    SeqMismatch { expected: u64, found: u64 },
    #[error("a proof hash is {len} bytes, not 32")]
    BadHash { len: usize },
    #[error("the two anchors are for different logs")]
    DifferentLogs,
    #[error("Merkle proof: {0}")]
    Merkle(#[from] MerkleError),
}

fn hashes(path: &[Vec<u8>]) -> Result<Vec<Hash>, ProofError> {
    path.iter()
        .map(|hash| {
            <[u8; 32]>::try_from(hash.as_slice())
                .map_err(|_| ProofError::BadHash { len: hash.len() })
        })
        .collect()
}

/// What a verified inclusion proof establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedInclusion {
    pub seq: u64,
    pub entry_hash: Hash,
    pub anchor: VerifiedAnchor,
}

/// Verifies an inclusion proof file: the anchor's TPM evidence (pinned AK
/// and counter index), then that the record's entry hash, at its seq, leads
/// through the path to the anchor's Merkle root.
pub fn verify_inclusion(
    policy: &AnchorPolicy,
    file: &InclusionProofFile,
) -> Result<VerifiedInclusion, ProofError> {
    let anchor = verify_anchor(policy, &file.anchor)?;
    let (header, _) = RecordHeader::parse(&file.record)?;
    if header.seq != file.seq {
        return Err(ProofError::SeqMismatch {
            expected: file.seq,
            found: header.seq,
        });
    }
    let leaf = entry_hash(&file.record);
    let path = hashes(&file.path)?;
    merkle::verify_inclusion(
        file.seq,
        anchor.checkpoint.size,
        &leaf,
        &path,
        &anchor.checkpoint.root,
    )?;
    Ok(VerifiedInclusion {
        seq: file.seq,
        entry_hash: leaf,
        anchor,
    })
}

/// What a verified consistency proof establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedConsistency {
    pub old: VerifiedAnchor,
    pub new: VerifiedAnchor,
}

/// Verifies a consistency proof file: both anchors' TPM evidence, that they
/// are for the same log, and that the new tree extends the old one.
pub fn verify_consistency(
    policy: &AnchorPolicy,
    file: &ConsistencyProofFile,
) -> Result<VerifiedConsistency, ProofError> {
    let old = verify_anchor(policy, &file.old_anchor)?;
    let new = verify_anchor(policy, &file.new_anchor)?;
    if old.checkpoint.log_id != new.checkpoint.log_id {
        return Err(ProofError::DifferentLogs);
    }
    let path = hashes(&file.path)?;
    merkle::verify_consistency(
        old.checkpoint.size,
        new.checkpoint.size,
        &old.checkpoint.root,
        &new.checkpoint.root,
        &path,
    )?;
    Ok(VerifiedConsistency { old, new })
}
