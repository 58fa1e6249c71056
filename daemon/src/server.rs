//! Accepting connections and serving the wire protocol.
//!
//! Every transport (Unix socket today, vsock later) hands its streams to
//! [`serve_connection`], so framing, limits and dispatch are one code path.
//!
//! A connection is two tasks joined by a bounded queue of pending responses:
//! the reader decodes requests and submits appends to the sequencer; the
//! writer sends responses in request order, awaiting each append's ack. A
//! client that stops reading its acks fills its queue, the reader stops
//! reading, and the kernel's socket buffer pushes back on the client: memory
//! per connection stays bounded.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use prost::Message;
use tally_client::frame;
use tally_client::proto::{self, peer, request, response, ErrorCode, Peer, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::{Access, Role};
use crate::anchor::{AnchorCommand, AnchorStatus};
use crate::handlers;
use crate::limits::{AppendRate, ConnectionLimits, Refusal};
use crate::sequencer::{Ack, AppendError, SequencerHandle};
use crate::store::Store;

/// Per-connection and per-request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request frame accepted; a larger one closes the connection.
    pub max_frame: usize,
    /// Most events in one append request.
    pub max_events_per_append: usize,
    /// Most records in one read (or follow) response.
    pub read_page_records: usize,
    /// Most requests a connection may have in flight (sent, not yet answered).
    pub max_inflight_per_connection: usize,
    /// Bytes of append requests that may wait for the sequencer, in total.
    pub queue_bytes: usize,
    /// A connection that sends no request for this long is closed (not
    /// while it follows the log).
    pub idle_timeout: Duration,
    /// A client that does not take a response within this long is
    /// disconnected, so a stalled reader or follower cannot pin memory.
    pub slow_reader_timeout: Duration,
}

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
    /// For the disk-free figure in status replies.
    pub data_dir: PathBuf,
    /// TPM anchoring; `None` when the daemon runs without a TPM.
    pub anchoring: Option<Anchoring>,
    /// Who may do what; replaced on SIGHUP.
    pub access: Arc<Access>,
    /// Open connections, in total and per peer.
    pub connections: Arc<ConnectionLimits>,
    /// Events per second each peer may append (optional).
    pub append_rate: AppendRate,
}

impl Shared {
    /// What every connection shares, the budgets and limits from `config`
    /// (as `crate::run` builds it; the fuzz target builds it the same way).
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
            server_name: crate::SERVER_NAME.into(),
            data_dir: config.data_dir.clone(),
            anchoring,
            access,
            connections: ConnectionLimits::new(
                config.max_connections,
                config.max_connections_per_peer,
            ),
            append_rate: AppendRate::new(config.append_rate_per_peer, config.append_burst_per_peer),
        }
    }
}

/// The role a request needs, and its name for logs.
fn required_role(body: &request::Body) -> Option<(Role, &'static str)> {
    match body {
        request::Body::Hello(_) => None,
        request::Body::Append(_) => Some((Role::Append, "append")),
        request::Body::Read(_) => Some((Role::Read, "read")),
        request::Body::Follow(_) => Some((Role::Read, "follow")),
        request::Body::Status(_) => Some((Role::Read, "status")),
        request::Body::Attest(_) => Some((Role::Read, "attest")),
        request::Body::ReadAnchors(_) => Some((Role::Read, "read_anchors")),
        request::Body::Anchor(_) => Some((Role::Admin, "anchor")),
        request::Body::ProveInclusion(_) => Some((Role::Read, "prove_inclusion")),
        request::Body::ProveConsistency(_) => Some((Role::Read, "prove_consistency")),
    }
}

/// What request handlers need of the TPM side.
#[derive(Debug)]
pub struct Anchoring {
    /// For fresh attestations (the worker serialises TPM commands).
    pub tpm: tally_attest::tpm::worker::TpmHandle,
    /// Signs the checkpoint of a fresh attestation (the log key).
    pub signer: Arc<tally_attest::note::Signer>,
    /// To ask the anchoring task for an anchor now.
    pub commands: mpsc::Sender<AnchorCommand>,
    pub status: Arc<std::sync::Mutex<AnchorStatus>>,
    /// When the events no closed anchor covers were acked (status' exposure window).
    pub ack_times: Arc<crate::exposure::AckTimes>,
    /// Give up on a TPM command after this long.
    pub timeout: Duration,
}

/// The listening sockets: the Unix socket, and optionally vsock for guest VMs.
#[derive(Debug)]
pub struct Listeners {
    pub unix: UnixListener,
    pub vsock: Option<tokio_vsock::VsockListener>,
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
    let unix = accept_unix(listeners.unix, &shared, &shutdown, &connections);
    let vsock = async {
        if let Some(listener) = listeners.vsock {
            accept_vsock(listener, &shared, &shutdown, &connections).await;
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

/// Accepts Unix connections until shutdown; the peer is SO_PEERCRED.
async fn accept_unix(
    listener: UnixListener,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    connections: &TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let peer = match stream.peer_cred() {
                    Ok(cred) => Peer {
                        kind: Some(peer::Kind::Unix(proto::UnixPeer {
                            uid: cred.uid(),
                            gid: cred.gid(),
                            pid: cred.pid().unwrap_or(0),
                        })),
                    },
                    Err(err) => {
                        tracing::warn!(%err, "cannot read SO_PEERCRED; refusing connection");
                        continue;
                    }
                };
                dispatch(stream, peer, shared, shutdown, connections);
            }
            Err(err) => accept_failed(err).await,
        }
    }
}

/// Accepts vsock connections until shutdown; the peer is the connecting
/// CID and port as the kernel reports them. Same handler as Unix peers.
async fn accept_vsock(
    listener: tokio_vsock::VsockListener,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    connections: &TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, address)) => {
                let peer = Peer {
                    kind: Some(peer::Kind::Vsock(proto::VsockPeer {
                        cid: address.cid(),
                        port: address.port(),
                    })),
                };
                dispatch(stream, peer, shared, shutdown, connections);
            }
            Err(err) => accept_failed(err).await,
        }
    }
}

/// Serves an accepted connection if the connection limits admit it, else
/// tells the client why and closes it.
fn dispatch<S>(
    stream: S,
    peer: Peer,
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
            tracing::warn!(peer = %describe(&peer), %refusal, "connection refused");
            connections.spawn(refuse(stream, refusal));
        }
    }
}

/// Sends one BUSY error and closes; gives up after a second.
async fn refuse<S: AsyncWrite + Send + Unpin>(stream: S, refusal: Refusal) {
    let mut frames = FramedWrite::new(stream, frame::codec(65_536));
    let response = response_error(0, ErrorCode::Busy, refusal.to_string());
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        frames.send(frame::encode(&response)),
    )
    .await;
}

async fn accept_failed(err: std::io::Error) {
    // E.g. EMFILE: back off instead of spinning.
    tracing::warn!(%err, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A response the writer owes the client, in request order.
// `Ready` holds a whole `Response` (a status reply is ~230 bytes): each is built
// once and moved to the writer; boxing it would add an allocation per response
// to save a few moves.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Outgoing {
    Ready(Response),
    Append {
        id: u64,
        ack: oneshot::Receiver<Result<Vec<Ack>, AppendError>>,
    },
    Follow {
        id: u64,
        from: u64,
    },
}

/// Serves one connection until the client leaves, breaks the protocol, or
/// the daemon shuts down.
pub async fn serve_connection<S>(
    stream: S,
    peer: Peer,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(stream);
    let frames_in = FramedRead::new(read_half, frame::codec(shared.limits.max_frame));
    // Responses can be a page of records: allow twice the request limit.
    let frames_out = FramedWrite::new(
        write_half,
        frame::codec(shared.limits.max_frame * 2 + 65_536),
    );
    let (queue_tx, queue_rx) = mpsc::channel(shared.limits.max_inflight_per_connection.max(1));
    let reader_done = CancellationToken::new();
    let writer = tokio::spawn(write_loop(
        frames_out,
        queue_rx,
        shared.clone(),
        shutdown.clone(),
        reader_done.clone(),
    ));
    let peer_text = describe(&peer);
    read_loop(frames_in, queue_tx, &peer, &peer_text, &shared, &shutdown).await;
    reader_done.cancel();
    if let Err(err) = writer.await {
        tracing::error!(peer = %peer_text, %err, "connection writer task failed");
    }
    tracing::debug!(peer = %peer_text, "connection closed");
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut frames: FramedRead<R, LengthDelimitedCodec>,
    queue: mpsc::Sender<Outgoing>,
    peer: &Peer,
    peer_text: &str,
    shared: &Shared,
    shutdown: &CancellationToken,
) {
    let mut greeted = false;
    let mut following = false;
    loop {
        let idle = if following {
            Duration::MAX
        } else {
            shared.limits.idle_timeout
        };
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            next = tokio::time::timeout(idle, frames.next()) => match next {
                Ok(next) => next,
                Err(_) => {
                    tracing::info!(peer = %peer_text, idle_secs = idle.as_secs(), "closing an idle connection");
                    let message = format!("no request for {} s; closing", idle.as_secs());
                    let _ = queue.send(error(0, ErrorCode::Busy, message)).await;
                    return;
                }
            },
        };
        let bytes = match next {
            None => return,
            Some(Ok(bytes)) => bytes,
            Some(Err(err)) if frame::is_frame_too_large(&err) => {
                tracing::warn!(peer = %peer_text, limit = shared.limits.max_frame, "frame too large; closing connection");
                let message = format!(
                    "frame exceeds the maximum of {} bytes",
                    shared.limits.max_frame
                );
                let _ = queue
                    .send(error(0, ErrorCode::FrameTooLarge, message))
                    .await;
                return;
            }
            Some(Err(err)) => {
                tracing::info!(peer = %peer_text, %err, "connection ended mid-frame or failed");
                return;
            }
        };
        if following {
            tracing::info!(peer = %peer_text, "request on a following connection; closing");
            return;
        }
        let frame_len = bytes.len();
        let request = match Request::decode(bytes) {
            Ok(request) => request,
            Err(err) => {
                tracing::info!(peer = %peer_text, %err, "undecodable request");
                let reply = error(
                    0,
                    ErrorCode::BadRequest,
                    format!("undecodable request: {err}"),
                );
                if queue.send(reply).await.is_err() || !greeted {
                    return;
                }
                continue;
            }
        };
        let id = request.id;
        if let Some((role, name)) = request.body.as_ref().and_then(required_role) {
            if greeted && !shared.access.allows(peer, role) {
                tracing::warn!(peer = %peer_text, request = name, role = role.name(), "permission denied");
                shared.access.record_denial(
                    &shared.sequencer,
                    &shared.queued_events,
                    peer,
                    peer_text,
                    name,
                    role,
                );
                let message = format!(
                    "{peer_text} lacks the '{}' role needed for {name}",
                    role.name()
                );
                if queue
                    .send(error(id, ErrorCode::PermissionDenied, message))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
        }
        // Read your writes: whatever reads the log first waits until the
        // store holds every event acked so far (some may be in the ack
        // journal only).
        let reads_log = !matches!(
            request.body,
            None | Some(request::Body::Hello(_) | request::Body::Append(_))
        );
        if greeted && reads_log {
            if let Err(message) = shared.sequencer.settle().await {
                if queue
                    .send(error(id, ErrorCode::Storage, message))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
        }
        let outgoing = match request.body {
            Some(request::Body::Hello(hello)) => {
                if greeted {
                    error(
                        id,
                        ErrorCode::Protocol,
                        "hello was already sent on this connection".into(),
                    )
                } else if hello.protocol_version == 0 {
                    let _ = queue
                        .send(error(
                            id,
                            ErrorCode::Protocol,
                            "protocol version 0 is not valid".into(),
                        ))
                        .await;
                    return;
                } else {
                    greeted = true;
                    tracing::debug!(peer = %peer_text, client = %hello.client_name, "hello");
                    Outgoing::Ready(Response {
                        id,
                        body: Some(response::Body::Hello(proto::HelloReply {
                            protocol_version: tally_client::PROTOCOL_VERSION,
                            server_name: shared.server_name.clone(),
                            log_id: shared.store.log_id().to_vec(),
                        })),
                    })
                }
            }
            _ if !greeted => {
                tracing::info!(peer = %peer_text, "request before hello; closing");
                let _ = queue
                    .send(error(
                        id,
                        ErrorCode::Protocol,
                        "the first request must be hello".into(),
                    ))
                    .await;
                return;
            }
            Some(request::Body::Append(append)) => {
                match handlers::submit_append(id, append, frame_len, peer, shared, shutdown).await {
                    Some(outgoing) => outgoing,
                    None => return,
                }
            }
            Some(request::Body::Read(read)) => {
                handlers::read_page(id, read.from_seq, read.max_records, shared).await
            }
            Some(request::Body::Follow(follow)) => {
                following = true;
                Outgoing::Follow {
                    id,
                    from: follow.from_seq,
                }
            }
            Some(request::Body::Status(_)) => handlers::status(id, shared),
            Some(request::Body::Attest(attest)) => {
                handlers::fresh_attestation(id, attest, shared).await
            }
            Some(request::Body::Anchor(_)) => handlers::anchor_now(id, shared).await,
            Some(request::Body::ReadAnchors(read)) => {
                handlers::read_anchors(id, read.from_counter, read.max_anchors, shared).await
            }
            Some(request::Body::ProveInclusion(prove)) => {
                handlers::prove_inclusion(id, prove.seq, prove.size, shared).await
            }
            Some(request::Body::ProveConsistency(prove)) => {
                handlers::prove_consistency(id, prove.from_size, prove.to_size, shared).await
            }
            None => error(
                id,
                ErrorCode::BadRequest,
                "unknown or missing request type".into(),
            ),
        };
        if queue.send(outgoing).await.is_err() {
            return;
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut frames: FramedWrite<W, LengthDelimitedCodec>,
    mut queue: mpsc::Receiver<Outgoing>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    reader_done: CancellationToken,
) {
    while let Some(outgoing) = queue.recv().await {
        let response = match outgoing {
            Outgoing::Ready(response) => response,
            Outgoing::Append { id, ack } => {
                let result = ack.await;
                match result {
                    Ok(Ok(acks)) => Response {
                        id,
                        body: Some(response::Body::Append(proto::AppendReply {
                            acks: acks
                                .into_iter()
                                .map(|ack| proto::Ack {
                                    seq: ack.seq,
                                    entry_hash: ack.entry_hash.to_vec(),
                                })
                                .collect(),
                        })),
                    },
                    Ok(Err(AppendError::Full(cause))) => {
                        response_error(id, ErrorCode::StorageFull, cause.to_string())
                    }
                    Ok(Err(AppendError::Storage(cause))) => {
                        response_error(id, ErrorCode::Storage, cause.to_string())
                    }
                    Err(_) => response_error(
                        id,
                        ErrorCode::Internal,
                        "the sequencer dropped the request".into(),
                    ),
                }
            }
            Outgoing::Follow { id, from } => {
                follow(&mut frames, id, from, &shared, &shutdown, &reader_done).await;
                return;
            }
        };
        let limit = shared.limits.slow_reader_timeout;
        if !within(limit, frames.feed(frame::encode(&response))).await {
            return;
        }
        // Batch the flushes of pipelined responses.
        if queue.is_empty() && !within(limit, SinkExt::<bytes::Bytes>::flush(&mut frames)).await {
            return;
        }
    }
    let _ = within(
        shared.limits.slow_reader_timeout,
        SinkExt::<bytes::Bytes>::flush(&mut frames),
    )
    .await;
}

/// Runs a socket write; false when it failed or the client did not take the
/// bytes within `limit` (a stalled reader: the caller disconnects it).
async fn within<E>(
    limit: Duration,
    write: impl std::future::Future<Output = Result<(), E>>,
) -> bool {
    match tokio::time::timeout(limit, write).await {
        Ok(result) => result.is_ok(),
        Err(_) => {
            tracing::warn!(
                timeout_secs = limit.as_secs(),
                "client is not reading its responses; disconnecting it"
            );
            false
        }
    }
}

/// Streams records from `from`, then new ones as they commit, until the
/// client leaves or the daemon shuts down.
async fn follow<W: AsyncWrite + Unpin>(
    frames: &mut FramedWrite<W, LengthDelimitedCodec>,
    id: u64,
    from: u64,
    shared: &Shared,
    shutdown: &CancellationToken,
    reader_done: &CancellationToken,
) {
    let mut head = shared.sequencer.head.clone();
    let mut cursor = from;
    loop {
        let size = head.borrow_and_update().size;
        while cursor < size {
            let page =
                match handlers::load_page(shared, cursor, shared.limits.read_page_records, size)
                    .await
                {
                    Ok(page) => page,
                    Err(message) => {
                        let _ = frames
                            .send(frame::encode(&response_error(
                                id,
                                ErrorCode::Storage,
                                message,
                            )))
                            .await;
                        return;
                    }
                };
            let Some(last) = page.records.last() else {
                break;
            };
            cursor = last.seq + 1;
            let response = Response {
                id,
                body: Some(response::Body::Records(page)),
            };
            // A client that stops sending (half-close, or a stray request)
            // still gets whole frames: its reader ending is checked between
            // frames, and the slow-reader timeout bounds the wait. Only a
            // daemon shutdown cuts a frame short (the connection closes).
            let sent = tokio::select! {
                sent = within(shared.limits.slow_reader_timeout, frames.send(frame::encode(&response))) => sent,
                _ = shutdown.cancelled() => return,
            };
            if !sent || reader_done.is_cancelled() {
                return;
            }
        }
        tokio::select! {
            changed = head.changed() => if changed.is_err() { return },
            _ = reader_done.cancelled() => return,
            _ = shutdown.cancelled() => return,
        }
    }
}

pub(crate) fn response_error(id: u64, code: ErrorCode, message: String) -> Response {
    Response {
        id,
        body: Some(response::Body::Error(proto::Error {
            code: code as i32,
            message,
        })),
    }
}

pub(crate) fn error(id: u64, code: ErrorCode, message: String) -> Outgoing {
    Outgoing::Ready(response_error(id, code, message))
}

pub(crate) fn now_unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A peer identity for log lines.
pub fn describe(peer: &Peer) -> String {
    match &peer.kind {
        Some(peer::Kind::Unix(unix)) => {
            format!("unix uid={} gid={} pid={}", unix.uid, unix.gid, unix.pid)
        }
        Some(peer::Kind::Vsock(vsock)) => format!("vsock cid={} port={}", vsock.cid, vsock.port),
        None => "unknown".into(),
    }
}
