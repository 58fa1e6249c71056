//! Seeded randomness for the end-to-end tests. Every random choice a test
//! makes comes from one seed that it prints (libtest shows a failing test's
//! output), so a failure is replayed with `TALLY_SEED=<seed> cargo test ...`.

use rand::rngs::StdRng;
use rand::SeedableRng;

/// The environment variable that fixes the seed for a replay.
pub const SEED_VAR: &str = "TALLY_SEED";

/// A random generator for `test`, seeded from `TALLY_SEED` if set, else from
/// the OS; the seed is printed either way.
///
/// # Panics
/// If `TALLY_SEED` is set but is not a decimal `u64` (a replay that silently
/// used another seed would replay nothing).
#[allow(clippy::panic)]
pub fn rng(test: &str) -> StdRng {
    let seed = match std::env::var(SEED_VAR) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("{SEED_VAR}={text:?} is not a decimal u64")),
        Err(_) => rand::random(),
    };
    println!("{test}: seed {seed} (replay with {SEED_VAR}={seed})");
    StdRng::seed_from_u64(seed)
}
