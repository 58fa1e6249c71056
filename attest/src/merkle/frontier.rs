//! The right edge of a growing tree: what the single writer keeps between
//! appends, and stores with each committed batch.

use super::{fold_edge, node_hash, Hash, MerkleError, NodeStore};

/// Version byte of [`Frontier::to_bytes`].
pub const FRONTIER_VERSION: u8 = 1;

/// Length of the fixed part of the encoding: version + size.
const HEADER_LEN: usize = 1 + 8;

/// The compact range `[0, size)`: the hashes of the complete subtrees that
/// make up a tree of `size` leaves, one per set bit of `size`, largest
/// (leftmost) first. Enough to append leaves and compute the root; at most 64
/// hashes, whatever the size.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    /// Number of leaves covered.
    size: u64,
    /// Invariant: `hashes.len() == size.count_ones()`.
    hashes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// Builds a frontier from its parts: `hashes` are the complete subtrees
    /// of a tree of `size` leaves, largest first. Fails if there is not
    /// exactly one hash per set bit of `size`; the hashes themselves cannot be
    /// checked without the leaves.
    pub fn from_parts(size: u64, hashes: Vec<Hash>) -> Result<Frontier, MerkleError> {
        let expected = size.count_ones() as usize;
        if hashes.len() != expected {
            return Err(MerkleError::FrontierHashCount {
                size,
                expected,
                found: hashes.len(),
            });
        }
        Ok(Frontier { size, hashes })
    }

    /// Rebuilds the frontier of a tree of `size` leaves from stored complete
    /// subtrees (one lookup per set bit of `size`), e.g. after a restart.
    pub fn from_store<S: NodeStore + ?Sized>(
        store: &S,
        size: u64,
    ) -> Result<Frontier, MerkleError> {
        let mut hashes = Vec::with_capacity(size.count_ones() as usize);
        let mut begin = 0u64;
        for level in (0..u64::BITS as u8).rev() {
            if size >> level & 1 == 1 {
                let index = begin >> level;
                let hash = store
                    .node(level, index)
                    .ok_or(MerkleError::MissingNode { level, index })?;
                hashes.push(hash);
                begin += 1 << level;
            }
        }
        Ok(Frontier { size, hashes })
    }

    /// The frontier of a tree of `size` leaves, rebuilt from its last leaf
    /// (`size - 1`, hash `leaf_hash`) and that leaf's inclusion proof in the
    /// same tree: the proof's first `size.trailing_zeros()` hashes are the
    /// left siblings inside the smallest complete subtree, the rest are the
    /// larger complete subtrees, smallest first, so together they are the
    /// whole frontier. The proof is not checked here: the caller compares
    /// [`Frontier::root`] with a root it trusts (equal means the leaf and
    /// every subtree are the trusted tree's). This is what lets a verifier
    /// that trusts a checkpoint at `size` append the records after it without
    /// the records before (`verify`'s trusted start).
    pub fn from_last_leaf(
        size: u64,
        leaf_hash: &Hash,
        proof: &[Hash],
    ) -> Result<Frontier, MerkleError> {
        let expected = super::inclusion_proof_len(size.saturating_sub(1), size)?;
        if proof.len() != expected {
            return Err(MerkleError::WrongProofSize {
                expected,
                found: proof.len(),
            });
        }
        let inner = size.trailing_zeros() as usize;
        let (inside, larger) = proof.split_at(inner);
        let smallest = inside
            .iter()
            .fold(*leaf_hash, |right, left| node_hash(left, &right));
        let hashes: Vec<Hash> = larger
            .iter()
            .rev()
            .copied()
            .chain(std::iter::once(smallest))
            .collect();
        Frontier::from_parts(size, hashes)
    }

    /// Number of leaves covered.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The complete-subtree hashes, largest (leftmost) first.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// The root of the tree of [`Frontier::size`] leaves (RFC 6962 MTH);
    /// [`super::EMPTY_ROOT`] when empty. At most 63 node hashes.
    pub fn root(&self) -> Hash {
        fold_edge(&self.hashes)
    }

    /// Appends the leaf with hash `leaf_hash` as leaf number `size()`, and
    /// calls `completed(level, index, hash)` for every node this completes,
    /// bottom up: the leaf itself `(0, size())`, then each parent it closes
    /// (amortised: two calls per leaf). These are exactly the nodes a
    /// [`NodeStore`] must hold for proofs; nothing reported is ever changed
    /// by later appends. Fails only with [`MerkleError::TreeFull`], leaving
    /// the frontier unchanged.
    pub fn push(
        &mut self,
        leaf_hash: Hash,
        mut completed: impl FnMut(u8, u64, &Hash),
    ) -> Result<(), MerkleError> {
        let index = self.size;
        let new_size = index.checked_add(1).ok_or(MerkleError::TreeFull)?;
        let mut hash = leaf_hash;
        completed(0, index, &hash);
        let mut level = 0u8;
        let mut node = index;
        // A node with an odd index is a right child: its left sibling is the
        // last complete subtree on the edge, and together they complete the
        // parent.
        while node & 1 == 1 {
            let Some(left) = self.hashes.pop() else {
                // Unreachable while the invariant holds (an odd node index
                // means the edge has a subtree of this level).
                break;
            };
            hash = node_hash(&left, &hash);
            level += 1;
            node >>= 1;
            completed(level, node, &hash);
        }
        self.hashes.push(hash);
        self.size = new_size;
        Ok(())
    }

    /// The encoding stored per commit: `version (1 byte) || size (u64
    /// big-endian) || hashes (32 bytes each, largest subtree first)`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 32 * self.hashes.len());
        out.push(FRONTIER_VERSION);
        out.extend_from_slice(&self.size.to_be_bytes());
        for hash in &self.hashes {
            out.extend_from_slice(hash);
        }
        out
    }

    /// Parses exactly what [`Frontier::to_bytes`] writes: the version must be
    /// [`FRONTIER_VERSION`] and the length must match the size.
    pub fn from_bytes(bytes: &[u8]) -> Result<Frontier, MerkleError> {
        let Some((header, rest)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(MerkleError::FrontierLength {
                size: 0,
                expected: HEADER_LEN,
                found: bytes.len(),
            });
        };
        let (version, size_bytes) = header.split_at(1);
        if version[0] != FRONTIER_VERSION {
            return Err(MerkleError::UnsupportedFrontierVersion { found: version[0] });
        }
        let mut size_be = [0u8; 8];
        size_be.copy_from_slice(size_bytes);
        let size = u64::from_be_bytes(size_be);
        let count = size.count_ones() as usize;
        if rest.len() != 32 * count {
            return Err(MerkleError::FrontierLength {
                size,
                expected: HEADER_LEN + 32 * count,
                found: bytes.len(),
            });
        }
        let hashes = rest
            .chunks_exact(32)
            .map(|chunk| {
                let mut hash = [0u8; 32];
                hash.copy_from_slice(chunk);
                hash
            })
            .collect();
        Ok(Frontier { size, hashes })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{leaves, reference_root, MemStore};
    use super::super::EMPTY_ROOT;
    use super::*;

    #[test]
    fn from_last_leaf_rebuilds_the_frontier_of_every_size() {
        //! A trusted start at any size: the last leaf's inclusion proof must
        //! give back exactly the writer's frontier, and a wrong leaf or proof
        //! hash must give another root.
        let hashes = leaves(300);
        let (store, _) = MemStore::build(&hashes);
        for size in 1..=300u64 {
            let (_, expected) = MemStore::build(&hashes[..size as usize]);
            let proof = crate::merkle::inclusion_proof(&store, size - 1, size).unwrap();
            let leaf = hashes[size as usize - 1];
            let rebuilt = Frontier::from_last_leaf(size, &leaf, &proof).unwrap();
            assert_eq!(rebuilt, expected, "size {size}");
            let wrong_leaf = Frontier::from_last_leaf(size, &[9; 32], &proof).unwrap();
            assert_ne!(wrong_leaf.root(), expected.root(), "size {size}");
            if let Some(first) = proof.first() {
                let mut bad = proof.clone();
                bad[0] = super::super::testutil::flip(first, 3);
                let rebuilt = Frontier::from_last_leaf(size, &leaf, &bad).unwrap();
                assert_ne!(rebuilt.root(), expected.root(), "size {size}");
                assert!(Frontier::from_last_leaf(size, &leaf, &proof[1..]).is_err());
            }
        }
        assert!(Frontier::from_last_leaf(0, &[0; 32], &[]).is_err());
    }

    #[test]
    fn root_matches_reference_and_store_after_every_push() {
        let hashes = leaves(300);
        let mut store = MemStore::default();
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), EMPTY_ROOT);
        for (n, leaf) in hashes.iter().enumerate() {
            frontier
                .push(*leaf, |level, index, hash| store.put(level, index, *hash))
                .unwrap();
            let size = n as u64 + 1;
            assert_eq!(frontier.size(), size);
            assert_eq!(frontier.hashes().len(), size.count_ones() as usize);
            assert_eq!(
                frontier.root(),
                reference_root(&hashes[..=n]),
                "size {size}"
            );
            assert_eq!(Frontier::from_store(&store, size).unwrap(), frontier);
        }
    }

    #[test]
    fn push_reports_each_completed_node_once_bottom_up() {
        let mut frontier = Frontier::new();
        let mut seen = Vec::new();
        for leaf in leaves(8) {
            frontier
                .push(leaf, |level, index, _| seen.push((level, index)))
                .unwrap();
        }
        let expected = [
            (0, 0),
            (0, 1),
            (1, 0),
            (0, 2),
            (0, 3),
            (1, 1),
            (2, 0),
            (0, 4),
            (0, 5),
            (1, 2),
            (0, 6),
            (0, 7),
            (1, 3),
            (2, 1),
            (3, 0),
        ];
        assert_eq!(seen, expected);
    }

    #[test]
    fn bytes_round_trip_and_bad_encodings_are_refused() {
        let mut frontier = Frontier::new();
        for leaf in leaves(13) {
            frontier.push(leaf, |_, _, _| {}).unwrap();
        }
        let bytes = frontier.to_bytes();
        assert_eq!(bytes.len(), 9 + 3 * 32);
        assert_eq!(Frontier::from_bytes(&bytes).unwrap(), frontier);
        assert_eq!(
            Frontier::from_bytes(&Frontier::new().to_bytes()).unwrap(),
            Frontier::new()
        );

        let mut bad_version = bytes.clone();
        bad_version[0] = 2;
        assert_eq!(
            Frontier::from_bytes(&bad_version),
            Err(MerkleError::UnsupportedFrontierVersion { found: 2 })
        );
        assert_eq!(
            Frontier::from_bytes(&bytes[..bytes.len() - 1]),
            Err(MerkleError::FrontierLength {
                size: 13,
                expected: bytes.len(),
                found: bytes.len() - 1
            })
        );
        assert!(matches!(
            Frontier::from_bytes(&bytes[..5]),
            Err(MerkleError::FrontierLength { found: 5, .. })
        ));
        assert_eq!(
            Frontier::from_parts(13, vec![[0; 32]; 2]),
            Err(MerkleError::FrontierHashCount {
                size: 13,
                expected: 3,
                found: 2
            })
        );
    }

    #[test]
    fn full_tree_is_refused_and_left_unchanged() {
        let mut frontier = Frontier::from_parts(u64::MAX, vec![[7; 32]; 64]).unwrap();
        let before = frontier.clone();
        assert_eq!(
            frontier.push([1; 32], |_, _, _| {}),
            Err(MerkleError::TreeFull)
        );
        assert_eq!(frontier, before);
    }

    #[test]
    fn from_store_names_the_missing_node() {
        let store = |level: u8, _index: u64| (level != 2).then_some([level; 32]);
        assert_eq!(
            Frontier::from_store(&store, 13),
            Err(MerkleError::MissingNode { level: 2, index: 2 })
        );
    }
}
