//! Reaching tallyd: the `--socket` / `--vsock` target, and a connection that
//! has said hello, over either transport.

use std::path::PathBuf;

use anyhow::Context as _;
use tally_client::Client;

const CLIENT_NAME: &str = concat!("tally-cli/", env!("CARGO_PKG_VERSION"));

/// Where the daemon is.
#[derive(Debug, Clone)]
pub struct Target {
    pub socket: PathBuf,
    pub vsock: Option<(u32, u32)>,
}

/// A connection over either transport.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}
pub type AnyClient = Client<Box<dyn Stream>>;

/// Parses `--vsock CID:PORT`.
pub fn parse_vsock(text: &str) -> Result<(u32, u32), String> {
    let (cid, port) = text.split_once(':').ok_or("expected CID:PORT")?;
    let cid = cid.parse().map_err(|_| format!("{cid:?} is not a CID"))?;
    let port = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port"))?;
    Ok((cid, port))
}

/// Connects to the target and says hello; the error names the socket and
/// how to set it.
pub async fn connect(target: &Target) -> anyhow::Result<AnyClient> {
    let stream: Box<dyn Stream> = match target.vsock {
        Some((cid, port)) => Box::new(
            tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(cid, port))
                .await
                .with_context(|| format!("cannot connect to vsock {cid}:{port}; is tallyd listening there (vsock_port)?"))?,
        ),
        None => Box::new(
            tokio::net::UnixStream::connect(&target.socket)
                .await
                .with_context(|| {
                    format!(
                        "cannot connect to {}: is tallyd running? (set the socket with --socket or TALLY_SOCKET)",
                        target.socket.display()
                    )
                })?,
        ),
    };
    Ok(Client::handshake(stream, CLIENT_NAME).await?)
}
