//! When the events no closed anchor covers yet were acked: the exposure window
//! status reports (`oldest_unanchored_age_millis`).
//!
//! Protocol (one mutex, held for a few instructions):
//!
//! | who | when | call |
//! |-----|------|------|
//! | sequencer (commit path) | a batch is acked (journal or LMDB) | [`AckTimes::acked`] |
//! | anchorer | an anchor's counter value is closed (incremented) | [`AckTimes::anchored`] |
//! | anchorer | start-up, for events an earlier run acked | [`AckTimes::seed`] |
//! | status handler | on request | [`AckTimes::exposure`] |
//!
//! It keeps one entry per acked batch past the newest closed anchor, so the ack time of
//! the first event after any later anchor is known exactly. While anchoring stalls (TPM
//! gone) the entries are capped at [`MAX_ENTRIES`]: past that, a new batch extends the
//! newest entry, which keeps that entry's (earlier) time, so the reported age can only
//! be too old, never too young.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

/// Bound of the per-batch entries (a stalled anchorer must not grow memory): 1 MiB,
/// 65,536 acked batches, over 10 s of lone clients acking each event (4,096 was not:
/// the exposure measured 1 s too old).
pub const MAX_ENTRIES: usize = 1 << 16;

/// What no closed anchor covers yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Exposure {
    /// Acked events after the newest closed anchor.
    pub unanchored: u64,
    /// When the oldest of them was acked (Unix nanoseconds); `None` when there are none.
    pub oldest_acked_unix_nanos: Option<i64>,
}

#[derive(Debug)]
struct Inner {
    /// Size of the log as acked.
    acked: u64,
    /// Size covered by the newest closed anchor.
    anchored: u64,
    /// (end size, ack time) of acked batches ending past `anchored`, oldest first.
    batches: VecDeque<(u64, i64)>,
}

/// Ack times of unanchored events; shared by the sequencer, the anchorer and status.
#[derive(Debug)]
pub struct AckTimes {
    inner: Mutex<Inner>,
}

impl AckTimes {
    /// Nothing unanchored yet; `acked` events are in the log.
    pub fn new(acked: u64) -> AckTimes {
        AckTimes {
            inner: Mutex::new(Inner {
                acked,
                anchored: acked,
                batches: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Events up to `end` (the log's size after a batch) were acked at `at_unix_nanos`.
    pub fn acked(&self, end: u64, at_unix_nanos: i64) {
        let mut inner = self.lock();
        if end <= inner.acked {
            return;
        }
        inner.acked = end;
        if end <= inner.anchored {
            return;
        }
        if inner.batches.len() >= MAX_ENTRIES {
            if let Some(last) = inner.batches.back_mut() {
                last.0 = end;
                return;
            }
        }
        inner.batches.push_back((end, at_unix_nanos));
    }

    /// A closed anchor covers the first `size` events.
    pub fn anchored(&self, size: u64) {
        let mut inner = self.lock();
        if size <= inner.anchored {
            return;
        }
        inner.anchored = size;
        while inner.batches.front().is_some_and(|&(end, _)| end <= size) {
            inner.batches.pop_front();
        }
    }

    /// At start-up: the newest closed anchor covers `anchored` events, and the events
    /// up to `acked` (acked by an earlier run) were acked at or after `since_unix_nanos`
    /// (the first one's receive time: the age can only be overstated).
    pub fn seed(&self, anchored: u64, acked: u64, since_unix_nanos: i64) {
        let mut inner = self.lock();
        inner.anchored = anchored;
        inner.acked = inner.acked.max(acked);
        inner.batches.clear();
        if acked > anchored {
            inner.batches.push_back((acked, since_unix_nanos));
        }
    }

    /// What no closed anchor covers now.
    pub fn exposure(&self) -> Exposure {
        let inner = self.lock();
        let unanchored = inner.acked.saturating_sub(inner.anchored);
        Exposure {
            unanchored,
            oldest_acked_unix_nanos: if unanchored == 0 {
                None
            } else {
                inner.batches.front().map(|&(_, at)| at)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_unanchored_ack_is_the_batch_holding_the_first_unanchored_event() {
        let times = AckTimes::new(0);
        assert_eq!(times.exposure(), Exposure::default());
        times.acked(10, 100);
        times.acked(20, 200);
        times.acked(30, 300);
        assert_eq!(
            times.exposure(),
            Exposure {
                unanchored: 30,
                oldest_acked_unix_nanos: Some(100)
            }
        );
        // An anchor inside the second batch: its events 15..20 were acked at 200.
        times.anchored(15);
        assert_eq!(times.exposure().oldest_acked_unix_nanos, Some(200));
        assert_eq!(times.exposure().unanchored, 15);
        times.anchored(20);
        assert_eq!(times.exposure().oldest_acked_unix_nanos, Some(300));
        times.anchored(30);
        assert_eq!(times.exposure(), Exposure::default());
        // An older anchor (out of order) changes nothing.
        times.anchored(5);
        assert_eq!(times.exposure(), Exposure::default());
    }

    #[test]
    fn a_stalled_anchorer_bounds_the_entries_and_only_overstates_the_age() {
        let times = AckTimes::new(0);
        for i in 0..(MAX_ENTRIES as u64 + 100) {
            times.acked(i + 1, i as i64);
        }
        assert_eq!(times.lock().batches.len(), MAX_ENTRIES);
        // Events past the cap are attributed to the last kept entry's (earlier) time.
        times.anchored(MAX_ENTRIES as u64 + 50);
        assert_eq!(
            times.exposure(),
            Exposure {
                unanchored: 50,
                oldest_acked_unix_nanos: Some(MAX_ENTRIES as i64 - 1)
            }
        );
    }

    #[test]
    fn seeded_events_from_an_earlier_run_count_from_their_time() {
        let times = AckTimes::new(50);
        times.seed(20, 50, 7);
        assert_eq!(
            times.exposure(),
            Exposure {
                unanchored: 30,
                oldest_acked_unix_nanos: Some(7)
            }
        );
        times.acked(60, 9);
        times.anchored(50);
        assert_eq!(times.exposure().oldest_acked_unix_nanos, Some(9));
    }
}
