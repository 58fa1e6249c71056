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
//! a `tally.access_denied` event in the log itself, rate limited so that a
//! flood of denials cannot flood the log. This module decides and builds the
//! event ([`Access::check`]); the server's dispatcher answers and appends it.

use std::collections::BTreeMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tally_client::proto::Event;

use crate::peer::PeerId;
use tally_client::clock::now_unix_nanos;

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
    pub fn allows(&self, peer: &PeerId, role: Role) -> bool {
        let Ok(config) = self.config.read() else {
            return false;
        };
        match *peer {
            PeerId::Unix { uid, gid, .. } => {
                uid == 0
                    || uid == self.own_uid
                    || config.unix_default.contains(&role)
                    || config.grants.iter().any(|grant| {
                        (grant.uid == Some(uid) || grant.gid == Some(gid))
                            && grant.roles.contains(&role)
                    })
            }
            PeerId::Vsock { cid, .. } => config
                .grants
                .iter()
                .any(|grant| grant.vsock_cid == Some(cid) && grant.roles.contains(&role)),
        }
    }

    /// `Ok` when `peer` has the `role` that `request` needs; else the denial,
    /// with the event that records it (see [`Access::denied`]).
    pub fn check(
        &self,
        peer: &PeerId,
        peer_text: &str,
        request: &'static str,
        role: Role,
    ) -> Result<(), Denial> {
        if self.allows(peer, role) {
            Ok(())
        } else {
            Err(self.denied(peer_text, request, role))
        }
    }

    /// A denial of `request` to the peer `peer_text` for lack of `role`. Its
    /// event is `None` when this minute's budget of logged denials is spent
    /// (the denial is counted, and the next event written says how many were
    /// not). Writing the event is the caller's: this module only decides.
    pub fn denied(&self, peer_text: &str, request: &'static str, role: Role) -> Denial {
        Denial {
            request,
            role,
            event: self.denial_event(peer_text, request, role),
        }
    }

    fn denial_event(&self, peer_text: &str, request: &str, role: Role) -> Option<Box<Event>> {
        let budget = self
            .config
            .read()
            .map(|config| config.denials_logged_per_minute)
            .unwrap_or(0);
        let suppressed = {
            let mut window = self.denials.lock().ok()?;
            if window.started.elapsed() >= Duration::from_secs(60) {
                window.started = Instant::now();
                window.logged = 0;
            }
            if window.logged >= budget {
                window.suppressed += 1;
                return None;
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
        Some(Box::new(Event {
            kind: "tally.access_denied".into(),
            actor: peer_text.to_owned(),
            subject: request.to_owned(),
            attributes,
            payload: Vec::new(),
            content_type: String::new(),
            client_time_unix_nanos: now_unix_nanos(),
            typed_attributes: Vec::new(),
        }))
    }

    /// A denial event that could not be written (the sequencer's queue was
    /// full): counted with the suppressed ones.
    pub fn denial_not_written(&self) {
        if let Ok(mut window) = self.denials.lock() {
            window.suppressed += 1;
        }
    }
}

/// A request refused for a missing role.
#[derive(Debug)]
pub struct Denial {
    /// The request's name, e.g. "append".
    pub request: &'static str,
    /// The role it needs and the peer lacks.
    pub role: Role,
    /// The `tally.access_denied` event to append (never waiting for it),
    /// `None` when the rate limit suppresses it. Its client time is when the
    /// denial was decided. Boxed: every request's check returns a
    /// `Result<(), Denial>`, and denials are rare.
    pub event: Option<Box<Event>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    fn unix(uid: u32, gid: u32) -> PeerId {
        PeerId::Unix { uid, gid, pid: 1 }
    }

    fn vsock(cid: u32) -> PeerId {
        PeerId::Vsock { cid, port: 1234 }
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
            let denial = access.denied("unix uid=5", "append", Role::Append);
            crate::server::record_denial(&sequencer, &queued, &access, &unix(5, 5), denial);
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

    /// The daemon's own events obey the rules it enforces on clients'.
    #[test]
    fn denial_events_pass_the_event_rules() {
        let access = Access::new(AccessConfig::default());
        let denial = access.denied("unix uid=5", "anchor", Role::Admin);
        let event = denial.event.expect("the first denial is logged");
        assert_eq!(tally_client::attributes::check_event(&event), Ok(()));
    }
}
