//! What goes into the sequencer and what comes back: an append job (its
//! record bodies encoded), its acks or the typed reason it was not stored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prost::Message;
use rand::RngCore;
use tally_attest::content::{commit, SeqRanges, SALT_LEN};
use tally_attest::merkle::MerkleError;
use tally_client::proto::{Event, Peer, RecordBody};
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::durable::CommitError;
use crate::content::PersonalAttributes;

/// One client request's worth of events, their record bodies encoded.
#[derive(Debug)]
pub struct AppendJob {
    /// The events' `RecordBody` encodings, concatenated...
    pub(super) bodies: Vec<u8>,
    /// ...and where each ends.
    pub(super) ends: Vec<usize>,
    /// The events' openings, when any event has content (boxed: a job is
    /// moved through `SubmitError`, which clippy keeps small).
    pub(super) content: Option<Box<JobContent>>,
    /// The seqs whose content this job's commit erases (only the daemon's
    /// erasure jobs, [`AppendJob::erasure`]).
    pub(super) erased: Option<Box<SeqRanges>>,
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
    /// its place in the chain), its content (payload and the attributes
    /// `personal` names) moved out into an opening the body commits to
    /// (DESIGN 3b).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        events: Vec<Event>,
        bytes: usize,
        peer: Peer,
        receive_time_unix_nanos: i64,
        reply: oneshot::Sender<Result<Vec<Ack>, AppendError>>,
        permit: Option<OwnedSemaphorePermit>,
        queued: QueuedEvents,
        personal: &PersonalAttributes,
    ) -> AppendJob {
        let mut bodies = Vec::with_capacity(events.len() * 128);
        let mut ends = Vec::with_capacity(events.len());
        // Most of a frame's bytes are payloads: they go to the openings.
        let mut openings = Vec::with_capacity(bytes + events.len() * SALT_LEN);
        let mut opening_ends = Vec::with_capacity(events.len());
        // ThreadRng: ChaCha12, seeded and periodically reseeded from the
        // OS's generator (a CSPRNG); one handle per job, not per event.
        let mut rng = rand::thread_rng();
        // One commitment buffer for the job, moved into each body and back
        // (an allocation per event was 2% of ingest).
        let mut commitment = Vec::with_capacity(32);
        for mut event in events {
            commitment.clear();
            if let Some(content) = personal.split(&mut event) {
                let mut salt = [0u8; SALT_LEN];
                rng.fill_bytes(&mut salt);
                openings.extend_from_slice(&salt);
                let start = openings.len();
                // Encoding into a Vec cannot fail (it grows as needed).
                let _ = content.encode(&mut openings);
                commitment.extend_from_slice(&commit(&salt, &openings[start..]));
            }
            opening_ends.push(openings.len());
            let body = RecordBody {
                receive_time_unix_nanos,
                peer: Some(peer),
                event: Some(event),
                content_commitment: std::mem::take(&mut commitment),
                ..Default::default()
            };
            let _ = body.encode(&mut bodies);
            ends.push(bodies.len());
            commitment = body.content_commitment;
        }
        let content = (!openings.is_empty()).then(|| {
            Box::new(JobContent {
                openings,
                ends: opening_ends,
            })
        });
        AppendJob {
            receive_time_unix_nanos,
            bodies,
            ends,
            content,
            erased: None,
            reply,
            _permit: permit,
            _queued: queued,
        }
    }

    /// A job of prebuilt record bodies (the daemon's own `tally.erasure` records,
    /// encoded by the caller) whose commit also erases the content of `erased`:
    /// DESIGN 3b's commit order. Its batch goes to LMDB (never to the ack
    /// journal) with the journaled batches before it; the reply comes after
    /// the keys are destroyed.
    pub fn erasure(
        bodies: Vec<Vec<u8>>,
        erased: SeqRanges,
        receive_time_unix_nanos: i64,
        reply: oneshot::Sender<Result<Vec<Ack>, AppendError>>,
        queued: QueuedEvents,
    ) -> AppendJob {
        let mut ends = Vec::with_capacity(bodies.len());
        let mut joined = Vec::with_capacity(bodies.iter().map(Vec::len).sum());
        for body in &bodies {
            joined.extend_from_slice(body);
            ends.push(joined.len());
        }
        AppendJob {
            receive_time_unix_nanos,
            bodies: joined,
            ends,
            content: None,
            erased: Some(Box::new(erased)),
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

/// A job's openings (salt || `Content` encoding, DESIGN 3b), in the clear:
/// they stay in memory until the sequencer seals each with its record's key
/// (which needs the seq).
#[derive(Debug, Default)]
pub(super) struct JobContent {
    /// Concatenated...
    pub(super) openings: Vec<u8>,
    /// ...and where each event's ends (an event without content: the same
    /// end as the one before, an empty opening).
    pub(super) ends: Vec<usize>,
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
    /// The content key file could not be extended or read (nothing of the
    /// job was stored).
    #[error(transparent)]
    Keys(Arc<crate::store::ContentKeysError>),
    /// A key slot the job's records need holds zeros (cannot happen: slots
    /// past the log are written fresh; only erased records' are zeroed).
    #[error("content key of seq {seq} is destroyed; refusing to seal with it")]
    KeyDestroyed { seq: u64 },
    /// An erasure job named seqs up to `end`, past the records before it
    /// (the first of its own records is `first`): nothing was stored.
    #[error("an erasure may name only records before its own: it names seqs up to {end}, its first record is {first}")]
    ErasureBeyond { end: u64, first: u64 },
    /// An erasure's records are committed and their content rows deleted,
    /// but destroying the erased records' keys failed: `shred_pending`
    /// stays in the store and the next start (or `tallyd check`) finishes
    /// it before serving.
    #[error("the erasure is committed, but destroying the content keys failed (the next start of tallyd finishes it): {0}")]
    Shred(Arc<crate::store::StoreError>),
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
