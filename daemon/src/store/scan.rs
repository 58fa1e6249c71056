//! Filtered reads: the records of a seq range that match a
//! `proto::Filter`, oldest or newest first, bounded per request by the
//! records returned, their bytes, the records examined and the time spent.
//! Where the scan stopped is returned with the page, so the next request
//! continues there (docs/DESIGN.md, section 2).

use std::time::Instant;

use prost::Message;
use tally_attest::record::HEADER_LEN;
use tally_client::filter;
use tally_client::proto::{Filter, RecordBody};

use super::records::StoredRecord;
use super::times::record_time;
use super::{Store, StoreError};

/// One read request's scan.
#[derive(Debug, Clone)]
pub struct Scan<'a> {
    /// The range `[from, to)`; `to` no larger than the log.
    pub from: u64,
    pub to: u64,
    /// The newest matches of the range (still returned in seq order).
    pub newest: bool,
    pub filter: &'a Filter,
    /// At most this many records (at least 1)...
    pub max_records: usize,
    /// ... and no more once their bytes reach this (but at least one).
    pub max_bytes: usize,
    /// Stop after examining this many records...
    pub max_examined: u64,
    /// ... or at this instant (checked every [`CLOCK_EVERY`] records).
    pub deadline: Option<Instant>,
}

/// How often the scan looks at the clock: `Instant::now` is ~25 ns, a
/// record's decode ~0.5-2 us.
const CLOCK_EVERY: u64 = 256;

/// The matching records and where the scan stopped: forward, every seq of
/// `[from, resume_seq)` was examined (`to` when the range is done);
/// newest, `[resume_seq, to)` (`from` when done).
#[derive(Debug, Default)]
pub struct ScanPage {
    pub records: Vec<StoredRecord>,
    pub resume_seq: u64,
}

/// Whether a stored record matches; a record whose body does not decode
/// matches only the empty filter (it has no time, kind or attributes).
fn record_matches(filter: &Filter, record: &[u8]) -> bool {
    if filter::is_empty(filter) {
        return true;
    }
    let Some(body) = record.get(HEADER_LEN..) else {
        return false;
    };
    if !filter::matches_beyond_time(filter) {
        // The time alone: no need to decode the event.
        let Some(time) = record_time(record) else {
            return false;
        };
        return !(filter.since_unix_nanos.is_some_and(|since| time < since)
            || filter.until_unix_nanos.is_some_and(|until| time >= until));
    }
    RecordBody::decode(body).is_ok_and(|body| filter::matches(filter, &body))
}

impl Store {
    /// Runs one request's scan on a snapshot of the store.
    pub fn scan(&self, scan: &Scan<'_>) -> Result<ScanPage, StoreError> {
        let _gate = self.read_gate();
        let rtxn = self.env.read_txn()?;
        // Records before the first one that can have been received at or
        // after `since` cannot match: skipped with one seek (times.rs).
        let start = match scan.filter.since_unix_nanos {
            Some(since) => scan.from.max(self.time_start(&rtxn, since)?),
            None => scan.from,
        };
        let done = if scan.newest { scan.from } else { scan.to };
        if start >= scan.to {
            return Ok(ScanPage {
                records: Vec::new(),
                resume_seq: done.max(scan.from),
            });
        }
        let range = start..scan.to;
        let entries: Box<dyn Iterator<Item = heed::Result<(u64, &[u8])>>> = if scan.newest {
            Box::new(self.records.rev_range(&rtxn, &range)?)
        } else {
            Box::new(self.records.range(&rtxn, &range)?)
        };
        // The seq a stop at `seq` resumes from: forward, seq itself was not
        // examined; newest, [seq + 1, to) was.
        let stop_at = |seq: u64| if scan.newest { seq + 1 } else { seq };
        let max_records = scan.max_records.max(1);
        let mut records = Vec::new();
        let mut bytes = 0usize;
        let mut resume_seq = done;
        for (examined, entry) in (0u64..).zip(entries) {
            let (seq, record) = entry?;
            if examined >= scan.max_examined
                || (examined % CLOCK_EVERY == CLOCK_EVERY - 1
                    && scan.deadline.is_some_and(|at| Instant::now() >= at))
            {
                resume_seq = stop_at(seq);
                break;
            }
            if !record_matches(scan.filter, record) {
                continue;
            }
            if !records.is_empty() && bytes + record.len() > scan.max_bytes {
                resume_seq = stop_at(seq);
                break;
            }
            bytes += record.len();
            records.push(StoredRecord {
                seq,
                bytes: record.to_vec(),
            });
            if records.len() == max_records {
                // This record is examined too: forward, resume after it;
                // newest, at it.
                resume_seq = if scan.newest { seq } else { seq + 1 };
                break;
            }
        }
        if scan.newest {
            records.reverse();
        }
        Ok(ScanPage {
            records,
            resume_seq,
        })
    }
}
