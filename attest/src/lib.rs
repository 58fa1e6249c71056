//! Tally's log formats and their verifiers.
//!
//! * [`record`]: the stored record (a fixed header + a protobuf body) and the
//!   entry-hash chain over it. The bytes stored in LMDB are the bytes hashed.
//! * [`bundle`]: the self-contained export file a verifier checks offline.
//! * [`chain`]: the verifier that replays a chain and names the first damage.
//! * [`verify`]: bundle verification (format, then chain against the declared head).
//!
//! Everything here is pure Rust: no TPM, no libtss2, usable on a responder's
//! laptop. docs/DESIGN.md describes every format byte by byte.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod chain;
pub mod record;
pub mod verify;

pub use chain::{ChainSummary, Damage};
pub use record::{entry_hash, Hash, RecordHeader, GENESIS_PREV, HEADER_LEN, RECORD_VERSION};
pub use verify::{verify_bundle, BundleVerdict, VerifyError};
