//! Verifying proofs: RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2
//! (consistency). Each checks the proof's length against the sizes first, so
//! a truncated or extended proof is named as such before any hashing.

use super::{node_hash, Hash, MerkleError, EMPTY_ROOT};

/// Number of hashes in the inclusion proof of leaf `index` in a tree of
/// `size` leaves: the levels below the point where the leaf's path leaves
/// the complete part of the tree (`inner`), plus one per complete subtree on
/// the right edge above it (`border`).
pub fn inclusion_proof_len(index: u64, size: u64) -> Result<usize, MerkleError> {
    if size == 0 {
        return Err(MerkleError::EmptyTree);
    }
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let inner = bit_len(index ^ (size - 1));
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    Ok((inner + border) as usize)
}

/// Number of hashes in the consistency proof from `old_size` to `new_size`
/// leaves: 0 when `old_size` is 0 or equal to `new_size`.
pub fn consistency_proof_len(old_size: u64, new_size: u64) -> Result<usize, MerkleError> {
    if old_size > new_size {
        return Err(MerkleError::OldSizeGreaterThanNew { old_size, new_size });
    }
    if old_size == 0 || old_size == new_size {
        return Ok(0);
    }
    // The proof is the inclusion proof of leaf old_size - 1 in the new tree,
    // cut below the level of the largest complete subtree the old tree ends
    // with (shift), plus that subtree's hash unless it is the whole old tree.
    let inner = bit_len((old_size - 1) ^ (new_size - 1));
    let border = (old_size - 1).checked_shr(inner).unwrap_or(0).count_ones();
    let shift = old_size.trailing_zeros();
    let seed = u32::from(!old_size.is_power_of_two());
    Ok((seed + inner.saturating_sub(shift) + border) as usize)
}

/// The root that an inclusion proof leads to from leaf `index` (hash
/// `leaf_hash`) in a tree of `size` leaves (RFC 9162 §2.1.3.2). Fails with
/// [`MerkleError::WrongProofSize`] unless `proof` has exactly
/// [`inclusion_proof_len`] hashes.
pub fn root_from_inclusion_proof(
    index: u64,
    size: u64,
    leaf_hash: &Hash,
    proof: &[Hash],
) -> Result<Hash, MerkleError> {
    let expected = inclusion_proof_len(index, size)?;
    let wrong_size = MerkleError::WrongProofSize {
        expected,
        found: proof.len(),
    };
    if proof.len() != expected {
        return Err(wrong_size);
    }
    let mut f_n = index;
    let mut s_n = size - 1;
    let mut r = *leaf_hash;
    for p in proof {
        if s_n == 0 {
            return Err(wrong_size);
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(wrong_size);
    }
    Ok(r)
}

/// Checks that `proof` proves leaf `index` with hash `leaf_hash` is in the
/// tree of `size` leaves whose root is `root`. `Ok(())` means exactly that;
/// every failure names its cause ([`MerkleError::RootMismatch`] for a proof of
/// the right length that does not lead to `root`).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf_hash: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), MerkleError> {
    let computed = root_from_inclusion_proof(index, size, leaf_hash, proof)?;
    if computed != *root {
        return Err(MerkleError::RootMismatch {
            expected: *root,
            computed,
        });
    }
    Ok(())
}

/// Checks that `proof` proves the tree of `new_size` leaves with root
/// `new_root` extends the tree of `old_size` leaves with root `old_root`
/// (RFC 9162 §2.1.4.2). Equal sizes need an empty proof and equal roots;
/// old size 0 needs an empty proof and `old_root` = [`EMPTY_ROOT`].
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), MerkleError> {
    let expected = consistency_proof_len(old_size, new_size)?;
    let wrong_size = MerkleError::WrongProofSize {
        expected,
        found: proof.len(),
    };
    if proof.len() != expected {
        return Err(wrong_size);
    }
    if old_size == 0 {
        if *old_root != EMPTY_ROOT {
            return Err(MerkleError::OldRootMismatch {
                expected: *old_root,
                computed: EMPTY_ROOT,
            });
        }
        return Ok(());
    }
    if old_size == new_size {
        if old_root != new_root {
            return Err(MerkleError::NewRootMismatch {
                expected: *new_root,
                computed: *old_root,
            });
        }
        return Ok(());
    }
    // Step 2: if old_size is a power of two, the old root is the seed.
    let (seed, rest) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        match proof.split_first() {
            Some(split) => split,
            None => return Err(wrong_size),
        }
    };
    // Steps 3 and 4.
    let mut f_n = old_size - 1;
    let mut s_n = new_size - 1;
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    // Steps 5 and 6.
    let mut f_r = *seed;
    let mut s_r = *seed;
    for c in rest {
        if s_n == 0 {
            return Err(wrong_size);
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    // Step 7.
    if s_n != 0 {
        return Err(wrong_size);
    }
    if f_r != *old_root {
        return Err(MerkleError::OldRootMismatch {
            expected: *old_root,
            computed: f_r,
        });
    }
    if s_r != *new_root {
        return Err(MerkleError::NewRootMismatch {
            expected: *new_root,
            computed: s_r,
        });
    }
    Ok(())
}

/// Number of significant bits of `x` (0 for 0).
fn bit_len(x: u64) -> u32 {
    u64::BITS - x.leading_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_lengths_at_the_edges() {
        assert_eq!(inclusion_proof_len(0, 1), Ok(0));
        assert_eq!(inclusion_proof_len(0, 0), Err(MerkleError::EmptyTree));
        assert_eq!(
            inclusion_proof_len(1, 1),
            Err(MerkleError::IndexOutOfRange { index: 1, size: 1 })
        );
        assert_eq!(inclusion_proof_len(u64::MAX - 1, u64::MAX), Ok(63));
        assert_eq!(inclusion_proof_len(0, u64::MAX), Ok(64));
        assert_eq!(consistency_proof_len(0, 5), Ok(0));
        assert_eq!(consistency_proof_len(5, 5), Ok(0));
        assert_eq!(
            consistency_proof_len(6, 5),
            Err(MerkleError::OldSizeGreaterThanNew {
                old_size: 6,
                new_size: 5
            })
        );
        assert_eq!(consistency_proof_len(1, u64::MAX), Ok(64));
    }

    #[test]
    fn trivial_consistency_cases() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        assert_eq!(verify_consistency(0, 9, &EMPTY_ROOT, &b, &[]), Ok(()));
        assert_eq!(
            verify_consistency(0, 9, &a, &b, &[]),
            Err(MerkleError::OldRootMismatch {
                expected: a,
                computed: EMPTY_ROOT
            })
        );
        assert_eq!(verify_consistency(4, 4, &a, &a, &[]), Ok(()));
        assert_eq!(
            verify_consistency(4, 4, &a, &b, &[]),
            Err(MerkleError::NewRootMismatch {
                expected: b,
                computed: a
            })
        );
        assert_eq!(
            verify_consistency(4, 4, &a, &a, &[a]),
            Err(MerkleError::WrongProofSize {
                expected: 0,
                found: 1
            })
        );
        assert_eq!(
            verify_consistency(1, 2, &a, &b, &[]),
            Err(MerkleError::WrongProofSize {
                expected: 1,
                found: 0
            })
        );
    }
}
