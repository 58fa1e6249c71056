//! An in-process daemon for tests and the fuzz target: the store (with its
//! ack journal), the sequencer and [`Shared`] wired as [`crate::run`] wires
//! them, minus the sockets and the TPM. Connections are served over
//! in-memory pipes by the real [`serve_connection`].

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::io::DuplexStream;
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::config::Config;
use crate::journal::Journal;
use crate::peer::PeerId;
use crate::server::{serve_connection, Shared};
use crate::store::Store;
use crate::DaemonError;

/// Bytes the pipe of [`InProcess::connect`] buffers each way.
pub const PIPE_BYTES: usize = 16 * 1024;

/// A daemon's shared state over a store in a caller's directory.
#[derive(Debug)]
pub struct InProcess {
    pub shared: Arc<Shared>,
    pub store: Arc<Store>,
    /// The sequencer's commit thread; it stops when `shared` is dropped.
    sequencer: JoinHandle<()>,
}

impl InProcess {
    /// Opens a store in `dir/store` and starts the sequencer with the ack
    /// journal on, `config`'s limits and access grants, and `dir` as the
    /// data directory. Anchoring is off.
    pub fn start(config: &Config, dir: &Path) -> Result<InProcess, DaemonError> {
        let store_dir = dir.join("store");
        let store = Arc::new(Store::open(&store_dir, config.map_sizing())?);
        let (journal, _) = Journal::recover(&store_dir, &store)?;
        let (sequencer, thread) =
            crate::sequencer::start(store.clone(), Some(journal), config.batch_policy())?;
        let config = Config {
            data_dir: dir.to_owned(),
            ..config.clone()
        };
        let access = Arc::new(Access::new(config.access.clone()));
        let shared = Arc::new(Shared::new(&config, store.clone(), sequencer, access, None));
        Ok(InProcess {
            shared,
            store,
            sequencer: thread,
        })
    }

    /// Serves a connection from `peer` on a task; returns the client's end
    /// of the pipe (the daemon's end is served until it closes or `shutdown`).
    pub fn connect(&self, peer: PeerId, shutdown: CancellationToken) -> DuplexStream {
        let (client, server) = tokio::io::duplex(PIPE_BYTES);
        tokio::spawn(serve_connection(
            server,
            peer,
            self.shared.clone(),
            shutdown,
        ));
        client
    }

    /// Drops this handle on the sequencer and waits until its thread has
    /// committed what was submitted and stopped (every other clone of
    /// `shared` must be gone). False when the thread panicked.
    pub fn stop(self) -> bool {
        drop(self.shared);
        self.sequencer.join().is_ok()
    }
}

/// A Unix peer as SO_PEERCRED would report it.
pub fn unix_peer(uid: u32, gid: u32, pid: i32) -> PeerId {
    PeerId::Unix { uid, gid, pid }
}
