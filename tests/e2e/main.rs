//! End-to-end tests: the real `tallyd` and `tally` binaries, real Unix
//! sockets, real LMDB. Each test starts its own daemon on its own temporary
//! directory. Build the binaries first: `cargo build --workspace`.

// clippy.toml allows these in #[test] functions; in this test-only binary the
// helpers beside them fail the test the same way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod anchoring;
mod anchoring_v2;
mod append_stdin;
mod bad_input;
mod cli;
mod client_timeout;
mod concurrency;
mod content;
mod crash;
mod erasure;
mod exposure;
mod fanout;
mod faults;
mod filters;
mod first_contact;
mod follow;
mod fuzz_corpus;
mod journal;
mod limits;
mod live_verify;
mod many_writers;
mod paging;
mod power_loss;
mod proofs;
mod range_export;
mod readme;
mod redaction;
mod shutdown;
mod systemd;
mod tail;
mod tamper;
mod times_index;
mod tpm_evidence;
mod typed_attributes;
mod vsock;
