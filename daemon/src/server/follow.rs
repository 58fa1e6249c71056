//! Following: a connection that sent `follow` is streamed the matching
//! records from its start seq, then each new page as it commits, until the
//! client leaves or the daemon shuts down. The connection's writer hands its
//! socket here and never takes it back.
//!
//! An unfiltered follower is served the publisher's shared pages
//! (`fanout.rs`) and reads the store itself only where its position is not
//! in the ring (it started behind, or fell behind), and there only where no
//! other follower behind the ring read the same page; a filtered follower
//! scans the store with its filter, page by page.

use std::sync::Arc;

use bytes::Buf;
use futures::SinkExt;
use tally_client::proto::{self, response, Response};
use tally_client::{filter, frame};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use super::fanout::{self, Position, SharedPage};
use super::handlers;
use super::shared::Shared;
use super::slow_reader::within;

/// A follow request, as the writer streams it.
pub(super) struct FollowStream {
    pub(super) id: u64,
    pub(super) from: u64,
    pub(super) filter: proto::Filter,
}

/// A filtered follower is sent an empty page (with `resume_seq`) once the
/// records its filter skipped since the last frame reach this many, so the
/// point it would resume from advances though nothing matches; a resumed
/// follow re-examines at most this many records (daemon-side), never resends one.
pub(crate) const FOLLOW_PROGRESS_EVERY: u64 = 10_000;

/// Streams the matching records from `from`, then new ones as they commit,
/// until the client leaves or the daemon shuts down.
pub(super) async fn follow<W: AsyncWrite + Unpin>(
    frames: &mut FramedWrite<W, LengthDelimitedCodec>,
    stream: FollowStream,
    shared: &Shared,
    shutdown: &CancellationToken,
    reader_done: &CancellationToken,
) {
    if filter::is_empty(&stream.filter) {
        follow_shared(frames, stream, shared, shutdown, reader_done).await
    } else {
        follow_filtered(frames, stream, shared, shutdown, reader_done).await
    }
}

/// What sending one frame came to.
enum Sent {
    Ok,
    /// The client left, did not take the frame in time, or the daemon stops.
    Stop,
}

/// Sends `response` within the slow-reader bound (see [`bounded`]).
async fn send<W: AsyncWrite + Unpin>(
    frames: &mut FramedWrite<W, LengthDelimitedCodec>,
    response: &Response,
    shared: &Shared,
    shutdown: &CancellationToken,
    reader_done: &CancellationToken,
) -> Sent {
    let write = frames.send(frame::encode(response));
    bounded(write, shared, shutdown, reader_done).await
}

/// Sends a shared page: this follower's frame header, then the page's bytes
/// as they are (one vectored write; no copy in the daemon), within the
/// slow-reader bound as [`send`].
async fn send_shared<W: AsyncWrite + Unpin>(
    frames: &mut FramedWrite<W, LengthDelimitedCodec>,
    id: u64,
    page: &SharedPage,
    shared: &Shared,
    shutdown: &CancellationToken,
    reader_done: &CancellationToken,
) -> Sent {
    let mut bytes = page.header(id).freeze().chain(page.body.clone());
    let write = async {
        // Whatever the codec holds goes first (frames stay in order).
        SinkExt::<bytes::Bytes>::flush(frames).await?;
        frames.get_mut().write_all_buf(&mut bytes).await
    };
    bounded(write, shared, shutdown, reader_done).await
}

/// Runs one frame's write within the slow-reader bound. A client that stops
/// sending (half-close, or a stray request) still gets whole frames: its
/// reader ending is checked between frames, and the slow-reader timeout
/// bounds the wait. Only a daemon shutdown cuts a frame short (the
/// connection closes).
async fn bounded<E>(
    write: impl std::future::Future<Output = Result<(), E>>,
    shared: &Shared,
    shutdown: &CancellationToken,
    reader_done: &CancellationToken,
) -> Sent {
    let sent = tokio::select! {
        sent = within(shared.limits.slow_reader_timeout, write) => sent,
        _ = shutdown.cancelled() => return Sent::Stop,
    };
    if !sent || reader_done.is_cancelled() {
        return Sent::Stop;
    }
    Sent::Ok
}

/// An unfiltered follow: shared pages where the ring (or a catch-up page
/// another follower read) starts at its position; where none does, the
/// store up to the next page start or catch-up boundary, kept as a
/// catch-up page for the followers behind.
async fn follow_shared<W: AsyncWrite + Unpin>(
    frames: &mut FramedWrite<W, LengthDelimitedCodec>,
    stream: FollowStream,
    shared: &Shared,
    shutdown: &CancellationToken,
    reader_done: &CancellationToken,
) {
    let id = stream.id;
    let (_joined, mut published) =
        shared
            .fanout
            .join(&shared.store, &shared.sequencer.head, &shared.limits);
    let mut cursor = stream.from;
    loop {
        published.borrow_and_update();
        loop {
            let sent = match shared.fanout.position(cursor) {
                Position::Page(page) => {
                    cursor = page.to;
                    send_shared(frames, id, &page, shared, shutdown, reader_done).await
                }
                Position::ReadTo(to) => {
                    let generation = shared.fanout.generation();
                    let request = handlers::PageRequest {
                        from: cursor,
                        to: fanout::catch_up_end(cursor, to),
                        newest: false,
                        filter: proto::Filter::default(),
                        max_records: shared.limits.read_page_records,
                    };
                    let page = match handlers::load_page(shared, request).await {
                        Ok(page) if page.resume_seq > cursor => page,
                        // No progress (cannot happen: a scan examines a
                        // record or ends its range); never spin.
                        Ok(_) => break,
                        Err(error) => {
                            let _ = frames.send(frame::encode(&error.response(id))).await;
                            return;
                        }
                    };
                    let page = Arc::new(SharedPage::new(cursor, &page));
                    cursor = page.to;
                    shared.fanout.keep_catch_up(page.clone(), generation);
                    send_shared(frames, id, &page, shared, shutdown, reader_done).await
                }
                Position::Wait => break,
            };
            if matches!(sent, Sent::Stop) {
                return;
            }
        }
        tokio::select! {
            changed = published.changed() => if changed.is_err() { return },
            _ = reader_done.cancelled() => return,
            _ = shutdown.cancelled() => return,
        }
    }
}

/// A filtered follow: the store scanned with the follower's filter from its
/// position to the head, then again as the head moves.
async fn follow_filtered<W: AsyncWrite + Unpin>(
    frames: &mut FramedWrite<W, LengthDelimitedCodec>,
    stream: FollowStream,
    shared: &Shared,
    shutdown: &CancellationToken,
    reader_done: &CancellationToken,
) {
    let id = stream.id;
    let mut head = shared.sequencer.head.clone();
    let mut cursor = stream.from;
    // The resume point the client last heard of.
    let mut told = stream.from;
    loop {
        let size = head.borrow_and_update().size;
        while cursor < size {
            let request = handlers::PageRequest {
                from: cursor,
                to: size,
                newest: false,
                filter: stream.filter.clone(),
                max_records: shared.limits.read_page_records,
            };
            let page = match handlers::load_page(shared, request).await {
                Ok(page) => page,
                Err(error) => {
                    let _ = frames.send(frame::encode(&error.response(id))).await;
                    return;
                }
            };
            if page.resume_seq <= cursor {
                // No progress (cannot happen: a scan examines a record or
                // ends its range); never spin.
                break;
            }
            cursor = page.resume_seq;
            if page.records.is_empty() && cursor - told < FOLLOW_PROGRESS_EVERY {
                // Nothing to send: a follower that left, or a shutdown, is
                // noticed between scans all the same.
                if reader_done.is_cancelled() || shutdown.is_cancelled() {
                    return;
                }
                continue;
            }
            told = cursor;
            let response = Response {
                id,
                body: Some(response::Body::Records(page)),
            };
            if matches!(
                send(frames, &response, shared, shutdown, reader_done).await,
                Sent::Stop
            ) {
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
