//! Framing: each message is a 4-byte big-endian length followed by that many
//! bytes of protobuf. Shared by the daemon and the client so both sides agree
//! on limits and errors.

use bytes::{Bytes, BytesMut};
use prost::Message;
use tokio_util::codec::LengthDelimitedCodec;

/// Default largest request frame, in bytes, the daemon accepts (4 MiB).
pub const DEFAULT_MAX_FRAME: usize = 4 << 20;

/// Largest request frame a daemon may be configured to accept (16 MiB).
pub const MAX_CONFIGURABLE_FRAME: usize = 16 << 20;

/// Largest response frame a client accepts (64 MiB). A response can be
/// larger than the request that caused it: a stored record adds its header
/// and the daemon's fields to the event, and a page of records adds framing.
/// The daemon keeps every response under `2 * max_frame + 64 KiB`, which
/// stays below this for any configurable `max_frame`.
pub const MAX_RESPONSE_FRAME: usize = 64 << 20;

/// A codec for Tally frames that refuses frames longer than `max_frame` bytes
/// before buffering them.
pub fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max_frame)
        .new_codec()
}

/// Encodes a message as a frame payload (the codec adds the length).
pub fn encode<M: Message>(message: &M) -> Bytes {
    let mut buf = BytesMut::with_capacity(message.encoded_len());
    // Encoding into a buffer with enough capacity cannot fail.
    let _ = message.encode(&mut buf);
    buf.freeze()
}

/// True when an I/O error from the codec means "frame longer than the limit".
pub fn is_frame_too_large(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::InvalidData
        && err
            .get_ref()
            .is_some_and(|inner| inner.is::<tokio_util::codec::LengthDelimitedCodecError>())
}
