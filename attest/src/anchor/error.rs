//! Why an anchor or a fresh attestation does not parse or verify.

use crate::evidence::verify::VerifyError as EvidenceError;

/// Why an anchor or attestation does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnchorError {
    #[error("malformed record: {0}")]
    Decode(String),
    #[error("checkpoint is malformed: {0}")]
    BadCheckpoint(&'static str),
    #[error("the checkpoint has no anchor line: it is not an anchor's")]
    MissingAnchorLine,
    #[error("a fresh attestation's checkpoint must not carry an anchor line")]
    UnexpectedAnchorLine,
    #[error("the anchor line names counter {line} but the TPM certified {certified}")]
    CounterLineMismatch { line: u64, certified: u64 },
    #[error("no TPM evidence")]
    MissingEvidence,
    #[error("counter index {found:#010x} is not the pinned index {expected:#010x}")]
    WrongCounterIndex { expected: u32, found: u32 },
    #[error("TPM evidence does not verify: {0}")]
    Evidence(EvidenceError),
    #[error("checkpoint is for log {found}, not {expected}")]
    WrongLog { expected: String, found: String },
    #[error("attestation was made for another nonce (replayed or mixed up)")]
    NonceMismatch,
    #[error("checkpoint signature: {0}")]
    CheckpointSignature(String),
}
