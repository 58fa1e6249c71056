//! Arbitrary bytes -> `tally_attest::verify_bundle`: with no options, with a
//! pinned AK that signed nothing, and with the seed swtpm's AK plus a fresh
//! attestation. Must never panic (see `tally_fuzz::checks::bundle_verify`).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tally_fuzz::checks::{self, Fixtures};

static FIXTURES: LazyLock<Fixtures> = LazyLock::new(|| match Fixtures::load() {
    Ok(fixtures) => fixtures,
    Err(err) => panic!("fuzz/fixtures are broken: {err}"),
});

fuzz_target!(|data: &[u8]| {
    checks::bundle_verify(data, &FIXTURES);
});
