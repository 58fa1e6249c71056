//! Tally's log formats and their verifiers.
//!
//! * [`record`]: the stored record (a fixed header + a protobuf body) and the
//!   entry-hash chain over it. The bytes stored in LMDB are the bytes hashed.
//! * [`content`]: content committed, not chained: the commitment in a record
//!   body, openings, and the seqs erasure records cover.
//! * [`bundle`]: the self-contained export file a verifier checks offline.
//! * [`chain`]: the verifier that replays a chain and names the first damage.
//! * [`verify`]: bundle verification (format, then chain against the declared head,
//!   then anchors, counter continuity and currentness).
//! * [`anchor`]: TPM anchors: the checkpoint, the stored evidence, anchor and
//!   fresh-attestation records, and what a verifier checks on them.
//!
//! * [`evidence`]: TPM evidence as plain data (TPMS_ATTEST, TPMT_SIGNATURE,
//!   PCR values), its parser and its verifier (ECDSA P-256), and the export
//!   for `tpm2_checkquote`.
//! * [`merkle`]: RFC 6962 / RFC 9162 Merkle tree hashing, an incremental
//!   frontier, inclusion and consistency proofs and their verification.
//! * [`identity`]: the log identity verifiers pin, and reviewed-gap acknowledgements.
//! * [`note`]: C2SP signed notes (Ed25519) and tlog-checkpoint bodies.
//! * [`proof`]: inclusion and consistency proof files bound to TPM anchors.
//! * [`range`]: range bundles (records a..b and a Merkle range proof against
//!   one anchor) and their verifier.
//! * `tpm` (feature `tpm` only): producing evidence with a real TPM.
//!
//! Everything but `tpm` is pure Rust: no TPM, no libtss2, usable on a
//! responder's laptop. docs/DESIGN.md describes every format byte by byte;
//! `proto/tally/formats/v1/formats.proto` is the schema of the protobuf ones.
#![forbid(unsafe_code)]

pub mod anchor;
pub mod bundle;
pub mod chain;
pub mod content;
pub mod evidence;
pub mod identity;
pub mod merkle;
pub mod note;
pub mod parallel;
pub mod proof;
pub mod range;
pub mod record;
pub mod verify;

#[cfg(feature = "tpm")]
pub mod tpm;

#[cfg(test)]
mod schema_tests;

pub use chain::{ChainSummary, Damage};
pub use record::{entry_hash, Hash, RecordHeader, GENESIS_PREV, HEADER_LEN, RECORD_VERSION};
pub use verify::{verify_bundle, Report, VerifyError, VerifyOptions};
