//! Binding the Unix listening socket: refuse a path a live daemon serves,
//! replace a stale socket file, then apply the configured mode and group.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    #[error("socket {0} is in use by a running daemon")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("cannot remove stale socket {path}: {source}")]
    RemoveStale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create socket directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot bind {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set mode {mode:o} on {path}: {source}")]
    Mode {
        path: PathBuf,
        mode: u32,
        source: std::io::Error,
    },
    #[error("cannot listen on vsock port {port}: {source}")]
    BindVsock { port: u32, source: std::io::Error },
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    #[error("cannot give {path} to group {group}: {source}")]
    Group {
        path: PathBuf,
        group: String,
        source: std::io::Error,
    },
}

/// Binds `path` and applies `mode` (e.g. 0o660) and `group` (a name or a
/// numeric gid). Must run inside a tokio runtime.
pub fn bind_unix(path: &Path, mode: u32, group: Option<&str>) -> Result<UnixListener, SocketError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(SocketError::InUse(path.to_owned())),
                Err(err) if err.kind() == ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "replacing stale socket file");
                    fs::remove_file(path).map_err(|source| SocketError::RemoveStale {
                        path: path.to_owned(),
                        source,
                    })?;
                }
                Err(source) => {
                    return Err(SocketError::Bind {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        }
        Ok(_) => return Err(SocketError::NotASocket(path.to_owned())),
        Err(err) if err.kind() == ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SocketError::Bind {
                path: path.to_owned(),
                source,
            })
        }
    }
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        fs::create_dir_all(parent).map_err(|source| SocketError::CreateDir {
            path: parent.to_owned(),
            source,
        })?;
    }
    let listener = UnixListener::bind(path).map_err(|source| SocketError::Bind {
        path: path.to_owned(),
        source,
    })?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| {
        SocketError::Mode {
            path: path.to_owned(),
            mode,
            source,
        }
    })?;
    if let Some(group) = group {
        let gid = resolve_group(group)?;
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|source| SocketError::Group {
            path: path.to_owned(),
            group: group.to_owned(),
            source,
        })?;
    }
    Ok(listener)
}

/// Binds a vsock listener on `port` for any local CID.
pub fn bind_vsock(port: u32) -> Result<tokio_vsock::VsockListener, SocketError> {
    let address = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, port);
    tokio_vsock::VsockListener::bind(address)
        .map_err(|source| SocketError::BindVsock { port, source })
}

fn resolve_group(group: &str) -> Result<u32, SocketError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(found)) => Ok(found.gid.as_raw()),
        _ => Err(SocketError::UnknownGroup(group.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn live_socket_is_refused_stale_one_replaced_and_mode_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/tally.sock");
        let live = bind_unix(&path, 0o600, None).unwrap();
        assert!(matches!(
            bind_unix(&path, 0o600, None),
            Err(SocketError::InUse(_))
        ));
        drop(live); // the file stays behind: a stale socket
        assert!(path.exists());
        let _again = bind_unix(&path, 0o640, Some("0")).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);

        let plain = dir.path().join("plain-file");
        fs::write(&plain, b"not a socket").unwrap();
        assert!(matches!(
            bind_unix(&plain, 0o600, None),
            Err(SocketError::NotASocket(_))
        ));
        assert!(matches!(
            bind_unix(
                &dir.path().join("x.sock"),
                0o600,
                Some("no-such-group-tally")
            ),
            Err(SocketError::UnknownGroup(_))
        ));
    }
}
