//! Why an anchor or a fresh attestation does not parse or verify.

use crate::evidence::EvidenceError;
use crate::note::{CheckpointError, NoteError};

/// Why an anchor or attestation does not verify. Each variant names one violation;
/// the payloads are the lower layers' own errors, never their messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnchorError {
    /// The stored bytes are not a protobuf `AnchorRecord` (or `FreshAttestation`).
    #[error("malformed record: {0}")]
    Decode(#[source] prost::DecodeError),
    /// The checkpoint text is not a Tally checkpoint in canonical form.
    #[error("checkpoint is malformed: {0}")]
    BadCheckpoint(#[source] CheckpointError),
    /// An anchor's checkpoint must carry the `anchor <counter> <prev>` line.
    #[error("the checkpoint has no anchor line: it is not an anchor's")]
    MissingAnchorLine,
    /// A fresh attestation's checkpoint is at an open counter value: no anchor line.
    #[error("a fresh attestation's checkpoint must not carry an anchor line")]
    UnexpectedAnchorLine,
    /// The anchor line and the TPM's certified counter disagree.
    #[error("the anchor line names counter {line} but the TPM certified {certified}")]
    CounterLineMismatch {
        /// The counter the anchor line names.
        line: u64,
        /// The counter value the TPM certified.
        certified: u64,
    },
    /// The record carries no TPM evidence.
    #[error("no TPM evidence")]
    MissingEvidence,
    /// The evidence is for another NV index than the pinned counter.
    #[error("counter index {found:#010x} is not the pinned index {expected:#010x}")]
    WrongCounterIndex {
        /// The pinned counter index.
        expected: u32,
        /// The index the evidence names.
        found: u32,
    },
    /// The TPM evidence itself does not verify.
    #[error("TPM evidence does not verify: {0}")]
    Evidence(#[source] EvidenceError),
    /// The checkpoint's origin names another log than the pinned one.
    #[error("checkpoint is for log {}, not {}", hex::encode(.found), hex::encode(.expected))]
    WrongLog {
        /// The pinned log id.
        expected: [u8; 16],
        /// The log id in the checkpoint.
        found: [u8; 16],
    },
    /// The attestation's evidence was made for another nonce or checkpoint.
    #[error("attestation was made for another nonce (replayed or mixed up)")]
    NonceMismatch,
    /// The checkpoint is not a signed note with a valid signature by the pinned log key.
    #[error("checkpoint signature: {0}")]
    CheckpointSignature(#[source] NoteError),
    /// A thread verifying a batch of anchors panicked (a bug, not a property of the log).
    #[error("a verifier thread panicked")]
    VerifierPanicked,
}

impl From<CheckpointError> for AnchorError {
    fn from(error: CheckpointError) -> Self {
        AnchorError::BadCheckpoint(error)
    }
}
