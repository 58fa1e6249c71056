//! Known-answer tests: the 8-leaf reference tree that public RFC 6962
//! implementations test against. Every vector below is copied from
//!
//! * transparency-dev/merkle, `proof/verify_test.go` (commit 02194e9a):
//!   `leaves`, `roots`, `inclusionProofs`, `consistencyProofs`;
//! * the same leaves, roots, inclusion proofs and all but the (6, 7)
//!   consistency proof also appear in google/certificate-transparency-go,
//!   `merkletree/merkle_verifier_test.go` (`getInputs`, `getRoots`,
//!   `getInclusionTestVector`, `getConsistencyProofs`).
//!
//! Both files number leaves from 1 in their inclusion vectors
//! (`verifierCheck(..., p.leaf-1, ...)`); the indices here are 0-based.

use super::testutil::{flip, MemStore};
use super::*;

fn h(hex_str: &str) -> Hash {
    let bytes = hex::decode(hex_str).unwrap();
    bytes.try_into().unwrap()
}

/// transparency-dev/merkle proof/verify_test.go `leaves` (raw leaf data,
/// hashed with the 0x00 prefix before use); same in certificate-transparency-go
/// merkletree/merkle_verifier_test.go `getInputs`.
const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

/// transparency-dev/merkle proof/verify_test.go `roots`: the root of the first
/// 1, 2, ..., 8 leaves; same in certificate-transparency-go
/// merkletree/merkle_verifier_test.go `getRoots`.
const ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// transparency-dev/merkle proof/verify_test.go `inclusionProofs` (leaf
/// numbers there are 1-based: {1, 8}, {6, 8}, {3, 3}, {2, 5}); same in
/// certificate-transparency-go merkletree/merkle_verifier_test.go
/// `getInclusionTestVector`. (index, size, proof).
const INCLUSION: [(u64, u64, &[&str]); 4] = [
    (
        0,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        &[
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        3,
        &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    ),
    (
        1,
        5,
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
];

/// transparency-dev/merkle proof/verify_test.go `consistencyProofs`; all but
/// (6, 7) also in certificate-transparency-go
/// merkletree/merkle_verifier_test.go `getConsistencyProofs`.
/// (old size, new size, proof).
const CONSISTENCY: [(u64, u64, &[&str]); 5] = [
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

fn leaf_hashes() -> Vec<Hash> {
    LEAVES
        .iter()
        .map(|leaf| leaf_hash(&hex::decode(leaf).unwrap()))
        .collect()
}

fn root_of(size: u64) -> Hash {
    h(ROOTS[size as usize - 1])
}

fn proof_of(hexes: &[&str]) -> Vec<Hash> {
    hexes.iter().map(|x| h(x)).collect()
}

#[test]
fn empty_root_is_sha256_of_nothing() {
    use sha2::{Digest, Sha256};
    let empty: Hash = Sha256::digest(b"").into();
    assert_eq!(EMPTY_ROOT, empty);
    assert_eq!(root_from_leaf_hashes(&[]), EMPTY_ROOT);
}

#[test]
fn roots_of_every_prefix() {
    let leaves = leaf_hashes();
    let (store, _) = MemStore::build(&leaves);
    let mut frontier = Frontier::new();
    for size in 1..=8u64 {
        frontier
            .push(leaves[size as usize - 1], |_, _, _| {})
            .unwrap();
        let want = root_of(size);
        assert_eq!(frontier.root(), want, "frontier, size {size}");
        assert_eq!(root(&store, size).unwrap(), want, "store, size {size}");
        assert_eq!(
            root_from_leaf_hashes(&leaves[..size as usize]),
            want,
            "leaf hashes, size {size}"
        );
    }
}

#[test]
fn inclusion_vectors_are_built_and_verify() {
    let leaves = leaf_hashes();
    let (store, _) = MemStore::build(&leaves);
    for (index, size, hexes) in INCLUSION {
        let want = proof_of(hexes);
        assert_eq!(
            inclusion_proof(&store, index, size).unwrap(),
            want,
            "built proof for leaf {index} of {size}"
        );
        let leaf = &leaves[index as usize];
        let root = root_of(size);
        verify_inclusion(index, size, leaf, &want, &root).unwrap();
        // Every single flipped bit, in the proof, the leaf or the root, fails.
        for i in 0..want.len() {
            for bit in 0..256 {
                let mut bad = want.clone();
                bad[i] = flip(&bad[i], bit);
                assert!(matches!(
                    verify_inclusion(index, size, leaf, &bad, &root),
                    Err(MerkleError::RootMismatch { .. })
                ));
            }
        }
        for bit in 0..256 {
            assert!(verify_inclusion(index, size, &flip(leaf, bit), &want, &root).is_err());
            assert!(verify_inclusion(index, size, leaf, &want, &flip(&root, bit)).is_err());
        }
    }
}

#[test]
fn consistency_vectors_are_built_and_verify() {
    let leaves = leaf_hashes();
    let (store, _) = MemStore::build(&leaves);
    for (old, new, hexes) in CONSISTENCY {
        let want = proof_of(hexes);
        assert_eq!(
            consistency_proof(&store, old, new).unwrap(),
            want,
            "built proof {old} -> {new}"
        );
        let (old_root, new_root) = (root_of(old), root_of(new));
        verify_consistency(old, new, &old_root, &new_root, &want).unwrap();
        for i in 0..want.len() {
            for bit in 0..256 {
                let mut bad = want.clone();
                bad[i] = flip(&bad[i], bit);
                assert!(verify_consistency(old, new, &old_root, &new_root, &bad).is_err());
            }
        }
        for bit in 0..256 {
            let bad_old = flip(&old_root, bit);
            let bad_new = flip(&new_root, bit);
            assert!(verify_consistency(old, new, &bad_old, &new_root, &want).is_err());
            assert!(verify_consistency(old, new, &old_root, &bad_new, &want).is_err());
        }
    }
}

/// The corruptions transparency-dev/merkle's `corruptInclusionProof` and
/// `corruptConsistencyProof` apply (proof/verify_test.go) that a typed proof
/// can express: wrong index or size, wrong leaf or root, extra, missing or
/// inserted hashes. Each is refused with the precise error.
#[test]
fn corrupted_vectors_are_refused_precisely() {
    let leaves = leaf_hashes();
    let some = h("abacaba000000000000000000000000000000000000000000060061e00123456");
    for (index, size, hexes) in INCLUSION {
        let proof = proof_of(hexes);
        let (leaf, root) = (leaves[index as usize], root_of(size));
        let n = proof.len();
        for (i, s) in [
            (index.wrapping_sub(1), size),
            (index + 1, size),
            (index ^ 2, size),
            (index, size * 2),
            (index, size / 2),
        ] {
            assert!(
                verify_inclusion(i, s, &leaf, &proof, &root).is_err(),
                "{i}/{s}"
            );
        }
        assert!(verify_inclusion(index, size, &some, &proof, &root).is_err());
        assert!(verify_inclusion(index, size, &leaf, &proof, &EMPTY_ROOT).is_err());
        let wrong = |found| MerkleError::WrongProofSize { expected: n, found };
        let mut longer = proof.clone();
        longer.push(root);
        assert_eq!(
            verify_inclusion(index, size, &leaf, &longer, &root),
            Err(wrong(n + 1))
        );
        let mut prepended = vec![root];
        prepended.extend_from_slice(&proof);
        assert_eq!(
            verify_inclusion(index, size, &leaf, &prepended, &root),
            Err(wrong(n + 1))
        );
        assert_eq!(
            verify_inclusion(index, size, &leaf, &proof[..n - 1], &root),
            Err(wrong(n - 1))
        );
    }
    for (old, new, hexes) in CONSISTENCY.iter().filter(|(_, _, p)| !p.is_empty()) {
        let (old, new) = (*old, *new);
        let proof = proof_of(hexes);
        let (r1, r2) = (root_of(old), root_of(new));
        let n = proof.len();
        for (a, b) in [
            (old - 1, new),
            (old + 1, new),
            (old ^ 2, new),
            (old, new * 2),
            (old, new / 2),
        ] {
            assert!(
                verify_consistency(a, b, &r1, &r2, &proof).is_err(),
                "{a}/{b}"
            );
        }
        assert!(verify_consistency(old, new, &some, &r2, &proof).is_err());
        assert!(verify_consistency(old, new, &r1, &some, &proof).is_err());
        assert!(verify_consistency(old, new, &r2, &r1, &proof).is_err());
        let wrong = |found| MerkleError::WrongProofSize { expected: n, found };
        assert_eq!(verify_consistency(old, new, &r1, &r2, &[]), Err(wrong(0)));
        assert_eq!(
            verify_consistency(old, new, &r1, &r2, &proof[..n - 1]),
            Err(wrong(n - 1))
        );
        for extra in [r1, r2] {
            let mut longer = proof.clone();
            longer.push(extra);
            assert_eq!(
                verify_consistency(old, new, &r1, &r2, &longer),
                Err(wrong(n + 1))
            );
        }
        for extra in [r1, r2, proof[0]] {
            let mut prepended = vec![extra];
            prepended.extend_from_slice(&proof);
            assert_eq!(
                verify_consistency(old, new, &r1, &r2, &prepended),
                Err(wrong(n + 1))
            );
        }
    }
}
