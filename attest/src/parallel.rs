//! Entry hashes of many records computed on every core: each record's hash
//! depends only on its own bytes, so the cost of a whole-log check (SHA-256
//! of every record) splits evenly across threads while the links are still
//! checked in order by the caller. Shared by `tally verify` (`chain.rs`) and
//! `tallyd check` (the daemon's `store/verify.rs`).

use crate::record::{entry_hash, Hash, GENESIS_PREV};

/// Below this many records the hashes are computed on the calling thread
/// (a thread's start costs about as much as hashing a few hundred records).
pub const PARALLEL_MIN: usize = 1024;

/// At most this many hashing threads: past 8 the memory bandwidth, not
/// SHA-256, is the limit on the machines measured.
pub const MAX_THREADS: usize = 8;

/// The hashing threads this machine gets: its cores, at most [`MAX_THREADS`].
pub fn threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_THREADS)
}

/// Replaces `hashes` with the entry hash of each record, in order, computed
/// on [`threads`] scoped threads (on the calling thread for a short slice).
pub fn entry_hashes<R: AsRef<[u8]> + Sync>(records: &[R], hashes: &mut Vec<Hash>) {
    hashes.clear();
    hashes.resize(records.len(), GENESIS_PREV);
    let threads = threads();
    if threads < 2 || records.len() < PARALLEL_MIN {
        for (hash, record) in hashes.iter_mut().zip(records) {
            *hash = entry_hash(record.as_ref());
        }
        return;
    }
    let per = records.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (hashes, records) in hashes.chunks_mut(per).zip(records.chunks(per)) {
            scope.spawn(move || {
                for (hash, record) in hashes.iter_mut().zip(records) {
                    *hash = entry_hash(record.as_ref());
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_hashes_equal_the_sequential_ones_in_order() {
        //! Every length around the parallel threshold and the thread split:
        //! each hash lands at its own record's index.
        for n in [0, 1, PARALLEL_MIN - 1, PARALLEL_MIN, PARALLEL_MIN + 7, 5000] {
            let records: Vec<Vec<u8>> =
                (0..n).map(|i| format!("record {i}").into_bytes()).collect();
            let mut hashes = vec![[7u8; 32]; 3];
            entry_hashes(&records, &mut hashes);
            let expected: Vec<Hash> = records.iter().map(|r| entry_hash(r)).collect();
            assert_eq!(hashes, expected, "n = {n}");
        }
    }
}
