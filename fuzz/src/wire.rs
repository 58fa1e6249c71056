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
//! Exhausted input reads as zeros.

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
            2 => Some(request::Body::Read(proto::ReadRequest {
                from_seq: input.seq(),
                max_records: u32::from(input.byte()),
            })),
            3 => Some(request::Body::Follow(proto::FollowRequest {
                from_seq: input.seq(),
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
            typed_attributes: Vec::new(),
        }
    }
}
