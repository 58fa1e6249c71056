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
