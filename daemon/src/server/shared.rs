//! What every connection of the server shares: the store, the sequencer,
//! budgets and limits, the access policy, and the TPM side.
//!
//! The shared state that changes, who writes it and who reads it:
//!
//! | state | kind | written by | read by |
//! |---|---|---|---|
//! | `queue_budget` | semaphore (bytes) | a reader takes an append's frame length before submitting it; released when the job is answered or dropped | readers (they wait when it is spent) |
//! | `queued_events` | atomic, relaxed | raised when an append job is built, lowered when it is answered or dropped | status |
//! | `access` policy | `RwLock` | SIGHUP reload | every request's role check |
//! | `access` denial window | `Mutex` | a denial (the rate limit of denial events) | the same |
//! | `connections` | `Mutex` | admitting a connection, dropping its permit | the same |
//! | `append_rate` | `Mutex` | every append, when a rate is set | the same |
//! | `anchoring.status` | `Mutex` | the anchoring task | status (a clone) |
//! | `fanout` ring | `Mutex` | the publisher task, a push per committed page | followers (an `Arc` clone of a page) |
//! | `erase_lock` | tokio `Mutex` (held across `.await`: it orders erasures, nothing else waits on it) | an erasure, from its selection to its reply | the same |
//! | `anchoring.ack_times` | `Mutex` ([`AckTimes`](crate::exposure::AckTimes)) | the sequencer's role holder after each commit; the anchorer | status (the exposure window) |
//!
//! No lock is held while another is taken, and none across an `.await` but
//! `erase_lock`, which only erasures take.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

use crate::access::Access;
use crate::anchor::{AnchorCommand, AnchorStatus};
use crate::limits::{AppendRate, ConnectionLimits, Limits};
use crate::sequencer::SequencerHandle;
use crate::store::Store;

/// e.g. "tallyd/0.1.0", what the daemon calls itself in hello and status replies.
pub const SERVER_NAME: &str = concat!("tallyd/", env!("CARGO_PKG_VERSION"));

/// What every connection shares.
#[derive(Debug)]
pub struct Shared {
    pub store: Arc<Store>,
    pub sequencer: SequencerHandle,
    /// Bytes of append requests accepted but not yet answered, across all
    /// connections. Bounds memory under overload: when it is exhausted,
    /// readers wait, and clients block on their sockets.
    pub queue_budget: Arc<Semaphore>,
    /// Events submitted to the sequencer and not yet answered (for status).
    pub queued_events: Arc<AtomicU64>,
    pub limits: Limits,
    /// e.g. "tallyd/0.1.0", sent in hello and status replies.
    pub server_name: String,
    /// The data directory's free space against `disk_warn_below_bytes` (status, the log warning).
    pub disk_space: Arc<crate::store::DiskSpace>,
    /// TPM anchoring; `None` when the daemon runs without a TPM.
    pub anchoring: Option<Anchoring>,
    /// Who may do what; replaced on SIGHUP.
    pub access: Arc<Access>,
    /// Open connections, in total and per peer.
    pub connections: Arc<ConnectionLimits>,
    /// Events per second each peer may append (optional).
    pub append_rate: AppendRate,
    /// Committed pages shared by the unfiltered followers (`fanout.rs`).
    pub fanout: Arc<super::fanout::Fanout>,
    /// Held by an erasure from its selection to its reply (`erase.rs`): one
    /// erasure at a time, so two never name the same seqs.
    pub erase_lock: tokio::sync::Mutex<()>,
    /// Which attributes are content (`[content]`): the ingest split.
    pub personal: Arc<crate::content::PersonalAttributes>,
}

impl Shared {
    /// What every connection shares, the budgets and limits from `config`
    /// (as `crate::run` builds it; `crate::testing` builds it the same way).
    pub fn new(
        config: &crate::config::Config,
        store: Arc<Store>,
        sequencer: SequencerHandle,
        access: Arc<Access>,
        anchoring: Option<Anchoring>,
    ) -> Shared {
        Shared {
            store,
            sequencer,
            queue_budget: Arc::new(Semaphore::new(config.queue_bytes)),
            queued_events: Arc::new(AtomicU64::new(0)),
            limits: config.limits(),
            server_name: SERVER_NAME.into(),
            disk_space: Arc::new(crate::store::DiskSpace::new(
                config.data_dir.clone(),
                config.disk_warn_below_bytes,
            )),
            anchoring,
            access,
            connections: ConnectionLimits::new(
                config.max_connections,
                config.max_connections_per_peer,
            ),
            append_rate: AppendRate::new(config.append_rate_per_peer, config.append_burst_per_peer),
            fanout: Arc::default(),
            erase_lock: tokio::sync::Mutex::new(()),
            personal: Arc::new(crate::content::PersonalAttributes::new(&config.content)),
        }
    }
}

/// What request handlers need of the TPM side (the TPM itself and the log key
/// stay with the anchoring task: handlers go through `commands`).
#[derive(Debug)]
pub struct Anchoring {
    /// To ask the anchoring task for an anchor now.
    pub commands: mpsc::Sender<AnchorCommand>,
    pub status: Arc<std::sync::Mutex<AnchorStatus>>,
    /// When the events no closed anchor covers were acked (status' exposure window).
    pub ack_times: Arc<crate::exposure::AckTimes>,
}
