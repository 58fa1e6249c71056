//! The sequencer: the single writer. It drains a bounded queue of append
//! jobs, chains their events into records, commits them as one batch (one
//! transaction, one fsync) and only then acks each job.
//!
//! Contract: an `Ok` ack means the events are durable and chained; an `Err`
//! means none of the job's events were stored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use prost::Message;
use tally_attest::{entry_hash, RecordHeader};
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

/// Starts the sequencer thread. It runs until every `SequencerHandle` (and
/// clone of its `jobs` sender) is dropped and the queue is drained.
pub fn start(
    store: Arc<Store>,
    queue_jobs: usize,
    policy: BatchPolicy,
) -> Result<(SequencerHandle, thread::JoinHandle<()>), StoreError> {
    let head = store.head()?;
    let (jobs_tx, jobs_rx) = mpsc::channel(queue_jobs.max(1));
    let (head_tx, head_rx) = watch::channel(head);
    let thread = thread::Builder::new()
        .name("tally-sequencer".into())
        .spawn(move || Sequencer::new(store, head, policy, head_tx).run(jobs_rx))
        .map_err(|err| {
            StoreError::Inconsistent(format!("cannot start the sequencer thread: {err}"))
        })?;
    Ok((
        SequencerHandle {
            jobs: jobs_tx,
            head: head_rx,
        },
        thread,
    ))
}

struct Sequencer {
    store: Arc<Store>,
    head: Head,
    policy: BatchPolicy,
    head_tx: watch::Sender<Head>,
    /// Reused across batches: the record bytes and offsets.
    batch: Batch,
    /// Reused across events: the encoded RecordBody.
    body: Vec<u8>,
}

impl Sequencer {
    fn new(
        store: Arc<Store>,
        head: Head,
        policy: BatchPolicy,
        head_tx: watch::Sender<Head>,
    ) -> Self {
        Sequencer {
            store,
            head,
            policy,
            head_tx,
            batch: Batch::default(),
            body: Vec::new(),
        }
    }

    fn run(mut self, mut jobs: mpsc::Receiver<AppendJob>) {
        let mut pending: Vec<AppendJob> = Vec::new();
        while let Some(first) = jobs.blocking_recv() {
            let started = Instant::now();
            let mut events = first.events.len();
            let mut bytes = first.bytes;
            pending.push(first);
            loop {
                if events >= self.policy.max_events || bytes >= self.policy.max_bytes {
                    break;
                }
                match jobs.try_recv() {
                    Ok(job) => {
                        events += job.events.len();
                        bytes += job.bytes;
                        pending.push(job);
                    }
                    Err(_) if started.elapsed() < self.policy.linger => {
                        thread::sleep(Duration::from_micros(50))
                    }
                    Err(_) => break,
                }
            }
            self.commit(&mut pending);
        }
        tracing::debug!(
            size = self.head.size,
            "sequencer stopped: queue closed and drained"
        );
    }

    /// Builds the records of `jobs`, commits them, answers every job.
    fn commit(&mut self, jobs: &mut Vec<AppendJob>) {
        self.batch.clear();
        let mut head = self.head;
        let mut acks: Vec<Vec<Ack>> = Vec::with_capacity(jobs.len());
        for job in jobs.iter_mut() {
            let events = std::mem::take(&mut job.events);
            let mut job_acks = Vec::with_capacity(events.len());
            for event in events {
                let start = self.batch.bytes.len();
                RecordHeader {
                    seq: head.size,
                    prev_hash: head.hash,
                }
                .encode_into(&mut self.batch.bytes);
                self.body.clear();
                let body = RecordBody {
                    receive_time_unix_nanos: job.receive_time_unix_nanos,
                    peer: Some(job.peer),
                    event: Some(event),
                };
                // Encoding into a Vec cannot fail (it grows as needed).
                let _ = body.encode(&mut self.body);
                self.batch.bytes.extend_from_slice(&self.body);
                let hash = entry_hash(&self.batch.bytes[start..]);
                self.batch
                    .records
                    .push((head.size, self.batch.bytes.len(), hash));
                job_acks.push(Ack {
                    seq: head.size,
                    entry_hash: hash,
                });
                head = Head {
                    size: head.size + 1,
                    hash,
                    // Set from the store's frontier once committed.
                    root: head.root,
                };
            }
            acks.push(job_acks);
        }

        match self.store.append(&self.batch, head) {
            Ok(root) => {
                let head = Head { root, ..head };
                self.head = head;
                self.head_tx.send_replace(head);
                for (job, job_acks) in jobs.drain(..).zip(acks) {
                    // A client that went away no longer waits for its ack; its
                    // events are durable all the same.
                    let _ = job.reply.send(Ok(job_acks));
                }
            }
            Err(err) => {
                let error = if err.is_full() {
                    tracing::error!(%err, events = self.batch.records.len(), "append refused: storage full");
                    AppendError::Full(err.to_string())
                } else {
                    tracing::error!(%err, events = self.batch.records.len(), "append failed");
                    AppendError::Storage(err.to_string())
                };
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
        }
    }
}
