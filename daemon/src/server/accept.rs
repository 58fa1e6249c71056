//! Accepting connections: one accept loop for every transport (the Unix
//! socket, and vsock for guest VMs), the connection limits, and the drain on
//! shutdown.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::SinkExt;
use tally_client::frame;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_vsock::{VsockListener, VsockStream};

use super::connection::serve_connection;
use super::error::RequestError;
use super::shared::Shared;
use crate::limits::Refusal;
use crate::peer::PeerId;

/// The listening sockets: the Unix socket, and optionally vsock for guest VMs.
#[derive(Debug)]
pub struct Listeners {
    pub unix: UnixListener,
    pub vsock: Option<VsockListener>,
}

/// Accepts connections until `shutdown` is cancelled, then waits up to
/// `grace` for every connection to finish: requests already read are
/// answered (appends committed and acked). Returns false when some
/// connection was still busy after `grace` (e.g. a client that stopped reading).
pub async fn run(
    listeners: Listeners,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    grace: Duration,
) -> bool {
    let connections = TaskTracker::new();
    let unix = accept_loop(listeners.unix, &shared, &shutdown, &connections);
    let vsock = async {
        if let Some(listener) = listeners.vsock {
            accept_loop(listener, &shared, &shutdown, &connections).await;
        }
    };
    tokio::join!(unix, vsock);
    connections.close();
    let open = connections.len();
    if open > 0 {
        tracing::info!(connections = open, "waiting for connections to finish");
    }
    match tokio::time::timeout(grace, connections.wait()).await {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!(
                connections = connections.len(),
                grace_secs = grace.as_secs(),
                "connections still busy after the shutdown grace period; leaving them"
            );
            false
        }
    }
}

/// A listening socket whose connections come with the kernel's identity of
/// their peer.
trait Listen {
    type Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static;

    /// The next connection and its peer; `Ok(None)` when one was accepted
    /// but its peer cannot be identified (it is dropped: refused).
    fn accept_peer(
        &self,
    ) -> impl Future<Output = io::Result<Option<(Self::Stream, PeerId)>>> + Send;
}

/// Unix peers are SO_PEERCRED.
impl Listen for UnixListener {
    type Stream = UnixStream;

    async fn accept_peer(&self) -> io::Result<Option<(UnixStream, PeerId)>> {
        let (stream, _) = self.accept().await?;
        match stream.peer_cred() {
            Ok(cred) => {
                let peer = PeerId::Unix {
                    uid: cred.uid(),
                    gid: cred.gid(),
                    pid: cred.pid().unwrap_or(0),
                };
                Ok(Some((stream, peer)))
            }
            Err(err) => {
                tracing::warn!(%err, "cannot read SO_PEERCRED; refusing connection");
                Ok(None)
            }
        }
    }
}

/// vsock peers are the connecting CID and port as the kernel reports them.
impl Listen for VsockListener {
    type Stream = VsockStream;

    async fn accept_peer(&self) -> io::Result<Option<(VsockStream, PeerId)>> {
        let (stream, address) = self.accept().await?;
        let peer = PeerId::Vsock {
            cid: address.cid(),
            port: address.port(),
        };
        Ok(Some((stream, peer)))
    }
}

/// Accepts connections on `listener` until shutdown.
async fn accept_loop<L: Listen>(
    listener: L,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    connections: &TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept_peer() => accepted,
        };
        match accepted {
            Ok(Some((stream, peer))) => admit(stream, peer, shared, shutdown, connections),
            Ok(None) => {}
            Err(err) => accept_failed(err).await,
        }
    }
}

/// Serves an accepted connection if the connection limits admit it, else
/// tells the client why and closes it.
fn admit<S>(
    stream: S,
    peer: PeerId,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    connections: &TaskTracker,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    match shared.connections.admit(&peer) {
        Ok(permit) => {
            let (shared, shutdown) = (shared.clone(), shutdown.clone());
            connections.spawn(async move {
                serve_connection(stream, peer, shared, shutdown).await;
                drop(permit);
            });
        }
        Err(refusal) => {
            tracing::warn!(%peer, %refusal, "connection refused");
            connections.spawn(refuse(stream, refusal));
        }
    }
}

/// Sends one BUSY error and closes; gives up after a second.
async fn refuse<S: AsyncWrite + Send + Unpin>(stream: S, refusal: Refusal) {
    let mut frames = FramedWrite::new(stream, frame::codec(65_536));
    let response = RequestError::ConnectionRefused(refusal).response(0);
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        frames.send(frame::encode(&response)),
    )
    .await;
}

async fn accept_failed(err: io::Error) {
    // E.g. EMFILE: back off instead of spinning.
    tracing::warn!(%err, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
