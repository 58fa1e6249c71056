//! What goes into the sequencer and what comes back: an append job (its
//! record bodies encoded), its acks or the typed reason it was not stored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prost::Message;
use tally_attest::merkle::MerkleError;
use tally_client::proto::{Event, Peer, RecordBody};
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::durable::CommitError;

/// One client request's worth of events, their record bodies encoded.
#[derive(Debug)]
pub struct AppendJob {
    /// The events' `RecordBody` encodings, concatenated...
    pub(super) bodies: Vec<u8>,
    /// ...and where each ends.
    pub(super) ends: Vec<usize>,
    pub(super) reply: oneshot::Sender<Result<Vec<Ack>, AppendError>>,
    /// Queue-bytes budget held until the job is answered (backpressure).
    _permit: Option<OwnedSemaphorePermit>,
    /// Counted in status until the job is answered or dropped.
    _queued: QueuedEvents,
    /// The receive time encoded in every body (the commit's `times` index
    /// takes it from here instead of re-reading each body).
    pub(super) receive_time_unix_nanos: i64,
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
                ..Default::default()
            };
            // Encoding into a Vec cannot fail (it grows as needed).
            let _ = body.encode(&mut bodies);
            ends.push(bodies.len());
        }
        AppendJob {
            receive_time_unix_nanos,
            bodies,
            ends,
            reply,
            _permit: permit,
            _queued: queued,
        }
    }

    /// LEAD PLACEHOLDER (the storage slice replaces it with the erase engine):
    /// a job of prebuilt bodies; `erased` is not acted on here.
    pub fn erasure(
        bodies: Vec<Vec<u8>>,
        _erased: tally_attest::content::SeqRanges,
        receive_time_unix_nanos: i64,
        reply: oneshot::Sender<Result<Vec<Ack>, AppendError>>,
        queued: QueuedEvents,
    ) -> AppendJob {
        let mut all = Vec::new();
        let mut ends = Vec::new();
        for body in bodies {
            all.extend_from_slice(&body);
            ends.push(all.len());
        }
        AppendJob {
            receive_time_unix_nanos,
            bodies: all,
            ends,
            reply,
            _permit: None,
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

/// Why an append was not stored. Nothing of the job was committed. Clone:
/// one failed commit answers every job of its batch (and of the batches
/// built on it) with the same error; the commit's cause is shared (`Arc`).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// Retry once space is freed.
    #[error("storage full: {0}")]
    Full(FullCause),
    #[error("storage error: {0}")]
    Storage(StorageCause),
}

/// Why an append was refused for lack of room.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FullCause {
    /// The disk, the quota or the LMDB map is full ([`CommitError::is_full`]).
    #[error("{0}; nothing of this append was stored")]
    Commit(Arc<CommitError>),
    /// The log holds 2^64 - 1 records.
    #[error("the log cannot hold more records")]
    LogAtMaximum,
}

/// Why an append failed otherwise.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StorageCause {
    /// The commit (to the ack journal or to LMDB) failed.
    #[error(transparent)]
    Commit(Arc<CommitError>),
    /// The Merkle tree refused a leaf (it cannot, once the log had room).
    #[error(transparent)]
    Merkle(MerkleError),
    /// The commit thread has ended.
    #[error("the sequencer has stopped")]
    Stopped,
}

/// Why a job was not taken; it is handed back, unanswered.
#[derive(Debug)]
pub enum SubmitError {
    /// `max_jobs` jobs are waiting (only from
    /// [`SequencerHandle::try_submit`](super::SequencerHandle::try_submit)).
    Busy(AppendJob),
    /// The commit thread has stopped.
    Stopped(AppendJob),
}
