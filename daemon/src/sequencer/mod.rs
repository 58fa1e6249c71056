//! The sequencer: the single writer of the chain.
//!
//! * **Submitters** (the connection tasks) chain each append job onto the
//!   *open batch* as it arrives: under the open batch's lock they give each
//!   event the next seq and the previous entry hash, compute its entry hash
//!   and the Merkle nodes it completes ([`Batch::push`]). The record bodies
//!   are encoded before the lock is taken ([`AppendJob::new`]).
//! * The **commit thread** takes the whole open batch as soon as the previous
//!   commit is done, makes it durable (a small batch as one write to the ack
//!   journal, any other in one LMDB transaction) and only then acks each of
//!   its jobs. A submitter whose job is alone commits it itself. A batch that
//!   reaches the batch limits while a commit is running is sealed (queued)
//!   and the next opens behind it, so a slow commit does not stop intake
//!   until `max_jobs` jobs wait.
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
//! Files: `job.rs` (what goes in and comes out), `policy.rs` (the tuning),
//! `intake.rs` (the shared state and [`SequencerHandle::submit`]'s path into
//! it), `durable.rs` (journal or LMDB), `commit.rs` (the commit role, the
//! commit thread, the apply); [`Batch`] is `crate::batch`.
//!
//! # Protocol
//!
//! The one description of what the threads share; comments elsewhere point
//! here. The *role holder* is whoever holds the commit role: the commit
//! thread, or a submitter committing its own job.
//!
//! Locks, taken in this order (never `building` while holding `durable`):
//!
//! | lock | guards | taken by | held across a flush? |
//! |------|--------|----------|----------------------|
//! | 1. `building` (`Building`) | the open and sealed batches, the spares, and every flag below marked lock 1 | submitters in `Pipeline::offer` (chaining a job, sealing), the commit thread waiting in `next_work` (on the `filled` condvar), the role holder after a commit or apply, [`SequencerHandle::settle`], the last handle's drop, `CommitRole`'s and `Stopped`'s drops | no; except that the end of `apply` holds it while it waits for lock 2, which a submitter journaling its own job may hold for its write |
//! | 2. `durable` (`Durable`) | the ack journal and the batches it holds that the store does not (`journaled`), `other_busy` | the role holder, for the whole journal write or LMDB commit; the commit thread ending an apply after giving the role back | yes: that is what it is for |
//! | `ack_times` ([`AckTimes`]) | the exposure window | the role holder after each commit; the anchorer; status | a leaf, taken with neither lock held (its own table: `crate::exposure`) |
//!
//! The commit role is the `committing` flag. Only its holder commits or
//! applies. It is taken by the commit thread in `next_work` for each commit
//! and apply (and put down again there when it finds nothing to do), or by a
//! submitter in `offer` when its job is alone (role free, nothing sealed,
//! nothing open, no apply due) and goes to the journal. It is given back by
//! `CommitRole`'s drop after the commit; an apply that switches the
//! journal's regions gives it back *before* LMDB commits, so that submitters
//! journal into the other region meanwhile. The drop wakes the commit thread
//! only if it has work: a job in the open batch, a sealed batch, `closed`,
//! `apply_requested`, or an `apply_due` other than `apply_due_seen`.
//!
//! | flag | under | written by | read by | meaning |
//! |------|-------|------------|---------|---------|
//! | `committing` | lock 1 | see above | `offer`, `next_work` (waits while a submitter holds it) | the commit role is held |
//! | `closed` | lock 1 | the last [`SequencerHandle`]'s drop | `next_work`, the role's drop | commit what is open, apply the journal, stop |
//! | `stopped` | lock 1 | `Stopped`'s drop (the commit thread ended, even by a panic; every waiting job is failed) | `offer` | refuse new jobs ([`SubmitError::Stopped`]) |
//! | `apply_due` | lock 1 | a commit: set by a journal commit (now + `apply_after` if unset; now once a quarter of the region is used), cleared by an LMDB commit; `apply`: cleared at the switch, then re-set if batches were journaled meanwhile, now + 1 s after a failure | `next_work`, `offer`, the role's drop | when the journaled batches go to LMDB |
//! | `apply_requested` | lock 1 | set by `settle`, cleared by `apply` | `next_work`, `offer`, the role's drop | a reader waits for the journaled batches: apply now |
//! | `apply_due_seen` | lock 1 | `next_work`, before it waits (`None` while a submitter holds the role) | the role's drop | `apply_due` as the commit thread last saw it |
//! | `apply_full` | lock 1 | `apply` or a commit: set when it failed for lack of space, cleared when an apply or an LMDB commit succeeds | `settle` | the journaled batches cannot reach LMDB until space is freed: readers are told at once ([`SettleError::StorageFull`]) |
//! | `commit_waiting` | lock 1 | `next_work`: set before it waits on `filled`, cleared when it wakes | `offer` | signal `filled` for a new job only while the commit thread waits (a busy one looks at the open batch before it waits again) |
//! | `journal_used` | lock 1 | a commit, an apply | `offer` | the journal's bytes used, copied so that `offer` need not take lock 2 |
//! | `other_busy` | lock 2 | set by `Durable::switch`; cleared by a successful apply or LMDB commit | `apply` | the other region holds acked batches not in the store: do not switch again |
//! | `acked` | atomic, Release / Acquire | the role holder after a successful commit, before it answers the jobs | `settle` | size of the log as acked: journaled or in the store |
//! | readable head (`head_tx`) | `watch` channel | after every LMDB commit: a commit to the store, an apply, the stop's apply | [`SequencerHandle::head`]: readers, followers, status, the anchorer | the store's committed head |
//!
//! Wake-ups: `filled` (a condvar on lock 1) wakes the commit thread: a job
//! joined the open batch, `settle` asked for an apply, the role was given
//! back with work waiting, an apply ended, the last handle went. `drained`
//! (a `Notify`) wakes submitters waiting for room: a batch was taken or
//! failed, the commit thread stopped.
//!
//! `acked` and the readable head differ by the journaled batches not yet
//! applied: `acked >= head.size`. [`SequencerHandle::settle`] sets
//! `apply_requested` when the head is behind `acked` and waits until it is
//! not: a client reads what it was acked.

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
#[cfg(test)]
mod tests_content;

pub use crate::batch::{Batch, Head, Tip};
pub use durable::CommitError;
pub use job::{Ack, AppendError, AppendJob, FullCause, QueuedEvents, StorageCause, SubmitError};
pub use policy::{BatchPolicy, APPLY_AFTER};

use commit::{commit_loop, Stopped};
use intake::{lock, Pipeline};

/// How long a reader waits for acked events to become readable.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a reader waits for them while the last apply failed for lack of
/// space: the one apply it asks for (space may have been freed since).
const SETTLE_WHEN_FULL: Duration = Duration::from_secs(1);

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
    pub async fn settle(&self) -> Result<(), SettleError> {
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
    pub async fn settle(&self) -> Result<(), SettleError> {
        let pipeline = &self.submitter.pipeline;
        let acked = pipeline.acked.load(Ordering::Acquire);
        let mut head = self.head.clone();
        if head.borrow().size >= acked {
            return Ok(());
        }
        let full = {
            let mut building = lock(pipeline);
            building.apply_requested = true;
            building.apply_full.clone()
        };
        pipeline.filled.notify_one();
        let timeout = if full.is_some() {
            SETTLE_WHEN_FULL
        } else {
            SETTLE_TIMEOUT
        };
        let settled = tokio::time::timeout(timeout, async {
            head.wait_for(|head| head.size >= acked).await.map(|_| ())
        })
        .await;
        match settled {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(SettleError::Stopped),
            Err(_) => match lock(pipeline).apply_full.clone() {
                Some(cause) => Err(SettleError::StorageFull(cause)),
                None => Err(SettleError::TimedOut {
                    secs: timeout.as_secs(),
                }),
            },
        }
    }
}

/// Why acked events did not become readable ([`SequencerHandle::settle`]).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SettleError {
    #[error("the sequencer has stopped")]
    Stopped,
    #[error(
        "acknowledged events are not readable yet: committing them to the store took over {secs} s (see the daemon's log)"
    )]
    TimedOut { secs: u64 },
    /// The ack journal cannot be committed to the store for lack of space:
    /// what the store holds is readable, the journaled tail once space is freed.
    #[error("acknowledged events in the ack journal cannot be committed to the store yet: {0}")]
    StorageFull(Arc<CommitError>),
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
    let (pipeline, head_rx) = Pipeline::new(store, journal, policy.with_test_hooks())?;
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
