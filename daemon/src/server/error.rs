//! Why a request (or a connection) was refused: one error type for the whole
//! request path, and the one mapping from it to the wire's `ErrorCode`
//! ([`RequestError::code`]). The message sent with the code is the error's
//! text.

use tally_client::attributes::EventError;
use tally_client::proto::{self, response, ErrorCode, Response};
use tokio::task::JoinError;

use crate::access::Role;
use crate::anchor::{AnchorError, FreshError};
use crate::erasure::SelectionError;
use crate::limits::Refusal;
use crate::peer::PeerId;
use crate::sequencer::{AppendError, FullCause, SettleError, StorageCause};
use crate::store::StoreError;

/// Largest nonce accepted for a fresh attestation.
pub const MAX_NONCE_BYTES: usize = 64;

/// A refused request or connection, as precise as the protocol allows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    // The connection.
    #[error("{0}")]
    ConnectionRefused(Refusal),
    #[error("no request for {secs} s; closing")]
    Idle { secs: u64 },
    #[error("frame exceeds the maximum of {max} bytes")]
    FrameTooLarge { max: usize },
    #[error("undecodable request: {0}")]
    Undecodable(prost::DecodeError),
    #[error("unknown or missing request type")]
    UnknownRequest,

    // Hello and roles.
    #[error("the first request must be hello")]
    HelloFirst,
    #[error("hello was already sent on this connection")]
    HelloRepeated,
    #[error("protocol version 0 is not valid")]
    ProtocolVersionZero,
    #[error("{peer} lacks the '{}' role needed for {request}", .role.name())]
    PermissionDenied {
        peer: PeerId,
        role: Role,
        request: &'static str,
    },

    // Appends.
    #[error("append without events")]
    NoEvents,
    #[error("{count} events in one append; the maximum is {max}")]
    TooManyEvents { count: usize, max: usize },
    /// Event `index` (0-based, in the append's list) breaks a rule of the
    /// protocol (`tally_client::attributes::check_client_event`): nothing of the
    /// append is stored.
    #[error("event {index}: {source}")]
    InvalidEvent { index: usize, source: EventError },
    #[error("{peer} exceeded its append rate of {rate} events/s; retry later")]
    RateLimited { peer: PeerId, rate: u64 },
    #[error("the sequencer has stopped")]
    SequencerStopped,
    #[error("the sequencer dropped the request")]
    SequencerDropped,
    /// The store is full (disk, quota or map): nothing of the append was stored.
    #[error("{reason}")]
    StorageFull { reason: FullCause },
    /// The append's commit failed: nothing of it was stored.
    #[error("{reason}")]
    AppendFailed { reason: StorageCause },

    // Reads and proofs.
    /// Acked events did not become readable (see `SequencerHandle::settle`).
    #[error(transparent)]
    NotSettled(#[from] SettleError),
    #[error("seq {from} is beyond the log (size {size})")]
    BeyondLog { from: u64, size: u64 },
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// The blocking task reading a page of records failed.
    #[error("{0}")]
    PageTask(JoinError),
    /// Any other blocking task failed.
    #[error("{0}")]
    Task(JoinError),
    // Erasure.
    #[error(transparent)]
    Erase(#[from] SelectionError),

    #[error("record {seq} is missing")]
    RecordMissing { seq: u64 },
    #[error("the log has no anchor yet: proofs are checked against TPM-anchored checkpoints (tally anchor)")]
    NoAnchorYet,
    #[error("no anchor covers exactly {size} records: proofs are made against anchored sizes (see tally export / status)")]
    NotAnchoredSize { size: u64 },
    #[error("seq {seq} is not in the anchored log of {covered} records")]
    NotInAnchoredLog { seq: u64, covered: u64 },
    #[error("the old size must be an anchored size between 1 and {new_size}")]
    OldSizeOutOfRange { new_size: u64 },

    // The TPM side.
    #[error("this daemon runs without a TPM")]
    NoTpm,
    #[error("the nonce must be 1 to {MAX_NONCE_BYTES} bytes, not {len}")]
    BadNonce { len: usize },
    #[error("anchoring has stopped")]
    AnchoringStopped,
    #[error(transparent)]
    Fresh(#[from] FreshError),
    /// An anchor on demand failed.
    #[error(transparent)]
    AnchorFailed(#[from] AnchorError),
}

impl RequestError {
    /// What the client is told went wrong: the one place an error becomes a code.
    pub fn code(&self) -> ErrorCode {
        use RequestError as E;
        match self {
            E::ConnectionRefused(_) | E::Idle { .. } => ErrorCode::Busy,
            E::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            E::Undecodable(_)
            | E::UnknownRequest
            | E::NoEvents
            | E::InvalidEvent { .. }
            | E::BadNonce { .. }
            | E::Erase(_) => ErrorCode::BadRequest,
            E::HelloFirst | E::HelloRepeated | E::ProtocolVersionZero => ErrorCode::Protocol,
            E::PermissionDenied { .. } => ErrorCode::PermissionDenied,
            E::TooManyEvents { .. } => ErrorCode::TooManyEvents,
            E::RateLimited { .. } => ErrorCode::RateLimited,
            E::SequencerStopped | E::AnchoringStopped => ErrorCode::ShuttingDown,
            E::SequencerDropped | E::Task(_) => ErrorCode::Internal,
            E::StorageFull { .. } | E::NotSettled(SettleError::StorageFull(_)) => {
                ErrorCode::StorageFull
            }
            E::AppendFailed { .. }
            | E::NotSettled(_)
            | E::Storage(_)
            | E::PageTask(_)
            | E::RecordMissing { .. } => ErrorCode::Storage,
            E::BeyondLog { .. }
            | E::NoAnchorYet
            | E::NotAnchoredSize { .. }
            | E::NotInAnchoredLog { .. }
            | E::OldSizeOutOfRange { .. }
            | E::Fresh(
                FreshError::SinceBeyondLog { .. }
                | FreshError::SinceNotAnchored { .. }
                | FreshError::TooManySince { .. }
                | FreshError::SinceTooLarge { .. },
            ) => ErrorCode::OutOfRange,
            E::NoTpm | E::Fresh(FreshError::Anchor(_)) | E::AnchorFailed(_) => {
                ErrorCode::TpmUnavailable
            }
        }
    }

    /// The error response to request `id` (0: not tied to a request).
    pub fn response(&self, id: u64) -> Response {
        Response {
            id,
            body: Some(response::Body::Error(proto::Error {
                code: self.code() as i32,
                message: self.to_string(),
            })),
        }
    }

    /// A proof asked against `size` records that no anchor covers (0: the newest).
    pub fn no_anchor(size: u64) -> RequestError {
        if size == 0 {
            RequestError::NoAnchorYet
        } else {
            RequestError::NotAnchoredSize { size }
        }
    }
}

/// The one mapping of a failed append to a request error.
impl From<AppendError> for RequestError {
    fn from(err: AppendError) -> RequestError {
        match err {
            AppendError::Full(reason) => RequestError::StorageFull { reason },
            AppendError::Storage(reason) => RequestError::AppendFailed { reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes and messages clients (and the end-to-end tests) rely on.
    #[test]
    fn each_error_has_its_code_and_message() {
        let peer = PeerId::Unix {
            uid: 5,
            gid: 6,
            pid: 7,
        };
        let cases = [
            (
                RequestError::ConnectionRefused(Refusal::Total { max: 3 }),
                ErrorCode::Busy,
                "too many connections: the daemon serves at most 3",
            ),
            (
                RequestError::Idle { secs: 1 },
                ErrorCode::Busy,
                "no request for 1 s; closing",
            ),
            (
                RequestError::HelloFirst,
                ErrorCode::Protocol,
                "the first request must be hello",
            ),
            (
                RequestError::PermissionDenied {
                    peer,
                    role: Role::Append,
                    request: "append",
                },
                ErrorCode::PermissionDenied,
                "unix uid=5 gid=6 pid=7 lacks the 'append' role needed for append",
            ),
            (
                RequestError::RateLimited { peer, rate: 200 },
                ErrorCode::RateLimited,
                "unix uid=5 gid=6 pid=7 exceeded its append rate of 200 events/s; retry later",
            ),
            (
                RequestError::from(AppendError::Full(FullCause::LogAtMaximum)),
                ErrorCode::StorageFull,
                "the log cannot hold more records",
            ),
            (
                RequestError::from(AppendError::Storage(StorageCause::Stopped)),
                ErrorCode::Storage,
                "the sequencer has stopped",
            ),
            (
                RequestError::from(SettleError::TimedOut { secs: 5 }),
                ErrorCode::Storage,
                "acknowledged events are not readable yet: committing them to the store took over 5 s (see the daemon's log)",
            ),
            (
                RequestError::from(SettleError::StorageFull(std::sync::Arc::new(
                    crate::sequencer::CommitError::Store(StoreError::MapAtMaximum { max: 4096 }),
                ))),
                ErrorCode::StorageFull,
                "acknowledged events in the ack journal cannot be committed to the store yet: the store's map is at its configured maximum of 4096 bytes (map_max_bytes)",
            ),
            (
                RequestError::no_anchor(1001),
                ErrorCode::OutOfRange,
                "no anchor covers exactly 1001 records: proofs are made against anchored sizes (see tally export / status)",
            ),
            (
                RequestError::NotInAnchoredLog {
                    seq: 1000,
                    covered: 1000,
                },
                ErrorCode::OutOfRange,
                "seq 1000 is not in the anchored log of 1000 records",
            ),
            (
                RequestError::Fresh(FreshError::SinceNotAnchored { since_size: 7 }),
                ErrorCode::OutOfRange,
                "no anchor covers exactly 7 records: since_size must be the size of an anchor you hold (the newest anchor of your export)",
            ),
            (
                RequestError::InvalidEvent {
                    index: 3,
                    source: EventError::DuplicateKey { key: "x".into() },
                },
                ErrorCode::BadRequest,
                "event 3: attribute \"x\" appears more than once",
            ),
            (
                RequestError::InvalidEvent {
                    index: 0,
                    source: EventError::EmptyKind,
                },
                ErrorCode::BadRequest,
                "event 0: the event's kind is empty",
            ),
            (
                RequestError::BadNonce { len: 65 },
                ErrorCode::BadRequest,
                "the nonce must be 1 to 64 bytes, not 65",
            ),
            (
                RequestError::from(AnchorError::NoGenesis),
                ErrorCode::TpmUnavailable,
                "the log has no genesis anchor yet",
            ),
        ];
        for (error, code, message) in cases {
            let response = error.response(9);
            assert_eq!(response.id, 9);
            assert_eq!(
                response.body,
                Some(response::Body::Error(proto::Error {
                    code: code as i32,
                    message: message.into(),
                })),
                "{error:?}"
            );
        }
    }
}
