//! `tallyd`: receives events over a Unix socket, chains them into an
//! append-only log in LMDB, and acknowledges each only once it is durable.
//!
//! Pipeline: [`server`] (framing, limits, dispatch) -> [`sequencer`] (the
//! single writer: group commit, acks) -> [`store`] (LMDB). [`run`] wires them
//! together; tests call it with a temporary data directory and socket.

pub mod config;
pub mod datadir;
pub mod sequencer;
pub mod server;
pub mod socket;
pub mod store;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::datadir::{DataDirError, DataDirLock};
use crate::server::Shared;
use crate::socket::SocketError;
use crate::store::{Store, StoreError};

/// e.g. "tallyd/0.1.0".
pub const SERVER_NAME: &str = concat!("tallyd/", env!("CARGO_PKG_VERSION"));

/// Why the daemon could not start (or stopped abnormally).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Socket(#[from] SocketError),
}

/// Runs the daemon until `shutdown` is cancelled, then drains: stops
/// accepting, answers every request already read (committing and acking its
/// events), stops the sequencer, removes the socket file.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let mode = config.validate()?;
    let lock = DataDirLock::acquire(&config.data_dir)?;
    let store = Arc::new(Store::open(
        &datadir::store_dir(&config.data_dir),
        config.map_sizing(),
    )?);
    let head = store.head()?;
    let (sequencer, sequencer_thread) =
        sequencer::start(store.clone(), config.queue_jobs, config.batch_policy())?;
    let listener = socket::bind_unix(&config.socket, mode, config.socket_group.as_deref())?;
    tracing::info!(
        socket = %config.socket.display(),
        data_dir = %config.data_dir.display(),
        size = head.size,
        head = %hex::encode(head.hash),
        log_id = %hex::encode(store.log_id()),
        "{SERVER_NAME} ready"
    );
    let shared = Arc::new(Shared {
        store,
        sequencer,
        queue_budget: Arc::new(Semaphore::new(config.queue_bytes)),
        queued_events: AtomicU64::new(0),
        limits: config.limits(),
        server_name: SERVER_NAME.into(),
        data_dir: config.data_dir.clone(),
    });
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let drained = server::run(listener, shared.clone(), shutdown, grace).await;
    if let Err(err) = std::fs::remove_file(&config.socket) {
        tracing::warn!(%err, socket = %config.socket.display(), "cannot remove the socket file");
    }
    drop(shared);
    if drained {
        // Every sender is gone: the sequencer commits what is queued and stops.
        if sequencer_thread.join().is_err() {
            tracing::error!("the sequencer thread panicked");
        }
    }
    tracing::info!(lock = %lock.path().display(), "stopped");
    drop(lock);
    Ok(())
}
