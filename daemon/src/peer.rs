//! Who is on the other end of a connection, as the kernel reports it (never
//! as the client claims). The daemon keys access, limits and log lines on
//! [`PeerId`]; it becomes the protobuf `Peer` only where a record is encoded.

use std::fmt;

use tally_client::proto::{self, peer, Peer};

/// The kernel's identity of a connected peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerId {
    /// A Unix socket peer, from SO_PEERCRED (`pid` 0 when the kernel gave none).
    Unix { uid: u32, gid: u32, pid: i32 },
    /// A vsock peer: the CID and port the kernel reports for the connection.
    Vsock { cid: u32, port: u32 },
}

impl PeerId {
    /// The peer as records store it.
    pub fn to_proto(self) -> Peer {
        let kind = match self {
            PeerId::Unix { uid, gid, pid } => peer::Kind::Unix(proto::UnixPeer { uid, gid, pid }),
            PeerId::Vsock { cid, port } => peer::Kind::Vsock(proto::VsockPeer { cid, port }),
        };
        Peer { kind: Some(kind) }
    }
}

/// For log lines and error messages, e.g. "unix uid=1000 gid=1000 pid=42".
impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerId::Unix { uid, gid, pid } => write!(f, "unix uid={uid} gid={gid} pid={pid}"),
            PeerId::Vsock { cid, port } => write!(f, "vsock cid={cid} port={port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_and_converts_as_records_store_it() {
        let unix = PeerId::Unix {
            uid: 1000,
            gid: 100,
            pid: 42,
        };
        assert_eq!(unix.to_string(), "unix uid=1000 gid=100 pid=42");
        assert_eq!(
            unix.to_proto().kind,
            Some(peer::Kind::Unix(proto::UnixPeer {
                uid: 1000,
                gid: 100,
                pid: 42
            }))
        );
        let vsock = PeerId::Vsock { cid: 7, port: 1234 };
        assert_eq!(vsock.to_string(), "vsock cid=7 port=1234");
        assert_eq!(
            vsock.to_proto().kind,
            Some(peer::Kind::Vsock(proto::VsockPeer { cid: 7, port: 1234 }))
        );
    }
}
