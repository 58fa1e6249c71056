//! Parts of the `tally` CLI that deal with TPM evidence and verification.

pub mod proof;
pub mod tpm;
pub mod verify;
