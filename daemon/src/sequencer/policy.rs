//! The group commit's tuning and the thresholds derived from it.

use std::time::Duration;

/// Tuning of the group commit.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// The open batch is sealed once it holds this many events...
    pub max_events: usize,
    /// ...or this many record bytes.
    pub max_bytes: usize,
    /// Jobs waiting for the commit thread (open and sealed batches) before
    /// submitters wait.
    pub max_jobs: usize,
    /// The commit thread takes the open batch this long after its first job
    /// arrived (zero: as soon as it has one), or at once when it is full.
    pub linger: Duration,
    /// A batch of at most this many record bytes is committed to the ack
    /// journal (one flush) rather than to LMDB (two); 0: never.
    pub journal_max_bytes: usize,
    /// Journaled batches are committed to LMDB at the latest this long
    /// after the first of them was acked (sooner when a reader needs them,
    /// a large batch commits, or a quarter of the journal region is used).
    pub apply_after: Duration,
}

/// The default of [`BatchPolicy::apply_after`]: what a follower may lag
/// behind the acks of a trickle of small appends.
pub const APPLY_AFTER: Duration = Duration::from_millis(100);

/// Journaled batches are committed to LMDB once they take this many bytes
/// of the journal's region.
pub(super) const APPLY_AT_BYTES: usize = crate::journal::REGION / 4;
