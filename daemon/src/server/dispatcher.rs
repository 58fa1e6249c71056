//! The dispatcher: one per connection, it holds the connection's hello state
//! and turns each request frame into what the writer owes the client. In
//! order: decode, the role check (a denial is answered and appended to the
//! log), the settle gate (read your writes), then the request's handler.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bytes::BytesMut;
use prost::Message;
use tally_client::proto::{self, request, response, Request, Response};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::error::RequestError;
use super::handlers::{self, AckReceiver};
use super::shared::Shared;
use crate::access::{Access, Denial, Role};
use crate::peer::PeerId;
use crate::sequencer::{AppendJob, QueuedEvents, SequencerHandle, SettleError};

/// A response the writer owes the client, in request order.
// `Ready` holds a whole `Response` (a status reply is ~230 bytes): each is built
// once and moved to the writer; boxing it would add an allocation per response
// to save a few moves.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Outgoing {
    Ready(Response),
    /// An append's answer, once the sequencer acks (or refuses) it.
    Append {
        id: u64,
        ack: AckReceiver,
    },
    /// Stream the log from `from`: the connection only follows from here on.
    Follow {
        id: u64,
        from: u64,
        filter: proto::Filter,
    },
}

impl Outgoing {
    fn error(id: u64, error: RequestError) -> Outgoing {
        Outgoing::Ready(error.response(id))
    }
}

/// What the connection does after a request.
pub(crate) enum Step {
    /// Queue this for the writer and read the next request.
    Continue(Outgoing),
    /// Queue this, then stop reading: the protocol allows no recovery.
    Close(Outgoing),
    /// Stop reading without an answer (the daemon is shutting down).
    Stop,
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
        request::Body::Erase(_) => Some((Role::Admin, "erase")),
    }
}

/// Turns one connection's requests into responses.
pub(crate) struct Dispatcher<'a> {
    shared: &'a Shared,
    /// Who sent the requests (roles, rate limits, the records' peer).
    peer: &'a PeerId,
    /// `peer` for log lines and denial events, formatted once per connection.
    peer_text: &'a str,
    /// An append waiting for queue budget gives up when this is cancelled.
    shutdown: &'a CancellationToken,
    /// Whether hello was answered: until then only hello is served.
    greeted: bool,
}

impl<'a> Dispatcher<'a> {
    pub(crate) fn new(
        shared: &'a Shared,
        peer: &'a PeerId,
        peer_text: &'a str,
        shutdown: &'a CancellationToken,
    ) -> Dispatcher<'a> {
        Dispatcher {
            shared,
            peer,
            peer_text,
            shutdown,
            greeted: false,
        }
    }

    /// Decodes and serves one request frame.
    pub(crate) async fn dispatch(&mut self, frame: BytesMut) -> Step {
        let frame_len = frame.len();
        let request = match Request::decode(frame) {
            Ok(request) => request,
            Err(err) => {
                tracing::info!(peer = %self.peer_text, %err, "undecodable request");
                let reply = Outgoing::error(0, RequestError::Undecodable(err));
                // Before hello there is no conversation to keep.
                return if self.greeted {
                    Step::Continue(reply)
                } else {
                    Step::Close(reply)
                };
            }
        };
        let id = request.id;
        if self.greeted {
            if let Err(refused) = self.check_role(request.body.as_ref()) {
                return Step::Continue(Outgoing::error(id, refused));
            }
            if let Err(refused) = self.settle(request.body.as_ref()).await {
                return Step::Continue(Outgoing::error(id, refused));
            }
        }
        self.serve(id, request.body, frame_len).await
    }

    /// The role check: a denial is logged, its event appended (unawaited,
    /// rate limited), and the request refused.
    fn check_role(&self, body: Option<&request::Body>) -> Result<(), RequestError> {
        let Some((role, name)) = body.and_then(required_role) else {
            return Ok(());
        };
        let shared = self.shared;
        let Err(denial) = shared.access.check(self.peer, self.peer_text, name, role) else {
            return Ok(());
        };
        tracing::warn!(peer = %self.peer_text, request = name, role = role.name(), "permission denied");
        let refused = RequestError::PermissionDenied {
            peer: *self.peer,
            role: denial.role,
            request: denial.request,
        };
        record_denial(
            &shared.sequencer,
            &shared.queued_events,
            &shared.access,
            self.peer,
            denial,
        );
        Err(refused)
    }

    /// The settle gate, read your writes: whatever reads the log first waits
    /// until the store holds every event acked so far (some may be in the
    /// ack journal only).
    async fn settle(&self, body: Option<&request::Body>) -> Result<(), RequestError> {
        let reads_log = !matches!(
            body,
            None | Some(request::Body::Hello(_) | request::Body::Append(_))
        );
        if !reads_log {
            return Ok(());
        }
        match self.shared.sequencer.settle().await {
            Ok(()) => Ok(()),
            // A full disk keeps the journaled tail out of the store: status
            // and reads answer from what the store holds (they must work
            // while the disk is full); anchors, proofs and attestations,
            // which must cover every acked event, are refused.
            Err(SettleError::StorageFull(cause))
                if matches!(
                    body,
                    Some(
                        request::Body::Status(_)
                            | request::Body::Read(_)
                            | request::Body::Follow(_)
                    )
                ) =>
            {
                tracing::debug!(err = %cause, "serving from the store while the ack journal cannot be applied");
                Ok(())
            }
            Err(err) => Err(RequestError::from(err)),
        }
    }

    /// The request's handler, once decode, roles and settling allow it.
    async fn serve(&mut self, id: u64, body: Option<request::Body>, frame_len: usize) -> Step {
        let shared = self.shared;
        let body = match body {
            Some(request::Body::Hello(hello)) => return self.hello(id, hello),
            _ if !self.greeted => {
                tracing::info!(peer = %self.peer_text, "request before hello; closing");
                return Step::Close(Outgoing::error(id, RequestError::HelloFirst));
            }
            Some(request::Body::Append(append)) => {
                return match handlers::submit_append(
                    append,
                    frame_len,
                    self.peer,
                    shared,
                    self.shutdown,
                )
                .await
                {
                    Ok(Some(ack)) => Step::Continue(Outgoing::Append { id, ack }),
                    Ok(None) => Step::Stop,
                    Err(error) => Step::Continue(Outgoing::error(id, error)),
                };
            }
            Some(request::Body::Follow(follow)) => {
                return Step::Continue(Outgoing::Follow {
                    id,
                    from: follow.from_seq,
                    filter: follow.filter.unwrap_or_default(),
                });
            }
            Some(request::Body::Read(read)) => handlers::read_page(read, shared).await,
            Some(request::Body::Status(_)) => Ok(handlers::status(shared)),
            Some(request::Body::Attest(attest)) => {
                handlers::fresh_attestation(attest, shared).await
            }
            Some(request::Body::Anchor(_)) => handlers::anchor_now(shared).await,
            Some(request::Body::ReadAnchors(read)) => {
                handlers::read_anchors(read.from_counter, read.max_anchors, shared).await
            }
            Some(request::Body::ProveInclusion(prove)) => {
                handlers::prove_inclusion(prove.seq, prove.size, shared).await
            }
            Some(request::Body::ProveConsistency(prove)) => {
                handlers::prove_consistency(prove.from_size, prove.to_size, shared).await
            }
            Some(request::Body::Erase(request)) => {
                handlers::erase(request, self.peer, shared).await
            }
            None => Err(RequestError::UnknownRequest),
        };
        Step::Continue(match body {
            Ok(body) => Outgoing::Ready(Response {
                id,
                body: Some(body),
            }),
            Err(error) => Outgoing::error(id, error),
        })
    }

    /// The first request: agrees on the protocol and names the log.
    fn hello(&mut self, id: u64, hello: proto::Hello) -> Step {
        if self.greeted {
            return Step::Continue(Outgoing::error(id, RequestError::HelloRepeated));
        }
        if hello.protocol_version == 0 {
            return Step::Close(Outgoing::error(id, RequestError::ProtocolVersionZero));
        }
        self.greeted = true;
        tracing::debug!(peer = %self.peer_text, client = %hello.client_name, "hello");
        Step::Continue(Outgoing::Ready(Response {
            id,
            body: Some(response::Body::Hello(proto::HelloReply {
                protocol_version: tally_client::PROTOCOL_VERSION,
                server_name: self.shared.server_name.clone(),
                log_id: self.shared.store.log_id().to_vec(),
                max_frame_bytes: saturating_u32(self.shared.limits.max_frame),
                max_events_per_append: saturating_u32(self.shared.limits.max_events_per_append),
                read_filters: true,
            })),
        }))
    }
}

/// A limit for the wire's u32 fields (every configurable limit fits).
fn saturating_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// Appends a denial's event to the log, if the rate limit left it one. Never
/// waits, and nobody awaits its ack: a full queue counts the denial as
/// suppressed.
pub(crate) fn record_denial(
    sequencer: &SequencerHandle,
    queued: &Arc<AtomicU64>,
    access: &Access,
    peer: &PeerId,
    denial: Denial,
) {
    let Some(event) = denial.event else {
        return;
    };
    let received = event.client_time_unix_nanos;
    let (reply, _) = oneshot::channel();
    let job = AppendJob::new(
        vec![*event],
        // The encoding buffer's first guess: a denial event is ~200 bytes.
        256,
        peer.to_proto(),
        received,
        reply,
        None,
        QueuedEvents::new(queued, 1),
        // The daemon's own denial record: its content is its payload only.
        &crate::content::PersonalAttributes::default(),
    );
    if sequencer.try_submit(job).is_err() {
        access.denial_not_written();
    }
}
