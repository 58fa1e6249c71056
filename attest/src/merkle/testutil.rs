//! Test helpers: an in-memory node store and the RFC 6962 definitions written
//! as literally as possible (recursive, O(n)), to check the O(log n) code
//! against.

use super::{leaf_hash, node_hash, Frontier, Hash, NodeStore, EMPTY_ROOT};

/// Every node reported by [`Frontier::push`], in memory.
#[derive(Debug, Default)]
pub struct MemStore {
    levels: Vec<Vec<Hash>>,
}

impl MemStore {
    /// Stores node `(level, index)`; nodes of a level arrive in index order.
    pub fn put(&mut self, level: u8, index: u64, hash: Hash) {
        let level = usize::from(level);
        if self.levels.len() <= level {
            self.levels.resize(level + 1, Vec::new());
        }
        assert_eq!(self.levels[level].len() as u64, index, "nodes out of order");
        self.levels[level].push(hash);
    }

    /// A store and frontier holding `leaf_hashes`.
    pub fn build(leaf_hashes: &[Hash]) -> (MemStore, Frontier) {
        let mut store = MemStore::default();
        let mut frontier = Frontier::new();
        for leaf in leaf_hashes {
            frontier
                .push(*leaf, |level, index, hash| store.put(level, index, *hash))
                .unwrap();
        }
        (store, frontier)
    }
}

impl NodeStore for MemStore {
    fn node(&self, level: u8, index: u64) -> Option<Hash> {
        self.levels
            .get(usize::from(level))?
            .get(usize::try_from(index).ok()?)
            .copied()
    }
}

/// `n` distinct leaf hashes, the same in every run.
pub fn leaves(n: usize) -> Vec<Hash> {
    (0..n as u64).map(|i| leaf_hash(&i.to_be_bytes())).collect()
}

/// Largest power of two strictly smaller than `n >= 2`.
fn k_of(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// RFC 6962 §2.1 MTH over leaf hashes.
pub fn reference_root(d: &[Hash]) -> Hash {
    match d.len() {
        0 => EMPTY_ROOT,
        1 => d[0],
        n => {
            let k = k_of(n);
            node_hash(&reference_root(&d[..k]), &reference_root(&d[k..]))
        }
    }
}

/// RFC 6962 §2.1.1 PATH(m, D[n]).
pub fn reference_path(m: usize, d: &[Hash]) -> Vec<Hash> {
    let n = d.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = k_of(n);
    let (mut path, sibling) = if m < k {
        (reference_path(m, &d[..k]), reference_root(&d[k..]))
    } else {
        (reference_path(m - k, &d[k..]), reference_root(&d[..k]))
    };
    path.push(sibling);
    path
}

/// RFC 6962 §2.1.2 PROOF(m, D[n]) = SUBPROOF(m, D[n], true), for 0 < m < n.
pub fn reference_consistency(m: usize, d: &[Hash]) -> Vec<Hash> {
    fn subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
        let n = d.len();
        if m == n {
            return if b {
                Vec::new()
            } else {
                vec![reference_root(d)]
            };
        }
        let k = k_of(n);
        let (mut proof, last) = if m <= k {
            (subproof(m, &d[..k], b), reference_root(&d[k..]))
        } else {
            (subproof(m - k, &d[k..], false), reference_root(&d[..k]))
        };
        proof.push(last);
        proof
    }
    subproof(m, d, true)
}

/// `hash` with bit `bit` (0 = most significant of byte 0) flipped.
pub fn flip(hash: &Hash, bit: usize) -> Hash {
    let mut out = *hash;
    out[bit / 8] ^= 0x80 >> (bit % 8);
    out
}

/// A store of fake but deterministic hashes for every node of every size,
/// so proofs over 2^30 or more leaves can be built without storage. Proofs
/// built from it have the right shape and length, not meaningful hashes.
pub fn synthetic_store(level: u8, index: u64) -> Option<Hash> {
    let mut bytes = [0u8; 9];
    bytes[0] = level;
    bytes[1..].copy_from_slice(&index.to_be_bytes());
    Some(leaf_hash(&bytes))
}
