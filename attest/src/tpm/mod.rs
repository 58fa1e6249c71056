//! The TPM side (feature `tpm`, links libtss2 through tss-esapi): one
//! `tss_esapi::Context` owned by one worker thread ([`worker::TpmHandle`]),
//! provisioning of the NV counter and the attestation key, and the anchor and
//! fresh-attestation operations.

pub mod error;
pub mod ops;
pub mod provision;
pub mod seal;
pub mod tcti;
pub mod worker;
