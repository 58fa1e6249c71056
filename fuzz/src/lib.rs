//! Shared code of Tally's fuzz targets (`fuzz_targets/`). The modules are
//! also compiled into `tests/e2e/fuzz_corpus.rs` (by `#[path]`), which replays
//! the corpus through them without libFuzzer.
#![forbid(unsafe_code)]

pub mod checks;
pub mod journal;
pub mod wire;
