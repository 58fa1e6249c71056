//! Which crash states of a cut to build: all of them when the cut allows
//! few, else the extremes, every single block lost or kept alone, and a
//! seeded random sample.

use rand::Rng;

use super::model::{Choice, Space};

/// A cut allowing at most this many states is enumerated exhaustively.
pub const EXHAUSTIVE: u64 = 64;

/// The crash states of `space` to build: exhaustive up to [`EXHAUSTIVE`],
/// else the extremes, the single-block variations (at most `samples` of
/// each kind) and `samples` random states.
pub fn choices(space: &Space, rng: &mut impl Rng, samples: usize) -> Vec<Choice> {
    let cut = space.cut;
    let bits = space.optional.len();
    let metas = (space.meta_min..=space.meta_max).collect::<Vec<_>>();
    let count =
        (metas.len() as u64).saturating_mul(1u64.checked_shl(bits as u32).unwrap_or(u64::MAX));
    let choice = |meta_prefix: usize, kept: Vec<usize>| Choice {
        cut,
        meta_prefix,
        kept,
    };
    if bits < 64 && count <= EXHAUSTIVE {
        let mut out = Vec::new();
        for &meta in &metas {
            for mask in 0u64..(1 << bits) {
                let kept = space
                    .optional
                    .iter()
                    .enumerate()
                    .filter(|(bit, _)| mask & (1 << bit) != 0)
                    .map(|(_, &unit)| unit)
                    .collect();
                out.push(choice(meta, kept));
            }
        }
        return out;
    }
    let all = space.optional.clone();
    let mut out = vec![
        choice(space.meta_max, all.clone()),
        choice(space.meta_min, Vec::new()),
        choice(space.meta_max, Vec::new()),
        choice(space.meta_min, all.clone()),
    ];
    // Every metadata prefix with all data kept (the size changes persisted
    // one by one).
    for &meta in metas.iter().take(samples) {
        out.push(choice(meta, all.clone()));
    }
    // One block lost (a torn or reordered write), or kept alone.
    let mut singles: Vec<usize> = (0..bits).collect();
    if bits > samples {
        singles = (0..samples).map(|_| rng.gen_range(0..bits)).collect();
    }
    for index in singles {
        let mut without = all.clone();
        let unit = without.remove(index);
        out.push(choice(space.meta_max, without));
        out.push(choice(space.meta_min, vec![unit]));
    }
    for _ in 0..samples {
        let meta = metas[rng.gen_range(0..metas.len())];
        let kept = all.iter().copied().filter(|_| rng.gen_bool(0.5)).collect();
        out.push(choice(meta, kept));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crash_states::model::Cut;
    use rand::SeedableRng;

    fn space(meta: (usize, usize), optional: usize) -> Space {
        Space {
            cut: Cut {
                k: 1,
                in_flight: false,
            },
            meta_min: meta.0,
            meta_max: meta.1,
            optional: (0..optional).collect(),
        }
    }

    #[test]
    fn small_spaces_are_enumerated_exhaustively() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let out = choices(&space((2, 3), 3), &mut rng, 5);
        assert_eq!(out.len(), 2 * 8);
        let mut seen: Vec<(usize, Vec<usize>)> =
            out.into_iter().map(|c| (c.meta_prefix, c.kept)).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 16, "every (prefix, subset) once");
    }

    #[test]
    fn large_spaces_get_extremes_singles_and_samples() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let out = choices(&space((0, 0), 40), &mut rng, 10);
        assert!(out.iter().any(|c| c.kept.len() == 40));
        assert!(out.iter().any(|c| c.kept.is_empty()));
        assert_eq!(out.iter().filter(|c| c.kept.len() == 39).count(), 10);
        assert_eq!(4 + 1 + 2 * 10 + 10, out.len());
    }
}
