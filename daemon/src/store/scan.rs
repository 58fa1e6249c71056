//! Filtered reads: the records of a seq range that match a
//! `proto::Filter`, oldest or newest first, bounded per request by the
//! records returned, their bytes, the records examined and the time spent.
//! Where the scan stopped is returned with the page, so the next request
//! continues there (docs/DESIGN.md, section 2).

use std::time::Instant;

use heed::RoTxn;
use prost::Message;
use tally_attest::record::HEADER_LEN;
use tally_attest::{entry_hash, Hash};
use tally_client::filter;
use tally_client::proto::{Filter, RecordBody};

use super::records::decode_head;
use super::records::StoredRecord;
use super::times::record_time;
use super::{Store, StoreError, META_HEAD};

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
    /// The entry hash of each record of `records`, in the same order: taken
    /// from the chain's links, not recomputed (see [`prev_hash`]).
    pub entry_hashes: Vec<Hash>,
    pub resume_seq: u64,
}

/// The `prev_hash` field of a stored record (bytes 9..41, DESIGN.md
/// section 3): the entry hash of record `seq - 1`. The store holds only
/// chained records (checked at start-up and by `tallyd check`), so serving a
/// read needs no SHA-256: record i's entry hash is record i+1's link, and the
/// last record's is the head's.
pub(crate) fn prev_hash(record: &[u8]) -> Option<Hash> {
    record.get(9..HEADER_LEN)?.try_into().ok()
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

/// A scan that examined at least this many records is a bulk read (an
/// export or a live verify streaming the log, a follower catching up): the
/// pages it read are dropped from tallyd's page tables behind it, so its
/// file-backed RSS does not grow to the store's size. Smaller scans (a
/// follower at the head, `tail -n`) leave them mapped.
const DROP_AFTER: usize = 256;
/// A bulk scan drops what it read every this many slices (bounding the list).
const DROP_RUN: usize = 4096;

impl Store {
    /// Runs one request's scan on a snapshot of the store.
    pub fn scan(&self, scan: &Scan<'_>) -> Result<ScanPage, StoreError> {
        let (page, bulk_bytes) = self.scan_snapshot(scan)?;
        // After the snapshot and its gate are released (`mapped` takes
        // the gate itself).
        if bulk_bytes > 0 {
            self.mapped(bulk_bytes);
        }
        Ok(page)
    }

    /// [`Store::scan`]'s work; also returns the bytes a bulk scan read from
    /// the map (0 for a small scan).
    fn scan_snapshot(&self, scan: &Scan<'_>) -> Result<(ScanPage, usize), StoreError> {
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
            let page = ScanPage {
                records: Vec::new(),
                entry_hashes: Vec::new(),
                resume_seq: done.max(scan.from),
            };
            return Ok((page, 0));
        }
        let range = start..scan.to;
        let entries: Box<dyn Iterator<Item = heed::Result<(u64, &[u8])>>> = if scan.newest {
            Box::new(self.records.rev_range(&rtxn, &range)?)
        } else {
            Box::new(self.records.range(&rtxn, &range)?)
        };
        // An unfiltered forward scan (a follower, an export, a live verify)
        // keeps every record it examines: its content rows are read with a
        // cursor beside the records' instead of one B-tree search each. A
        // filtered or newest-first scan looks each up.
        let mut rows = (!scan.newest && tally_client::filter::is_empty(scan.filter))
            .then(|| self.content.range(&rtxn, &range))
            .transpose()?
            .map(Iterator::peekable);
        // The seq a stop at `seq` resumes from: forward, seq itself was not
        // examined; newest, [seq + 1, to) was.
        let stop_at = |seq: u64| if scan.newest { seq + 1 } else { seq };
        let max_records = scan.max_records.max(1);
        let mut records = Vec::new();
        let mut hashes: Vec<Option<Hash>> = Vec::new();
        // The link of the record examined just before (newest: seq + 1).
        let mut above: Option<(u64, Option<Hash>)> = None;
        let mut bytes = 0usize;
        let mut sealed: Vec<Option<&[u8]>> = Vec::new();
        let mut resume_seq = done;
        // The map slices read (every record examined, every content row
        // kept), whose pages a bulk scan drops behind it (map_advice.rs).
        let mut touched: Vec<&[u8]> = Vec::new();
        let (mut examined_all, mut read_bytes) = (0usize, 0usize);
        for (examined, entry) in (0u64..).zip(entries) {
            let (seq, record) = entry?;
            examined_all += 1;
            read_bytes += record.len();
            touched.push(record);
            if touched.len() >= DROP_RUN {
                self.drop_behind(&mut touched);
            }
            if !scan.newest {
                // Forward: this record's link is the hash of the last one
                // kept, when that was the record just before.
                if let (Some(last), Some(hash)) = (records.last(), hashes.last_mut()) {
                    let last: &StoredRecord = last;
                    if last.seq + 1 == seq && hash.is_none() {
                        *hash = prev_hash(record);
                    }
                }
            }
            let link_above = above.take();
            above = Some((seq, prev_hash(record)));
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
            // The page carries the record's sealed opening too (decrypted
            // below, the same length): its bytes count against the bound.
            let content = match rows.as_mut() {
                Some(rows) => next_row(rows, seq)?,
                None => self.content.get(&rtxn, &seq)?,
            };
            let len = record.len() + content.map_or(0, <[u8]>::len);
            if !records.is_empty() && bytes + len > scan.max_bytes {
                resume_seq = stop_at(seq);
                break;
            }
            bytes += len;
            read_bytes += content.map_or(0, <[u8]>::len);
            touched.extend(content);
            sealed.push(content);
            records.push(StoredRecord {
                seq,
                bytes: record.to_vec(),
                content: None,
            });
            hashes.push(match link_above {
                Some((next, link)) if scan.newest && next == seq + 1 => link,
                _ => None,
            });
            if records.len() == max_records {
                // This record is examined too: forward, resume after it;
                // newest, at it.
                resume_seq = if scan.newest { seq } else { seq + 1 };
                break;
            }
        }
        // The openings, decrypted (AES-CTR, no hash): DESIGN 3b's reading.
        self.open_contents(&mut records, &sealed)?;
        let mut entry_hashes = Vec::with_capacity(records.len());
        for (record, hash) in records.iter().zip(hashes) {
            entry_hashes.push(match hash {
                Some(hash) => hash,
                None => self.entry_hash_of(&rtxn, record)?,
            });
        }
        let bulk = examined_all >= DROP_AFTER;
        if bulk {
            self.drop_behind(&mut touched);
        }
        if scan.newest {
            records.reverse();
            entry_hashes.reverse();
        }
        let page = ScanPage {
            records,
            entry_hashes,
            resume_seq,
        };
        Ok((page, if bulk { read_bytes } else { 0 }))
    }

    /// The entry hash of a record whose successor the scan did not examine:
    /// the successor's link, or the head's hash when it is the last record,
    /// from the same snapshot. SHA-256 only for a record that is neither (a
    /// store that is not chained fails `tallyd check`; never served unhashed).
    fn entry_hash_of(&self, rtxn: &RoTxn<'_>, record: &StoredRecord) -> Result<Hash, StoreError> {
        if let Some(next) = self.records.get(rtxn, &(record.seq + 1))? {
            if let Some(hash) = prev_hash(next) {
                return Ok(hash);
            }
        } else if let Some(head) = self.meta.get(rtxn, META_HEAD)? {
            if let Some(head) = decode_head(head, [0; 32]) {
                if head.size == record.seq + 1 {
                    return Ok(head.hash);
                }
            }
        }
        Ok(entry_hash(&record.bytes))
    }
}

/// The content row of `seq` from a forward cursor over the content rows:
/// the rows before it are passed (their records were not kept), the row at
/// it is taken, a row past it stays for a later seq.
fn next_row<'t, I>(
    rows: &mut std::iter::Peekable<I>,
    seq: u64,
) -> Result<Option<&'t [u8]>, StoreError>
where
    I: Iterator<Item = heed::Result<(u64, &'t [u8])>>,
{
    loop {
        match rows.peek() {
            Some(Ok((key, _))) if *key < seq => {
                rows.next();
            }
            Some(Ok((key, _))) if *key == seq => {
                return Ok(rows.next().and_then(Result::ok).map(|(_, row)| row));
            }
            Some(Err(_)) => {
                return match rows.next() {
                    Some(Err(err)) => Err(err.into()),
                    _ => Ok(None),
                };
            }
            _ => return Ok(None),
        }
    }
}
