//! Building proofs from stored complete subtrees (RFC 9162 §2.1.3.1 PATH and
//! §2.1.4.1 SUBPROOF), in O(log n) store lookups.
//!
//! Both walk the RFC's recursion top down over ranges `[lo, hi)` of leaves,
//! where `lo` is always a multiple of the smallest power of two `>= hi - lo`.
//! A range with `hi - lo` a power of two is one stored node. Otherwise `hi`
//! is the tree size (only the right edge is incomplete) and the range is
//! hashed from its complete subtrees: this happens at most twice per proof,
//! so a proof costs at most about `3 log2 n` lookups.

use super::{fold_edge, Hash, MerkleError, NodeStore, EMPTY_ROOT};

/// The root of the first `size` leaves of the tree held by `store`
/// ([`EMPTY_ROOT`] for 0), from at most 64 stored complete subtrees.
pub fn root<S: NodeStore + ?Sized>(store: &S, size: u64) -> Result<Hash, MerkleError> {
    if size == 0 {
        return Ok(EMPTY_ROOT);
    }
    range_hash(store, 0, size)
}

/// The inclusion proof (audit path, RFC 9162 §2.1.3.1) of leaf `index` in
/// the tree of the first `size` leaves: sibling hashes from the leaf up.
/// Needs every complete subtree of that tree in `store`; fails with
/// [`MerkleError::MissingNode`] naming the first one absent.
pub fn inclusion_proof<S: NodeStore + ?Sized>(
    store: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, MerkleError> {
    if size == 0 {
        return Err(MerkleError::EmptyTree);
    }
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    // PATH(m, D[lo:hi]) = PATH(m, D[lo:mid]) : MTH(D[mid:hi])   if m < mid
    //                   = PATH(m, D[mid:hi]) : MTH(D[lo:mid])   otherwise,
    // with mid = lo + the largest power of two smaller than hi - lo. Walking
    // down collects the siblings top first; the proof lists them bottom first.
    let mut proof = Vec::with_capacity(64);
    let (mut lo, mut hi) = (0u64, size);
    while hi - lo > 1 {
        let mid = lo + split_point(hi - lo);
        if index < mid {
            proof.push(range_hash(store, mid, hi)?);
            hi = mid;
        } else {
            proof.push(range_hash(store, lo, mid)?);
            lo = mid;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// The consistency proof (RFC 9162 §2.1.4.1) that the tree of the first
/// `new_size` leaves extends the tree of the first `old_size`. Empty when
/// `old_size` is 0 or equal to `new_size` (nothing to prove). Needs every
/// complete subtree of the new tree in `store`.
pub fn consistency_proof<S: NodeStore + ?Sized>(
    store: &S,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, MerkleError> {
    if old_size > new_size {
        return Err(MerkleError::OldSizeGreaterThanNew { old_size, new_size });
    }
    if old_size == 0 || old_size == new_size {
        return Ok(Vec::new());
    }
    // SUBPROOF(m, D[lo:hi], b), with m counted from 0 (not from lo):
    //   m == hi: [] if b, else [MTH(D[lo:hi])]
    //   m <= mid: SUBPROOF(m, D[lo:mid], b) : MTH(D[mid:hi])
    //   m > mid:  SUBPROOF(m, D[mid:hi], false) : MTH(D[lo:mid])
    let mut proof = Vec::with_capacity(65);
    let (mut lo, mut hi) = (0u64, new_size);
    let mut old_is_whole_subtree = true;
    while old_size < hi {
        let mid = lo + split_point(hi - lo);
        if old_size <= mid {
            proof.push(range_hash(store, mid, hi)?);
            hi = mid;
        } else {
            proof.push(range_hash(store, lo, mid)?);
            lo = mid;
            old_is_whole_subtree = false;
        }
    }
    if !old_is_whole_subtree {
        proof.push(range_hash(store, lo, hi)?);
    }
    proof.reverse();
    Ok(proof)
}

/// The largest power of two strictly smaller than `n` (`n >= 2`).
pub(super) fn split_point(n: u64) -> u64 {
    1 << (u64::BITS - 1 - (n - 1).leading_zeros())
}

/// MTH(D[begin:end]) for `begin < end`, from the complete subtrees covering
/// the range. Precondition (kept by every caller): `begin` is a multiple of
/// the largest complete subtree, so each subtree found right to left (sizes
/// from the low set bits of `end - begin` up) is aligned.
fn range_hash<S: NodeStore + ?Sized>(store: &S, begin: u64, end: u64) -> Result<Hash, MerkleError> {
    let mut edge = [[0u8; 32]; 64];
    let mut count = 0;
    let mut len = end - begin;
    let mut right = end;
    // Lowest set bit first: the rightmost (smallest) subtree.
    while len != 0 {
        let level = len.trailing_zeros() as u8;
        right -= 1 << level;
        let index = right >> level;
        edge[count] = store
            .node(level, index)
            .ok_or(MerkleError::MissingNode { level, index })?;
        count += 1;
        len &= len - 1;
    }
    let edge = &mut edge[..count];
    edge.reverse();
    Ok(fold_edge(edge))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_point_is_largest_smaller_power_of_two() {
        for (n, k) in [
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 4),
            (8, 4),
            (9, 8),
            (u64::MAX, 1 << 63),
        ] {
            assert_eq!(split_point(n), k, "n = {n}");
        }
    }

    #[test]
    fn bad_arguments_are_refused() {
        let store = |_: u8, _: u64| Some([0u8; 32]);
        assert_eq!(inclusion_proof(&store, 0, 0), Err(MerkleError::EmptyTree));
        assert_eq!(
            inclusion_proof(&store, 7, 7),
            Err(MerkleError::IndexOutOfRange { index: 7, size: 7 })
        );
        assert_eq!(
            consistency_proof(&store, 9, 8),
            Err(MerkleError::OldSizeGreaterThanNew {
                old_size: 9,
                new_size: 8
            })
        );
        assert_eq!(consistency_proof(&store, 0, 8), Ok(vec![]));
        assert_eq!(consistency_proof(&store, 8, 8), Ok(vec![]));
        assert_eq!(root(&store, 0), Ok(EMPTY_ROOT));
    }

    #[test]
    fn missing_nodes_are_named() {
        // Only leaves are stored: the first interior node asked for is named.
        let store = |level: u8, index: u64| (level == 0).then_some([index as u8; 32]);
        assert_eq!(
            inclusion_proof(&store, 0, 8),
            Err(MerkleError::MissingNode { level: 2, index: 1 })
        );
        assert_eq!(
            root(&store, 6),
            Err(MerkleError::MissingNode { level: 1, index: 2 })
        );
    }
}
