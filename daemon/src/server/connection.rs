//! One connection: two tasks joined by a bounded queue of pending responses.
//! The reader takes request frames and hands each to the connection's
//! [`Dispatcher`]; the writer sends responses in request order, awaiting each
//! append's ack, or streams the log to a follower. A client that stops
//! reading its acks fills its queue, the reader stops reading, and the
//! kernel's socket buffer pushes back on the client: memory per connection
//! stays bounded.

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use tally_client::frame;
use tally_client::proto::{self, response, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use super::dispatcher::{Dispatcher, Outgoing, Step};
use super::error::RequestError;
use super::follow::{self, FollowStream};
use super::shared::Shared;
use super::slow_reader::within;
use crate::peer::PeerId;

/// Serves one connection until the client leaves, breaks the protocol, or
/// the daemon shuts down.
pub async fn serve_connection<S>(
    stream: S,
    peer: PeerId,
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
    let writer_done = CancellationToken::new();
    let writing = write_loop(
        frames_out,
        queue_rx,
        shared.clone(),
        shutdown.clone(),
        reader_done.clone(),
    );
    let done = writer_done.clone().drop_guard();
    let writer = tokio::spawn(async move {
        let _done = done;
        writing.await
    });
    let peer_text = peer.to_string();
    let dispatcher = Dispatcher::new(&shared, &peer, &peer_text, &shutdown);
    // A writer that stopped (a follower cut off by the slow-reader timeout,
    // a failed write) ends the connection: the reader goes too, so the
    // socket closes rather than wait for a request that a follower never sends.
    tokio::select! {
        _ = read_loop(frames_in, queue_tx, dispatcher, &peer_text, &shared, &shutdown) => {}
        _ = writer_done.cancelled() => {}
    }
    reader_done.cancel();
    if let Err(err) = writer.await {
        tracing::error!(peer = %peer_text, %err, "connection writer task failed");
    }
    tracing::debug!(peer = %peer_text, "connection closed");
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut frames: FramedRead<R, LengthDelimitedCodec>,
    queue: mpsc::Sender<Outgoing>,
    mut dispatcher: Dispatcher<'_>,
    peer_text: &str,
    shared: &Shared,
    shutdown: &CancellationToken,
) {
    let mut following = false;
    // Registered once per connection, not once per request: a fresh
    // `cancelled()` and a fresh idle timeout around every read each took a
    // lock to register and another to deregister, per request.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let idle = shared.limits.idle_timeout;
    // The idle timer is moved only when it fires: to `idle` after the last
    // request, if one came since.
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    let mut last_request = Instant::now();
    loop {
        // FramedRead decodes every frame already buffered before it reads
        // the socket again, so a burst of pipelined requests costs one read.
        let next = tokio::select! {
            biased;
            _ = &mut cancelled => return,
            next = frames.next() => next,
            _ = &mut idle_timer, if !following => {
                let quiet_until = last_request + idle;
                if quiet_until > Instant::now() {
                    idle_timer.as_mut().reset(quiet_until);
                    continue;
                }
                tracing::info!(peer = %peer_text, idle_secs = idle.as_secs(), "closing an idle connection");
                let error = RequestError::Idle { secs: idle.as_secs() };
                let _ = queue.send(Outgoing::Ready(error.response(0))).await;
                return;
            }
        };
        last_request = Instant::now();
        let frame = match next {
            None => return,
            Some(Ok(frame)) => frame,
            Some(Err(err)) if frame::is_frame_too_large(&err) => {
                tracing::warn!(peer = %peer_text, limit = shared.limits.max_frame, "frame too large; closing connection");
                let error = RequestError::FrameTooLarge {
                    max: shared.limits.max_frame,
                };
                let _ = queue.send(Outgoing::Ready(error.response(0))).await;
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
        match dispatcher.dispatch(frame).await {
            Step::Continue(outgoing) => {
                following = matches!(outgoing, Outgoing::Follow { .. });
                if queue.send(outgoing).await.is_err() {
                    return;
                }
            }
            Step::Close(outgoing) => {
                let _ = queue.send(outgoing).await;
                return;
            }
            Step::Stop => return,
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
            Outgoing::Append { id, ack } => match ack.await {
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
                Ok(Err(refused)) => RequestError::from(refused).response(id),
                Err(_) => RequestError::SequencerDropped.response(id),
            },
            Outgoing::Follow { id, from, filter } => {
                let stream = FollowStream { id, from, filter };
                follow::follow(&mut frames, stream, &shared, &shutdown, &reader_done).await;
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
