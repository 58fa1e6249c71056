//! The client's timeout against a daemon that never answers (the other end
//! of an in-memory pipe).

use super::*;
use tokio::io::AsyncReadExt;

const SHORT: Duration = Duration::from_millis(200);

/// Reads the client's requests and never answers: a hung daemon.
fn mute_server(mut server: tokio::io::DuplexStream) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut bytes = [0u8; 4096];
        let mut total = 0;
        while let Ok(n) = server.read(&mut bytes).await {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    })
}

#[tokio::test]
async fn a_daemon_that_never_answers_the_hello_times_out() {
    let (stream, server) = tokio::io::duplex(64 << 10);
    let reader = mute_server(server);
    let started = std::time::Instant::now();
    // The outer bound only keeps a broken timeout from hanging the test.
    let result = tokio::time::timeout(
        SHORT * 10,
        Client::handshake_with_timeout(stream, "t", Some(SHORT)),
    )
    .await
    .expect("the client's own timeout did not fire");
    let waited = started.elapsed();
    assert!(
        matches!(result, Err(ClientError::Timeout { after }) if after == SHORT),
        "{result:?}"
    );
    assert!(waited >= SHORT && waited < SHORT * 10, "waited {waited:?}");
    assert!(reader.await.unwrap() > 0, "the hello was sent");
}

#[tokio::test]
async fn a_daemon_that_stops_answering_after_the_hello_times_out_each_call() {
    let (stream, mut server) = tokio::io::duplex(64 << 10);
    let hello = tokio::spawn(async move {
        let mut framed = Framed::new(&mut server, frame::codec(MAX_RESPONSE_FRAME));
        let request = Request::decode(framed.next().await.unwrap().unwrap()).unwrap();
        let reply = Response {
            id: request.id,
            body: Some(response::Body::Hello(proto::HelloReply {
                protocol_version: PROTOCOL_VERSION,
                ..Default::default()
            })),
        };
        framed.send(frame::encode(&reply)).await.unwrap();
        drop(framed);
        server
    });
    let mut client = Client::handshake_with_timeout(stream, "t", Some(SHORT))
        .await
        .unwrap();
    let reader = mute_server(hello.await.unwrap());
    assert_eq!(client.timeout(), Some(SHORT));
    let status = tokio::time::timeout(SHORT * 10, client.status())
        .await
        .expect("the client's own timeout did not fire");
    assert!(
        matches!(status, Err(ClientError::Timeout { after }) if after == SHORT),
        "{status:?}"
    );
    // Without the bound the same wait does not end by itself.
    client.set_timeout(None);
    let unbounded = tokio::time::timeout(SHORT * 2, client.status()).await;
    assert!(unbounded.is_err(), "{unbounded:?}");
    drop(client);
    assert!(reader.await.unwrap() > 0);
}

/// Answers the hello with `limits` (max_frame_bytes, max_events_per_append),
/// then hands the server's end of the pipe back.
fn hello_server(
    mut server: tokio::io::DuplexStream,
    limits: (u32, u32),
) -> tokio::task::JoinHandle<tokio::io::DuplexStream> {
    tokio::spawn(async move {
        let mut framed = Framed::new(&mut server, frame::codec(MAX_RESPONSE_FRAME));
        let request = Request::decode(framed.next().await.unwrap().unwrap()).unwrap();
        let reply = Response {
            id: request.id,
            body: Some(response::Body::Hello(proto::HelloReply {
                protocol_version: PROTOCOL_VERSION,
                max_frame_bytes: limits.0,
                max_events_per_append: limits.1,
                ..Default::default()
            })),
        };
        framed.send(frame::encode(&reply)).await.unwrap();
        drop(framed);
        server
    })
}

/// Encoded length of the append request (id 2) the client sends for `event`.
fn append_request_len(event: &Event) -> usize {
    Request {
        id: 2,
        body: Some(request::Body::Append(proto::AppendRequest {
            events: vec![event.clone()],
        })),
    }
    .encoded_len()
}

fn event_of(payload_bytes: usize) -> Event {
    Event {
        kind: "k".into(),
        payload: vec![b'x'; payload_bytes],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_request_over_the_daemons_frame_limit_is_refused_before_it_is_written() {
    let (stream, server) = tokio::io::duplex(64 << 10);
    let hello = hello_server(server, (1024, 0));
    let mut client = Client::handshake(stream, "t").await.unwrap();
    let reader = mute_server(hello.await.unwrap());
    assert_eq!(
        client.limits(),
        Limits {
            max_frame_bytes: 1024,
            max_events_per_append: frame::DEFAULT_MAX_EVENTS_PER_APPEND,
        },
        "a limit of 0 falls back to the protocol's default"
    );
    let event = event_of(2000);
    let expected = append_request_len(&event);
    // Bounded: a client that wrote the request would wait for the mute
    // server's answer forever.
    let refused = tokio::time::timeout(SHORT * 10, client.append(vec![event]))
        .await
        .expect("the request was sent instead of refused");
    assert!(
        matches!(refused, Err(ClientError::FrameTooLarge { bytes, limit: 1024 }) if bytes == expected),
        "{refused:?}"
    );
    // Exactly at the limit is allowed: it is the daemon's own bound.
    let fits = (0..1100)
        .map(event_of)
        .find(|event| append_request_len(event) == 1024)
        .unwrap();
    let id = client.send_append(vec![fits]).await.unwrap();
    assert_eq!(id, 2, "the refused request used no id");
    drop(client);
    assert_eq!(
        reader.await.unwrap(),
        1024 + 4,
        "only the request that fits was written"
    );
}

#[tokio::test]
async fn a_daemon_that_closes_on_a_large_frame_is_reported_by_its_error() {
    // A daemon that says no limit (0: the 4 MiB default) but is configured
    // at 1 KiB: it refuses the frame from its length, answers with id 0 and
    // closes, as tallyd does.
    let (stream, server) = tokio::io::duplex(4096);
    let hello = hello_server(server, (0, 0));
    let mut client = Client::handshake(stream, "t").await.unwrap();
    let mut server = hello.await.unwrap();
    let refuser = tokio::spawn(async move {
        let mut framed = Framed::new(&mut server, frame::codec(1024));
        let err = framed.next().await.unwrap().unwrap_err();
        assert!(frame::is_frame_too_large(&err), "{err}");
        let refusal = Response {
            id: 0,
            body: Some(response::Body::Error(proto::Error {
                code: ErrorCode::FrameTooLarge.into(),
                message: "frame exceeds the maximum of 1024 bytes".into(),
            })),
        };
        framed.send(frame::encode(&refusal)).await.unwrap();
    });
    let result = tokio::time::timeout(SHORT * 20, client.append(vec![event_of(64 << 10)]))
        .await
        .expect("the client hung");
    refuser.await.unwrap();
    match result {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::FrameTooLarge);
            assert!(message.contains("1024"), "{message}");
        }
        other => panic!("expected the daemon's FRAME_TOO_LARGE, got {other:?}"),
    }
}

#[tokio::test]
async fn typed_attributes_are_not_sent_to_a_daemon_that_predates_them() {
    // A hello without limits is a daemon older than typed attributes: it
    // would decode field 8 as unknown, drop it and ack the event.
    let (stream, server) = tokio::io::duplex(64 << 10);
    let hello = hello_server(server, (0, 0));
    let mut client = Client::handshake(stream, "t").await.unwrap();
    let reader = mute_server(hello.await.unwrap());
    let mut typed = event_of(10);
    typed.typed_attributes = vec![crate::attributes::attribute(
        "gen_ai.usage.input_tokens",
        proto::attribute_value::Value::IntValue(812),
    )];
    let refused = client.send_append(vec![typed]).await;
    assert!(
        matches!(refused, Err(ClientError::TypedAttributesUnsupported)),
        "{refused:?}"
    );
    // String attributes still go to it.
    let plain = event_of(10);
    let plain_len = append_request_len(&plain);
    assert_eq!(client.send_append(vec![plain]).await.unwrap(), 2);
    drop(client);
    assert_eq!(
        reader.await.unwrap(),
        plain_len as u64 + 4,
        "only the event without typed attributes was written"
    );
}

#[tokio::test]
async fn filters_are_not_sent_to_a_daemon_that_predates_them() {
    // A daemon without `read_filters` would ignore the filter and send
    // every record: the client refuses before writing anything.
    let (stream, server) = tokio::io::duplex(64 << 10);
    let hello = hello_server(server, (1 << 20, 0));
    let client = Client::handshake(stream, "t").await.unwrap();
    let reader = mute_server(hello.await.unwrap());
    let mut client = client;
    let kind = proto::Filter {
        kinds: vec!["prompt".into()],
        ..Default::default()
    };
    let refused = client
        .read_where(proto::ReadRequest {
            filter: Some(kind.clone()),
            ..Default::default()
        })
        .await;
    assert!(
        matches!(refused, Err(ClientError::FiltersUnsupported)),
        "{refused:?}"
    );
    let newest = client
        .read_where(proto::ReadRequest {
            newest: true,
            ..Default::default()
        })
        .await;
    assert!(
        matches!(newest, Err(ClientError::FiltersUnsupported)),
        "{newest:?}"
    );
    let follow = client.follow_where(0, kind).await;
    assert!(
        matches!(follow, Err(ClientError::FiltersUnsupported)),
        "{follow:?}"
    );
    assert_eq!(
        reader.await.unwrap(),
        0,
        "nothing was written after the hello"
    );
}
