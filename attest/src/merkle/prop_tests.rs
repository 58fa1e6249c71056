//! Property tests over trees of up to 10,007 leaves, with a fixed seed so a
//! failure reproduces: every proof the builder makes verifies, matches the
//! RFC's recursive definition, has the length the verifier expects, and any
//! single flipped bit or wrong length makes verification fail.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::testutil::{
    flip, leaves, reference_consistency, reference_path, reference_root, synthetic_store, MemStore,
};
use super::*;

/// Just over the 10,000 leaves the acceptance criteria ask for.
const BIG: usize = 10_007;
const SEED: u64 = 0x7a11_7a11;

/// Exhaustive for every tree of 1..=64 leaves: every inclusion proof and
/// every consistency proof equals the RFC 6962 recursive definition, and
/// verifies.
#[test]
fn small_trees_exhaustively_match_the_rfc_definition() {
    let d = leaves(64);
    let (store, _) = MemStore::build(&d);
    let roots: Vec<Hash> = (0..=64).map(|n| reference_root(&d[..n])).collect();
    for n in 1..=64usize {
        let size = n as u64;
        assert_eq!(root(&store, size).unwrap(), roots[n], "root of {n}");
        let bound = proof_size_bound(size);
        for m in 0..n {
            let proof = inclusion_proof(&store, m as u64, size).unwrap();
            assert_eq!(proof, reference_path(m, &d[..n]), "PATH({m}, D[{n}])");
            assert!(proof.len() <= bound.inclusion);
            verify_inclusion(m as u64, size, &d[m], &proof, &roots[n]).unwrap();
        }
        for m in 0..=n {
            let old = m as u64;
            let proof = consistency_proof(&store, old, size).unwrap();
            if 0 < m && m < n {
                assert_eq!(
                    proof,
                    reference_consistency(m, &d[..n]),
                    "PROOF({m}, D[{n}])"
                );
            } else {
                assert!(proof.is_empty());
            }
            assert!(proof.len() <= bound.consistency);
            verify_consistency(old, size, &roots[m], &roots[n], &proof).unwrap();
        }
    }
}

/// Every inclusion proof, for every leaf, in trees of 10,007 leaves, of one
/// more than a power of two, and of a random size, verifies.
#[test]
fn every_inclusion_proof_verifies_in_large_trees() {
    let d = leaves(BIG);
    let (store, frontier) = MemStore::build(&d);
    assert_eq!(frontier.root(), reference_root(&d));
    let mut rng = StdRng::seed_from_u64(SEED);
    let sizes = [BIG as u64, 4097, rng.gen_range(1..=BIG as u64)];
    for size in sizes {
        let tree_root = root(&store, size).unwrap();
        assert_eq!(
            tree_root,
            reference_root(&d[..size as usize]),
            "root of {size}"
        );
        for m in 0..size {
            let proof = inclusion_proof(&store, m, size).unwrap();
            assert_eq!(proof.len(), inclusion_proof_len(m, size).unwrap());
            verify_inclusion(m, size, &d[m as usize], &proof, &tree_root)
                .unwrap_or_else(|e| panic!("leaf {m} of {size}: {e}"));
        }
    }
}

/// Random (leaf, size) and (old, new) pairs over the whole range: proofs
/// verify; one flipped bit anywhere (proof, leaf, either root) fails with the
/// matching mismatch error; a truncated or extended proof fails with
/// `WrongProofSize`.
#[test]
fn random_proofs_verify_and_every_corruption_fails() {
    let d = leaves(BIG);
    let (store, _) = MemStore::build(&d);
    let mut rng = StdRng::seed_from_u64(SEED + 1);
    let root_at = |size: u64| root(&store, size).unwrap();
    for _ in 0..1200 {
        let size = rng.gen_range(1..=BIG as u64);
        let m = rng.gen_range(0..size);
        let leaf = d[m as usize];
        let tree_root = root_at(size);
        let proof = inclusion_proof(&store, m, size).unwrap();
        verify_inclusion(m, size, &leaf, &proof, &tree_root).unwrap();

        let bit = rng.gen_range(0..256);
        if !proof.is_empty() {
            let mut bad = proof.clone();
            let i = rng.gen_range(0..bad.len());
            bad[i] = flip(&bad[i], bit);
            assert!(matches!(
                verify_inclusion(m, size, &leaf, &bad, &tree_root),
                Err(MerkleError::RootMismatch { .. })
            ));
        }
        assert!(matches!(
            verify_inclusion(m, size, &flip(&leaf, bit), &proof, &tree_root),
            Err(MerkleError::RootMismatch { .. })
        ));
        assert!(matches!(
            verify_inclusion(m, size, &leaf, &proof, &flip(&tree_root, bit)),
            Err(MerkleError::RootMismatch { .. })
        ));
        check_wrong_lengths(&proof, |p| verify_inclusion(m, size, &leaf, p, &tree_root));
    }
    for _ in 0..1200 {
        let new = rng.gen_range(1..=BIG as u64);
        let old = rng.gen_range(1..=new);
        let (r1, r2) = (root_at(old), root_at(new));
        let proof = consistency_proof(&store, old, new).unwrap();
        assert_eq!(proof.len(), consistency_proof_len(old, new).unwrap());
        assert!(proof.len() <= proof_size_bound(new).consistency);
        verify_consistency(old, new, &r1, &r2, &proof)
            .unwrap_or_else(|e| panic!("{old} -> {new}: {e}"));
        let bit = rng.gen_range(0..256);
        if old == new {
            assert!(verify_consistency(old, new, &flip(&r1, bit), &r2, &proof).is_err());
            continue;
        }
        let mut bad = proof.clone();
        let i = rng.gen_range(0..bad.len());
        bad[i] = flip(&bad[i], bit);
        assert!(verify_consistency(old, new, &r1, &r2, &bad).is_err());
        // A power-of-two old root is the proof's seed, so a wrong one can
        // surface as a wrong new root.
        assert!(matches!(
            verify_consistency(old, new, &flip(&r1, bit), &r2, &proof),
            Err(MerkleError::OldRootMismatch { .. } | MerkleError::NewRootMismatch { .. })
        ));
        assert!(matches!(
            verify_consistency(old, new, &r1, &flip(&r2, bit), &proof),
            Err(MerkleError::NewRootMismatch { .. })
        ));
        check_wrong_lengths(&proof, |p| verify_consistency(old, new, &r1, &r2, p));
    }
}

/// For a few proofs in the large tree, every one of their bits is flipped in
/// turn, not just a random one.
#[test]
fn every_bit_of_some_large_proofs_matters() {
    let d = leaves(BIG);
    let (store, _) = MemStore::build(&d);
    for (m, size) in [
        (0u64, BIG as u64),
        (5000, 9999),
        (BIG as u64 - 1, BIG as u64),
    ] {
        let tree_root = root(&store, size).unwrap();
        let proof = inclusion_proof(&store, m, size).unwrap();
        for i in 0..proof.len() {
            for bit in 0..256 {
                let mut bad = proof.clone();
                bad[i] = flip(&bad[i], bit);
                assert!(verify_inclusion(m, size, &d[m as usize], &bad, &tree_root).is_err());
            }
        }
    }
    for (old, new) in [(3u64, BIG as u64), (4096, 4097), (6000, 9999)] {
        let (r1, r2) = (root(&store, old).unwrap(), root(&store, new).unwrap());
        let proof = consistency_proof(&store, old, new).unwrap();
        for i in 0..proof.len() {
            for bit in 0..256 {
                let mut bad = proof.clone();
                bad[i] = flip(&bad[i], bit);
                assert!(verify_consistency(old, new, &r1, &r2, &bad).is_err());
            }
        }
    }
}

/// Proof sizes at 2^30 leaves, built by the real proof builder over a
/// synthetic store (no 2^30 storage): inclusion at most 30 hashes and
/// consistency at most 31 (the acceptance bound is 2 * 30).
#[test]
fn proof_sizes_at_two_to_the_thirty() {
    let n: u64 = 1 << 30;
    let bound = proof_size_bound(n);
    assert_eq!(
        bound,
        ProofSizeBound {
            inclusion: 30,
            consistency: 31
        }
    );
    let mut rng = StdRng::seed_from_u64(SEED + 2);
    let mut indices = vec![0, 1, (1 << 29) - 1, 1 << 29, n - 2, n - 1];
    indices.extend((0..200).map(|_| rng.gen_range(0..n)));
    for m in indices {
        let proof = inclusion_proof(&synthetic_store, m, n).unwrap();
        assert_eq!(proof.len(), 30, "leaf {m}");
        assert_eq!(inclusion_proof_len(m, n), Ok(30));
    }
    let mut olds = vec![1, 2, 3, 5, (1 << 29) - 1, (1 << 29) + 1, n - 1, n];
    olds.extend((0..200).map(|_| rng.gen_range(1..=n)));
    let mut longest = 0;
    for old in olds {
        let proof = consistency_proof(&synthetic_store, old, n).unwrap();
        assert_eq!(proof.len(), consistency_proof_len(old, n).unwrap(), "{old}");
        assert!(
            proof.len() <= bound.consistency && proof.len() <= 60,
            "{old}"
        );
        longest = longest.max(proof.len());
    }
    assert_eq!(longest, 31, "3 -> 2^30 reaches the bound");
    // The right edge of a size that is not a power of two is rebuilt from at
    // most log n stored subtrees, and still within the bound.
    let odd = n + (1 << 20) + 3;
    let odd_bound = proof_size_bound(odd);
    for m in [0, n - 1, n, odd - 1] {
        let proof = inclusion_proof(&synthetic_store, m, odd).unwrap();
        assert!(proof.len() <= odd_bound.inclusion);
        assert_eq!(proof.len(), inclusion_proof_len(m, odd).unwrap());
    }
}

/// Asserts that `proof` without its last hash, with an extra hash at either
/// end, or empty, fails `verify` with `WrongProofSize` naming both lengths.
fn check_wrong_lengths(proof: &[Hash], verify: impl Fn(&[Hash]) -> Result<(), MerkleError>) {
    let n = proof.len();
    let wrong = |found| Err(MerkleError::WrongProofSize { expected: n, found });
    if n > 0 {
        assert_eq!(verify(&proof[..n - 1]), wrong(n - 1));
        assert_eq!(verify(&[]), wrong(0));
    }
    let mut longer = proof.to_vec();
    longer.push([0x5a; 32]);
    assert_eq!(verify(&longer), wrong(n + 1));
    longer.rotate_right(1);
    assert_eq!(verify(&longer), wrong(n + 1));
}
