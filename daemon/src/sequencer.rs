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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::{Duration, Instant};

use prost::Message;
use tally_client::proto::{Event, Peer, RecordBody};
use tokio::sync::{oneshot, watch, Notify, OwnedSemaphorePermit};

use crate::exposure::AckTimes;
use crate::journal::Journal;
use crate::store::{Batch, Head, Store, StoreError, Tip};
use tally_attest::merkle::Frontier;

/// One client request's worth of events, their record bodies encoded.
#[derive(Debug)]
pub struct AppendJob {
    /// The events' `RecordBody` encodings, concatenated...
    bodies: Vec<u8>,
    /// ...and where each ends.
    ends: Vec<usize>,
    reply: oneshot::Sender<Result<Vec<Ack>, AppendError>>,
    /// Queue-bytes budget held until the job is answered (backpressure).
    _permit: Option<OwnedSemaphorePermit>,
    /// Counted in status until the job is answered or dropped.
    _queued: QueuedEvents,
}

impl AppendJob {
    /// A job for `events`, received from `peer` at `receive_time_unix_nanos`
    /// in a frame of `bytes` bytes; its answer goes to `reply`. Encodes each
    /// event's record body (the part of the record that does not depend on
    /// its place in the chain).
    pub fn new(
        events: Vec<Event>,
        bytes: usize,
        peer: Peer,
        receive_time_unix_nanos: i64,
        reply: oneshot::Sender<Result<Vec<Ack>, AppendError>>,
        permit: Option<OwnedSemaphorePermit>,
        queued: QueuedEvents,
    ) -> AppendJob {
        let mut bodies = Vec::with_capacity(bytes + events.len() * 32);
        let mut ends = Vec::with_capacity(events.len());
        for event in events {
            let body = RecordBody {
                receive_time_unix_nanos,
                peer: Some(peer),
                event: Some(event),
            };
            // Encoding into a Vec cannot fail (it grows as needed).
            let _ = body.encode(&mut bodies);
            ends.push(bodies.len());
        }
        AppendJob {
            bodies,
            ends,
            reply,
            _permit: permit,
            _queued: queued,
        }
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// Counts events submitted to the sequencer and not yet answered. The count
/// is raised on creation and lowered on drop, so a job that is answered,
/// refused or abandoned with its connection is never counted forever.
#[derive(Debug)]
pub struct QueuedEvents {
    counter: Arc<AtomicU64>,
    events: u64,
}

impl QueuedEvents {
    pub fn new(counter: &Arc<AtomicU64>, events: u64) -> QueuedEvents {
        counter.fetch_add(events, Ordering::Relaxed);
        QueuedEvents {
            counter: counter.clone(),
            events,
        }
    }
}

impl Drop for QueuedEvents {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.events, Ordering::Relaxed);
    }
}

/// An event's place in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub seq: u64,
    pub entry_hash: [u8; 32],
}

/// Why an append was not stored. Nothing of the job was committed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    #[error("storage full: {0}")]
    Full(String),
    #[error("storage error: {0}")]
    Storage(String),
}

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
const APPLY_AT_BYTES: usize = crate::journal::REGION / 4;

/// How long a reader waits for acked events to become readable.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Handle to the sequencer. When every clone is dropped, the commit thread
/// commits the open batch and stops.
#[derive(Debug, Clone)]
pub struct SequencerHandle {
    submitter: Arc<Submitter>,
    /// The head of what the store holds (readable), updated after every
    /// LMDB commit. Acked events in the ack journal are past it; a reader
    /// calls [`SequencerHandle::settle`] first to see them.
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

/// Why a job was not taken; it is handed back, unanswered.
#[derive(Debug)]
pub enum SubmitError {
    /// `max_jobs` jobs are waiting (only from [`SequencerHandle::try_submit`]).
    Busy(AppendJob),
    /// The commit thread has stopped.
    Stopped(AppendJob),
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

/// Starts the sequencer's commit thread. The returned handle joins it; it
/// runs until every [`SequencerHandle`] clone is dropped and the open batch is
/// committed.
pub fn start(
    store: Arc<Store>,
    journal: Option<Journal>,
    policy: BatchPolicy,
) -> Result<(SequencerHandle, thread::JoinHandle<()>), StoreError> {
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
            .map_err(|err| {
                StoreError::Inconsistent(format!("cannot start the commit thread: {err}"))
            })?
    };
    Ok((
        SequencerHandle {
            submitter: Arc::new(Submitter { pipeline }),
            head: head_rx,
        },
        committer,
    ))
}

/// What the submitters and the commit thread share.
#[derive(Debug)]
struct Pipeline {
    building: Mutex<Building>,
    /// Signalled when the open batch gains a job or the last handle goes.
    filled: Condvar,
    /// Signalled when the open batch is taken (it has room again).
    drained: Notify,
    policy: BatchPolicy,
    store: Arc<Store>,
    /// Where batches are made durable; locked by whoever holds the commit
    /// role, and by the commit thread after an apply. Lock order: `building`
    /// before `durable`, never the other way round.
    durable: Mutex<Durable>,
    /// Size of the log as acked (journaled or in the store).
    acked: AtomicU64,
    /// When each batch not yet anchored was acked (status' exposure window).
    ack_times: Arc<AckTimes>,
    /// Small batches go to the ack journal.
    journal_enabled: bool,
    /// The store's head, sent after every LMDB commit.
    head_tx: watch::Sender<Head>,
}

#[derive(Debug)]
struct Building {
    /// The batch being built, on the state after the last sealed batch (or,
    /// if none, after the batch being committed).
    open: Pending,
    /// Full batches waiting for the commit thread, oldest first, each built
    /// on the state after the one before: while a commit stalls (a slow
    /// fsync), appends keep being accepted up to `max_jobs` (and the queue
    /// byte budget), and each commit stays within the batch limits.
    sealed: VecDeque<Pending>,
    /// Empty batches, reused.
    spares: Vec<Pending>,
    /// Every handle is gone: commit what is open, then stop.
    closed: bool,
    /// The commit thread has ended: nothing more will be taken.
    stopped: bool,
    /// Journaled batches are due to be committed to LMDB at this time.
    apply_due: Option<Instant>,
    /// A reader waits for the journaled batches ([`SequencerHandle::settle`]).
    apply_requested: bool,
    /// Someone (the commit thread, or a submitter committing its own job)
    /// is committing or applying: nobody else may until it is done.
    committing: bool,
    /// Bytes of the ack journal's active region taken: a copy of
    /// `Durable`'s, kept here so a submitter deciding whether to commit its
    /// own job need not lock `durable` (which a commit may hold for a flush).
    journal_used: usize,
    /// `apply_due` as the commit thread last saw it before it waited.
    apply_due_seen: Option<Instant>,
}

impl Building {
    /// Whether the journaled batches are to be applied by `now`.
    fn apply_due_by(&self, now: Instant) -> bool {
        self.apply_requested || self.apply_due.is_some_and(|due| due <= now)
    }
}

/// Held while committing or applying; gives the role back (and wakes the
/// commit thread, which may have work waiting) when dropped, even by a
/// panic.
struct CommitRole<'a>(&'a Pipeline);

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
struct Stopped<'a>(&'a Pipeline);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let mut building = lock(self.0);
        building.stopped = true;
        let error = AppendError::Storage("the sequencer has stopped".into());
        building.fail_all(&error);
        drop(building);
        self.0.drained.notify_waiters();
    }
}

impl Pipeline {
    /// A pipeline on the store's committed state, and a receiver of its
    /// committed head.
    fn new(
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
    fn offer(&self, job: AppendJob) -> Result<(), SubmitError> {
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
        if let Err(error) = building.open.add(job) {
            tracing::error!(%error, "append refused");
            building.open.fail(&error);
        }
        if alone && self.journals(&building.open.batch, building.journal_used) {
            building.committing = true;
            let taken = self.take(&mut building);
            drop(building);
            let _role = CommitRole(self);
            self.commit(taken);
            return Ok(());
        }
        drop(building);
        self.filled.notify_one();
        Ok(())
    }

    /// Whether `batch` goes to the ack journal, which has `used` bytes
    /// taken, without an apply first.
    fn journals(&self, batch: &Batch, used: usize) -> bool {
        self.journal_enabled
            && batch.byte_len() <= self.policy.journal_max_bytes
            && used < APPLY_AT_BYTES
    }

    /// Takes the oldest sealed batch, or else the open one, to commit it.
    fn take(&self, building: &mut Building) -> Pending {
        let taken = match building.sealed.pop_front() {
            Some(sealed) => sealed,
            None => building.replace_open(),
        };
        self.drained.notify_waiters();
        taken
    }

    /// Commits a taken batch and answers its jobs; on failure, fails the
    /// batch built on top of it too and restarts building from the committed
    /// state.
    fn commit(&self, mut taken: Pending) {
        let committed = lock_durable(self).commit(&self.store, &taken.batch, &self.policy);
        match committed {
            Ok(place) => {
                self.acked.store(taken.batch.tip().size, Ordering::Release);
                self.ack_times
                    .acked(taken.batch.tip().size, crate::exposure::now_unix_nanos());
                if place == Place::Store {
                    self.head_tx.send_replace(taken.batch.head());
                }
                taken.succeed();
                let mut building = lock(self);
                building.spares.push(taken);
                match place {
                    Place::Store => {
                        building.apply_due = None;
                        building.journal_used = 0;
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
                let error = if err.is_full() {
                    tracing::error!(%err, events = taken.batch.len(), "append refused: storage full");
                    AppendError::Full(err.to_string())
                } else {
                    tracing::error!(%err, events = taken.batch.len(), "append failed");
                    AppendError::Storage(err.to_string())
                };
                // What was built since is chained onto the failed batch: it
                // fails too, and building restarts from the committed state.
                let mut building = lock(self);
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

    /// Commits the journaled batches to LMDB. The commit thread calls this
    /// holding the commit role, and gives the role back while LMDB commits
    /// when it can switch the journal to its other region: submitters then
    /// keep journaling (and acking) meanwhile. On failure the batches stay
    /// journaled and acked, and the next try is in a second.
    fn apply(&self, role: CommitRole<'_>) {
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
            }
        }
        drop(building);
        self.filled.notify_one();
    }
}

/// Where a batch was made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// In the store: readable now.
    Store,
    /// In the ack journal, which now has `used` bytes taken; in the store
    /// after the next apply.
    Journal { used: usize },
}

/// The ack journal and what it holds that the store does not.
#[derive(Debug)]
struct Durable {
    journal: Option<Journal>,
    /// The batches in the journal's active region not yet in the store, as
    /// one batch (empty when there are none) on the state after the store's
    /// head and after the batch being applied, if one is.
    journaled: Batch,
    /// The journal's other region holds acked batches not yet in the store:
    /// they are being applied, or their apply failed (and then `journaled`
    /// holds them again, and the next apply does not switch).
    other_busy: bool,
}

impl Durable {
    /// Makes `batch` durable: a small one in the journal (one flush), when
    /// there is one; any other in the store, in one transaction with the
    /// journaled batches before it.
    fn commit(
        &mut self,
        store: &Store,
        batch: &Batch,
        policy: &BatchPolicy,
    ) -> Result<Place, StoreError> {
        if batch.byte_len() <= policy.journal_max_bytes {
            if let Some(journal) = &self.journal {
                if batch.base().0 != self.journaled.tip() {
                    return Err(StoreError::Inconsistent(
                        "a batch does not follow the journaled ones".into(),
                    ));
                }
                if !journal.fits(batch) {
                    self.apply(store)?;
                }
                if let Some(journal) = self.journal.as_mut().filter(|journal| journal.fits(batch)) {
                    journal.append(batch).map_err(StoreError::Journal)?;
                    let used = journal.used();
                    self.journaled.absorb(batch)?;
                    return Ok(Place::Journal { used });
                }
            }
        }
        if self.journaled.is_empty() {
            store.append(batch)?;
        } else {
            store.append_all(&[&self.journaled, batch])?;
        }
        self.cleared(batch.tip(), batch.frontier());
        Ok(Place::Store)
    }

    /// Switches the journal to its other region and returns the batches
    /// journaled so far, to be applied while new ones go there.
    fn switch(&mut self) -> Batch {
        let next = Batch::new(self.journaled.tip(), self.journaled.frontier().clone());
        if let Some(journal) = &mut self.journal {
            journal.switch();
        }
        self.other_busy = true;
        std::mem::replace(&mut self.journaled, next)
    }

    /// Takes back batches whose apply failed: they precede the ones
    /// journaled since, and the other region stays busy.
    fn restore(&mut self, mut failed: Batch) {
        match failed.absorb(&self.journaled) {
            Ok(()) => self.journaled = failed,
            // `journaled` was started on `failed`'s head and only grown.
            Err(err) => tracing::error!(%err, "ack journal bookkeeping is inconsistent"),
        }
    }

    /// Commits the journaled batches to the store and empties the journal.
    /// Returns the store's new head, or `None` when nothing was journaled.
    fn apply(&mut self, store: &Store) -> Result<Option<Head>, StoreError> {
        if self.journaled.is_empty() {
            return Ok(None);
        }
        store.append(&self.journaled)?;
        let head = self.journaled.head();
        let frontier = self.journaled.frontier().clone();
        self.cleared(head.into(), &frontier);
        Ok(Some(head))
    }

    /// The store holds everything up to `head`: the journal starts over.
    fn cleared(&mut self, head: Tip, frontier: &Frontier) {
        self.journaled.restart(head, frontier);
        self.other_busy = false;
        if let Some(journal) = &mut self.journal {
            journal.clear();
        }
    }
}

fn lock_durable(pipeline: &Pipeline) -> MutexGuard<'_, Durable> {
    pipeline
        .durable
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Building {
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
    fn seal(&mut self) {
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
    fn fail_all(&mut self, error: &AppendError) {
        while let Some(mut sealed) = self.sealed.pop_front() {
            sealed.fail(error);
            self.spares.push(sealed);
        }
        self.open.fail(error);
    }
}

/// A batch and the jobs whose events it holds, with their acks.
#[derive(Debug)]
struct Pending {
    batch: Batch,
    jobs: Vec<AppendJob>,
    acks: Vec<Vec<Ack>>,
    /// When the first job arrived, for the linger.
    since: Option<Instant>,
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

    fn is_full(&self, policy: &BatchPolicy) -> bool {
        self.batch.len() >= policy.max_events || self.batch.byte_len() >= policy.max_bytes
    }

    /// Chains the job's records onto the batch, or refuses the job (when
    /// the log cannot hold that many more records).
    fn add(&mut self, mut job: AppendJob) -> Result<(), AppendError> {
        if !self.batch.has_room(job.len()) {
            let error = AppendError::Full("the log cannot hold more records".into());
            let _ = job.reply.send(Err(error));
            return Ok(());
        }
        let mut acks = Vec::with_capacity(job.len());
        let mut start = 0;
        // The bodies are copied into the batch: freed here, not at the ack.
        let bodies = std::mem::take(&mut job.bodies);
        for &end in &job.ends {
            let body = &bodies[start..end];
            start = end;
            match self.batch.push(|bytes| bytes.extend_from_slice(body)) {
                Ok((seq, entry_hash)) => acks.push(Ack { seq, entry_hash }),
                // Unreachable after `has_room`; if it were not, the batch
                // holds part of this job and none of it may be committed.
                Err(err) => {
                    let error = AppendError::Storage(err.to_string());
                    let _ = job.reply.send(Err(error.clone()));
                    return Err(error);
                }
            }
        }
        self.since.get_or_insert_with(Instant::now);
        self.jobs.push(job);
        self.acks.push(acks);
        Ok(())
    }

    /// Answers every job with its acks.
    fn succeed(&mut self) {
        for (job, acks) in self.jobs.drain(..).zip(self.acks.drain(..)) {
            // A client that went away no longer waits for its ack; its
            // events are durable all the same.
            let _ = job.reply.send(Ok(acks));
        }
        self.since = None;
    }

    /// Answers every job with `error` and empties the batch onto the state it
    /// was built on.
    fn fail(&mut self, error: &AppendError) {
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

fn lock(pipeline: &Pipeline) -> MutexGuard<'_, Building> {
    pipeline
        .building
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The commit thread: commits the journaled batches to the store when they
/// are due; else takes the oldest sealed batch, or the open batch once it
/// has a job (and the linger has passed, or it is full), commits it,
/// answers its jobs.
fn commit_loop(pipeline: &Pipeline) {
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

/// Waits for the commit thread's next piece of work.
fn next_work(pipeline: &Pipeline) -> Work {
    let policy = &pipeline.policy;
    let mut building = lock(pipeline);
    loop {
        if building.committing {
            // A submitter commits its own job; it wakes this thread after
            // if there is work, or any apply due (this wait has no timeout).
            building.apply_due_seen = None;
            building = pipeline
                .filled
                .wait(building)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MapSizing;
    use tally_client::proto::{peer, UnixPeer};

    type Answer = oneshot::Receiver<Result<Vec<Ack>, AppendError>>;

    fn job(count: usize, payload: usize, counter: &Arc<AtomicU64>) -> (AppendJob, Answer) {
        let (reply, answer) = oneshot::channel();
        let events = (0..count)
            .map(|i| Event {
                kind: "test".into(),
                subject: format!("event-{i}"),
                payload: vec![b'x'; payload],
                ..Default::default()
            })
            .collect();
        let peer = Peer {
            kind: Some(peer::Kind::Unix(UnixPeer {
                uid: 1,
                gid: 1,
                pid: 1,
            })),
        };
        let queued = QueuedEvents::new(counter, count as u64);
        let job = AppendJob::new(events, count * payload, peer, 1, reply, None, queued);
        (job, answer)
    }

    /// A store in a temporary directory whose map never grows past `max`.
    fn store(max: usize) -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let sizing = MapSizing {
            initial: 1 << 20,
            max,
        };
        let store = Arc::new(Store::open(dir.path(), sizing).unwrap());
        (dir, store)
    }

    fn policy(max_events: usize) -> BatchPolicy {
        BatchPolicy {
            max_events,
            max_bytes: 64 << 20,
            max_jobs: 16,
            linger: Duration::ZERO,
            journal_max_bytes: 0,
            // Tests apply by hand.
            apply_after: Duration::from_secs(3600),
        }
    }

    /// The job's answer; fails the test (rather than hanging it) when none
    /// comes within 10 s.
    fn answered(answer: Answer) -> Result<Vec<Ack>, AppendError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), answer).await })
            .expect("no answer within 10 s")
            .expect("the job was dropped unanswered")
    }

    /// Submits from a plain thread.
    fn submit(handle: &SequencerHandle, job: AppendJob) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(handle.submit(job)).unwrap();
    }

    /// Every `Ok` ack is in the store with its entry hash, the acked seqs are
    /// exactly 0..size, and the chain verifies to the sequencer's head.
    fn check(store: &Store, head: Head, acked: &[Ack]) {
        let mut seqs: Vec<u64> = acked.iter().map(|ack| ack.seq).collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (0..head.size).collect::<Vec<_>>(),
            "acked seqs are dense"
        );
        let records = store.read(0, usize::MAX, usize::MAX).unwrap();
        for ack in acked {
            let record = &records[ack.seq as usize];
            assert_eq!(tally_attest::entry_hash(&record.bytes), ack.entry_hash);
        }
        assert_eq!(store.verify().unwrap(), head);
        assert_eq!(store.head().unwrap(), head);
    }

    /// Four threads each submit 40 jobs of 1-7 events, one at a time, and
    /// call `after_ack` with each job's acks; returns every ack.
    fn submit_from_four_threads(
        handle: &SequencerHandle,
        counter: &Arc<AtomicU64>,
        after_ack: impl Fn(&SequencerHandle, &[Ack]) + Clone + Send + 'static,
    ) -> Vec<Ack> {
        let senders: Vec<_> = (0..4)
            .map(|_| {
                let handle = handle.clone();
                let counter = counter.clone();
                let after_ack = after_ack.clone();
                thread::spawn(move || {
                    let mut acked = Vec::new();
                    for size in (1..=40).map(|i| i % 7 + 1) {
                        let (job, answer) = job(size, 100, &counter);
                        submit(&handle, job);
                        let acks = answered(answer).unwrap();
                        after_ack(&handle, &acks);
                        acked.extend(acks);
                    }
                    acked
                })
            })
            .collect();
        senders
            .into_iter()
            .flat_map(|sender| sender.join().unwrap())
            .collect()
    }

    #[test]
    fn concurrent_jobs_are_chained_densely_and_acked_with_their_entry_hashes() {
        let (_dir, store) = store(1 << 30);
        let (handle, thread) = start(store.clone(), None, policy(64)).unwrap();
        let counter = Arc::new(AtomicU64::new(0));
        let acked = submit_from_four_threads(&handle, &counter, |_, _| {});
        let head = *handle.head.borrow();
        drop(handle);
        thread.join().unwrap();
        assert_eq!(counter.load(Ordering::Relaxed), 0, "every job was answered");
        check(&store, head, &acked);
    }

    #[test]
    fn a_failed_commit_fails_what_was_built_on_it_and_building_restarts_from_the_committed_state() {
        // A map that cannot grow past 2 MiB: a 100 KiB job is refused as
        // "full" well before a one-event job is.
        let (_dir, store) = store(2 << 20);
        // Driven by hand, without the commit thread.
        let (pipeline, head) = Pipeline::new(store.clone(), None, policy(10_000)).unwrap();
        let counter = Arc::new(AtomicU64::new(0));
        let offer = |count, payload| {
            let (job, answer) = job(count, payload, &counter);
            pipeline.offer(job).unwrap();
            answer
        };
        let commit_open = || {
            let taken = pipeline.take(&mut lock(&pipeline));
            pipeline.commit(taken);
        };
        let mut acked = Vec::new();
        // Fill the map until a big job is refused; a small job is built onto
        // each big one while the big one commits.
        // Two small jobs: one in a sealed batch, one in the open batch.
        let (big_error, small_errors) = loop {
            let big = offer(25, 4096);
            let taken = pipeline.take(&mut lock(&pipeline));
            let sealed = offer(1, 10);
            lock(&pipeline).seal();
            let open = offer(1, 10);
            pipeline.commit(taken);
            match answered(big) {
                Ok(acks) => {
                    acked.extend(acks);
                    commit_open();
                    commit_open();
                    acked.extend(answered(sealed).unwrap());
                    acked.extend(answered(open).unwrap());
                }
                Err(error) => {
                    let small = [sealed, open].map(answered);
                    break (error, small);
                }
            }
        };
        assert!(matches!(big_error, AppendError::Full(_)), "{big_error}");
        for small_error in small_errors {
            assert!(
                matches!(small_error, Err(AppendError::Full(_))),
                "a job built onto the refused batch fails with it: {small_error:?}"
            );
        }
        assert!(lock(&pipeline).sealed.is_empty());
        // Alone, a small job fits: it is chained onto the committed state,
        // not onto the refused batch.
        let small = offer(1, 10);
        commit_open();
        let acks = answered(small).unwrap();
        assert_eq!(acks[0].seq + 1, store.head().unwrap().size);
        acked.extend(acks);
        assert_eq!(counter.load(Ordering::Relaxed), 0, "every job was answered");
        check(&store, *head.borrow(), &acked);
    }

    #[test]
    fn while_a_commit_is_pending_full_batches_are_sealed_and_queued_up_to_max_jobs() {
        let (_dir, store) = store(1 << 30);
        let policy = BatchPolicy {
            max_events: 4,
            max_jobs: 6,
            ..policy(4)
        };
        let (pipeline, head) = Pipeline::new(store.clone(), None, policy).unwrap();
        let counter = Arc::new(AtomicU64::new(0));
        // Jobs of 2 events: a batch is full after 2 jobs.
        let answers: Vec<Answer> = (0..6)
            .map(|_| {
                let (job, answer) = job(2, 10, &counter);
                pipeline.offer(job).unwrap();
                answer
            })
            .collect();
        assert_eq!(lock(&pipeline).sealed.len(), 2, "two full batches sealed");
        let (seventh, _) = job(1, 10, &counter);
        assert!(
            matches!(pipeline.offer(seventh), Err(SubmitError::Busy(_))),
            "max_jobs waiting"
        );
        for _ in 0..3 {
            let taken = pipeline.take(&mut lock(&pipeline));
            assert_eq!(taken.batch.len(), 4, "each commit is one batch");
            pipeline.commit(taken);
        }
        let acked: Vec<Ack> = answers
            .into_iter()
            .flat_map(|answer| answered(answer).unwrap())
            .collect();
        check(&store, *head.borrow(), &acked);
    }

    /// A policy that journals batches of up to 16 KiB.
    fn journaling(max_events: usize) -> BatchPolicy {
        BatchPolicy {
            journal_max_bytes: 16 << 10,
            ..policy(max_events)
        }
    }

    fn journal(dir: &tempfile::TempDir, store: &Store) -> Journal {
        let (journal, replayed) = Journal::recover(dir.path(), store).unwrap();
        assert_eq!(replayed, 0);
        journal
    }

    /// A pipeline with the journal, on a fresh store whose map stops at
    /// `max`, driven by hand (no commit thread).
    fn journaled_pipeline(
        max: usize,
    ) -> (
        tempfile::TempDir,
        Arc<Store>,
        Pipeline,
        watch::Receiver<Head>,
    ) {
        let (dir, store) = store(max);
        let journal = journal(&dir, &store);
        let (pipeline, head) = Pipeline::new(store.clone(), Some(journal), journaling(64)).unwrap();
        (dir, store, pipeline, head)
    }

    /// What the commit thread does when an apply is due.
    fn apply_now(pipeline: &Pipeline) {
        lock(pipeline).committing = true;
        pipeline.apply(CommitRole(pipeline));
    }

    #[test]
    fn a_lone_job_is_journaled_and_acked_by_its_submitter_and_readable_after_the_apply() {
        // No commit thread: a job nobody else competes with is committed by
        // the submitting call itself.
        let (_dir, store, pipeline, head) = journaled_pipeline(1 << 30);
        let counter = Arc::new(AtomicU64::new(0));
        let mut acked = Vec::new();
        for _ in 0..3 {
            let (job, mut answer) = job(2, 100, &counter);
            pipeline.offer(job).unwrap();
            let acks = answer.try_recv().expect("answered before offer returned");
            acked.extend(acks.unwrap());
        }
        assert_eq!(pipeline.acked.load(Ordering::Acquire), 6);
        assert_eq!(store.head().unwrap().size, 0, "journaled, not yet in LMDB");
        assert_eq!(head.borrow().size, 0, "readers see the store's head");
        assert!(lock(&pipeline).apply_due.is_some(), "an apply is scheduled");
        apply_now(&pipeline);
        assert_eq!(head.borrow().size, 6);
        assert!(lock(&pipeline).apply_due.is_none());
        check(&store, *head.borrow(), &acked);
    }

    #[test]
    fn journaled_acks_survive_a_crash_before_the_apply() {
        let (dir, store, pipeline, _) = journaled_pipeline(1 << 30);
        let counter = Arc::new(AtomicU64::new(0));
        let mut acked = Vec::new();
        // Some applied, some only journaled (in both regions) at the "crash".
        for round in 0..9 {
            let (job, answer) = job(round % 3 + 1, 100, &counter);
            pipeline.offer(job).unwrap();
            acked.extend(answered(answer).unwrap());
            if round % 4 == 1 {
                apply_now(&pipeline);
            }
        }
        let in_store = store.head().unwrap().size;
        assert!(in_store > 0 && in_store < acked.len() as u64, "{in_store}");
        // The crash: no apply, no stop; the pipeline and journal just go.
        drop(pipeline);
        let (_, replayed) = Journal::recover(dir.path(), &store).unwrap();
        assert_eq!(replayed, acked.len() as u64 - in_store);
        check(&store, store.head().unwrap(), &acked);
    }

    #[test]
    fn a_failed_apply_keeps_acked_events_in_the_journal() {
        // A map that cannot grow past 2 MiB; 10 KiB jobs are journaled.
        let (dir, store, pipeline, head) = journaled_pipeline(2 << 20);
        let counter = Arc::new(AtomicU64::new(0));
        let mut acked = Vec::new();
        let offer = |acked: &mut Vec<Ack>| {
            let (job, answer) = job(10, 1000, &counter);
            pipeline.offer(job).unwrap();
            acked.extend(answered(answer).unwrap());
        };
        loop {
            for _ in 0..20 {
                offer(&mut acked);
            }
            apply_now(&pipeline);
            if head.borrow().size < acked.len() as u64 {
                break; // the apply failed: storage full
            }
            assert!(acked.len() < 10_000, "the map never filled");
        }
        assert!(lock(&pipeline).apply_due.is_some(), "a retry is scheduled");
        // Acks go on from the journal meanwhile.
        for _ in 0..3 {
            offer(&mut acked);
        }
        drop(pipeline);
        drop(store);
        // With room again, every acked event is replayed.
        let sizing = MapSizing {
            initial: 1 << 20,
            max: 1 << 30,
        };
        let store = Store::open(dir.path(), sizing).unwrap();
        let (_, replayed) = Journal::recover(dir.path(), &store).unwrap();
        assert!(replayed > 20, "{replayed}");
        check(&store, store.head().unwrap(), &acked);
    }

    #[test]
    fn with_the_journal_concurrent_jobs_are_dense_and_settle_makes_them_readable() {
        let (dir, store) = store(1 << 30);
        let journal = journal(&dir, &store);
        let (handle, thread) = start(store.clone(), Some(journal), journaling(64)).unwrap();
        let counter = Arc::new(AtomicU64::new(0));
        let reader = store.clone();
        let acked = submit_from_four_threads(&handle, &counter, move |handle, acks| {
            // Read your writes: after settle, the store has it.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            runtime.block_on(handle.settle()).unwrap();
            let last = acks.last().unwrap();
            let read = reader.read(last.seq, 1, usize::MAX).unwrap();
            assert_eq!(tally_attest::entry_hash(&read[0].bytes), last.entry_hash);
        });
        drop(handle);
        thread.join().unwrap();
        assert_eq!(counter.load(Ordering::Relaxed), 0, "every job was answered");
        // The stop applied everything.
        check(&store, store.head().unwrap(), &acked);
        let (_, replayed) = Journal::recover(dir.path(), &store).unwrap();
        assert_eq!(replayed, 0);
    }

    #[test]
    fn a_weak_handle_settles_records_ack_times_and_does_not_keep_the_sequencer_running() {
        //! The anchorer holds a weak handle: the drain's last handle drop must
        //! still stop the commit thread, and after the stop the head it sees
        //! includes what the stop applied from the journal.
        let (dir, store) = store(1 << 30);
        let journal = journal(&dir, &store);
        let (handle, thread) = start(store.clone(), Some(journal), journaling(64)).unwrap();
        let weak = handle.downgrade();
        let ack_times = handle.ack_times();
        let counter = Arc::new(AtomicU64::new(0));
        let (first, answer) = job(3, 10, &counter);
        submit(&handle, first);
        answered(answer).unwrap();
        let exposure = ack_times.exposure();
        assert_eq!(exposure.unanchored, 3);
        assert!(exposure.oldest_acked_unix_nanos.is_some());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(weak.settle()).unwrap();
        assert_eq!(
            weak.head.borrow().size,
            3,
            "settled: the store holds the acked events"
        );
        let (second, answer) = job(2, 10, &counter);
        submit(&handle, second);
        answered(answer).unwrap();
        drop(handle);
        thread.join().unwrap();
        // Stopped: settle returns at once, and the head includes the stop's apply.
        runtime.block_on(weak.settle()).unwrap();
        assert_eq!(weak.head.borrow().size, 5);
        assert_eq!(store.head().unwrap().size, 5);
    }
}
