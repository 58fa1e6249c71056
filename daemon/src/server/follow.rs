//! Following: a connection that sent `follow` is streamed the matching
//! records from its start seq, then each new page as it commits, until the
//! client leaves or the daemon shuts down. The connection's writer hands its
//! socket here and never takes it back.

use futures::SinkExt;
use tally_client::frame;
use tally_client::proto::{self, response, Response};
use tokio::io::AsyncWrite;
use tokio_util::codec::{FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

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
