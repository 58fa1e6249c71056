//! The sequencer: the single writer, as a two-stage pipeline.
//!
//! * The **builder** thread drains a bounded queue of append jobs and chains
//!   their events into records as they arrive: it encodes each record,
//!   computes its entry hash and the Merkle nodes it completes, all into the
//!   batch being built ([`Batch`]).
//! * The **committer** thread takes the whole batch being built as soon as its
//!   previous commit is done, commits it (one transaction, one fsync) and only
//!   then acks each of its jobs.
//!
//! So the hashing of batch N+1 overlaps the commit of batch N, and a batch is
//! everything that arrived during the previous commit (group commit).
//!
//! Contract: an `Ok` ack means the events are durable and chained; an `Err`
//! means none of the job's events were stored. When a commit fails, the batch
//! being built on top of it fails too, and building restarts from the
//! committed state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use prost::Message;
use tally_client::proto::{Event, Peer, RecordBody};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};

use crate::store::{Batch, Head, Store, StoreError};

/// One client request's worth of events.
#[derive(Debug)]
pub struct AppendJob {
    pub events: Vec<Event>,
    /// Size of the request frame, for the batch's byte budget.
    pub bytes: usize,
    pub peer: Peer,
    /// When the daemon received the request, Unix time in nanoseconds.
    pub receive_time_unix_nanos: i64,
    pub reply: oneshot::Sender<Result<Vec<Ack>, AppendError>>,
    /// Queue-bytes budget held until the job is answered (backpressure).
    pub permit: Option<OwnedSemaphorePermit>,
    /// Counted in status until the job is answered or dropped.
    pub queued: QueuedEvents,
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
    /// A batch closes once it holds this many events...
    pub max_events: usize,
    /// ...or this many record bytes...
    pub max_bytes: usize,
    /// ...or when the queue is empty and this much time passed since the
    /// batch's first job (zero: commit as soon as the queue is drained).
    pub linger: Duration,
}

/// Handle to the sequencer thread.
#[derive(Debug, Clone)]
pub struct SequencerHandle {
    pub jobs: mpsc::Sender<AppendJob>,
    /// The committed head, updated after every commit.
    pub head: watch::Receiver<Head>,
}

/// Starts the sequencer (the builder thread, which starts the committer).
/// It runs until every `SequencerHandle` (and clone of its `jobs` sender) is
/// dropped and the queue is drained and committed; the returned handle joins
/// both threads.
pub fn start(
    store: Arc<Store>,
    queue_jobs: usize,
    policy: BatchPolicy,
) -> Result<(SequencerHandle, thread::JoinHandle<()>), StoreError> {
    let batch = store.start_batch()?;
    let head = batch.head();
    let (jobs_tx, jobs_rx) = mpsc::channel(queue_jobs.max(1));
    let (head_tx, head_rx) = watch::channel(head);
    let shared = Arc::new(Pipeline {
        building: Mutex::new(Building {
            open: Pending::new(batch.clone()),
            closed: false,
        }),
        filled: Condvar::new(),
        drained: Condvar::new(),
        policy,
    });
    let spawn_error =
        |err| StoreError::Inconsistent(format!("cannot start the sequencer threads: {err}"));
    let committer = {
        let shared = shared.clone();
        thread::Builder::new()
            .name("tally-commit".into())
            .spawn(move || commit_loop(&shared, &store, Pending::new(batch), &head_tx))
            .map_err(spawn_error)?
    };
    let builder = thread::Builder::new()
        .name("tally-sequencer".into())
        .spawn(move || {
            build_loop(&shared, jobs_rx);
            if committer.join().is_err() {
                tracing::error!("the commit thread panicked");
            }
        })
        .map_err(spawn_error)?;
    Ok((
        SequencerHandle {
            jobs: jobs_tx,
            head: head_rx,
        },
        builder,
    ))
}

/// What the builder and the committer share.
struct Pipeline {
    building: Mutex<Building>,
    /// Signalled when the open batch gains a job or the queue closes.
    filled: Condvar,
    /// Signalled when the committer takes the open batch (it has room again).
    drained: Condvar,
    policy: BatchPolicy,
}

struct Building {
    /// The batch being built, on the state after the batch being committed.
    open: Pending,
    /// The job queue closed: commit what is open, then stop.
    closed: bool,
}

/// A batch and the jobs whose events it holds, with their acks.
struct Pending {
    batch: Batch,
    jobs: Vec<AppendJob>,
    acks: Vec<Vec<Ack>>,
    /// Request bytes of the jobs, for the batch's byte budget.
    bytes: usize,
    /// When the first job arrived, for the linger.
    since: Option<Instant>,
}

impl Pending {
    fn new(batch: Batch) -> Pending {
        Pending {
            batch,
            jobs: Vec::new(),
            acks: Vec::new(),
            bytes: 0,
            since: None,
        }
    }

    fn is_full(&self, policy: &BatchPolicy) -> bool {
        self.batch.len() >= policy.max_events
            || self.bytes.max(self.batch.byte_len()) >= policy.max_bytes
    }

    /// Chains the job's events onto the batch, or refuses the job (when
    /// the log cannot hold that many more records).
    fn add(&mut self, mut job: AppendJob) -> Result<(), AppendError> {
        let events = std::mem::take(&mut job.events);
        if !self.batch.has_room(events.len()) {
            let error = AppendError::Full("the log cannot hold more records".into());
            let _ = job.reply.send(Err(error.clone()));
            return Ok(());
        }
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let record = RecordBody {
                receive_time_unix_nanos: job.receive_time_unix_nanos,
                peer: Some(job.peer),
                event: Some(event),
            };
            // Encoding into a Vec cannot fail (it grows as needed).
            match self.batch.push(|bytes| {
                let _ = record.encode(bytes);
            }) {
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
        self.bytes += job.bytes;
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
        self.bytes = 0;
        self.since = None;
    }

    /// Answers every job with `error` and empties the batch onto the state it
    /// was built on.
    fn fail(&mut self, error: &AppendError) {
        for job in self.jobs.drain(..) {
            let _ = job.reply.send(Err(error.clone()));
        }
        self.acks.clear();
        self.bytes = 0;
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

/// The builder: adds each job to the open batch as it arrives, waiting only
/// while the open batch is full.
fn build_loop(pipeline: &Pipeline, mut jobs: mpsc::Receiver<AppendJob>) {
    while let Some(job) = jobs.blocking_recv() {
        let mut building = lock(pipeline);
        while building.open.is_full(&pipeline.policy) {
            building = pipeline
                .drained
                .wait(building)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        if let Err(error) = building.open.add(job) {
            tracing::error!(%error, "append refused");
            building.open.fail(&error);
        }
        drop(building);
        pipeline.filled.notify_one();
    }
    lock(pipeline).closed = true;
    pipeline.filled.notify_one();
}

/// The committer: takes the open batch once it has a job (and the linger
/// has passed, or it is full), commits it, answers its jobs.
fn commit_loop(
    pipeline: &Pipeline,
    store: &Store,
    mut committing: Pending,
    head_tx: &watch::Sender<Head>,
) {
    let policy = &pipeline.policy;
    loop {
        let mut building = lock(pipeline);
        loop {
            let open = &building.open;
            let Some(since) = open.since else {
                if building.closed {
                    tracing::debug!(
                        size = open.batch.head().size,
                        "sequencer stopped: queue closed and drained"
                    );
                    return;
                }
                building = pipeline
                    .filled
                    .wait(building)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            };
            let left = policy.linger.saturating_sub(since.elapsed());
            if building.closed || open.is_full(policy) || left.is_zero() {
                break;
            }
            building = pipeline
                .filled
                .wait_timeout(building, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        // Swap: the open batch is committed, and building goes on after it.
        let after = building.open.batch.head();
        committing
            .batch
            .restart(after, building.open.batch.frontier());
        std::mem::swap(&mut building.open, &mut committing);
        drop(building);
        pipeline.drained.notify_one();

        match store.append(&committing.batch) {
            Ok(()) => {
                head_tx.send_replace(after);
                committing.succeed();
            }
            Err(err) => {
                let error = if err.is_full() {
                    tracing::error!(%err, events = committing.batch.len(), "append refused: storage full");
                    AppendError::Full(err.to_string())
                } else {
                    tracing::error!(%err, events = committing.batch.len(), "append failed");
                    AppendError::Storage(err.to_string())
                };
                // What was built since is chained onto the failed batch: it
                // fails too, and building restarts from the committed state.
                let mut building = lock(pipeline);
                committing.fail(&error);
                let (base, frontier) = committing.batch.base();
                building.open.fail(&error);
                building.open.batch.restart(base, frontier);
                drop(building);
                pipeline.drained.notify_one();
            }
        }
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
        let job = AppendJob {
            events,
            bytes: count * payload,
            peer: Peer {
                kind: Some(peer::Kind::Unix(UnixPeer {
                    uid: 1,
                    gid: 1,
                    pid: 1,
                })),
            },
            receive_time_unix_nanos: 1,
            reply,
            permit: None,
            queued: QueuedEvents::new(counter, count as u64),
        };
        (job, answer)
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

    #[test]
    fn concurrent_jobs_are_chained_densely_and_acked_with_their_entry_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let sizing = MapSizing {
            initial: 1 << 20,
            max: 1 << 30,
        };
        let store = Arc::new(Store::open(dir.path(), sizing).unwrap());
        let policy = BatchPolicy {
            max_events: 64,
            max_bytes: 1 << 20,
            linger: Duration::ZERO,
        };
        let (handle, thread) = start(store.clone(), 16, policy).unwrap();
        let counter = Arc::new(AtomicU64::new(0));
        let senders: Vec<_> = (0..4)
            .map(|_| {
                let jobs = handle.jobs.clone();
                let counter = counter.clone();
                thread::spawn(move || {
                    let mut acked = Vec::new();
                    for size in (1..=40).map(|i| i % 7 + 1) {
                        let (job, answer) = job(size, 100, &counter);
                        jobs.blocking_send(job).unwrap();
                        acked.extend(answer.blocking_recv().unwrap().unwrap());
                    }
                    acked
                })
            })
            .collect();
        let acked: Vec<Ack> = senders
            .into_iter()
            .flat_map(|sender| sender.join().unwrap())
            .collect();
        let head = *handle.head.borrow();
        drop(handle);
        thread.join().unwrap();
        assert_eq!(counter.load(Ordering::Relaxed), 0, "every job was answered");
        check(&store, head, &acked);
    }

    #[test]
    fn a_failed_commit_fails_what_was_built_on_it_and_building_restarts_from_the_committed_state() {
        let dir = tempfile::tempdir().unwrap();
        // A map that cannot grow past 2 MiB: a 100 KiB job is refused as
        // "full" well before a one-event job is.
        let sizing = MapSizing {
            initial: 1 << 20,
            max: 2 << 20,
        };
        let store = Arc::new(Store::open(dir.path(), sizing).unwrap());
        let policy = BatchPolicy {
            max_events: 10_000,
            max_bytes: 64 << 20,
            linger: Duration::ZERO,
        };
        let (handle, thread) = start(store.clone(), 16, policy).unwrap();
        let counter = Arc::new(AtomicU64::new(0));
        let mut acked = Vec::new();
        let mut failed = 0;
        let mut ok_after_failure = 0;
        for _ in 0..200 {
            // A big job and a small one right behind it: the small one is
            // built onto the big one while the big one commits, and must
            // fail with it when the big one is refused.
            let (big, big_answer) = job(25, 4096, &counter);
            let (small, small_answer) = job(1, 10, &counter);
            handle.jobs.blocking_send(big).unwrap();
            handle.jobs.blocking_send(small).unwrap();
            for answer in [big_answer, small_answer] {
                match answer.blocking_recv().unwrap() {
                    Ok(acks) => {
                        ok_after_failure += usize::from(failed > 0);
                        acked.extend(acks);
                    }
                    Err(AppendError::Full(_)) => failed += 1,
                    Err(other) => panic!("unexpected error: {other}"),
                }
            }
            if failed > 0 {
                // Alone, a small job fits: it must be chained onto the
                // committed state, not onto the refused batch.
                let (small, answer) = job(1, 10, &counter);
                handle.jobs.blocking_send(small).unwrap();
                let acks = answer.blocking_recv().unwrap().unwrap();
                assert_eq!(acks[0].seq + 1, store.head().unwrap().size);
                acked.extend(acks);
                ok_after_failure += 1;
                break;
            }
        }
        assert!(failed > 0, "the map never filled");
        assert!(ok_after_failure > 0);
        let head = *handle.head.borrow();
        drop(handle);
        thread.join().unwrap();
        check(&store, head, &acked);
    }
}
