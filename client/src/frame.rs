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

#[cfg(test)]
mod tests {
    //! Property test: any request survives encode -> frame -> split stream ->
    //! decode unchanged, in order; a frame over the limit is refused.
    use bytes::BytesMut;
    use prost::Message;
    use rand::{Rng, SeedableRng};
    use tokio_util::codec::{Decoder, Encoder};

    use super::*;
    use crate::proto::{request, AppendRequest, Event, ReadRequest, Request};

    fn random_request(rng: &mut impl Rng, id: u64) -> Request {
        let body = if rng.gen_bool(0.5) {
            let events = (0..rng.gen_range(1..5))
                .map(|_| Event {
                    kind: "k".repeat(rng.gen_range(0..20)),
                    actor: rng.gen::<u64>().to_string(),
                    payload: (0..rng.gen_range(0..3000)).map(|_| rng.gen()).collect(),
                    attributes: (0..rng.gen_range(0..4))
                        .map(|i| (format!("a{i}"), rng.gen::<u32>().to_string()))
                        .collect(),
                    client_time_unix_nanos: rng.gen(),
                    ..Default::default()
                })
                .collect();
            request::Body::Append(AppendRequest { events })
        } else {
            request::Body::Read(ReadRequest {
                from_seq: rng.gen(),
                max_records: rng.gen(),
            })
        };
        Request {
            id,
            body: Some(body),
        }
    }

    #[test]
    fn framing_round_trips_whatever_the_read_boundaries() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x7a11);
        for round in 0..200 {
            let requests: Vec<Request> = (0..rng.gen_range(1..8))
                .map(|id| random_request(&mut rng, id))
                .collect();
            let mut encoder = codec(DEFAULT_MAX_FRAME);
            let mut wire = BytesMut::new();
            for request in &requests {
                encoder.encode(encode(request), &mut wire).unwrap();
            }
            // Feed the stream back in random-sized pieces.
            let mut decoder = codec(DEFAULT_MAX_FRAME);
            let mut buffer = BytesMut::new();
            let mut decoded = Vec::new();
            let mut rest = &wire[..];
            while !rest.is_empty() {
                let take = rng.gen_range(1..=rest.len().min(700));
                buffer.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                while let Some(frame) = decoder.decode(&mut buffer).unwrap() {
                    decoded.push(Request::decode(frame).unwrap());
                }
            }
            assert_eq!(decoded, requests, "round {round}");
            assert!(buffer.is_empty());
        }
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_from_its_header() {
        let mut decoder = codec(1024);
        let mut buffer = BytesMut::from(&2048u32.to_be_bytes()[..]);
        let err = decoder.decode(&mut buffer).unwrap_err();
        assert!(is_frame_too_large(&err), "{err}");
    }
}
