//! A raw connection for misbehaving on purpose: frames written by hand
//! (4-byte big-endian length + bytes), responses read one frame at a time.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use prost::Message;
use tally_client::proto::{self, request, response, ErrorCode, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// How long a raw read waits for the daemon before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A Unix-socket connection to tallyd with no client library in the way.
#[derive(Debug)]
pub struct RawConn {
    pub stream: UnixStream,
}

impl RawConn {
    pub async fn connect(socket: &Path) -> anyhow::Result<RawConn> {
        let stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("cannot connect to {}", socket.display()))?;
        Ok(RawConn { stream })
    }

    /// Connects and completes the hello exchange.
    pub async fn greeted(socket: &Path) -> anyhow::Result<RawConn> {
        let mut conn = RawConn::connect(socket).await?;
        conn.send(&hello(1)).await?;
        match conn.recv().await?.and_then(|response| response.body) {
            Some(response::Body::Hello(_)) => Ok(conn),
            other => bail!("expected a hello reply, got {other:?}"),
        }
    }

    /// Writes raw bytes (no framing added).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Writes one frame: the length, then `payload`.
    pub async fn send_frame(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        let len = u32::try_from(payload.len()).context("frame too long for a u32 length")?;
        let mut frame = len.to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        self.send_bytes(&frame).await
    }

    pub async fn send(&mut self, request: &Request) -> anyhow::Result<()> {
        self.send_frame(&request.encode_to_vec()).await
    }

    /// The next response, or `None` when the daemon closed the connection.
    /// Fails after [`READ_TIMEOUT`].
    pub async fn recv(&mut self) -> anyhow::Result<Option<Response>> {
        tokio::time::timeout(READ_TIMEOUT, self.recv_frame())
            .await
            .context("no response from the daemon within the timeout")?
    }

    async fn recv_frame(&mut self) -> anyhow::Result<Option<Response>> {
        let mut len = [0u8; 4];
        let mut filled = 0;
        while filled < len.len() {
            match self.stream.read(&mut len[filled..]).await {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => bail!("the daemon closed the connection inside a length header"),
                Ok(n) => filled += n,
                // A reset after the daemon closed on us is a close too.
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(err) => return Err(err.into()),
            }
        }
        let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
        self.stream
            .read_exact(&mut payload)
            .await
            .context("the daemon closed the connection inside a frame")?;
        Ok(Some(Response::decode(payload.as_slice())?))
    }

    /// The next response, which must be an error; returns its code and message.
    pub async fn recv_error(&mut self) -> anyhow::Result<(u64, ErrorCode, String)> {
        match self.recv().await? {
            Some(Response {
                id,
                body: Some(response::Body::Error(error)),
            }) => Ok((id, error.code(), error.message)),
            other => bail!("expected an error response, got {other:?}"),
        }
    }

    /// Succeeds once the daemon has closed the connection; any frame before
    /// that is an error.
    pub async fn expect_closed(&mut self) -> anyhow::Result<()> {
        match self.recv().await? {
            None => Ok(()),
            Some(response) => bail!("expected the connection to be closed, got {response:?}"),
        }
    }
}

pub fn hello(id: u64) -> Request {
    Request {
        id,
        body: Some(request::Body::Hello(proto::Hello {
            protocol_version: tally_client::PROTOCOL_VERSION,
            client_name: "tally-e2e-raw".into(),
        })),
    }
}

pub fn status(id: u64) -> Request {
    Request {
        id,
        body: Some(request::Body::Status(proto::StatusRequest {})),
    }
}

pub fn append(id: u64, events: Vec<proto::Event>) -> Request {
    Request {
        id,
        body: Some(request::Body::Append(proto::AppendRequest { events })),
    }
}

/// An append request of exactly `len` encoded bytes: `event` with its
/// payload resized to fit.
pub fn append_of_len(id: u64, event: proto::Event, len: usize) -> anyhow::Result<Request> {
    let with_payload = |payload: usize| {
        append(
            id,
            vec![proto::Event {
                payload: vec![b'p'; payload],
                ..event.clone()
            }],
        )
    };
    let base = with_payload(0).encoded_len();
    // Longer payloads also lengthen the varints that frame them (by < 16 bytes).
    for payload in len.saturating_sub(base + 16)..=len.saturating_sub(base) {
        let request = with_payload(payload);
        if request.encoded_len() == len {
            return Ok(request);
        }
    }
    bail!("no payload length gives an append request of exactly {len} bytes")
}
