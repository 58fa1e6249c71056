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

/// How long `TALLYD_HOLD_APPLY` holds the timed apply (debug builds only).
#[cfg(debug_assertions)]
const HELD_APPLY_AFTER: Duration = Duration::from_secs(3600);

impl BatchPolicy {
    /// Test hook, debug builds only: with `TALLYD_HOLD_APPLY=1` in the
    /// environment the timed apply waits an hour instead of
    /// [`APPLY_AFTER`], so journaled batches stay only in the ack journal
    /// until a reader, a large batch, a quarter-full region or the drain
    /// applies them. Lets a test kill the daemon with frames still in the
    /// journal on a machine whose flushes can stall past 100 ms.
    pub fn with_test_hooks(self) -> BatchPolicy {
        #[cfg(debug_assertions)]
        if std::env::var("TALLYD_HOLD_APPLY").is_ok_and(|hold| hold == "1") {
            return BatchPolicy {
                apply_after: HELD_APPLY_AFTER,
                ..self
            };
        }
        self
    }
}

/// Journaled batches are committed to LMDB once they take this many bytes
/// of the journal's region.
pub(super) const APPLY_AT_BYTES: usize = crate::journal::REGION / 4;
