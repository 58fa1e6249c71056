//! The TPM side (feature `tpm`, links libtss2 through tss-esapi): one
//! `tss_esapi::Context` owned by one worker thread ([`worker::TpmHandle`]),
//! provisioning of the NV counter, the attestation key and the owner key, the owner
//! record, and the evidence operation (NV_Certify + Quote) anchors and fresh
//! attestations share.

pub mod error;
pub mod ops;
pub mod owner;
pub mod provision;
pub mod seal;
pub mod tcti;
pub mod worker;
