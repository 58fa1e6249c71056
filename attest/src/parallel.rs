//! Entry hashes of many records computed on every core: each record's hash
//! depends only on its own bytes, so the cost of a whole-log check (SHA-256
//! of every record) splits evenly across threads while the links are still
//! checked in order by the caller. Used by `tally verify` (`chain.rs`);
//! `tallyd check` (the daemon's `store/verify.rs`) takes its thread count
//! from [`threads`] and reads and hashes its chunks on its own workers.

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
    map(records, hashes, GENESIS_PREV, |record| {
        entry_hash(record.as_ref())
    });
}

/// Replaces `out` with `f` of each record, in order, computed on
/// [`threads`] scoped threads (on the calling thread for a short slice):
/// for callers that derive more than the hash from each record while its
/// bytes are in the cache.
pub fn map<R, T, F>(records: &[R], out: &mut Vec<T>, fill: T, f: F)
where
    R: Sync,
    T: Clone + Send,
    F: Fn(&R) -> T + Sync,
{
    out.clear();
    out.resize(records.len(), fill);
    let threads = threads();
    if threads < 2 || records.len() < PARALLEL_MIN {
        for (slot, record) in out.iter_mut().zip(records) {
            *slot = f(record);
        }
        return;
    }
    let per = records.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        for (slots, records) in out.chunks_mut(per).zip(records.chunks(per)) {
            scope.spawn(move || {
                for (slot, record) in slots.iter_mut().zip(records) {
                    *slot = f(record);
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
