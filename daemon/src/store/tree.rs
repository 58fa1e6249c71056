//! The `tree` database (the stored Merkle subtrees), the frontier (the
//! tree's right edge) and the proofs computed from them.

use tally_attest::entry_hash;
use tally_attest::merkle::{self, Frontier, MerkleError};
use tally_attest::Hash;

use crate::batch::STORED_MIN_LEVEL;

use super::{Store, StoreError};

/// Key of Merkle node `(level, index)`: the number of the last leaf it
/// covers (the leaf whose append completes it), big-endian, then its level.
/// Nodes are completed in exactly this order (leaf by leaf, bottom up), so
/// every insert lands at the end of the database and can use MDB_APPEND.
pub(super) fn tree_key(level: u8, index: u64) -> [u8; 9] {
    let last_leaf = (index.wrapping_add(1) << level).wrapping_sub(1);
    let mut key = [0u8; 9];
    key[..8].copy_from_slice(&last_leaf.to_be_bytes());
    key[8] = level;
    key
}

impl Store {
    /// The Merkle tree's right edge as of the last commit.
    pub(super) fn frontier(&self) -> std::sync::MutexGuard<'_, Frontier> {
        self.frontier
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `prove` with a Merkle node store over one read transaction:
    /// level 0 from the records' entry hashes, higher levels from `tree`.
    fn with_nodes<T>(
        &self,
        prove: impl FnOnce(&dyn merkle::NodeStore) -> Result<T, MerkleError>,
    ) -> Result<T, StoreError> {
        let _gate = self.read_gate();
        let rtxn = self.env.read_txn()?;
        let nodes = |level: u8, index: u64| -> Option<Hash> {
            if level < STORED_MIN_LEVEL {
                // Recomputed from at most 2^(STORED_MIN_LEVEL-1) records.
                let first = index.checked_shl(u32::from(level))?;
                let leaves: Option<Vec<Hash>> = (first..first + (1u64 << level))
                    .map(|seq| self.records.get(&rtxn, &seq).ok().flatten().map(entry_hash))
                    .collect();
                return Some(merkle::root_from_leaf_hashes(&leaves?));
            }
            let bytes = self
                .tree
                .get(&rtxn, &tree_key(level, index))
                .ok()
                .flatten()?;
            <[u8; 32]>::try_from(bytes).ok()
        };
        Ok(prove(&nodes)?)
    }

    /// The Merkle root of the first `size` records.
    pub fn root_at(&self, size: u64) -> Result<Hash, StoreError> {
        self.with_nodes(|nodes| merkle::root(nodes, size))
    }

    /// The inclusion proof of record `seq` in the tree of the first `size` records.
    pub fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        self.with_nodes(|nodes| merkle::inclusion_proof(nodes, seq, size))
    }

    /// The consistency proof from the tree of `old_size` records to `new_size`.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, StoreError> {
        self.with_nodes(|nodes| merkle::consistency_proof(nodes, old_size, new_size))
    }
}
