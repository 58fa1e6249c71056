//! Fuzz input -> the bytes a client writes to tallyd's socket.
//!
//! Shared, byte for byte, by the `request_handler` fuzz target (which feeds
//! the stream to `tally_daemon::server::serve_connection` over a duplex pipe)
//! and by `tests/e2e/fuzz_corpus.rs` (which writes it to a real daemon's Unix
//! socket), so a corpus file means the same conversation in both.
//!
//! The first byte picks the mode:
//! * even: **raw**, the rest is written as it is (framing itself is fuzzed);
//! * odd: **structured**, the rest is a list of operations, each well-framed
//!   protobuf requests built from the bytes that follow it, so the fuzzer
//!   reaches the handler behind hello quickly. Bit 1 set: a valid hello is
//!   sent first.
//!
//! Structured operations (op byte modulo 14): 0 hello, 1 append, 2 read,
//! 3 follow, 4 status, 5 attest, 6 anchor, 7 read_anchors, 8 request without
//! a body, 9 a frame of arbitrary bytes, 10 arbitrary unframed bytes, 11 a
//! length header above [`MAX_FRAME`] (the connection is closed after it, so
//! the stream ends there), 12 prove_inclusion, 13 prove_consistency.
//! A read whose count byte has its high bit set, and a follow whose byte
//! after the seq is odd, carry a `Filter` (`Input::filter`: times at the
//! edges of i64 or small, any-of lists, attribute matches) and the read a
//! `to_seq` and `newest`. Exhausted input reads as zeros. An append's events carry string-map and
//! typed attributes: every value kind, and sometimes a shape the daemon must
//! refuse (a missing value, a nested or mixed array; see
//! `Input::attribute_value`), besides empty kinds and keys.

use prost::Message;
use tally_client::proto::{self, request, Request};

/// The daemon settings of both replays (the fuzz target's in-process daemon
/// and the test's `tallyd`): small limits, so the fuzzer reaches each one.
pub const DAEMON_CONFIG: &str = "max_frame_bytes = 4096
max_events_per_append = 8
read_page_records = 16
max_inflight_per_connection = 4
queue_bytes = 65536
queue_jobs = 64
";

/// `max_frame_bytes` in [`DAEMON_CONFIG`].
pub const MAX_FRAME: usize = 4096;

/// Most operations taken from one input: keeps every iteration short.
const MAX_OPS: usize = 64;

/// The byte stream a client sends for fuzz input `data`, to a daemon
/// configured with [`DAEMON_CONFIG`].
pub fn stream(data: &[u8]) -> Vec<u8> {
    let Some((&mode, rest)) = data.split_first() else {
        return Vec::new();
    };
    if mode & 1 == 0 {
        return rest.to_vec();
    }
    let mut input = Input { data: rest };
    let mut out = Vec::new();
    if mode & 2 != 0 {
        push_request(&mut out, &hello(0, 1, "fuzz"));
    }
    for _ in 0..MAX_OPS {
        if input.data.is_empty() {
            break;
        }
        let op = input.byte() % 14;
        let id = u64::from(input.byte());
        let body = match op {
            0 => {
                let version = u32::from(input.byte() % 3);
                let name = input.string(32);
                hello(id, version, &name).body
            }
            1 => Some(request::Body::Append(proto::AppendRequest {
                events: (0..input.byte() % 5).map(|_| input.event()).collect(),
            })),
            2 => {
                let from_seq = input.seq();
                let max = input.byte();
                // The high bit of the count: the read also has a filter,
                // an end and a direction.
                let mut read = proto::ReadRequest {
                    from_seq,
                    max_records: u32::from(max & 0x7f),
                    ..Default::default()
                };
                if max & 0x80 != 0 {
                    read.to_seq = input.seq();
                    read.newest = input.byte() & 1 == 1;
                    read.filter = Some(input.filter());
                }
                Some(request::Body::Read(read))
            }
            3 => Some(request::Body::Follow(proto::FollowRequest {
                from_seq: input.seq(),
                filter: (input.byte() & 1 == 1).then(|| input.filter()),
            })),
            4 => Some(request::Body::Status(proto::StatusRequest {})),
            5 => Some(request::Body::Attest(proto::AttestRequest {
                nonce: input.bytes(80).to_vec(),
                since_size: (input.byte() & 1 == 1).then(|| input.seq()),
            })),
            6 => Some(request::Body::Anchor(proto::AnchorRequest {})),
            7 => Some(request::Body::ReadAnchors(proto::ReadAnchorsRequest {
                from_counter: input.seq(),
                max_anchors: u32::from(input.byte()),
            })),
            8 => None,
            9 => {
                push_frame(&mut out, input.bytes(255));
                continue;
            }
            10 => {
                out.extend_from_slice(input.bytes(16));
                continue;
            }
            12 => Some(request::Body::ProveInclusion(
                proto::ProveInclusionRequest {
                    seq: input.seq(),
                    size: input.seq(),
                },
            )),
            13 => Some(request::Body::ProveConsistency(
                proto::ProveConsistencyRequest {
                    from_size: input.seq(),
                    to_size: input.seq(),
                },
            )),
            _ => {
                let excess = u32::from(input.byte()) + 1;
                let len = u32::try_from(MAX_FRAME).unwrap_or(u32::MAX);
                out.extend_from_slice(&len.saturating_add(excess).to_be_bytes());
                break;
            }
        };
        push_request(&mut out, &Request { id, body });
    }
    out
}

fn hello(id: u64, protocol_version: u32, client_name: &str) -> Request {
    Request {
        id,
        body: Some(request::Body::Hello(proto::Hello {
            protocol_version,
            client_name: client_name.into(),
        })),
    }
}

fn push_request(out: &mut Vec<u8>, request: &Request) {
    push_frame(out, &request.encode_to_vec());
}

fn push_frame(out: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
}

/// The unread part of the input.
#[derive(Debug)]
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&byte, rest)) => {
                self.data = rest;
                byte
            }
            None => 0,
        }
    }

    /// A length byte (modulo `max + 1`), then that many bytes (fewer at the end).
    fn bytes(&mut self, max: usize) -> &'a [u8] {
        let len = usize::from(self.byte()) % (max + 1);
        let (taken, rest) = self.data.split_at(len.min(self.data.len()));
        self.data = rest;
        taken
    }

    fn string(&mut self, max: usize) -> String {
        String::from_utf8_lossy(self.bytes(max)).into_owned()
    }

    /// A sequence number: mostly small (near a fresh log's head), sometimes
    /// at the edges of u64.
    fn seq(&mut self) -> u64 {
        match self.byte() {
            0xff => u64::MAX,
            0xfe => u64::MAX - 1,
            0xfd => u64::from_be_bytes(std::array::from_fn(|_| self.byte())),
            small => u64::from(small % 32),
        }
    }

    /// A filter: each time unset, small, or any i64; up to two values in
    /// each list; up to two attribute matches.
    fn filter(&mut self) -> proto::Filter {
        let flags = self.byte();
        let time = |set: bool, input: &mut Input<'_>| {
            set.then(|| match input.byte() {
                0xff => i64::from_be_bytes(std::array::from_fn(|_| input.byte())),
                small => i64::from(small) - 64,
            })
        };
        let since_unix_nanos = time(flags & 1 != 0, self);
        let until_unix_nanos = time(flags & 2 != 0, self);
        let list = |input: &mut Input<'_>| {
            (0..input.byte() % 3)
                .map(|_| input.string(8))
                .collect::<Vec<_>>()
        };
        let kinds = list(self);
        let actors = list(self);
        let subjects = list(self);
        let attributes = (0..self.byte() % 3)
            .map(|_| proto::AttributeMatch {
                key: self.string(8),
                value: self.string(16),
            })
            .collect();
        proto::Filter {
            since_unix_nanos,
            until_unix_nanos,
            kinds,
            actors,
            subjects,
            attributes,
        }
    }

    fn event(&mut self) -> proto::Event {
        proto::Event {
            kind: self.string(16),
            actor: self.string(16),
            subject: self.string(16),
            attributes: (0..self.byte() % 4)
                .map(|_| (self.string(8), self.string(16)))
                .collect(),
            payload: self.bytes(255).to_vec(),
            content_type: self.string(16),
            client_time_unix_nanos: i64::from_be_bytes(std::array::from_fn(|_| self.byte())),
            typed_attributes: (0..self.byte() % 4)
                .map(|_| proto::Attribute {
                    key: self.string(8),
                    value: self.attribute_value(),
                })
                .collect(),
        }
    }

    /// A typed value: one of every kind, valid arrays, and the invalid
    /// shapes the daemon must refuse (no value, an unset element, a nested
    /// or mixed array).
    fn attribute_value(&mut self) -> Option<proto::AttributeValue> {
        use proto::attribute_value::Value as V;
        let value = |value| Some(proto::AttributeValue { value: Some(value) });
        match self.byte() % 10 {
            0 => None,
            1 => Some(proto::AttributeValue { value: None }),
            2 => value(self.scalar()),
            // Any scalars: often of mixed kinds.
            3 => value(V::ArrayValue(proto::ArrayValue {
                values: (0..self.byte() % 4)
                    .map(|_| proto::AttributeValue {
                        value: Some(self.scalar()),
                    })
                    .collect(),
            })),
            4 => {
                // Valid: every element of the first element's kind.
                let kind = self.byte();
                let values = (0..self.byte() % 4)
                    .map(|_| proto::AttributeValue {
                        value: Some(self.scalar_of(kind)),
                    })
                    .collect();
                value(V::ArrayValue(proto::ArrayValue { values }))
            }
            5 => value(V::ArrayValue(proto::ArrayValue {
                values: vec![proto::AttributeValue {
                    value: Some(V::ArrayValue(proto::ArrayValue::default())),
                }],
            })),
            6 => value(V::ArrayValue(proto::ArrayValue {
                values: vec![proto::AttributeValue { value: None }],
            })),
            _ => value(self.scalar()),
        }
    }

    fn scalar(&mut self) -> proto::attribute_value::Value {
        let kind = self.byte();
        self.scalar_of(kind)
    }

    /// A scalar of kind `kind % 5`: ints and doubles from 8 input bytes, so
    /// i64's edges, NaN payloads and infinities are all reachable.
    fn scalar_of(&mut self, kind: u8) -> proto::attribute_value::Value {
        use proto::attribute_value::Value as V;
        match kind % 5 {
            0 => V::StringValue(self.string(16)),
            1 => V::BoolValue(self.byte() & 1 == 1),
            2 => V::IntValue(i64::from_be_bytes(std::array::from_fn(|_| self.byte()))),
            3 => V::DoubleValue(f64::from_bits(u64::from_be_bytes(std::array::from_fn(
                |_| self.byte(),
            )))),
            _ => V::BytesValue(self.bytes(32).to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::attribute_value::Value as V;

    /// The seed `structured_typed_attributes` reaches typed values of every
    /// kind, the edges of i64 and a NaN, and invalid shapes (a nested array,
    /// a missing value, an empty kind). Also runs in the e2e binary, which
    /// includes this file (tests/e2e/fuzz_corpus.rs).
    #[test]
    fn the_typed_seed_makes_typed_attributes() {
        let seed = include_bytes!("../corpus/request_handler/structured_typed_attributes");
        let mut bytes = stream(seed);
        let mut events = Vec::new();
        while bytes.len() >= 4 {
            let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
            // Frames of arbitrary bytes (op 9) need not decode.
            if let Ok(Request {
                body: Some(request::Body::Append(append)),
                ..
            }) = Request::decode(&bytes[4..4 + len])
            {
                events.extend(append.events);
            }
            bytes.drain(..4 + len);
        }
        let value = |key: &str| {
            events
                .iter()
                .flat_map(|event| &event.typed_attributes)
                .find(|attribute| attribute.key == key)
                .map(|attribute| attribute.value.clone())
        };
        assert_eq!(
            value("tok"),
            Some(Some(proto::AttributeValue {
                value: Some(V::IntValue(812))
            }))
        );
        assert!(matches!(
            value("d").flatten().and_then(|v| v.value),
            Some(V::DoubleValue(d)) if d.is_nan()
        ));
        assert!(matches!(
            value("min").flatten().and_then(|v| v.value),
            Some(V::IntValue(i64::MIN))
        ));
        assert!(matches!(
            value("arr").flatten().and_then(|v| v.value),
            Some(V::ArrayValue(a)) if a.values.len() == 2
        ));
        assert!(matches!(
            value("by").flatten().and_then(|v| v.value),
            Some(V::BytesValue(b)) if b == [0x00, 0xff]
        ));
        assert!(matches!(
            value("n").flatten().and_then(|v| v.value),
            Some(V::ArrayValue(a)) if matches!(a.values[0].value, Some(V::ArrayValue(_)))
        ));
        assert_eq!(value("v"), Some(None));
        assert!(events.iter().any(|event| event.kind.is_empty()));
    }

    /// The seed `structured_filters` makes a filtered newest read, a
    /// filtered read with an end and a filtered follow.
    #[test]
    fn the_filters_seed_makes_filtered_reads_and_a_follow() {
        let seed = include_bytes!("../corpus/request_handler/structured_filters");
        let mut bytes = stream(seed);
        let mut bodies = Vec::new();
        while bytes.len() >= 4 {
            let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
            if let Ok(Request {
                body: Some(body), ..
            }) = Request::decode(&bytes[4..4 + len])
            {
                bodies.push(body);
            }
            bytes.drain(..4 + len);
        }
        let reads: Vec<&proto::ReadRequest> = bodies
            .iter()
            .filter_map(|body| match body {
                request::Body::Read(read) => Some(read),
                _ => None,
            })
            .collect();
        assert_eq!(reads.len(), 2);
        let newest = reads[0];
        assert!(newest.newest);
        assert_eq!(newest.max_records, 5);
        let filter = newest.filter.clone().unwrap_or_default();
        assert_eq!(filter.since_unix_nanos, Some(-64));
        assert_eq!(filter.until_unix_nanos, Some(i64::MAX));
        assert_eq!(filter.kinds, ["a"]);
        assert_eq!(filter.attributes.len(), 1);
        assert_eq!(reads[1].to_seq, 1);
        assert_eq!(reads[1].filter.clone().unwrap_or_default().actors, ["x"]);
        assert!(bodies.iter().any(|body| matches!(
            body,
            request::Body::Follow(proto::FollowRequest { filter: Some(f), .. }) if f.kinds == ["b"]
        )));
    }
}
