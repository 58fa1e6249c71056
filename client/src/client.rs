//! An async client for tallyd.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tally_client::ClientError> {
//! use tally_client::{proto::Event, Client};
//! let mut client = Client::connect("/run/tally/tally.sock", "my-agent").await?;
//! let acks = client
//!     .append(vec![Event { kind: "prompt".into(), actor: "agent-7".into(), ..Default::default() }])
//!     .await?;
//! println!("durable as seq {}", acks[0].seq);
//! # Ok(()) }
//! ```
//!
//! Without a timeout a call waits as long as the daemon takes (a follower
//! waits for new records forever). [`Client::connect_with_timeout`] and
//! [`Client::set_timeout`] bound every wait for the daemon, each write and
//! each response (including [`Follow::next`]'s), with
//! [`ClientError::Timeout`].
//!
//! A request larger than the daemon's `max_frame_bytes` ([`Client::limits`])
//! is refused before anything is written ([`ClientError::FrameTooLarge`]).

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::filter;
use crate::frame::{self, MAX_RESPONSE_FRAME};
use crate::proto::{self, request, response, ErrorCode, Event, Request, Response};
use crate::PROTOCOL_VERSION;

/// An acknowledged event: durable and chained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub seq: u64,
    pub entry_hash: [u8; 32],
}

/// What went wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon closed the connection")]
    Closed,
    #[error("undecodable response from the daemon: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("daemon error ({code:?}): {message}")]
    Server { code: ErrorCode, message: String },
    #[error("protocol violation by the daemon: {0}")]
    Protocol(String),
    /// The daemon did not take a request, or did not answer, within the
    /// client's timeout. The connection is then in an unknown state (a
    /// response may still come): drop the client.
    #[error("the daemon did not answer within {after:?}")]
    Timeout { after: Duration },
    /// The request's frame is larger than the daemon accepts
    /// ([`Limits::max_frame_bytes`]); nothing was written, the connection
    /// stays usable.
    #[error("a request of {bytes} bytes is over the daemon's limit of {limit} bytes per frame (max_frame_bytes); nothing was sent")]
    FrameTooLarge { bytes: usize, limit: usize },
    /// The daemon predates typed attributes (its hello carries no limits) and
    /// would drop them as an unknown field while acking the event.
    #[error("the daemon predates typed attributes and would store this event without them; nothing was sent (upgrade tallyd, or send the values as string attributes)")]
    TypedAttributesUnsupported,
    /// The daemon predates read filters (`HelloReply.read_filters`) and would
    /// ignore them, sending records that do not match.
    #[error("the daemon predates read filters (--since, --kind, ..., tail -n with a filter) and would ignore them; nothing was sent (upgrade tallyd)")]
    FiltersUnsupported,
}

/// The daemon's limits on one request, from its hello; the protocol's
/// defaults ([`frame::DEFAULT_MAX_FRAME`],
/// [`frame::DEFAULT_MAX_EVENTS_PER_APPEND`]) for a daemon that sends 0 (one
/// that predates these fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request frame, in bytes of protobuf (without the 4-byte length).
    pub max_frame_bytes: usize,
    /// Most events in one append.
    pub max_events_per_append: usize,
}

/// How long a failed write waits for the daemon's reason (its error frame,
/// e.g. FRAME_TOO_LARGE, sent just before it closed): it is already in the
/// socket buffer or arriving, so a short wait suffices.
const CLOSING_REASON_WAIT: Duration = Duration::from_secs(2);

/// A connection to tallyd that has completed the hello exchange.
#[derive(Debug)]
pub struct Client<S = UnixStream> {
    framed: Framed<S, LengthDelimitedCodec>,
    next_id: u64,
    hello: proto::HelloReply,
    /// Bounds each write and each wait for a response; `None`: unbounded.
    timeout: Option<Duration>,
    /// Requests sent whose response has not been read yet: after a failed
    /// write, the next frame is the daemon's reason for closing only when
    /// this is 0 (otherwise it is a pipelined append's acks, which the caller
    /// must still receive).
    unanswered: u64,
}

impl Client<UnixStream> {
    /// Connects to the daemon's Unix socket and says hello.
    pub async fn connect(path: impl AsRef<Path>, client_name: &str) -> Result<Self, ClientError> {
        Client::connect_bounded(path.as_ref(), client_name, None).await
    }

    /// [`Client::connect`], with the connect, the hello and every later
    /// call bounded by `timeout` ([`ClientError::Timeout`]).
    pub async fn connect_with_timeout(
        path: impl AsRef<Path>,
        client_name: &str,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Client::connect_bounded(path.as_ref(), client_name, Some(timeout)).await
    }

    async fn connect_bounded(
        path: &Path,
        client_name: &str,
        timeout: Option<Duration>,
    ) -> Result<Self, ClientError> {
        let stream = bounded(timeout, async {
            UnixStream::connect(path)
                .await
                .map_err(|source| ClientError::Connect {
                    path: path.display().to_string(),
                    source,
                })
        })
        .await?;
        Client::handshake_with_timeout(stream, client_name, timeout).await
    }
}

impl Client<tokio_vsock::VsockStream> {
    /// Connects to the daemon over vsock (from a guest VM: `cid` 2 is the
    /// host) and says hello.
    pub async fn connect_vsock(
        cid: u32,
        port: u32,
        client_name: &str,
    ) -> Result<Self, ClientError> {
        let stream = tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(cid, port))
            .await
            .map_err(|source| ClientError::Connect {
                path: format!("vsock {cid}:{port}"),
                source,
            })?;
        Client::handshake(stream, client_name).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Says hello over an already connected stream.
    pub async fn handshake(stream: S, client_name: &str) -> Result<Self, ClientError> {
        Client::handshake_with_timeout(stream, client_name, None).await
    }

    /// [`Client::handshake`], with the hello and every later call bounded
    /// by `timeout` (`None`: unbounded).
    pub async fn handshake_with_timeout(
        stream: S,
        client_name: &str,
        timeout: Option<Duration>,
    ) -> Result<Self, ClientError> {
        let mut client = Client {
            framed: Framed::new(stream, frame::codec(MAX_RESPONSE_FRAME)),
            next_id: 1,
            hello: proto::HelloReply::default(),
            timeout,
            unanswered: 0,
        };
        let hello = request::Body::Hello(proto::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: client_name.to_owned(),
        });
        let id = client.send(hello).await?;
        match client.recv(id).await? {
            response::Body::Hello(reply) => {
                if reply.protocol_version != PROTOCOL_VERSION {
                    return Err(ClientError::Protocol(format!(
                        "daemon speaks protocol {}, this client {PROTOCOL_VERSION}",
                        reply.protocol_version
                    )));
                }
                client.hello = reply;
                Ok(client)
            }
            other => Err(unexpected("hello", &other)),
        }
    }

    /// Bounds each later write and wait for a response by `timeout`
    /// (`None`: unbounded).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// The bound on each write and wait for a response, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The daemon's hello reply (its name, the log id).
    pub fn server_hello(&self) -> &proto::HelloReply {
        &self.hello
    }

    /// The daemon's limits on one request (from its hello).
    pub fn limits(&self) -> Limits {
        let or_default = |value: u32, default: usize| match value {
            0 => default,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        Limits {
            max_frame_bytes: or_default(self.hello.max_frame_bytes, frame::DEFAULT_MAX_FRAME),
            max_events_per_append: or_default(
                self.hello.max_events_per_append,
                frame::DEFAULT_MAX_EVENTS_PER_APPEND,
            ),
        }
    }

    /// Appends events; returns once they are durable, with one ack each.
    pub async fn append(&mut self, events: Vec<Event>) -> Result<Vec<Ack>, ClientError> {
        let id = self.send_append(events).await?;
        self.recv_append(id).await
    }

    /// Sends an append without waiting for its ack, for pipelining. Acks come
    /// back in request order: call [`Client::recv_append`] once per send.
    /// A request over [`Limits::max_frame_bytes`] is refused with
    /// [`ClientError::FrameTooLarge`] before anything is written.
    pub async fn send_append(&mut self, events: Vec<Event>) -> Result<u64, ClientError> {
        // Limits and typed attributes came in the same protocol change: a
        // daemon whose hello has no limits would ack typed attributes it drops.
        if self.hello.max_frame_bytes == 0
            && events
                .iter()
                .any(|event| !event.typed_attributes.is_empty())
        {
            return Err(ClientError::TypedAttributesUnsupported);
        }
        self.send(request::Body::Append(proto::AppendRequest { events }))
            .await
    }

    /// Receives the acks of the append sent with `id`. Cancel-safe: dropped
    /// before it returns (e.g. in a `select!`), it has consumed nothing, and
    /// a later call receives the same response.
    pub async fn recv_append(&mut self, id: u64) -> Result<Vec<Ack>, ClientError> {
        match self.recv(id).await? {
            response::Body::Append(reply) => reply.acks.into_iter().map(ack).collect(),
            other => Err(unexpected("append", &other)),
        }
    }

    /// Reads up to `max_records` stored records from `from_seq` (0 = the
    /// daemon's page size). An empty result means `from_seq` is the log size.
    pub async fn read(
        &mut self,
        from_seq: u64,
        max_records: u32,
    ) -> Result<Vec<proto::StoredRecord>, ClientError> {
        let id = self
            .send(request::Body::Read(proto::ReadRequest {
                from_seq,
                max_records,
                ..Default::default()
            }))
            .await?;
        match self.recv(id).await? {
            response::Body::Records(records) => Ok(records.records),
            other => Err(unexpected("read", &other)),
        }
    }

    /// One page of a read as `read` describes it (a filter, the end of
    /// the scan, oldest or newest first), with where its scan stopped
    /// (`Records.resume_seq`). Refused before sending when the request uses
    /// filters and the daemon predates them. The daemon evaluates the filter;
    /// a careful caller checks it again on what it gets
    /// ([`crate::filter::matches`]).
    pub async fn read_where(
        &mut self,
        read: proto::ReadRequest,
    ) -> Result<proto::Records, ClientError> {
        let filtered = read.to_seq != 0
            || read.newest
            || read.filter.as_ref().is_some_and(|f| !filter::is_empty(f));
        if filtered && !self.hello.read_filters {
            return Err(ClientError::FiltersUnsupported);
        }
        let id = self.send(request::Body::Read(read)).await?;
        match self.recv(id).await? {
            response::Body::Records(records) => Ok(records),
            other => Err(unexpected("read", &other)),
        }
    }

    /// The log's size, head and store figures.
    pub async fn status(&mut self) -> Result<proto::StatusReply, ClientError> {
        let id = self
            .send(request::Body::Status(proto::StatusRequest {}))
            .await?;
        match self.recv(id).await? {
            response::Body::Status(status) => Ok(status),
            other => Err(unexpected("status", &other)),
        }
    }

    /// A fresh TPM attestation for `nonce` (1 to 64 bytes): the bytes of a
    /// `tally_attest::anchor::FreshAttestation`. With `since_size` (the log
    /// size of the newest anchor the verifier holds, e.g. an export's), it
    /// also carries every anchor made after that one and a consistency proof.
    pub async fn attest(
        &mut self,
        nonce: Vec<u8>,
        since_size: Option<u64>,
    ) -> Result<Vec<u8>, ClientError> {
        let id = self
            .send(request::Body::Attest(proto::AttestRequest {
                nonce,
                since_size,
            }))
            .await?;
        match self.recv(id).await? {
            response::Body::Attest(reply) => Ok(reply.attestation),
            other => Err(unexpected("attest", &other)),
        }
    }

    /// Anchors the log at its current size now; returns the counter value and the
    /// `tally_attest::anchor::AnchorRecord` bytes.
    pub async fn anchor(&mut self) -> Result<(u64, Vec<u8>), ClientError> {
        let id = self
            .send(request::Body::Anchor(proto::AnchorRequest {}))
            .await?;
        match self.recv(id).await? {
            response::Body::Anchor(reply) => Ok((reply.counter, reply.anchor)),
            other => Err(unexpected("anchor", &other)),
        }
    }

    /// Erases the content of the records `request` selects (role admin;
    /// docs/DESIGN.md section 3b). Returns once the daemon has destroyed
    /// their keys and appended its `tally.erasure` records.
    pub async fn erase(
        &mut self,
        request: proto::EraseRequest,
    ) -> Result<proto::EraseReply, ClientError> {
        let id = self.send(request::Body::Erase(request)).await?;
        match self.recv(id).await? {
            response::Body::Erase(reply) => Ok(reply),
            other => Err(unexpected("erase", &other)),
        }
    }

    /// Stored anchors with counter values from `from_counter` on (0 = the
    /// daemon's page size).
    pub async fn read_anchors(
        &mut self,
        from_counter: u64,
        max_anchors: u32,
    ) -> Result<Vec<proto::StoredAnchor>, ClientError> {
        let id = self
            .send(request::Body::ReadAnchors(proto::ReadAnchorsRequest {
                from_counter,
                max_anchors,
            }))
            .await?;
        match self.recv(id).await? {
            response::Body::Anchors(anchors) => Ok(anchors.anchors),
            other => Err(unexpected("read_anchors", &other)),
        }
    }

    /// An inclusion proof of record `seq` against the anchor at `size` (0:
    /// the newest): the bytes of a `tally_attest::proof::InclusionProofFile`.
    pub async fn prove_inclusion(&mut self, seq: u64, size: u64) -> Result<Vec<u8>, ClientError> {
        let id = self
            .send(request::Body::ProveInclusion(
                proto::ProveInclusionRequest { seq, size },
            ))
            .await?;
        match self.recv(id).await? {
            response::Body::Proof(reply) => Ok(reply.proof),
            other => Err(unexpected("prove_inclusion", &other)),
        }
    }

    /// A consistency proof between the anchors at `from_size` and `to_size`
    /// (0: the newest): the bytes of a `tally_attest::proof::ConsistencyProofFile`.
    pub async fn prove_consistency(
        &mut self,
        from_size: u64,
        to_size: u64,
    ) -> Result<Vec<u8>, ClientError> {
        let id = self
            .send(request::Body::ProveConsistency(
                proto::ProveConsistencyRequest { from_size, to_size },
            ))
            .await?;
        match self.recv(id).await? {
            response::Body::Proof(reply) => Ok(reply.proof),
            other => Err(unexpected("prove_consistency", &other)),
        }
    }

    /// Follows the log from `from_seq`: every stored record, then each new one
    /// as it is committed. The connection is dedicated to the stream.
    pub async fn follow(self, from_seq: u64) -> Result<Follow<S>, ClientError> {
        self.follow_where(from_seq, proto::Filter::default()).await
    }

    /// Follows the log from `from_seq`, receiving only the records that match
    /// `filter` (evaluated by the daemon). Refused before sending when the
    /// filter is not empty and the daemon predates filters.
    pub async fn follow_where(
        mut self,
        from_seq: u64,
        filter: proto::Filter,
    ) -> Result<Follow<S>, ClientError> {
        let filter = if filter::is_empty(&filter) {
            None
        } else if self.hello.read_filters {
            Some(filter)
        } else {
            return Err(ClientError::FiltersUnsupported);
        };
        let id = self
            .send(request::Body::Follow(proto::FollowRequest {
                from_seq,
                filter,
            }))
            .await?;
        Ok(Follow {
            client: self,
            id,
            pending: Vec::new().into_iter(),
            examined: from_seq,
        })
    }

    async fn send(&mut self, body: request::Body) -> Result<u64, ClientError> {
        let id = self.next_id;
        let request = Request {
            id,
            body: Some(body),
        };
        // The daemon would read the length, refuse the frame and close the
        // connection mid-write: the caller would see only "Broken pipe".
        let bytes = request.encoded_len();
        let limit = self.limits().max_frame_bytes;
        if bytes > limit {
            return Err(ClientError::FrameTooLarge { bytes, limit });
        }
        self.next_id += 1;
        let framed = &mut self.framed;
        let sent = bounded(self.timeout, async {
            framed.send(frame::encode(&request)).await?;
            Ok(())
        })
        .await;
        match sent {
            Ok(()) => {
                self.unanswered += 1;
                Ok(id)
            }
            Err(ClientError::Io(err)) if self.unanswered == 0 => {
                Err(self.closing_reason().await.unwrap_or(ClientError::Io(err)))
            }
            Err(err) => Err(err),
        }
    }

    /// After a failed write with no response outstanding: the daemon's error
    /// if it sent one before closing (a daemon configured with a smaller
    /// max_frame_bytes than its hello said, or one that sends 0, answers
    /// FRAME_TOO_LARGE and closes), which says more than the write's error.
    async fn closing_reason(&mut self) -> Option<ClientError> {
        let wait = self
            .timeout
            .map_or(CLOSING_REASON_WAIT, |t| t.min(CLOSING_REASON_WAIT));
        let frame = tokio::time::timeout(wait, self.framed.next())
            .await
            .ok()??
            .ok()?;
        match Response::decode(frame).ok()?.body? {
            response::Body::Error(error) => Some(ClientError::Server {
                code: error.code(),
                message: error.message,
            }),
            _ => None,
        }
    }

    async fn recv(&mut self, id: u64) -> Result<response::Body, ClientError> {
        let framed = &mut self.framed;
        let frame = bounded(self.timeout, async {
            Ok(framed.next().await.ok_or(ClientError::Closed)??)
        })
        .await?;
        // A follow's many responses answer one request: saturate.
        self.unanswered = self.unanswered.saturating_sub(1);
        let response = Response::decode(frame)?;
        match response.body {
            Some(response::Body::Error(error)) => Err(ClientError::Server {
                code: error.code(),
                message: error.message,
            }),
            Some(_) if response.id != id => Err(ClientError::Protocol(format!(
                "expected the response to request {id}, got one to {}",
                response.id
            ))),
            Some(body) => Ok(body),
            None => Err(ClientError::Protocol("response without a body".into())),
        }
    }
}

/// A live stream of stored records, from [`Client::follow`].
#[derive(Debug)]
pub struct Follow<S = UnixStream> {
    client: Client<S>,
    id: u64,
    pending: std::vec::IntoIter<proto::StoredRecord>,
    /// Every seq below this has been examined by the daemon (sent, or
    /// skipped by the filter).
    examined: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Follow<S> {
    /// Where a new follow would resume without missing or repeating a record
    /// that [`Follow::next`] returned: the seq of the next record not yet
    /// returned, or the seq the daemon has examined up to.
    pub fn resume_seq(&self) -> u64 {
        self.pending
            .as_slice()
            .first()
            .map_or(self.examined, |record| record.seq)
    }

    /// The next record; waits for new records once caught up.
    pub async fn next(&mut self) -> Result<proto::StoredRecord, ClientError> {
        loop {
            if let Some(record) = self.pending.next() {
                return Ok(record);
            }
            match self.client.recv(self.id).await? {
                response::Body::Records(page) => {
                    let after_last = page.records.last().map_or(0, |record| record.seq + 1);
                    self.examined = self.examined.max(after_last).max(page.resume_seq);
                    self.pending = page.records.into_iter();
                }
                other => return Err(unexpected("follow", &other)),
            }
        }
    }
}

/// `work`, failing with [`ClientError::Timeout`] once `timeout` has passed.
async fn bounded<T>(
    timeout: Option<Duration>,
    work: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    match timeout {
        None => work.await,
        Some(after) => tokio::time::timeout(after, work)
            .await
            .unwrap_or(Err(ClientError::Timeout { after })),
    }
}

fn ack(ack: proto::Ack) -> Result<Ack, ClientError> {
    let entry_hash = ack.entry_hash.as_slice().try_into().map_err(|_| {
        ClientError::Protocol(format!("ack entry hash is {} bytes", ack.entry_hash.len()))
    })?;
    Ok(Ack {
        seq: ack.seq,
        entry_hash,
    })
}

fn unexpected(request: &str, body: &response::Body) -> ClientError {
    let kind = match body {
        response::Body::Hello(_) => "hello",
        response::Body::Append(_) => "append",
        response::Body::Records(_) => "records",
        response::Body::Status(_) => "status",
        response::Body::Error(_) => "error",
        response::Body::Attest(_) => "attest",
        response::Body::Anchor(_) => "anchor",
        response::Body::Anchors(_) => "anchors",
        response::Body::Proof(_) => "proof",
        response::Body::Erase(_) => "erase",
    };
    ClientError::Protocol(format!("a {kind} response to a {request} request"))
}

#[cfg(test)]
mod tests;
