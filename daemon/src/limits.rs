//! Limits: the sizes and timeouts every connection is held to ([`Limits`]),
//! and the connection and append-rate limits counted per peer.
//!
//! A peer is what the kernel says it is: a uid for Unix sockets, a CID for
//! vsock. Limits protect the daemon and the other clients from one client;
//! a refused connection or request gets a clear error, and nothing that was
//! acknowledged is affected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::peer::PeerId;

/// Per-connection and per-request limits (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request frame accepted; a larger one closes the connection.
    pub max_frame: usize,
    /// Most events in one append request.
    pub max_events_per_append: usize,
    /// Most records in one read (or follow) response.
    pub read_page_records: usize,
    /// Most requests a connection may have in flight (sent, not yet answered).
    pub max_inflight_per_connection: usize,
    /// Bytes of append requests that may wait for the sequencer, in total.
    pub queue_bytes: usize,
    /// A connection that sends no request for this long is closed (not
    /// while it follows the log).
    pub idle_timeout: Duration,
    /// A client that does not take a response within this long is
    /// disconnected, so a stalled reader or follower cannot pin memory.
    pub slow_reader_timeout: Duration,
}

/// Who a limit counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKey {
    Uid(u32),
    Cid(u32),
}

impl PeerKey {
    pub fn of(peer: &PeerId) -> PeerKey {
        match *peer {
            PeerId::Unix { uid, .. } => PeerKey::Uid(uid),
            PeerId::Vsock { cid, .. } => PeerKey::Cid(cid),
        }
    }
}

/// Why a connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("too many connections: the daemon serves at most {max}")]
    Total { max: usize },
    #[error("too many connections from this peer: at most {max} each")]
    PerPeer { max: usize },
}

/// Counts open connections, in total and per peer.
#[derive(Debug)]
pub struct ConnectionLimits {
    max_total: usize,
    max_per_peer: usize,
    open: Mutex<(usize, HashMap<PeerKey, usize>)>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    key: PeerKey,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_peer: usize) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            max_total,
            max_per_peer,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// Admits a connection from `peer`, or says which limit refuses it.
    pub fn admit(self: &Arc<Self>, peer: &PeerId) -> Result<ConnectionPermit, Refusal> {
        let key = PeerKey::of(peer);
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (total, per_peer) = &mut *open;
        if *total >= self.max_total {
            return Err(Refusal::Total {
                max: self.max_total,
            });
        }
        let mine = per_peer.entry(key).or_insert(0);
        if *mine >= self.max_per_peer {
            return Err(Refusal::PerPeer {
                max: self.max_per_peer,
            });
        }
        *mine += 1;
        *total += 1;
        Ok(ConnectionPermit {
            limits: self.clone(),
            key,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().map(|open| open.0).unwrap_or(0)
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (total, per_peer) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(mine) = per_peer.get_mut(&self.key) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                per_peer.remove(&self.key);
            }
        }
    }
}

/// A token bucket of events per peer: `rate` events a second, up to
/// `burst` at once. A rate of 0 turns the limit off.
#[derive(Debug)]
pub struct AppendRate {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<PeerKey, (f64, Instant)>>,
}

impl AppendRate {
    pub fn new(rate: u64, burst: u64) -> AppendRate {
        AppendRate {
            rate: rate as f64,
            // No burst given: one second's worth.
            burst: if burst == 0 { rate } else { burst } as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `events` tokens from `peer`'s bucket; false (and nothing taken)
    /// when there are not enough.
    pub fn try_take(&self, peer: &PeerId, events: usize) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() > 65_536 {
            // Peers that have been quiet long enough to be full again need no state.
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets
            .entry(PeerKey::of(peer))
            .or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        let wanted = events as f64;
        if *tokens >= wanted {
            *tokens -= wanted;
            true
        } else {
            false
        }
    }

    /// Events per second allowed per peer (0: unlimited).
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(uid: u32) -> PeerId {
        PeerId::Unix {
            uid,
            gid: uid,
            pid: 1,
        }
    }

    #[test]
    fn connection_limits_count_total_and_per_peer_and_free_on_drop() {
        let limits = ConnectionLimits::new(3, 2);
        let a1 = limits.admit(&uid(1)).unwrap();
        let _a2 = limits.admit(&uid(1)).unwrap();
        assert_eq!(
            limits.admit(&uid(1)).unwrap_err(),
            Refusal::PerPeer { max: 2 }
        );
        let _b1 = limits.admit(&uid(2)).unwrap();
        assert_eq!(
            limits.admit(&uid(3)).unwrap_err(),
            Refusal::Total { max: 3 }
        );
        drop(a1);
        assert_eq!(limits.open(), 2);
        limits.admit(&uid(1)).unwrap();
    }

    #[test]
    fn append_rate_is_a_token_bucket_per_peer() {
        let rate = AppendRate::new(1000, 100);
        assert!(rate.try_take(&uid(1), 100));
        assert!(!rate.try_take(&uid(1), 50), "the burst is spent");
        assert!(rate.try_take(&uid(2), 100), "other peers are unaffected");
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert!(rate.try_take(&uid(1), 50), "refilled at 1000/s");
        assert!(
            AppendRate::new(0, 0).try_take(&uid(1), 1_000_000),
            "0 means unlimited"
        );
    }
}
