//! Who may do what: roles granted to peers by their kernel-reported identity
//! (SO_PEERCRED uid/gid for Unix sockets, the CID for vsock), never by
//! anything a client claims.
//!
//! * Unix peers: whoever can connect (the socket's mode and group decide
//!   that) gets `unix_default` roles; grants by uid or gid add roles. uid 0
//!   and the daemon's own uid have every role.
//! * vsock peers: no role unless a grant names their CID (default deny).
//!
//! Denied requests get `PERMISSION_DENIED`, a log line naming the peer, and
//! an `tally.access_denied` event in the log itself, rate limited so that a
//! flood of denials cannot flood the log.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tally_client::proto::{peer, Event, Peer};
use tokio::sync::oneshot;

use crate::sequencer::{AppendJob, QueuedEvents, SequencerHandle};

/// A capability a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Append events.
    Append,
    /// Read the log: read, follow, status, anchors, fresh attestations, export.
    Read,
    /// Operate the daemon: anchor on demand.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Append => "append",
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

/// Roles for the peers one grant names. Exactly one of `uid`, `gid`,
/// `vsock_cid` must be set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_cid: Option<u32>,
    pub roles: Vec<Role>,
}

/// The `[access]` table of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Roles of every Unix peer that can connect to the socket.
    pub unix_default: Vec<Role>,
    /// Extra roles by uid, gid or vsock CID.
    pub grants: Vec<Grant>,
    /// At most this many access-denied events are written to the log per
    /// minute; the next one written counts those suppressed.
    pub denials_logged_per_minute: u32,
}

/// Default roles of a connected Unix peer.
pub const DEFAULT_UNIX_ROLES: [Role; 2] = [Role::Append, Role::Read];
pub const DEFAULT_DENIALS_LOGGED_PER_MINUTE: u32 = 60;

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            unix_default: DEFAULT_UNIX_ROLES.to_vec(),
            grants: Vec::new(),
            denials_logged_per_minute: DEFAULT_DENIALS_LOGGED_PER_MINUTE,
        }
    }
}

impl AccessConfig {
    /// Checks every grant names exactly one kind of peer.
    pub fn validate(&self) -> Result<(), String> {
        for (index, grant) in self.grants.iter().enumerate() {
            let named = [
                grant.uid.is_some(),
                grant.gid.is_some(),
                grant.vsock_cid.is_some(),
            ]
            .iter()
            .filter(|set| **set)
            .count();
            if named != 1 {
                return Err(format!(
                    "access.grants[{index}] must set exactly one of uid, gid, vsock_cid"
                ));
            }
        }
        Ok(())
    }
}

/// The access policy in force; replaced as a whole on reload.
#[derive(Debug)]
pub struct Access {
    config: RwLock<AccessConfig>,
    /// The daemon's own uid: it has every role.
    own_uid: u32,
    denials: Mutex<DenialWindow>,
}

#[derive(Debug)]
struct DenialWindow {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

impl Access {
    pub fn new(config: AccessConfig) -> Access {
        Access {
            config: RwLock::new(config),
            own_uid: nix::unistd::getuid().as_raw(),
            denials: Mutex::new(DenialWindow {
                started: Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Replaces the policy (SIGHUP reload).
    pub fn replace(&self, config: AccessConfig) {
        if let Ok(mut current) = self.config.write() {
            *current = config;
        }
    }

    /// Whether `peer` has `role` under the current policy.
    pub fn allows(&self, peer: &Peer, role: Role) -> bool {
        let Ok(config) = self.config.read() else {
            return false;
        };
        match &peer.kind {
            Some(peer::Kind::Unix(unix)) => {
                unix.uid == 0
                    || unix.uid == self.own_uid
                    || config.unix_default.contains(&role)
                    || config.grants.iter().any(|grant| {
                        (grant.uid == Some(unix.uid) || grant.gid == Some(unix.gid))
                            && grant.roles.contains(&role)
                    })
            }
            Some(peer::Kind::Vsock(vsock)) => config
                .grants
                .iter()
                .any(|grant| grant.vsock_cid == Some(vsock.cid) && grant.roles.contains(&role)),
            None => false,
        }
    }

    /// Records a denial in the log unless the per-minute budget is spent.
    /// Never waits: a full queue counts as suppressed.
    pub fn record_denial(
        &self,
        sequencer: &SequencerHandle,
        queued: &Arc<AtomicU64>,
        peer: &Peer,
        peer_text: &str,
        request: &str,
        role: Role,
    ) {
        let budget = self
            .config
            .read()
            .map(|config| config.denials_logged_per_minute)
            .unwrap_or(0);
        let suppressed = {
            let Ok(mut window) = self.denials.lock() else {
                return;
            };
            if window.started.elapsed() >= Duration::from_secs(60) {
                window.started = Instant::now();
                window.logged = 0;
            }
            if window.logged >= budget {
                window.suppressed += 1;
                return;
            }
            window.logged += 1;
            std::mem::take(&mut window.suppressed)
        };
        let mut attributes = BTreeMap::new();
        attributes.insert("request".to_owned(), request.to_owned());
        attributes.insert("missing_role".to_owned(), role.name().to_owned());
        attributes.insert(
            "denials_not_logged_before".to_owned(),
            suppressed.to_string(),
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let event = Event {
            kind: "tally.access_denied".into(),
            actor: peer_text.to_owned(),
            subject: request.to_owned(),
            attributes,
            payload: Vec::new(),
            content_type: String::new(),
            client_time_unix_nanos: now,
        };
        let (reply, _) = oneshot::channel();
        let job = AppendJob::new(
            vec![event],
            256,
            *peer,
            now,
            reply,
            None,
            QueuedEvents::new(queued, 1),
        );
        if sequencer.try_submit(job).is_err() {
            if let Ok(mut window) = self.denials.lock() {
                window.suppressed += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_client::proto::{UnixPeer, VsockPeer};

    fn unix(uid: u32, gid: u32) -> Peer {
        Peer {
            kind: Some(peer::Kind::Unix(UnixPeer { uid, gid, pid: 1 })),
        }
    }

    fn vsock(cid: u32) -> Peer {
        Peer {
            kind: Some(peer::Kind::Vsock(VsockPeer { cid, port: 1234 })),
        }
    }

    #[test]
    fn unix_defaults_grants_and_vsock_default_deny() {
        let access = Access::new(AccessConfig {
            unix_default: vec![Role::Append],
            grants: vec![
                Grant {
                    uid: Some(1000),
                    gid: None,
                    vsock_cid: None,
                    roles: vec![Role::Read],
                },
                Grant {
                    uid: None,
                    gid: Some(2000),
                    vsock_cid: None,
                    roles: vec![Role::Admin],
                },
                Grant {
                    uid: None,
                    gid: None,
                    vsock_cid: Some(7),
                    roles: vec![Role::Append],
                },
            ],
            denials_logged_per_minute: 1,
        });
        assert!(access.allows(&unix(4242, 4242), Role::Append));
        assert!(!access.allows(&unix(4242, 4242), Role::Read));
        assert!(access.allows(&unix(1000, 4242), Role::Read));
        assert!(access.allows(&unix(4242, 2000), Role::Admin));
        assert!(
            access.allows(&unix(0, 0), Role::Admin),
            "root has every role"
        );
        assert!(access.allows(&vsock(7), Role::Append));
        assert!(!access.allows(&vsock(7), Role::Read));
        assert!(
            !access.allows(&vsock(8), Role::Append),
            "vsock is default deny"
        );
        access.replace(AccessConfig {
            unix_default: vec![],
            ..AccessConfig::default()
        });
        assert!(!access.allows(&unix(4242, 4242), Role::Append));
    }

    #[test]
    fn grants_must_name_exactly_one_peer_kind() {
        let two = AccessConfig {
            grants: vec![Grant {
                uid: Some(1),
                gid: Some(1),
                vsock_cid: None,
                roles: vec![],
            }],
            ..AccessConfig::default()
        };
        assert!(two.validate().is_err());
        let none = AccessConfig {
            grants: vec![Grant {
                uid: None,
                gid: None,
                vsock_cid: None,
                roles: vec![],
            }],
            ..AccessConfig::default()
        };
        assert!(none.validate().is_err());
        assert!(AccessConfig::default().validate().is_ok());
    }

    #[test]
    fn denials_are_recorded_within_the_rate_limit() {
        use prost::Message;
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config::default();
        let store = Arc::new(crate::store::Store::open(dir.path(), config.map_sizing()).unwrap());
        let (sequencer, thread) =
            crate::sequencer::start(store.clone(), None, config.batch_policy()).unwrap();
        let access = Access::new(AccessConfig {
            denials_logged_per_minute: 2,
            ..AccessConfig::default()
        });
        let queued = Arc::new(AtomicU64::new(0));
        for _ in 0..5 {
            access.record_denial(
                &sequencer,
                &queued,
                &unix(5, 5),
                "unix uid=5",
                "append",
                Role::Append,
            );
        }
        // Dropping the last handle commits what was submitted.
        drop(sequencer);
        thread.join().unwrap();
        let records = store.read(0, 10, usize::MAX).unwrap();
        assert_eq!(
            records.len(),
            2,
            "the third and later denials are suppressed"
        );
        let body =
            tally_client::proto::RecordBody::decode(&records[0].bytes[tally_attest::HEADER_LEN..])
                .unwrap();
        let event = body.event.unwrap();
        assert_eq!(event.kind, "tally.access_denied");
        assert_eq!(event.attributes["denials_not_logged_before"], "0");
    }
}
