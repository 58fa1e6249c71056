//! The Unix listening socket: the one systemd passes (socket activation), or
//! one bound here: refuse a path a live daemon serves, replace a stale socket
//! file, then apply the configured mode and group.

use std::fs;
use std::io::ErrorKind;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
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
    #[error("socket activation: cannot read LISTEN_FDS: {0}")]
    Activation(std::io::Error),
    #[error("socket activation: {0} sockets were passed; tallyd takes one (the Unix socket)")]
    ActivationCount(usize),
    #[error("socket activation: the socket passed is not a listening Unix stream socket")]
    ActivationNotUnixStream,
    #[error(
        "socket activation: the socket passed is {passed}, but tallyd is configured for {configured} \
         (make ListenStream= in tallyd.socket and `socket` in tallyd.toml agree)"
    )]
    ActivationMismatch {
        passed: PathBuf,
        configured: PathBuf,
    },
    #[error("cannot give {path} to group {group}: {source}")]
    Group {
        path: PathBuf,
        group: String,
        source: std::io::Error,
    },
}

/// The Unix listening socket at `path`: the one systemd passed (socket
/// activation: `LISTEN_FDS`, `LISTEN_PID`), which must be bound at `path`, or
/// else one bound here with `mode` and `group`. `true` when it was passed:
/// then systemd owns the file (its mode, its owner, its removal). Must run
/// inside a tokio runtime.
pub fn unix_listener(
    path: &Path,
    mode: u32,
    group: Option<&str>,
) -> Result<(UnixListener, bool), SocketError> {
    let fds: Vec<RawFd> = sd_notify::listen_fds()
        .map_err(SocketError::Activation)?
        .collect();
    match fds.as_slice() {
        [] => Ok((bind_unix(path, mode, group)?, false)),
        [fd] => {
            // SAFETY: systemd passed this descriptor to this process
            // (`listen_fds` checked LISTEN_PID and unset the variables), for
            // it to own; nothing else in tallyd refers to it, and it is
            // wrapped exactly once, here.
            let owned = unsafe { OwnedFd::from_raw_fd(*fd) };
            Ok((inherited_unix(owned, path)?, true))
        }
        more => Err(SocketError::ActivationCount(more.len())),
    }
}

/// Checks that a passed socket is a listening Unix stream socket bound at
/// `path`, and hands it to tokio.
fn inherited_unix(fd: OwnedFd, path: &Path) -> Result<UnixListener, SocketError> {
    use nix::sys::socket::{getsockopt, sockopt, SockType};
    let stream = matches!(getsockopt(&fd, sockopt::SockType), Ok(SockType::Stream));
    let listening = getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false);
    let listener = std::os::unix::net::UnixListener::from(fd);
    let passed = listener
        .local_addr()
        .ok()
        .and_then(|address| address.as_pathname().map(Path::to_owned));
    let Some(passed) = passed.filter(|_| stream && listening) else {
        return Err(SocketError::ActivationNotUnixStream);
    };
    let same = |a: &Path, b: &Path| match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if !same(&passed, path) {
        return Err(SocketError::ActivationMismatch {
            passed,
            configured: path.to_owned(),
        });
    }
    listener
        .set_nonblocking(true)
        .and_then(|()| UnixListener::from_std(listener))
        .map_err(|source| SocketError::Bind {
            path: path.to_owned(),
            source,
        })
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
