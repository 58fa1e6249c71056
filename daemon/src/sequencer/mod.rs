//! The sequencer: the single writer of the chain.
//!
//! * **Submitters** (the connection tasks) chain each append job onto the
//!   *open batch* as it arrives: under the open batch's lock they give each
//!   event the next seq and the previous entry hash, compute its entry hash
//!   and the Merkle nodes it completes ([`Batch::push`]). The record bodies
//!   are encoded before the lock is taken ([`AppendJob::new`]).
//! * The **commit thread** takes the whole open batch as soon as its previous
//!   commit is done, commits it (one transaction, one fsync) and only then
//!   acks each of its jobs. A batch that reaches the batch limits while a
//!   commit is running is sealed (queued) and the next opens behind it, so
//!   a slow commit does not stop intake until `max_jobs` jobs wait.
//!
//! So batch N+1 is built while batch N commits, a batch is whatever arrived
//! during the previous commit (group commit), and an event crosses one
//! thread boundary on its way in and one on its way out.
//!
//! Contract: an `Ok` ack means the events are durable and chained; an `Err`
//! means none of the job's events were stored. When a commit fails, the batch
//! built on top of it fails too, and building restarts from the committed
//! state.
//!
//! # Protocol
//!
//! The one description of what the threads share; the code's comments point
//! here. "Role holder": whoever holds the commit role (below).
//!
//! | what | kind | written by | read by | meaning |
//! |------|------|------------|---------|---------|
//! | `building` | lock 1 | submitters ([`Pipeline::offer`]: chain a job, seal), commit thread (`next_work`: take), role holder (after a commit or apply), [`SequencerHandle::settle`], last handle's drop | | guards [`Building`]: the open and sealed batches and every flag below but `acked` and `other_busy`. Held for hashing and bookkeeping, never across a flush |
//! | `durable` | lock 2 | the role holder only: the journal write or the LMDB commit happens under it; in an apply, released while the switched-out region is committed | | guards [`Durable`]: the ack journal and the batches it holds that the store does not (`journaled`). Order: lock 1 before lock 2, never 2 then 1 (only `apply` nests them) |
//! | `ack_times` | its own lock | role holder, after a commit | status | a leaf: taken with neither lock held |
//! | commit role (`committing`) | flag, lock 1 | set by the commit thread in `next_work` (for each commit and apply), or by a submitter in `offer` when its job is alone (nothing open or sealed, no apply due, role free) and is journaled; cleared by [`CommitRole`]'s drop | `offer`, `next_work` (waits while a submitter holds it) | only the holder commits or applies. Given back after the commit; an apply that switches regions gives it back *before* LMDB commits, so submitters journal into the other region meanwhile. The drop wakes the commit thread only if it has work (a job, a sealed batch, `closed`, `apply_requested`, or `apply_due` changed since `apply_due_seen`) |
//! | `closed` | flag, lock 1 | the last [`SequencerHandle`]'s drop | `next_work`, role drop | commit what is open, apply, stop |
//! | `stopped` | flag, lock 1 | `Stopped`'s drop (the commit thread ends, even by a panic; fails every waiting job) | `offer` | refuse new jobs ([`SubmitError::Stopped`]) |
//! | `apply_due` | flag, lock 1 | role holder: set at a journal commit (now + `apply_after` if unset; now once a quarter of the region is used), cleared by an LMDB commit and an apply (re-set if batches were journaled meanwhile; now + 1 s after a failure) | `next_work`, `offer`, role drop | when the journaled batches go to LMDB |
//! | `apply_requested` | flag, lock 1 | `settle` (sets); `apply` (clears) | `next_work`, `offer`, role drop | a reader waits for the journaled batches: apply now |
//! | `apply_due_seen` | flag, lock 1 | `next_work`, before it waits (`None` while a submitter holds the role) | role drop | `apply_due` as the commit thread last saw it |
//! | `journal_used` | flag, lock 1 | role holder, after a commit or apply | `offer` | copy of the journal's used bytes, so `offer` need not take lock 2 |
//! | `other_busy` | flag, lock 2 | `Durable::switch` (sets), a successful apply or LMDB commit (clears) | `apply` | the other region holds acked batches not in the store: do not switch again |
//! | `acked` | atomic (Release / Acquire) | role holder, after a successful commit, before the jobs are answered | `settle` | size of the log as acked: journaled or in the store |
//! | readable head (`head_tx`) | `watch` | role holder, after every LMDB commit (a large batch, an apply, the stop's apply) | [`SequencerHandle::head`], readers, followers, status, the anchorer | the store's committed head |
//!
//! `acked` and the readable head differ by the journaled batches not yet
//! applied: `acked >= head.size`. A reader calls
//! [`SequencerHandle::settle`], which sets `apply_requested` when the head
//! is behind `acked` and waits until it is not: a client reads what it was
//! acked.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::thread;
use std::time::Duration;

use tokio::sync::watch;

use crate::exposure::AckTimes;
use crate::journal::Journal;
use crate::store::{Store, StoreError};

mod commit;
mod durable;
mod intake;
mod job;
mod policy;
#[cfg(test)]
mod tests;

pub use crate::batch::{Batch, Head, Tip};
pub use durable::CommitError;
pub use job::{Ack, AppendError, AppendJob, FullCause, QueuedEvents, StorageCause, SubmitError};
pub use policy::{BatchPolicy, APPLY_AFTER};

#[cfg(doc)]
use commit::CommitRole;
use commit::{commit_loop, Stopped};
#[cfg(doc)]
use durable::Durable;
#[cfg(doc)]
use intake::Building;
use intake::{lock, Pipeline};

/// How long a reader waits for acked events to become readable.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Handle to the sequencer. When every clone is dropped, the commit thread
/// commits the open batch and stops.
#[derive(Debug, Clone)]
pub struct SequencerHandle {
    submitter: Arc<Submitter>,
    /// The readable head (see the protocol table): acked events in the ack
    /// journal are past it; a reader calls [`SequencerHandle::settle`] first
    /// to see them.
    pub head: watch::Receiver<Head>,
}

/// A handle that does not keep the sequencer running: the anchorer holds one, so
/// that dropping every [`SequencerHandle`] still stops the commit thread.
#[derive(Debug, Clone)]
pub struct WeakSequencer {
    submitter: Weak<Submitter>,
    /// The store's head, as [`SequencerHandle::head`] (also sent once more when the
    /// commit thread stops, after its last apply).
    pub head: watch::Receiver<Head>,
}

impl WeakSequencer {
    /// [`SequencerHandle::settle`] while the sequencer runs. Once it has stopped, its
    /// commit thread has applied the journal (or logged why not) and `head` is final:
    /// `Ok` without waiting.
    pub async fn settle(&self) -> Result<(), String> {
        let Some(submitter) = self.submitter.upgrade() else {
            return Ok(());
        };
        // Dropped at the end of this call: if every other handle went meanwhile, this
        // drop closes the pipeline, as the last handle's drop would have.
        SequencerHandle {
            submitter,
            head: self.head.clone(),
        }
        .settle()
        .await
    }
}

/// Closes the pipeline when the last handle goes.
#[derive(Debug)]
struct Submitter {
    pipeline: Arc<Pipeline>,
}

impl Drop for Submitter {
    fn drop(&mut self) {
        lock(&self.pipeline).closed = true;
        self.pipeline.filled.notify_one();
    }
}

impl SequencerHandle {
    /// Chains the job's events onto the open batch, waiting while `max_jobs`
    /// jobs are waiting for the commit thread.
    /// The job's answer comes on its reply channel once the batch commits.
    pub async fn submit(&self, mut job: AppendJob) -> Result<(), SubmitError> {
        let pipeline = &self.submitter.pipeline;
        loop {
            // Registered before the check, so a take between the check and
            // the wait is not missed.
            let drained = pipeline.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            job = match pipeline.offer(job) {
                Err(SubmitError::Busy(job)) => job,
                other => return other,
            };
            drained.await;
        }
    }

    /// A handle that does not keep the sequencer running.
    pub fn downgrade(&self) -> WeakSequencer {
        WeakSequencer {
            submitter: Arc::downgrade(&self.submitter),
            head: self.head.clone(),
        }
    }

    /// When the events not yet anchored were acked (the sequencer records every ack).
    pub fn ack_times(&self) -> Arc<AckTimes> {
        self.submitter.pipeline.ack_times.clone()
    }

    /// Like [`SequencerHandle::submit`], but never waits.
    pub fn try_submit(&self, job: AppendJob) -> Result<(), SubmitError> {
        self.submitter.pipeline.offer(job)
    }

    /// Waits until the store holds every event acked before the call (read
    /// your writes): journaled batches are committed to LMDB at once.
    pub async fn settle(&self) -> Result<(), String> {
        let pipeline = &self.submitter.pipeline;
        let acked = pipeline.acked.load(Ordering::Acquire);
        let mut head = self.head.clone();
        if head.borrow().size >= acked {
            return Ok(());
        }
        lock(pipeline).apply_requested = true;
        pipeline.filled.notify_one();
        let settled = tokio::time::timeout(SETTLE_TIMEOUT, async {
            head.wait_for(|head| head.size >= acked).await.map(|_| ())
        })
        .await;
        match settled {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("the sequencer has stopped".into()),
            Err(_) => Err(format!(
                "acknowledged events are not readable yet: committing them to the store took over {} s (see the daemon's log)",
                SETTLE_TIMEOUT.as_secs()
            )),
        }
    }
}

/// Why the sequencer could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the commit thread: {0}")]
    Spawn(std::io::Error),
}

/// Starts the sequencer's commit thread. The returned handle joins it; it
/// runs until every [`SequencerHandle`] clone is dropped and the open batch is
/// committed.
pub fn start(
    store: Arc<Store>,
    journal: Option<Journal>,
    policy: BatchPolicy,
) -> Result<(SequencerHandle, thread::JoinHandle<()>), StartError> {
    let (pipeline, head_rx) = Pipeline::new(store, journal, policy)?;
    let pipeline = Arc::new(pipeline);
    let committer = {
        let pipeline = pipeline.clone();
        thread::Builder::new()
            .name("tally-commit".into())
            .spawn(move || {
                let _stopped = Stopped(&pipeline);
                commit_loop(&pipeline);
            })
            .map_err(StartError::Spawn)?
    };
    Ok((
        SequencerHandle {
            submitter: Arc::new(Submitter { pipeline }),
            head: head_rx,
        },
        committer,
    ))
}
