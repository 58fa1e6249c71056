//! Reaching tallyd: the `--socket` / `--vsock` target, and a connection that
//! has said hello, over either transport.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

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
                .map_err(|err| anyhow::anyhow!(unix_connect_error(&target.socket, &err)))?,
        ),
    };
    Ok(Client::handshake(stream, CLIENT_NAME).await?)
}

/// What to tell a user whose connect(2) to the socket failed. A refused
/// permission means tallyd (or its socket file) is there and the kernel said
/// no: asking "is tallyd running?" sends them looking in the wrong place, so
/// only a missing socket or one nobody listens on asks that.
pub fn unix_connect_error(socket: &Path, err: &std::io::Error) -> String {
    let socket = socket.display();
    match err.kind() {
        ErrorKind::PermissionDenied => format!(
            "cannot connect to {socket}: permission denied: tallyd is there, but this user may not \
             open its socket (mode socket_mode, default 0660, group socket_group): run as a member \
             of the socket's group (`ls -l {socket}`), or ask the operator to set socket_group; \
             roles are granted in [access] (README \"Access control\", docs/OPERATIONS.md)"
        ),
        ErrorKind::NotFound => format!(
            "cannot connect to {socket}: no such socket: is tallyd running? (set the socket with \
             --socket or TALLY_SOCKET)"
        ),
        ErrorKind::ConnectionRefused => format!(
            "cannot connect to {socket}: nothing is listening (a stale socket file): is tallyd \
             running? (set the socket with --socket or TALLY_SOCKET)"
        ),
        _ => format!(
            "cannot connect to {socket}: {err} (set the socket with --socket or TALLY_SOCKET)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: "Permission denied" was prefixed with "is tallyd running?".
    #[test]
    fn only_a_missing_or_dead_socket_asks_whether_tallyd_runs() {
        let socket = Path::new("/run/tally/tally.sock");
        let denied = unix_connect_error(socket, &ErrorKind::PermissionDenied.into());
        assert!(denied.contains("permission denied"), "{denied}");
        assert!(denied.contains("socket_group"), "{denied}");
        assert!(!denied.contains("is tallyd running"), "{denied}");
        for kind in [ErrorKind::NotFound, ErrorKind::ConnectionRefused] {
            let text = unix_connect_error(socket, &kind.into());
            assert!(text.contains("is tallyd running?"), "{text}");
            assert!(text.contains("/run/tally/tally.sock"), "{text}");
        }
    }
}
