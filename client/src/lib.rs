//! The Tally wire protocol and an async client for it.
//!
//! * [`proto`]: the generated protobuf types of `proto/tally/v1/tally.proto`.
//! * [`frame`]: framing (4-byte big-endian length + protobuf) shared by the
//!   daemon and clients.
//! * [`attributes`]: typed attribute values and the rules an event follows.
//! * [`filter`]: which records a read, a follow or `tally show` returns.
//! * [`Client`]: connect, hello, append, read, follow, status, attest, anchor,
//!   prove.
//! * [`export`]: the whole log into a bundle file; [`record`]: stored records
//!   decoded for display; [`clock`]: the wall clock as Unix time.
//!
//! The `tally` CLI shares this package; its dependencies (clap, indicatif,
//! anyhow, serde) sit behind the default feature `cli`. A program that only
//! talks to tallyd depends on this crate with `default-features = false` and
//! gets the library above and nothing the CLI needs.
#![forbid(unsafe_code)]

pub mod attributes;
pub mod client;
pub mod clock;
pub mod export;
pub mod filter;
pub mod frame;
pub mod record;

/// Generated from `proto/tally/v1/tally.proto`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/tally.v1.rs"));
}

pub use client::{Ack, Client, ClientError, Follow, Limits};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The Unix socket tallyd listens on, and `tally` connects to, by default.
pub const DEFAULT_SOCKET: &str = "/run/tally/tally.sock";

/// An error and its causes for a person to read, each cause once: our error
/// types often name their cause in their own message already, so a cause
/// already shown is skipped. Used by `tally` and `tallyd` for fatal errors.
pub fn error_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut cause = err.source();
    while let Some(current) = cause {
        let text = current.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = current.source();
    }
    message
}
