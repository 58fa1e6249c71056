//! The commit role and the commit thread: who commits a taken batch and
//! answers its jobs, when the journaled batches are applied to LMDB, and how
//! the thread stops. The rules (locks, role, flags) are the protocol table
//! in `mod.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::durable::{CommitError, Place};
use super::intake::{lock, lock_durable, Pending, Pipeline};
use super::job::{AppendError, FullCause, StorageCause};
use super::policy::APPLY_AT_BYTES;

/// The commit role, held while committing or applying; gives the role back
/// (and wakes the commit thread, which may have work waiting) when dropped,
/// even by a panic.
pub(super) struct CommitRole<'a>(pub(super) &'a Pipeline);

impl Drop for CommitRole<'_> {
    fn drop(&mut self) {
        let mut building = lock(self.0);
        building.committing = false;
        // A lone submitter commits its own job thousands of times a second:
        // the commit thread is woken only when it has something new to do.
        let wake = building.open.since.is_some()
            || !building.sealed.is_empty()
            || building.closed
            || building.apply_requested
            || building.apply_due != building.apply_due_seen;
        drop(building);
        if wake {
            self.0.filled.notify_one();
        }
    }
}

/// Marks the pipeline stopped when the commit thread ends, even by a panic,
/// so submitters get an error rather than wait for room forever.
pub(super) struct Stopped<'a>(pub(super) &'a Pipeline);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let mut building = lock(self.0);
        building.stopped = true;
        let error = AppendError::Storage(StorageCause::Stopped);
        building.fail_all(&error);
        drop(building);
        self.0.drained.notify_waiters();
    }
}

impl Pipeline {
    /// A submitter that took the commit role in [`Pipeline::offer`] commits
    /// its own batch, then gives the role back.
    pub(super) fn commit_own(&self, taken: Pending) {
        let _role = CommitRole(self);
        self.commit(taken);
    }

    /// Commits a taken batch and answers its jobs; on failure, fails the
    /// batch built on top of it too and restarts building from the committed
    /// state. The caller holds the commit role.
    pub(super) fn commit(&self, mut taken: Pending) {
        let committed = lock_durable(self).commit(&self.store, &taken.batch, &self.policy);
        match committed {
            Ok(place) => {
                self.acked.store(taken.batch.tip().size, Ordering::Release);
                self.ack_times.acked(
                    taken.batch.tip().size,
                    tally_client::clock::now_unix_nanos(),
                );
                if place == Place::Store {
                    self.head_tx.send_replace(taken.batch.head());
                }
                // DESIGN 3b, steps 3 and 4: after the erasure's commit,
                // destroy the keys, clear `shred_pending`, THEN answer.
                let shred = if taken.batch.erased().is_empty() {
                    Ok(())
                } else {
                    self.store.finish_shred()
                };
                match shred {
                    Ok(()) => taken.succeed(),
                    Err(err) => {
                        tracing::error!(%err, "erasure committed, but its content keys were not destroyed: shred_pending stays; the next start of tallyd destroys them");
                        let error = AppendError::Storage(StorageCause::Shred(Arc::new(err)));
                        taken.succeed_but_erasures(&error);
                    }
                }
                let mut building = lock(self);
                building.spares.push(taken);
                match place {
                    Place::Store => {
                        building.apply_due = None;
                        building.journal_used = 0;
                        building.apply_full = None;
                    }
                    Place::Journal { used } => {
                        building.journal_used = used;
                        let now = Instant::now();
                        let due = building
                            .apply_due
                            .get_or_insert(now + self.policy.apply_after);
                        if used >= APPLY_AT_BYTES {
                            *due = now;
                        }
                    }
                }
            }
            Err(err) => {
                let full = err.is_full();
                let events = taken.batch.len();
                let cause = Arc::new(err);
                let error = if full {
                    tracing::error!(err = %cause, events, "append refused: storage full");
                    AppendError::Full(FullCause::Commit(cause.clone()))
                } else {
                    tracing::error!(err = %cause, events, "append failed");
                    AppendError::Storage(StorageCause::Commit(cause.clone()))
                };
                // What was built since is chained onto the failed batch: it
                // fails too, and building restarts from the committed state.
                let mut building = lock(self);
                if full {
                    // The commit carried the journaled batches (or applied
                    // them to make room): they cannot reach LMDB either.
                    building.apply_full = Some(cause.clone());
                }
                taken.fail(&error);
                let (base, frontier) = taken.batch.base();
                building.fail_all(&error);
                building.open.batch.restart(base, frontier);
                building.spares.push(taken);
                drop(building);
                self.drained.notify_waiters();
            }
        }
    }

    /// Commits the journaled batches to LMDB; called holding the commit role.
    /// When the journal can switch to its other region, the role is given
    /// back while LMDB commits, so submitters keep journaling (and acking)
    /// meanwhile. On failure the batches stay journaled and acked, and the
    /// next try is in a second.
    pub(super) fn apply(&self, role: CommitRole<'_>) {
        let mut durable = lock_durable(self);
        let concurrent =
            !durable.journaled.is_empty() && !durable.other_busy && durable.journal.is_some();
        let applied = if concurrent {
            let applying = durable.switch();
            drop(durable);
            {
                let mut building = lock(self);
                building.journal_used = 0;
                building.apply_requested = false;
                building.apply_due = None;
            }
            drop(role);
            let applied = self.store.append(&applying);
            let mut durable = lock_durable(self);
            match applied {
                Ok(()) => {
                    durable.other_busy = false;
                    Ok(Some(applying.head()))
                }
                Err(err) => {
                    durable.restore(applying);
                    Err(err)
                }
            }
        } else {
            let applied = durable.apply(&self.store);
            drop(durable);
            let mut building = lock(self);
            building.apply_requested = false;
            if applied.as_ref().is_ok_and(Option::is_some) {
                building.journal_used = 0;
            }
            drop(building);
            drop(role);
            applied
        };
        // Under the open batch's lock, so that a submitter journaling now
        // either is counted here or schedules its own apply after.
        let mut building = lock(self);
        let pending = !lock_durable(self).journaled.is_empty();
        match applied {
            Ok(head) => {
                building.apply_full = None;
                if let Some(head) = head {
                    self.head_tx.send_replace(head);
                }
                // Batches journaled while LMDB committed are due in turn.
                if !pending {
                    building.apply_due = None;
                } else if building.apply_due.is_none() {
                    building.apply_due = Some(Instant::now() + self.policy.apply_after);
                }
            }
            Err(err) => {
                tracing::error!(%err, "committing journaled events to the store failed; they stay in the ack journal, retrying in 1 s");
                building.apply_due = Some(Instant::now() + Duration::from_secs(1));
                building.apply_full = err.is_full().then(|| Arc::new(CommitError::Store(err)));
            }
        }
        drop(building);
        self.filled.notify_one();
    }
}

/// The commit thread: commits the journaled batches to the store when they
/// are due; else takes the oldest sealed batch, or the open batch once it
/// has a job (and the linger has passed, or it is full), commits it,
/// answers its jobs. Once every handle is gone and the open batch is
/// committed, applies the journal and returns.
pub(super) fn commit_loop(pipeline: &Pipeline) {
    loop {
        let work = next_work(pipeline);
        let role = CommitRole(pipeline);
        match work {
            Work::Commit(taken) => pipeline.commit(taken),
            Work::Apply => pipeline.apply(role),
            Work::Stop => {
                match lock_durable(pipeline).apply(&pipeline.store) {
                    Ok(head) => {
                        // The final anchor (after the drain) reads the head here.
                        if let Some(head) = head {
                            pipeline.head_tx.send_replace(head);
                        }
                        tracing::debug!(
                            size = head.map(|head| head.size),
                            "sequencer stopped: every handle dropped, all committed"
                        )
                    }
                    Err(err) => tracing::error!(
                        %err,
                        "sequencer stopped with events in the ack journal: the next start commits them to the store"
                    ),
                }
                return;
            }
        }
    }
}

/// What the commit thread does next.
// Returned once per commit and consumed at once: boxing the batch would add
// an allocation per commit to save a move.
#[allow(clippy::large_enum_variant)]
enum Work {
    Commit(Pending),
    Apply,
    Stop,
}

/// Waits for the commit thread's next piece of work, and takes the commit
/// role for it.
fn next_work(pipeline: &Pipeline) -> Work {
    let policy = &pipeline.policy;
    let mut building = lock(pipeline);
    loop {
        if building.committing {
            // A submitter commits its own job; it wakes this thread after
            // if there is work, or any apply due (this wait has no timeout).
            building.apply_due_seen = None;
            building.commit_waiting = true;
            building = pipeline
                .filled
                .wait(building)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            building.commit_waiting = false;
            continue;
        }
        let now = Instant::now();
        building.committing = true;
        if building.apply_due_by(now) {
            return Work::Apply;
        }
        if !building.sealed.is_empty() {
            return Work::Commit(pipeline.take(&mut building));
        }
        let mut wait = building.apply_due.map(|due| due - now);
        match building.open.since {
            Some(since) => {
                let left = policy.linger.saturating_sub(since.elapsed());
                if building.closed || building.open.is_full(policy) || left.is_zero() {
                    return Work::Commit(pipeline.take(&mut building));
                }
                wait = Some(wait.map_or(left, |wait| wait.min(left)));
            }
            None if building.closed => return Work::Stop,
            None => {}
        }
        building.committing = false;
        building.apply_due_seen = building.apply_due;
        building.commit_waiting = true;
        building = match wait {
            Some(wait) => {
                pipeline
                    .filled
                    .wait_timeout(building, wait)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0
            }
            None => pipeline
                .filled
                .wait(building)
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        };
        building.commit_waiting = false;
    }
}
