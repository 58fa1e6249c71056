//! Bytes -> `Checkpoint::parse`, the signed-note check with the seed log's
//! key, `parse_attest`, `parse_signature`, `parse_pcr_selection_bytes`,
//! `decode_anchor` (and the parsers again on the fields of a decoded anchor
//! or fresh attestation). Must never panic (see
//! `tally_fuzz::checks::parse_all`).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tally_fuzz::checks::{self, Fixtures};

static FIXTURES: LazyLock<Fixtures> = LazyLock::new(|| match Fixtures::load() {
    Ok(fixtures) => fixtures,
    Err(err) => panic!("fuzz/fixtures are broken: {err}"),
});

fuzz_target!(|data: &[u8]| {
    checks::parse_all(data, &FIXTURES);
});
