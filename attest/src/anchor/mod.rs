//! TPM anchors: what the TPM signs about the log and how it is stored
//! ([`format`]), the checks a verifier makes on one anchor, a sequence of
//! anchors and a fresh attestation ([`checks`]), and why they fail ([`error`]).
//!
//! An anchor binds a *checkpoint* (log id, size, Merkle root, and an anchor
//! line naming its counter value and the previous anchor) to the value of the
//! TPM's monotonic NV counter that was current when the TPM signed it:
//! `TPM2_NV_Certify(counter)` signed by the owner key and `TPM2_Quote(PCRs)`
//! signed by the AK, both with qualifying data
//! `SHA-256("tally.anchor.v2\0" || signed checkpoint)`. The daemon then
//! increments the counter, which *closes* that value: nobody can certify it
//! again. A fresh attestation is the same evidence at the current (open)
//! value, with qualifying data
//! `SHA-256("tally.fresh.v2\0" || signed checkpoint || verifier nonce)`.
//! The distinct prefixes keep one from being passed off as the other.
//! docs/DESIGN.md section 10 gives every byte.

pub mod checks;
pub mod error;
pub mod format;

pub use crate::identity::AnchorPolicy;
pub use checks::{
    check_note_signature, verify_anchor, verify_fresh, CounterFinding, SequenceChecker,
    VerifiedAnchor, VerifiedFresh,
};
pub use error::AnchorError;
pub use format::{
    anchor_hash, anchor_qualifying_data, decode_anchor, fresh_qualifying_data, AnchorLine,
    AnchorRecord, Checkpoint, EvidenceRecord, FreshAttestation, ANCHOR_DOMAIN, FRESH_DOMAIN,
};
