//! The state the submitters and the commit thread share ([`Pipeline`]), and
//! how a job enters it: [`Pipeline::offer`] chains it onto the open batch
//! (sealing a full one), and commits it at once when it is alone.
//! Who may touch which field when: the protocol table in `mod.rs`.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{watch, Notify};
use zeroize::Zeroize;

use super::durable::{CommitError, Durable};
use super::job::{Ack, AppendError, AppendJob, FullCause, StorageCause, SubmitError};
use super::policy::{BatchPolicy, APPLY_AT_BYTES};
use crate::batch::{Batch, Head};
use crate::exposure::AckTimes;
use crate::journal::Journal;
use crate::store::{seal, ContentKeys, Store, StoreError};

/// What the submitters and the commit thread share.
#[derive(Debug)]
pub(super) struct Pipeline {
    /// The open batch's lock (lock 1 of the protocol table).
    pub(super) building: Mutex<Building>,
    /// Signalled when the commit thread may have work: a job joined the open
    /// batch, the role was given back with work waiting, an apply was
    /// requested, the last handle went.
    pub(super) filled: Condvar,
    /// Signalled when a batch is taken (there is room again) or failed.
    pub(super) drained: Notify,
    pub(super) policy: BatchPolicy,
    pub(super) store: Arc<Store>,
    /// Where batches are made durable (lock 2 of the protocol table).
    pub(super) durable: Mutex<Durable>,
    /// Size of the log as acked (journaled or in the store).
    pub(super) acked: AtomicU64,
    /// When each batch not yet anchored was acked (status' exposure window).
    pub(super) ack_times: Arc<AckTimes>,
    /// Small batches go to the ack journal.
    pub(super) journal_enabled: bool,
    /// The readable head: the store's, sent after every LMDB commit.
    pub(super) head_tx: watch::Sender<Head>,
}

/// Guarded by [`Pipeline::building`]; each flag's writers and readers are in
/// the protocol table.
#[derive(Debug)]
pub(super) struct Building {
    /// The batch being built, on the state after the last sealed batch (or,
    /// if none, after the batch being committed).
    pub(super) open: Pending,
    /// Full batches waiting for the commit thread, oldest first, each built
    /// on the state after the one before: while a commit stalls (a slow
    /// fsync), appends keep being accepted up to `max_jobs` (and the queue
    /// byte budget), and each commit stays within the batch limits.
    pub(super) sealed: VecDeque<Pending>,
    /// Empty batches, reused.
    pub(super) spares: Vec<Pending>,
    /// Every handle is gone: commit what is open, then stop.
    pub(super) closed: bool,
    /// The commit thread has ended: nothing more will be taken.
    pub(super) stopped: bool,
    /// Journaled batches are due to be committed to LMDB at this time.
    pub(super) apply_due: Option<Instant>,
    /// A reader waits for the journaled batches.
    pub(super) apply_requested: bool,
    /// The commit role is held: nobody else may commit or apply.
    pub(super) committing: bool,
    /// Bytes of the ack journal's active region taken: a copy of
    /// `Durable`'s, so that a submitter deciding whether to commit its own
    /// job need not lock `durable` (which a commit may hold for a flush).
    pub(super) journal_used: usize,
    /// `apply_due` as the commit thread last saw it before it waited.
    pub(super) apply_due_seen: Option<Instant>,
    /// The commit thread waits on `filled`: a submitter whose job joins the
    /// open batch signals only then. (std's condvar makes a futex syscall
    /// per signal, waiter or not: with 1,000 one-event connections that was
    /// a syscall per append while the thread was busy committing.)
    pub(super) commit_waiting: bool,
    /// The last apply (or a commit carrying the journaled batches) failed
    /// for lack of space (disk, quota or map): a reader is told so within
    /// a second instead of waiting for the settle timeout.
    pub(super) apply_full: Option<Arc<CommitError>>,
}

impl Pipeline {
    /// A pipeline on the store's committed state, and a receiver of its
    /// readable head.
    pub(super) fn new(
        store: Arc<Store>,
        journal: Option<Journal>,
        policy: BatchPolicy,
    ) -> Result<(Pipeline, watch::Receiver<Head>), StoreError> {
        let batch = store.start_batch()?;
        let (head_tx, head_rx) = watch::channel(batch.head());
        let pipeline = Pipeline {
            building: Mutex::new(Building {
                open: Pending::new(batch.clone()),
                sealed: VecDeque::new(),
                spares: Vec::new(),
                closed: false,
                stopped: false,
                apply_due: None,
                apply_requested: false,
                committing: false,
                journal_used: 0,
                apply_due_seen: None,
                commit_waiting: false,
                apply_full: None,
            }),
            filled: Condvar::new(),
            drained: Notify::new(),
            policy,
            acked: AtomicU64::new(batch.head().size),
            ack_times: Arc::new(AckTimes::new(batch.head().size)),
            journal_enabled: journal.is_some() && policy.journal_max_bytes > 0,
            durable: Mutex::new(Durable {
                journal,
                journaled: batch,
                other_busy: false,
            }),
            store,
            head_tx,
        };
        Ok((pipeline, head_rx))
    }

    /// Adds the job to the open batch (sealing it first if it is full),
    /// unless `max_jobs` jobs are already waiting.
    pub(super) fn offer(&self, job: AppendJob) -> Result<(), SubmitError> {
        let mut building = lock(self);
        if building.stopped {
            return Err(SubmitError::Stopped(job));
        }
        if building.jobs_waiting() >= self.policy.max_jobs {
            return Err(SubmitError::Busy(job));
        }
        if building.open.is_full(&self.policy) {
            building.seal();
        }
        // Nothing else waits and nobody commits: this job is the whole next
        // batch, so the submitter commits it itself when it is journaled (one
        // flush; no hand-off to the commit thread and back, which costs a
        // lone client a fifth of its round trip).
        let alone = !building.committing
            && building.sealed.is_empty()
            && building.open.jobs.is_empty()
            && !building.apply_due_by(Instant::now());
        if let Err(error) = building.open.add(job, self.store.content_keys()) {
            tracing::error!(%error, "append refused");
            building.open.fail(&error);
        }
        if alone && self.journals(&building.open.batch, building.journal_used) {
            building.committing = true;
            let taken = self.take(&mut building);
            drop(building);
            self.commit_own(taken);
            return Ok(());
        }
        // The commit thread, if it is not waiting, looks at the open batch
        // (under this lock) before it waits again: no signal is lost.
        let wake = building.commit_waiting;
        drop(building);
        if wake {
            self.filled.notify_one();
        }
        Ok(())
    }

    /// Whether `batch` goes to the ack journal, which has `used` bytes
    /// taken, without an apply first.
    fn journals(&self, batch: &Batch, used: usize) -> bool {
        self.journal_enabled
            && batch.erased().is_empty()
            && batch.byte_len() + batch.sealed_len() <= self.policy.journal_max_bytes
            && used < APPLY_AT_BYTES
    }

    /// Takes the oldest sealed batch, or else the open one, to commit it.
    pub(super) fn take(&self, building: &mut Building) -> Pending {
        let taken = match building.sealed.pop_front() {
            Some(sealed) => sealed,
            None => building.replace_open(),
        };
        self.drained.notify_waiters();
        taken
    }
}

impl Building {
    /// Whether the journaled batches are to be applied by `now`.
    pub(super) fn apply_due_by(&self, now: Instant) -> bool {
        self.apply_requested || self.apply_due.is_some_and(|due| due <= now)
    }

    /// Jobs accepted and not yet taken by the commit thread.
    fn jobs_waiting(&self) -> usize {
        self.open.jobs.len()
            + self
                .sealed
                .iter()
                .map(|batch| batch.jobs.len())
                .sum::<usize>()
    }

    /// Queues the open batch for the commit thread and opens a new one on
    /// the state after it.
    pub(super) fn seal(&mut self) {
        let sealed = self.replace_open();
        self.sealed.push_back(sealed);
    }

    /// Opens a new batch on the state after the open one; returns the old.
    fn replace_open(&mut self) -> Pending {
        let after = self.open.batch.tip();
        let mut next = self
            .spares
            .pop()
            .unwrap_or_else(|| Pending::new(self.open.batch.clone()));
        next.batch.restart(after, self.open.batch.frontier());
        std::mem::replace(&mut self.open, next)
    }

    /// Fails every sealed batch and the open one (each is empty afterwards).
    pub(super) fn fail_all(&mut self, error: &AppendError) {
        while let Some(mut sealed) = self.sealed.pop_front() {
            sealed.fail(error);
            self.spares.push(sealed);
        }
        self.open.fail(error);
    }
}

/// A batch and the jobs whose events it holds, with their acks.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) batch: Batch,
    pub(super) jobs: Vec<AppendJob>,
    acks: Vec<Vec<Ack>>,
    /// When the first job arrived, for the linger.
    pub(super) since: Option<Instant>,
}

impl Pending {
    fn new(batch: Batch) -> Pending {
        Pending {
            batch,
            jobs: Vec::new(),
            acks: Vec::new(),
            since: None,
        }
    }

    pub(super) fn is_full(&self, policy: &BatchPolicy) -> bool {
        self.batch.len() >= policy.max_events || self.batch.byte_len() >= policy.max_bytes
    }

    /// Chains the job's records onto the batch, sealing each opening with
    /// its record's key (DESIGN 3b: the key needs the seq, so here, where
    /// the seq is given), or refuses the job (when the log cannot hold that
    /// many more records, or its keys cannot be read).
    fn add(&mut self, mut job: AppendJob, keys: &ContentKeys) -> Result<(), AppendError> {
        if !self.batch.has_room(job.len()) {
            let error = AppendError::Full(FullCause::LogAtMaximum);
            let _ = job.reply.send(Err(error));
            return Ok(());
        }
        let first = self.batch.tip().size;
        let count = job.len() as u64;
        // An erasure names only records before its own (DESIGN 3b): a range
        // past them would destroy keys of records not yet written.
        if let Some(end) = job
            .erased
            .as_ref()
            .and_then(|e| e.ranges().last().map(|r| r.1))
        {
            if end > first {
                let error = AppendError::Storage(StorageCause::ErasureBeyond { end, first });
                let _ = job.reply.send(Err(error));
                return Ok(());
            }
        }
        // The keys' slots are durable before any record sealed with them is
        // acked: `ensure` writes ahead (an fdatasync once per 65,536
        // records, here, under the open batch's lock: about 2 ms).
        let job_keys = keys.ensure(first + count).and_then(|()| match job.content {
            None => Ok(Vec::new()),
            Some(_) => keys.keys(first, count),
        });
        let job_keys = match job_keys {
            Ok(job_keys) if job_keys.iter().all(seal::is_live) => job_keys,
            Ok(_) => {
                let error = AppendError::Storage(StorageCause::KeyDestroyed { seq: first });
                let _ = job.reply.send(Err(error));
                return Ok(());
            }
            Err(err) => {
                tracing::error!(%err, "append refused: content keys");
                let error = AppendError::Storage(StorageCause::Keys(Arc::new(err)));
                let _ = job.reply.send(Err(error));
                return Ok(());
            }
        };
        let mut acks = Vec::with_capacity(job.len());
        let mut start = 0;
        let mut opening_start = 0;
        // The bodies are copied into the batch: freed here, not at the ack.
        let bodies = std::mem::take(&mut job.bodies);
        let mut content = job.content.take().unwrap_or_default();
        for (i, &end) in job.ends.iter().enumerate() {
            let body = &bodies[start..end];
            start = end;
            let opening_end = content.ends.get(i).copied().unwrap_or(opening_start);
            let opening = &content.openings[opening_start..opening_end];
            opening_start = opening_end;
            let received = job.receive_time_unix_nanos;
            match self
                .batch
                .push_received(received, |bytes| bytes.extend_from_slice(body))
            {
                Ok((seq, entry_hash)) => {
                    if let (false, Some(key)) = (opening.is_empty(), job_keys.get(i)) {
                        seal::apply(key, seq, self.batch.seal_last(opening));
                    }
                    acks.push(Ack { seq, entry_hash })
                }
                // Unreachable after `has_room`; if it were not, the batch
                // holds part of this job and none of it may be committed.
                Err(err) => {
                    let error = AppendError::Storage(StorageCause::Merkle(err));
                    let _ = job.reply.send(Err(error.clone()));
                    return Err(error);
                }
            }
        }
        // The openings in the clear are not kept in memory past their seal.
        content.openings.zeroize();
        if let Some(erased) = &job.erased {
            self.batch.erase(erased);
        }
        self.since.get_or_insert_with(Instant::now);
        self.jobs.push(job);
        self.acks.push(acks);
        Ok(())
    }

    /// Answers every job with its acks, but an erasure job with `error`
    /// (its records are committed; the keys of what it erased could not be
    /// destroyed, and the next start does it: DESIGN 3b).
    pub(super) fn succeed_but_erasures(&mut self, error: &AppendError) {
        for (job, acks) in self.jobs.drain(..).zip(self.acks.drain(..)) {
            let answer = if job.erased.is_none() {
                Ok(acks)
            } else {
                Err(error.clone())
            };
            let _ = job.reply.send(answer);
        }
        self.since = None;
    }

    /// Answers every job with its acks.
    pub(super) fn succeed(&mut self) {
        for (job, acks) in self.jobs.drain(..).zip(self.acks.drain(..)) {
            // A client that went away no longer waits for its ack; its
            // events are durable all the same.
            let _ = job.reply.send(Ok(acks));
        }
        self.since = None;
    }

    /// Answers every job with `error` and empties the batch onto the state it
    /// was built on.
    pub(super) fn fail(&mut self, error: &AppendError) {
        for job in self.jobs.drain(..) {
            let _ = job.reply.send(Err(error.clone()));
        }
        self.acks.clear();
        self.since = None;
        let (base, frontier) = self.batch.base();
        let frontier = frontier.clone();
        self.batch.restart(base, &frontier);
    }
}

/// Locks the open batch (lock 1).
pub(super) fn lock(pipeline: &Pipeline) -> MutexGuard<'_, Building> {
    pipeline
        .building
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Locks the durable state (lock 2): never while holding it, take lock 1.
pub(super) fn lock_durable(pipeline: &Pipeline) -> MutexGuard<'_, Durable> {
    pipeline
        .durable
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
