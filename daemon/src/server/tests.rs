//! The server in-process: the real connection, dispatcher and handlers over
//! an in-memory pipe (`tokio::io::duplex`), on a real store and sequencer
//! (`crate::testing`, as the fuzz target builds them). Each test asserts the
//! responses a client gets.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use prost::Message;
use tally_client::frame;
use tally_client::proto::{self, request, response, ErrorCode, Request, Response};
use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::testing::{unix_peer, InProcess};

/// How long a test waits for one response.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// An in-process daemon and the directory its store lives in.
struct Daemon {
    daemon: InProcess,
    /// Deleted after the store is closed.
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// A daemon with `overrides` (TOML) over the default configuration.
    fn start(overrides: &str) -> Daemon {
        let config: Config = toml::from_str(overrides).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let daemon = InProcess::start(&config, dir.path()).unwrap();
        Daemon { daemon, _dir: dir }
    }

    /// A connection from an unprivileged Unix peer (uid 4242: the default
    /// grants give it append and read, not admin).
    fn connect(&self) -> Client {
        let stream = self
            .daemon
            .connect(unix_peer(4242, 4242, 7), CancellationToken::new());
        let (read, write) = tokio::io::split(stream);
        Client {
            frames_in: FramedRead::new(read, frame::codec(frame::MAX_RESPONSE_FRAME)),
            frames_out: FramedWrite::new(write, frame::codec(frame::MAX_RESPONSE_FRAME)),
        }
    }

    /// The records in the store, once every acked (or unawaited) event is in it.
    async fn records(&self) -> Vec<proto::RecordBody> {
        let shared = &self.daemon.shared;
        let deadline = tokio::time::Instant::now() + RESPONSE_TIMEOUT;
        while shared
            .queued_events
            .load(std::sync::atomic::Ordering::Acquire)
            > 0
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the queue did not drain"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        shared.sequencer.settle().await.unwrap();
        self.daemon
            .store
            .read(0, 1000, usize::MAX)
            .unwrap()
            .iter()
            .map(|record| {
                proto::RecordBody::decode(&record.bytes[tally_attest::HEADER_LEN..]).unwrap()
            })
            .collect()
    }
}

struct Client {
    frames_in: FramedRead<ReadHalf<DuplexStream>, LengthDelimitedCodec>,
    frames_out: FramedWrite<WriteHalf<DuplexStream>, LengthDelimitedCodec>,
}

impl Client {
    async fn send(&mut self, request: Request) {
        self.frames_out.send(frame::encode(&request)).await.unwrap();
    }

    /// A frame with arbitrary contents.
    async fn send_frame(&mut self, payload: &[u8]) {
        self.frames_out
            .send(bytes::Bytes::copy_from_slice(payload))
            .await
            .unwrap();
    }

    /// Raw bytes, e.g. a length header alone.
    async fn send_bytes(&mut self, bytes: &[u8]) {
        let stream = self.frames_out.get_mut();
        stream.write_all(bytes).await.unwrap();
        stream.flush().await.unwrap();
    }

    /// The next response; `None` once the daemon closed the connection.
    async fn recv(&mut self) -> Option<Response> {
        let next = tokio::time::timeout(RESPONSE_TIMEOUT, self.frames_in.next())
            .await
            .expect("no response in time");
        next.map(|frame| Response::decode(frame.unwrap()).unwrap())
    }

    async fn recv_error(&mut self) -> (u64, ErrorCode, String) {
        match self.recv().await {
            Some(Response {
                id,
                body: Some(response::Body::Error(error)),
            }) => (id, error.code(), error.message),
            other => panic!("expected an error response, got {other:?}"),
        }
    }

    async fn expect_closed(&mut self) {
        if let Some(response) = self.recv().await {
            panic!("expected the connection to be closed, got {response:?}");
        }
    }

    /// Says hello as request 1 and checks the reply.
    async fn greet(&mut self) {
        self.send(hello(1)).await;
        let reply = self.recv().await.unwrap();
        assert_eq!(reply.id, 1);
        assert!(
            matches!(reply.body, Some(response::Body::Hello(ref hello)) if hello.server_name == crate::SERVER_NAME),
            "{reply:?}"
        );
    }

    /// Sends a status request and checks it is answered.
    async fn expect_status(&mut self, id: u64) {
        self.send(request(id, request::Body::Status(proto::StatusRequest {})))
            .await;
        let reply = self.recv().await.unwrap();
        assert_eq!(reply.id, id);
        assert!(
            matches!(reply.body, Some(response::Body::Status(_))),
            "{reply:?}"
        );
    }
}

fn request(id: u64, body: request::Body) -> Request {
    Request {
        id,
        body: Some(body),
    }
}

fn hello(id: u64) -> Request {
    request(
        id,
        request::Body::Hello(proto::Hello {
            protocol_version: tally_client::PROTOCOL_VERSION,
            client_name: "in-process test".into(),
        }),
    )
}

fn append(id: u64, kinds: &[&str]) -> Request {
    let events = kinds
        .iter()
        .map(|kind| proto::Event {
            kind: (*kind).into(),
            ..proto::Event::default()
        })
        .collect();
    request(id, request::Body::Append(proto::AppendRequest { events }))
}

#[tokio::test]
async fn a_request_before_hello_is_a_protocol_error_and_closes() {
    let daemon = Daemon::start("");
    let mut client = daemon.connect();
    client.send(append(4, &["early"])).await;
    let (id, code, message) = client.recv_error().await;
    assert_eq!((id, code), (4, ErrorCode::Protocol), "{message}");
    assert_eq!(message, "the first request must be hello");
    client.expect_closed().await;

    // Protocol version 0 is no hello either.
    let mut client = daemon.connect();
    let mut zero = hello(1);
    if let Some(request::Body::Hello(hello)) = zero.body.as_mut() {
        hello.protocol_version = 0;
    }
    client.send(zero).await;
    let (id, code, _) = client.recv_error().await;
    assert_eq!((id, code), (1, ErrorCode::Protocol));
    client.expect_closed().await;
    assert!(daemon.records().await.is_empty(), "nothing was appended");
}

#[tokio::test]
async fn a_second_hello_is_refused_and_the_connection_stays_usable() {
    let daemon = Daemon::start("");
    let mut client = daemon.connect();
    client.greet().await;
    client.send(hello(2)).await;
    let (id, code, message) = client.recv_error().await;
    assert_eq!((id, code), (2, ErrorCode::Protocol));
    assert_eq!(message, "hello was already sent on this connection");
    client.expect_status(3).await;
}

#[tokio::test]
async fn a_missing_role_is_denied_answered_and_recorded() {
    let daemon = Daemon::start("");
    let mut client = daemon.connect();
    client.greet().await;
    client
        .send(request(2, request::Body::Anchor(proto::AnchorRequest {})))
        .await;
    let (id, code, message) = client.recv_error().await;
    assert_eq!((id, code), (2, ErrorCode::PermissionDenied));
    assert_eq!(
        message,
        "unix uid=4242 gid=4242 pid=7 lacks the 'admin' role needed for anchor"
    );
    // The connection stays usable, and the denial is in the log.
    client.expect_status(3).await;
    let records = daemon.records().await;
    assert_eq!(records.len(), 1, "{records:?}");
    let denial = records[0].event.as_ref().unwrap();
    assert_eq!(denial.kind, "tally.access_denied");
    assert_eq!(denial.actor, "unix uid=4242 gid=4242 pid=7");
    assert_eq!(denial.subject, "anchor");
    assert_eq!(denial.attributes["missing_role"], "admin");
    assert_eq!(denial.attributes["denials_not_logged_before"], "0");
    assert_eq!(records[0].peer, Some(unix_peer(4242, 4242, 7).to_proto()));
}

#[tokio::test]
async fn undecodable_frames_are_bad_requests_and_close_only_before_hello() {
    let daemon = Daemon::start("");
    let mut client = daemon.connect();
    client.greet().await;
    client.send_frame(&[0xff; 11]).await;
    let (id, code, message) = client.recv_error().await;
    assert_eq!((id, code), (0, ErrorCode::BadRequest), "{message}");
    assert!(message.starts_with("undecodable request: "), "{message}");
    client.expect_status(9).await;

    // A frame of only an unknown field: no request type.
    client.send_frame(&[0x08, 0x07, 0x98, 0x06, 0x01]).await;
    let (id, code, message) = client.recv_error().await;
    assert_eq!((id, code), (7, ErrorCode::BadRequest));
    assert_eq!(message, "unknown or missing request type");
    client.expect_status(10).await;

    let mut client = daemon.connect();
    client.send_frame(&[0xff; 11]).await;
    let (_, code, _) = client.recv_error().await;
    assert_eq!(code, ErrorCode::BadRequest);
    client.expect_closed().await;
}

#[tokio::test]
async fn an_oversized_frame_is_refused_and_closes() {
    let daemon = Daemon::start("max_frame_bytes = 1024");
    let mut client = daemon.connect();
    client.greet().await;
    client.send_bytes(&1025u32.to_be_bytes()).await;
    let (id, code, message) = client.recv_error().await;
    assert_eq!((id, code), (0, ErrorCode::FrameTooLarge));
    assert_eq!(message, "frame exceeds the maximum of 1024 bytes");
    client.expect_closed().await;
}

#[tokio::test]
async fn refused_appends_and_reads_name_their_reason() {
    let daemon = Daemon::start("max_events_per_append = 2");
    let mut client = daemon.connect();
    client.greet().await;
    client.send(append(2, &[])).await;
    assert_eq!(
        client.recv_error().await,
        (2, ErrorCode::BadRequest, "append without events".into())
    );
    client.send(append(3, &["a", "b", "c"])).await;
    assert_eq!(
        client.recv_error().await,
        (
            3,
            ErrorCode::TooManyEvents,
            "3 events in one append; the maximum is 2".into()
        )
    );
    // An invalid event after a valid one: refused, named by its position,
    // and neither is stored (the read below still sees size 0).
    client.send(append(7, &["a", ""])).await;
    assert_eq!(
        client.recv_error().await,
        (
            7,
            ErrorCode::BadRequest,
            "event 1: the event's kind is empty".into()
        )
    );
    let read = proto::ReadRequest {
        from_seq: 100,
        max_records: 0,
        ..Default::default()
    };
    client.send(request(4, request::Body::Read(read))).await;
    assert_eq!(
        client.recv_error().await,
        (
            4,
            ErrorCode::OutOfRange,
            "seq 100 is beyond the log (size 0)".into()
        )
    );
    let attest = proto::AttestRequest {
        nonce: vec![1; 8],
        since_size: None,
    };
    client.send(request(5, request::Body::Attest(attest))).await;
    assert_eq!(
        client.recv_error().await,
        (
            5,
            ErrorCode::TpmUnavailable,
            "this daemon runs without a TPM".into()
        )
    );
    let prove = proto::ProveInclusionRequest { seq: 0, size: 0 };
    client
        .send(request(6, request::Body::ProveInclusion(prove)))
        .await;
    let (id, code, message) = client.recv_error().await;
    assert_eq!((id, code), (6, ErrorCode::OutOfRange));
    assert!(
        message.starts_with("the log has no anchor yet"),
        "{message}"
    );
    assert!(daemon.records().await.is_empty(), "nothing was appended");
}

/// Read your writes: small appends are acked from the ack journal, and a
/// read right after them waits (the settle gate) until the store has them.
#[tokio::test]
async fn acked_events_are_readable_at_once() {
    let daemon = Daemon::start("");
    let mut client = daemon.connect();
    client.greet().await;
    client.send(append(2, &["one", "two", "three"])).await;
    let Some(Response {
        id: 2,
        body: Some(response::Body::Append(reply)),
    }) = client.recv().await
    else {
        panic!("the append was not acked");
    };
    assert_eq!(
        reply.acks.iter().map(|ack| ack.seq).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    let read = proto::ReadRequest {
        from_seq: 0,
        max_records: 0,
        ..Default::default()
    };
    client.send(request(3, request::Body::Read(read))).await;
    let Some(Response {
        id: 3,
        body: Some(response::Body::Records(page)),
    }) = client.recv().await
    else {
        panic!("the read was not answered with records");
    };
    let hashes: Vec<&[u8]> = page
        .records
        .iter()
        .map(|record| record.entry_hash.as_ref())
        .collect();
    let acked: Vec<&[u8]> = reply
        .acks
        .iter()
        .map(|ack| ack.entry_hash.as_slice())
        .collect();
    assert_eq!(hashes, acked);
}

#[tokio::test]
async fn an_idle_connection_is_told_and_closed() {
    let daemon = Daemon::start("idle_timeout_secs = 1");
    let mut client = daemon.connect();
    client.greet().await;
    assert_eq!(
        client.recv_error().await,
        (0, ErrorCode::Busy, "no request for 1 s; closing".into())
    );
    client.expect_closed().await;
}
