//! RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification,
//! independent of how nodes are stored.
//!
//! * Hashing: `leaf = SHA-256(0x00 || leaf bytes)`, `node = SHA-256(0x01 ||
//!   left || right)`, and the root of the empty tree is `SHA-256("")`.
//! * Addressing: node `(level, index)` is the complete subtree of `2^level`
//!   leaves starting at leaf `index * 2^level`; level 0 holds the leaf hashes.
//!   A tree of `n` leaves is the complete subtrees given by the set bits of
//!   `n`, largest (leftmost) first; the right edge of a tree whose size is not
//!   a power of two is hashed from those, never stored.
//! * [`Frontier`]: the incremental state of the single writer, at most 64
//!   hashes (one per set bit of the size). [`Frontier::push`] reports every
//!   node that a leaf completes, so the caller can store it.
//! * [`NodeStore`]: read access to stored complete subtrees;
//!   [`inclusion_proof`] and [`consistency_proof`] need O(log n) lookups.
//! * [`verify_inclusion`] and [`verify_consistency`]: RFC 9162 §2.1.3.2 and
//!   §2.1.4.2, with the proof length checked before any hashing.
//! * [`range_proof_from_paths`] and [`verify_range`]: that a run of leaves is
//!   exactly leaves `begin..end` of a tree (the subtrees around the range).

mod frontier;
mod prove;
mod range;
mod verify;

#[cfg(test)]
mod kat_tests;
#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod testutil;

use sha2::{Digest, Sha256};

pub use crate::record::Hash;
pub use frontier::{Frontier, FRONTIER_VERSION};
pub use prove::{consistency_proof, inclusion_proof, root};
pub use range::{range_proof_from_paths, range_proof_len, root_from_range_proof, verify_range};
pub use verify::{
    consistency_proof_len, inclusion_proof_len, root_from_inclusion_proof, verify_consistency,
    verify_inclusion,
};

/// Root hash of the empty tree: `SHA-256("")` (RFC 6962 §2.1).
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Prefix of a leaf hash's input.
pub const LEAF_PREFIX: u8 = 0x00;
/// Prefix of an interior node hash's input.
pub const NODE_PREFIX: u8 = 0x01;

/// The hash of one leaf: `SHA-256(0x00 || leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(leaf);
    h.finalize().into()
}

/// The hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the tree whose leaf hashes are `leaves`, in order
/// ([`EMPTY_ROOT`] when there are none). O(n) time, O(log n) memory.
pub fn root_from_leaf_hashes(leaves: &[Hash]) -> Hash {
    // The same right edge a Frontier keeps, without its bookkeeping.
    let mut edge: Vec<Hash> = Vec::with_capacity(64);
    for (index, leaf) in leaves.iter().enumerate() {
        let mut hash = *leaf;
        let mut index = index;
        while index & 1 == 1 {
            if let Some(left) = edge.pop() {
                hash = node_hash(&left, &hash);
            }
            index >>= 1;
        }
        edge.push(hash);
    }
    fold_edge(&edge)
}

/// Hashes a right edge of complete subtrees (largest first) into one root:
/// `node(e0, node(e1, ... node(e[k-2], e[k-1])))`; [`EMPTY_ROOT`] if empty.
fn fold_edge(edge: &[Hash]) -> Hash {
    let mut iter = edge.iter().rev();
    let Some(last) = iter.next() else {
        return EMPTY_ROOT;
    };
    iter.fold(*last, |right, left| node_hash(left, &right))
}

/// Read access to the hashes of complete subtrees.
///
/// Contract: `node(level, index)` returns the hash of the complete subtree of
/// `2^level` leaves starting at leaf `index << level` (for level 0, the leaf
/// hash of leaf `index`) if it is stored, and `None` otherwise. Proof builders
/// only ask for subtrees that lie wholly inside the requested tree size. A
/// store that returns a wrong hash yields proofs that fail verification; it
/// cannot make a proof of something false verify.
///
/// Closures `Fn(u8, u64) -> Option<Hash>` are stores, so a caller can wrap a
/// database read transaction without defining a type.
pub trait NodeStore {
    /// The stored hash of node `(level, index)`, if any.
    fn node(&self, level: u8, index: u64) -> Option<Hash>;
}

impl<F> NodeStore for F
where
    F: Fn(u8, u64) -> Option<Hash>,
{
    fn node(&self, level: u8, index: u64) -> Option<Hash> {
        self(level, index)
    }
}

/// Upper bounds on proof lengths (in hashes) for a tree of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProofSizeBound {
    /// Longest inclusion proof of any leaf: `ceil(log2 n)`.
    pub inclusion: usize,
    /// Longest consistency proof from any smaller size: `ceil(log2 n) + 1`
    /// (0 for `n <= 1`).
    pub consistency: usize,
}

/// Upper bounds on inclusion and consistency proof lengths for a tree of `n`
/// leaves. At `n = 2^30`: 30 and 31 hashes (32 bytes each).
pub fn proof_size_bound(n: u64) -> ProofSizeBound {
    let depth = ceil_log2(n);
    ProofSizeBound {
        inclusion: depth,
        consistency: if n <= 1 { 0 } else { depth + 1 },
    }
}

/// `ceil(log2 n)`, with `ceil_log2(0) = ceil_log2(1) = 0`.
fn ceil_log2(n: u64) -> usize {
    if n <= 1 {
        0
    } else {
        (u64::BITS - (n - 1).leading_zeros()) as usize
    }
}

/// Why a Merkle operation failed. Verification errors name the exact
/// violation; none is ever a "maybe".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MerkleError {
    /// The operation needs at least one leaf.
    #[error("the tree is empty")]
    EmptyTree,
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("old tree size {old_size} is greater than new tree size {new_size}")]
    OldSizeGreaterThanNew { old_size: u64, new_size: u64 },
    /// The proof has the wrong number of hashes for the sizes it claims to
    /// relate (checked before any hashing: a truncated or extended proof).
    #[error("proof has {found} hashes, expected {expected}")]
    WrongProofSize { expected: usize, found: usize },
    /// An inclusion proof leads to a root other than the expected one.
    #[error(
        "inclusion proof leads to root {}, expected {}",
        hex::encode(computed),
        hex::encode(expected)
    )]
    RootMismatch { expected: Hash, computed: Hash },
    /// A consistency proof does not reproduce the old root.
    #[error(
        "consistency proof leads to old root {}, expected {}",
        hex::encode(computed),
        hex::encode(expected)
    )]
    OldRootMismatch { expected: Hash, computed: Hash },
    /// A consistency proof does not reproduce the new root (for equal sizes:
    /// the two roots differ).
    #[error(
        "consistency proof leads to new root {}, expected {}",
        hex::encode(computed),
        hex::encode(expected)
    )]
    NewRootMismatch { expected: Hash, computed: Hash },
    /// The node store lacks a complete subtree the proof needs.
    #[error("node store has no hash for node (level {level}, index {index})")]
    MissingNode { level: u8, index: u64 },
    /// A range proof's range is empty or reaches past the tree.
    #[error("leaf range {begin}..{end} is empty or outside a tree of size {size}")]
    BadRange { begin: u64, end: u64, size: u64 },
    /// A frontier already holds `u64::MAX` leaves.
    #[error("the tree is full (2^64 - 1 leaves)")]
    TreeFull,
    #[error("frontier encoding version {found} is not supported (this build reads version {FRONTIER_VERSION})")]
    UnsupportedFrontierVersion { found: u8 },
    /// A frontier's parts have the wrong number of hashes for its size.
    #[error("frontier for {size} leaves needs {expected} hashes, found {found}")]
    FrontierHashCount {
        size: u64,
        expected: usize,
        found: usize,
    },
    /// A frontier encoding has the wrong length for its size.
    #[error("frontier for {size} leaves needs {expected} bytes, found {found}")]
    FrontierLength {
        size: u64,
        expected: usize,
        found: usize,
    },
}
