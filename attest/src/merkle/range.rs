//! Range proofs: that leaves `begin..end` are exactly those leaves of the tree
//! of `size` leaves whose root is known, without the other leaves.
//!
//! The proof is the hashes of the maximal subtrees (in RFC 9162's split of
//! the tree) that lie wholly outside the range, left to right. Those left of
//! `begin` are exactly the left siblings on leaf `begin`'s audit path, and
//! those right of `end - 1` the right siblings on leaf `end - 1`'s path: a
//! maximal outside subtree's parent overlaps the range, so its sibling holds
//! the range's first (or last) leaf. So a range proof is built from two
//! inclusion proofs ([`range_proof_from_paths`]), and is at most
//! `2 ceil(log2 size)` hashes, whatever the range's length.
//!
//! The verifier ([`root_from_range_proof`]) rehashes the tree from the
//! range's leaf hashes and the proof, taking each outside subtree's hash from
//! the proof in order; the proof's length is checked first.

use super::prove::split_point;
use super::verify::inclusion_proof_len;
use super::{node_hash, Hash, MerkleError};

/// Checks `begin < end <= size`.
fn check_range(begin: u64, end: u64, size: u64) -> Result<(), MerkleError> {
    if begin >= end || end > size {
        return Err(MerkleError::BadRange { begin, end, size });
    }
    Ok(())
}

/// For leaf `index` of a tree of `size` leaves, top down: whether the sibling
/// at each level of its audit path lies left of it (`true`) or right.
fn sibling_sides(index: u64, size: u64) -> Vec<bool> {
    let mut sides = Vec::with_capacity(64);
    let (mut lo, mut hi) = (0u64, size);
    while hi - lo > 1 {
        let mid = lo + split_point(hi - lo);
        if index < mid {
            sides.push(false);
            hi = mid;
        } else {
            sides.push(true);
            lo = mid;
        }
    }
    sides
}

/// Number of hashes in the range proof of leaves `begin..end` in a tree of
/// `size` leaves: the left siblings on `begin`'s path plus the right
/// siblings on `end - 1`'s path (0 for the whole tree).
pub fn range_proof_len(begin: u64, end: u64, size: u64) -> Result<usize, MerkleError> {
    check_range(begin, end, size)?;
    let left = sibling_sides(begin, size)
        .iter()
        .filter(|left| **left)
        .count();
    let right = sibling_sides(end - 1, size)
        .iter()
        .filter(|left| !**left)
        .count();
    Ok(left + right)
}

/// The range proof of leaves `begin..end` in a tree of `size` leaves, from
/// the inclusion proofs (audit paths, bottom first) of leaves `begin` and
/// `end - 1` in that tree, as `tally export` gets them from the daemon.
pub fn range_proof_from_paths(
    begin: u64,
    end: u64,
    size: u64,
    first_path: &[Hash],
    last_path: &[Hash],
) -> Result<Vec<Hash>, MerkleError> {
    check_range(begin, end, size)?;
    for (index, path) in [(begin, first_path), (end - 1, last_path)] {
        let expected = inclusion_proof_len(index, size)?;
        if path.len() != expected {
            return Err(MerkleError::WrongProofSize {
                expected,
                found: path.len(),
            });
        }
    }
    // Left siblings of `begin`, top down, are in left-to-right order...
    let left = first_path
        .iter()
        .rev()
        .zip(sibling_sides(begin, size))
        .filter(|(_, left)| *left)
        .map(|(hash, _)| *hash);
    // ... and right siblings of `end - 1`, bottom up.
    let mut sides = sibling_sides(end - 1, size);
    sides.reverse();
    let right = last_path
        .iter()
        .zip(sides)
        .filter(|(_, left)| !*left)
        .map(|(hash, _)| *hash);
    Ok(left.chain(right).collect())
}

/// The root of the tree of `size` leaves whose leaves `begin..begin +
/// leaves.len()` have the hashes `leaves`, with `proof` giving the hashes of
/// the subtrees outside the range. Fails with [`MerkleError::WrongProofSize`]
/// unless `proof` has exactly [`range_proof_len`] hashes. O(leaves + log size).
pub fn root_from_range_proof(
    begin: u64,
    size: u64,
    leaves: &[Hash],
    proof: &[Hash],
) -> Result<Hash, MerkleError> {
    let end = begin
        .checked_add(leaves.len() as u64)
        .ok_or(MerkleError::BadRange {
            begin,
            end: u64::MAX,
            size,
        })?;
    let expected = range_proof_len(begin, end, size)?;
    if proof.len() != expected {
        return Err(MerkleError::WrongProofSize {
            expected,
            found: proof.len(),
        });
    }
    let mut walk = Walk {
        begin,
        end,
        leaves,
        proof,
        used: 0,
    };
    let root = walk.hash(0, size)?;
    if walk.used != proof.len() {
        return Err(MerkleError::WrongProofSize {
            expected,
            found: proof.len(),
        });
    }
    Ok(root)
}

/// Checks that leaves `begin..begin + leaves.len()` with hashes `leaves` are
/// those leaves of the tree of `size` leaves whose root is `root`.
pub fn verify_range(
    begin: u64,
    size: u64,
    leaves: &[Hash],
    proof: &[Hash],
    root: &Hash,
) -> Result<(), MerkleError> {
    let computed = root_from_range_proof(begin, size, leaves, proof)?;
    if computed != *root {
        return Err(MerkleError::RootMismatch {
            expected: *root,
            computed,
        });
    }
    Ok(())
}

/// RFC 9162's MTH recursion over `[lo, hi)`, with the range's leaves known
/// and every subtree outside it taken from the proof, left to right.
struct Walk<'a> {
    begin: u64,
    end: u64,
    leaves: &'a [Hash],
    proof: &'a [Hash],
    used: usize,
}

impl Walk<'_> {
    fn hash(&mut self, lo: u64, hi: u64) -> Result<Hash, MerkleError> {
        if hi <= self.begin || lo >= self.end {
            let hash = self
                .proof
                .get(self.used)
                .ok_or(MerkleError::WrongProofSize {
                    expected: self.used + 1,
                    found: self.proof.len(),
                })?;
            self.used += 1;
            return Ok(*hash);
        }
        if hi - lo == 1 {
            // Inside the range: lo - begin < leaves.len() since lo < end.
            let index = usize::try_from(lo - self.begin).unwrap_or(usize::MAX);
            return self
                .leaves
                .get(index)
                .copied()
                .ok_or(MerkleError::IndexOutOfRange {
                    index: lo,
                    size: self.end,
                });
        }
        // Depth is at most 64: each step halves (at least) the span.
        let mid = lo + split_point(hi - lo);
        let left = self.hash(lo, mid)?;
        let right = self.hash(mid, hi)?;
        Ok(node_hash(&left, &right))
    }
}

#[cfg(test)]
mod tests {
    use super::super::inclusion_proof;
    use super::super::testutil::{flip, leaves, reference_path, reference_root, MemStore};
    use super::*;

    /// The range proof straight from RFC 6962's definition: the MTH of each
    /// maximal subtree outside `[begin, end)`, left to right.
    fn reference_range_proof(d: &[Hash], lo: usize, begin: usize, end: usize, out: &mut Vec<Hash>) {
        let hi = lo + d.len();
        if hi <= begin || lo >= end {
            out.push(reference_root(d));
            return;
        }
        if d.len() == 1 {
            return;
        }
        let mut k = 1;
        while k * 2 < d.len() {
            k *= 2;
        }
        reference_range_proof(&d[..k], lo, begin, end, out);
        reference_range_proof(&d[k..], lo + k, begin, end, out);
    }

    #[test]
    fn every_range_of_every_small_tree_proves_against_the_reference_root() {
        for size in 1..=33usize {
            let d = leaves(size);
            let root = reference_root(&d);
            let (store, _) = MemStore::build(&d);
            for begin in 0..size {
                for end in begin + 1..=size {
                    let (b, e, n) = (begin as u64, end as u64, size as u64);
                    let mut expected = Vec::new();
                    reference_range_proof(&d, 0, begin, end, &mut expected);
                    // From the reference audit paths, and from the store's.
                    let first = reference_path(begin, &d);
                    let last = reference_path(end - 1, &d);
                    let proof = range_proof_from_paths(b, e, n, &first, &last).unwrap();
                    assert_eq!(proof, expected, "range {begin}..{end} of {size}");
                    let first = inclusion_proof(&store, b, n).unwrap();
                    let last = inclusion_proof(&store, e - 1, n).unwrap();
                    assert_eq!(
                        range_proof_from_paths(b, e, n, &first, &last).unwrap(),
                        expected
                    );
                    assert_eq!(range_proof_len(b, e, n), Ok(expected.len()));
                    assert_eq!(
                        verify_range(b, n, &d[begin..end], &proof, &root),
                        Ok(()),
                        "range {begin}..{end} of {size}"
                    );
                    assert!(proof.len() <= 2 * super::super::ceil_log2(n));
                }
            }
        }
    }

    #[test]
    fn any_changed_hash_or_shifted_range_fails() {
        for size in [1usize, 2, 3, 7, 8, 13] {
            let d = leaves(size);
            let root = reference_root(&d);
            for begin in 0..size {
                for end in begin + 1..=size {
                    let (b, n) = (begin as u64, size as u64);
                    let mut proof = Vec::new();
                    reference_range_proof(&d, 0, begin, end, &mut proof);
                    let range = &d[begin..end];
                    for i in 0..proof.len() {
                        let mut bad = proof.clone();
                        bad[i] = flip(&bad[i], 7 * i % 256);
                        assert!(matches!(
                            verify_range(b, n, range, &bad, &root),
                            Err(MerkleError::RootMismatch { .. })
                        ));
                    }
                    for i in 0..range.len() {
                        let mut bad = range.to_vec();
                        bad[i] = flip(&bad[i], 3);
                        assert!(verify_range(b, n, &bad, &proof, &root).is_err());
                    }
                    // The same leaves claimed one position later.
                    if end < size {
                        assert!(verify_range(b + 1, n, range, &proof, &root).is_err());
                    }
                    // A leaf dropped from either end, or a proof hash short or extra.
                    if range.len() > 1 {
                        assert!(verify_range(b, n, &range[1..], &proof, &root).is_err());
                        assert!(
                            verify_range(b, n, &range[..range.len() - 1], &proof, &root).is_err()
                        );
                    }
                    let mut longer = proof.clone();
                    longer.push(root);
                    assert!(matches!(
                        verify_range(b, n, range, &longer, &root),
                        Err(MerkleError::WrongProofSize { .. })
                    ));
                    if let Some((_, shorter)) = proof.split_last() {
                        assert!(matches!(
                            verify_range(b, n, range, shorter, &root),
                            Err(MerkleError::WrongProofSize { .. })
                        ));
                    }
                    // Against the root of a different size.
                    if size > 1 && end < size {
                        let smaller = reference_root(&d[..size - 1]);
                        assert!(verify_range(b, n, range, &proof, &smaller).is_err());
                    }
                }
            }
        }
    }

    #[test]
    fn bad_ranges_are_refused() {
        assert_eq!(
            range_proof_len(3, 3, 5),
            Err(MerkleError::BadRange {
                begin: 3,
                end: 3,
                size: 5
            })
        );
        assert_eq!(
            range_proof_len(0, 6, 5),
            Err(MerkleError::BadRange {
                begin: 0,
                end: 6,
                size: 5
            })
        );
        assert!(root_from_range_proof(0, 5, &[], &[]).is_err());
        assert!(root_from_range_proof(u64::MAX, u64::MAX, &[[0; 32]], &[]).is_err());
        let d = leaves(5);
        assert_eq!(
            range_proof_from_paths(1, 3, 5, &[], &reference_path(2, &d)),
            Err(MerkleError::WrongProofSize {
                expected: 3,
                found: 0
            })
        );
    }

    #[test]
    fn a_large_tree_needs_at_most_two_paths_of_hashes() {
        let size = 1u64 << 40;
        let first = vec![[1u8; 32]; inclusion_proof_len(12_345, size).unwrap()];
        let last = vec![[2u8; 32]; inclusion_proof_len(12_400, size).unwrap()];
        let proof = range_proof_from_paths(12_345, 12_401, size, &first, &last).unwrap();
        assert_eq!(range_proof_len(12_345, 12_401, size), Ok(proof.len()));
        assert!(proof.len() <= 80, "{}", proof.len());
        let leaves = vec![[3u8; 32]; 56];
        assert!(root_from_range_proof(12_345, size, &leaves, &proof).is_ok());
    }
}
