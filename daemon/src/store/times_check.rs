//! `tallyd check`'s proof that the `times` index is sound: walked beside the
//! records in [`Store::verify`](super::Store::verify)'s one pass
//! (docs/DESIGN.md, section 4c).
//!
//! Write `P(n)` for the largest receive time among records `[0, n)` (none
//! when no record there has one) and `(M_i, s_i)` for the entries in key
//! order. A `since T` read seeks the first entry with `M_i >= T` and skips
//! `[0, s_i)`; so it is exact for every `T` exactly when `P(s_0)` is none,
//! `P(s_i) <= M_{i-1}`, and `P(times_size) <= M_last`. The check demands
//! what tallyd writes, which implies that: each key 16 bytes with an empty
//! value, both halves strictly increasing, `P(s_i) = M_{i-1}` (none before
//! the first), `P(times_size) = M_last`, `times_size` = the log's size.

use std::fmt;

use super::times::unflip;

/// The first way the index departs from the records. `index` counts the
/// entries in key order from 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimesFault {
    #[error("entry {index} is not a 16-byte key with an empty value")]
    Malformed { index: u64 },
    #[error("entry {index} (max {}, seq {seq}): its maximum is not above the entry before's ({})", Time(Some(*max)), Time(Some(*before)))]
    MaxNotIncreasing {
        index: u64,
        max: i64,
        seq: u64,
        before: i64,
    },
    #[error("entry {index} (max {}, seq {seq}): its seq is not above the entry before's ({before})", Time(Some(*max)))]
    SeqNotIncreasing {
        index: u64,
        max: i64,
        seq: u64,
        before: u64,
    },
    /// `P(s_i) != M_{i-1}`: an entry was deleted, added, or moved, or the
    /// one before it has another maximum than the records reached.
    #[error(
        "entry {index} (max {}, seq {seq}): the records before seq {seq} were received up to {}, {}",
        Time(Some(*max)), Time(*found), Claim(*index, *claimed)
    )]
    Before {
        index: u64,
        max: i64,
        seq: u64,
        claimed: Option<i64>,
        found: Option<i64>,
    },
    #[error("entry {index} (max {}, seq {seq}) starts at or past the log's end ({size} records)", Time(Some(*max)))]
    PastEnd {
        index: u64,
        max: i64,
        seq: u64,
        size: u64,
    },
    /// `P(times_size) != M_last`: the last entry (`entries - 1`) was
    /// lowered, raised or deleted.
    #[error(
        "after its last entry ({entries} entries): the {size} records were received up to {}, the index says up to {}",
        Time(*found), Time(*claimed)
    )]
    End {
        entries: u64,
        size: u64,
        claimed: Option<i64>,
        found: Option<i64>,
    },
    #[error("times_size is {times_size}, the log holds {size} records")]
    Size { times_size: u64, size: u64 },
}

/// A receive time as a fault shows it: RFC 3339 in UTC (nanoseconds since
/// the epoch beyond jiff's range), or none.
struct Time(Option<i64>);

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(nanos) => match jiff::Timestamp::from_nanosecond(i128::from(nanos)) {
                Ok(time) => write!(f, "{time}"),
                Err(_) => write!(f, "{nanos} ns since the epoch"),
            },
            None => f.write_str("no time (no record with one)"),
        }
    }
}

/// What the index claims of the records before entry `.0`: the maximum of
/// the entry before it, or (the first entry) that none has a time.
struct Claim(u64, Option<i64>);

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0.checked_sub(1), self.1) {
            (Some(before), claimed) => {
                write!(f, "entry {before} says up to {}", Time(claimed))
            }
            (None, _) => f.write_str("none should have a time before the first entry"),
        }
    }
}

/// One entry as read: `Err(())` when it is not of the key's form.
type Entry = Result<(i64, u64), ()>;

fn decode(key: &[u8], value: &[u8]) -> Entry {
    let key = <[u8; 16]>::try_from(key).map_err(|_| ())?;
    if !value.is_empty() {
        return Err(());
    }
    let (max, seq) = key.split_at(8);
    let max = <[u8; 8]>::try_from(max).map_err(|_| ())?;
    let seq = <[u8; 8]>::try_from(seq).map_err(|_| ())?;
    Ok((unflip(u64::from_be_bytes(max)), u64::from_be_bytes(seq)))
}

/// The walk: fed every record's seq and time in seq order, then finished
/// with the log's size and `times_size`. It keeps only the first fault.
pub(super) struct TimesCheck<I> {
    entries: I,
    /// The next entry not yet compared, with its index.
    next: Option<(u64, Entry)>,
    /// Entries compared so far.
    seen: u64,
    /// The last compared entry's `(M, s)`.
    before: Option<(i64, u64)>,
    /// `P(n)` for the next record's seq `n`.
    running: Option<i64>,
    fault: Option<TimesFault>,
}

impl<'t, I> TimesCheck<I>
where
    I: Iterator<Item = heed::Result<(&'t [u8], &'t [u8])>>,
{
    pub(super) fn new(mut entries: I) -> heed::Result<Self> {
        let next = entries
            .next()
            .transpose()?
            .map(|(key, value)| (0, decode(key, value)));
        Ok(TimesCheck {
            entries,
            next,
            seen: 0,
            before: None,
            running: None,
            fault: None,
        })
    }

    /// Record `seq` (every seq from 0, in order) was received at `time`.
    pub(super) fn record(&mut self, seq: u64, time: Option<i64>) -> heed::Result<()> {
        self.reach(seq)?;
        self.running = self.running.max(time);
        Ok(())
    }

    /// Compares every entry whose seq is at most `n` (`running` is `P(n)`).
    fn reach(&mut self, n: u64) -> heed::Result<()> {
        while self.fault.is_none() {
            let Some((index, entry)) = self.next else {
                return Ok(());
            };
            let Ok((max, seq)) = entry else {
                self.fault = Some(TimesFault::Malformed { index });
                return Ok(());
            };
            if seq > n {
                return Ok(());
            }
            self.fault = self.compare(index, max, seq, n);
            self.before = Some((max, seq));
            self.seen = index + 1;
            self.next = self
                .entries
                .next()
                .transpose()?
                .map(|(key, value)| (index + 1, decode(key, value)));
        }
        Ok(())
    }

    /// Entry `index`, reached at seq `n` (its own seq unless an entry
    /// before it had a larger one).
    fn compare(&self, index: u64, max: i64, seq: u64, n: u64) -> Option<TimesFault> {
        if let Some((before_max, before_seq)) = self.before {
            if max <= before_max {
                return Some(TimesFault::MaxNotIncreasing {
                    index,
                    max,
                    seq,
                    before: before_max,
                });
            }
            // Every seq is visited, so an entry is reached past its own
            // seq only when the one before it had a seq at least as large.
            if seq <= before_seq || seq < n {
                return Some(TimesFault::SeqNotIncreasing {
                    index,
                    max,
                    seq,
                    before: before_seq,
                });
            }
        }
        let claimed = self.before.map(|(max, _)| max);
        (self.running != claimed).then_some(TimesFault::Before {
            index,
            max,
            seq,
            claimed,
            found: self.running,
        })
    }

    /// The first fault, given the log's size (the records walked) and the
    /// stored `times_size`.
    pub(super) fn finish(self, size: u64, times_size: u64) -> Result<(), TimesFault> {
        if let Some(fault) = self.fault {
            return Err(fault);
        }
        if let Some((index, entry)) = self.next {
            // Every entry with a seq below `size` was reached.
            return Err(match entry {
                Ok((max, seq)) => TimesFault::PastEnd {
                    index,
                    max,
                    seq,
                    size,
                },
                Err(()) => TimesFault::Malformed { index },
            });
        }
        let claimed = self.before.map(|(max, _)| max);
        if self.running != claimed {
            return Err(TimesFault::End {
                entries: self.seen,
                size,
                claimed,
                found: self.running,
            });
        }
        if times_size != size {
            return Err(TimesFault::Size { times_size, size });
        }
        Ok(())
    }
}
