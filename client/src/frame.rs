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

/// Default most events in one append request, the daemon's
/// `max_events_per_append` (a client uses it when the daemon's hello says 0:
/// daemons that predate `HelloReply.max_events_per_append`).
pub const DEFAULT_MAX_EVENTS_PER_APPEND: usize = 10_000;

/// The most bytes a `Request` adds around the events of its `AppendRequest`:
/// the id (1 tag byte, a varint of at most 10), the body's tag (1) and its
/// length (a varint of at most 5 for any frame under 4 GiB). A batch whose
/// [`append_event_len`]s sum to at most `max_frame - APPEND_ENVELOPE_BYTES`
/// fits in one frame whatever its request id.
pub const APPEND_ENVELOPE_BYTES: usize = 1 + 10 + 1 + 5;

/// The bytes `event` adds to the encoding of an `AppendRequest`: its field
/// tag, its length and its encoding (prost's own arithmetic, not a guess).
pub fn append_event_len(event: &crate::proto::Event) -> usize {
    prost::encoding::message::encoded_len(1, event)
}

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
                ..Default::default()
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
    fn an_append_is_its_events_lengths_plus_at_most_the_envelope() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xe7e1);
        for round in 0..300 {
            let Some(request::Body::Append(append)) = random_append(&mut rng).body else {
                unreachable!()
            };
            let events_len: usize = append.events.iter().map(append_event_len).sum();
            assert_eq!(append.encoded_len(), events_len, "round {round}");
            // The extremes of the id's varint: 1 byte and 10.
            for id in [0, 1, rng.gen(), u64::MAX] {
                let request = Request {
                    id,
                    body: Some(request::Body::Append(append.clone())),
                };
                let len = encode(&request).len();
                assert!(
                    len > events_len && len <= events_len + APPEND_ENVELOPE_BYTES,
                    "round {round}, id {id}: {len} vs {events_len}"
                );
            }
        }
        // One event near the 4 MiB limit: its length varint is 4 bytes.
        let big = Event {
            kind: "k".into(),
            payload: vec![7; DEFAULT_MAX_FRAME - 100],
            ..Default::default()
        };
        let request = Request {
            id: u64::MAX,
            body: Some(request::Body::Append(AppendRequest {
                events: vec![big.clone()],
            })),
        };
        assert!(encode(&request).len() <= append_event_len(&big) + APPEND_ENVELOPE_BYTES);
    }

    fn random_append(rng: &mut impl Rng) -> Request {
        loop {
            let request = random_request(rng, 0);
            if matches!(request.body, Some(request::Body::Append(_))) {
                return request;
            }
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
