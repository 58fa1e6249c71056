//! The `times` database: where a `since` read starts, found with one LMDB
//! seek instead of a scan (docs/DESIGN.md, section 4).
//!
//! Receive times are not monotonic in seq: each request is stamped when it
//! arrives, before the sequencer orders jobs from different connections, and
//! the wall clock can step back. So the index keeps the *running maximum* of
//! the receive times, which is monotonic: one entry per commit batch that
//! raised it, key `max_time || first_seq` (both big-endian, the time with its
//! sign bit flipped so that byte order is numeric order). The first entry
//! whose maximum is >= T names a batch; every record before that batch's
//! first seq was received before T (the maximum over all of them is the
//! previous entry's, < T). A scan from there, checking each record's time,
//! is exact however the clock moved.
//!
//! The meta value `times_size` (u64 big-endian) is the number of records the
//! index covers; it is written in the commit transaction. A store written
//! before the index (or appended to by such a tallyd after this one) has
//! fewer covered records than its head: [`Store::index_times`] indexes the
//! rest at open, in transactions of [`CATCH_UP_RECORDS`] records.

use std::ops::Bound;

use heed::types::Bytes;
use heed::{PutFlags, RoTxn, RwTxn, WithoutTls};
use tally_attest::record::HEADER_LEN;
use tally_client::filter::receive_time;

use super::{Batch, Store, StoreError, TimesFault, META_TIMES_SIZE};
use crate::batch::ReceiveTimes;

/// Records per transaction when indexing at open a store written before the
/// index (resumable: each commits its `times_size`).
const CATCH_UP_RECORDS: u64 = 1 << 20;

/// Records per entry when indexing at open, where the commit batches are not
/// known: an entry per record would double a log's key count, one per 256
/// makes a seek scan at most 255 records too many.
const CATCH_UP_GROUP: u64 = 256;

/// A `times` key: the running maximum of the receive times, then the first
/// seq of the batch that raised it to that value.
pub(super) fn times_key(max_time: i64, first_seq: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&flip(max_time).to_be_bytes());
    key[8..].copy_from_slice(&first_seq.to_be_bytes());
    key
}

/// i64 to u64 such that the order is kept (the sign bit flipped).
fn flip(time: i64) -> u64 {
    (time as u64) ^ (1 << 63)
}

pub(super) fn unflip(bits: u64) -> i64 {
    (bits ^ (1 << 63)) as i64
}

/// The receive time of a stored record (header + body), if it parses.
pub(super) fn record_time(record: &[u8]) -> Option<i64> {
    receive_time(record.get(HEADER_LEN..)?)
}

/// The entries a commit adds, given the running maximum before it.
pub(super) struct TimeEntries {
    pub(super) max: Option<i64>,
}

impl TimeEntries {
    /// Puts the batch's entry, if it raises the running maximum (a record
    /// whose body does not parse has no time and raises nothing).
    pub(super) fn put_batch(
        &mut self,
        store: &Store,
        wtxn: &mut RwTxn<'_>,
        batch: &Batch,
    ) -> Result<(), heed::Error> {
        let first = batch.records().next().map(|(seq, _)| seq);
        let batch_max = match batch.receive_times() {
            ReceiveTimes::Max(max) => max,
            ReceiveTimes::Unknown => batch.records().filter_map(|(_, r)| record_time(r)).max(),
        };
        self.raise(store, wtxn, first, batch_max)
    }

    fn raise(
        &mut self,
        store: &Store,
        wtxn: &mut RwTxn<'_>,
        first: Option<u64>,
        max: Option<i64>,
    ) -> Result<(), heed::Error> {
        let (Some(first), Some(max)) = (first, max) else {
            return Ok(());
        };
        if self.max.is_some_and(|running| max <= running) {
            return Ok(());
        }
        // Both halves of the key grow, so each entry is the last: append.
        store
            .times
            .put_with_flags(wtxn, PutFlags::APPEND, &times_key(max, first), &[])?;
        self.max = Some(max);
        Ok(())
    }
}

impl Store {
    /// The first seq that can have been received at or after `since`: every
    /// record before it was received earlier. The log's size when none can.
    pub(super) fn time_start(
        &self,
        rtxn: &RoTxn<'_, WithoutTls>,
        since: i64,
    ) -> Result<u64, StoreError> {
        let from = times_key(since, 0);
        let range = (Bound::Included(&from[..]), Bound::Unbounded);
        let first = self.times.range(rtxn, &range)?.next().transpose()?;
        match first {
            Some((key, _)) => key
                .get(8..16)
                .and_then(|seq| <[u8; 8]>::try_from(seq).ok())
                .map(u64::from_be_bytes)
                .ok_or(StoreError::CorruptMeta("a times key is not 16 bytes")),
            None => self.times_size(rtxn),
        }
    }

    /// `times_size`: the records the index covers (0 when absent).
    pub(super) fn times_size(&self, rtxn: &RoTxn<'_, WithoutTls>) -> Result<u64, StoreError> {
        match self.meta.get(rtxn, META_TIMES_SIZE)? {
            None => Ok(0),
            Some(bytes) => <[u8; 8]>::try_from(bytes)
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::CorruptMeta("times_size is not 8 bytes")),
        }
    }

    /// The running maximum the last entry holds (`None`: no entry).
    pub(super) fn times_max(
        &self,
        rtxn: &RoTxn<'_, WithoutTls>,
    ) -> Result<Option<i64>, StoreError> {
        let last = self.times.remap_types::<Bytes, Bytes>().last(rtxn)?;
        let Some((key, _)) = last else {
            return Ok(None);
        };
        match <[u8; 16]>::try_from(key) {
            Ok(key) => {
                let mut max = [0u8; 8];
                max.copy_from_slice(&key[..8]);
                Ok(Some(unflip(u64::from_be_bytes(max))))
            }
            // Read at open: a refusal that names the repair, not "damaged,
            // restore a backup" (the records are not at fault).
            Err(_) => Err(StoreError::TimesUnsound(TimesFault::Malformed {
                index: self.times.len(rtxn)?.saturating_sub(1),
            })),
        }
    }

    /// Drops the index (every entry and `times_size`) in one transaction,
    /// so that [`Store::index_times`] builds it anew from the records: the
    /// repair when `tallyd check` finds it unsound. Returns the entries
    /// dropped.
    pub(super) fn drop_times(&self) -> Result<u64, StoreError> {
        let _gate = self.read_gate();
        let mut wtxn = self.env.write_txn()?;
        let dropped = self.times.len(&wtxn)?;
        self.times.clear(&mut wtxn)?;
        self.meta.delete(&mut wtxn, META_TIMES_SIZE)?;
        wtxn.commit()?;
        Ok(dropped)
    }

    /// Indexes the records the index does not cover yet (a store written
    /// before it); a no-op on a store this tallyd wrote. Returns how many
    /// records it indexed.
    pub(super) fn index_times(&self) -> Result<u64, StoreError> {
        let mut indexed = 0;
        loop {
            // Entries are 16 bytes per 256 records: far below a MiB.
            self.grow_if_needed(1 << 20)?;
            let _gate = self.read_gate();
            let mut wtxn = self.env.write_txn()?;
            let covered = self.times_size(&wtxn)?;
            let size = self.records.last(&wtxn)?.map_or(0, |(seq, _)| seq + 1);
            if covered >= size {
                return Ok(indexed);
            }
            let end = size.min(covered + CATCH_UP_RECORDS);
            let mut entries = TimeEntries {
                max: self.times_max(&wtxn)?,
            };
            let mut group: Option<(u64, Option<i64>)> = None;
            let mut pending = Vec::new();
            for entry in self.records.range(&wtxn, &(covered..end))? {
                let (seq, record) = entry?;
                let time = record_time(record);
                let (first, max) = group.get_or_insert((seq, None));
                *max = (*max).max(time);
                if seq + 1 - *first == CATCH_UP_GROUP || seq + 1 == end {
                    pending.push((*first, *max));
                    group = None;
                }
            }
            for (first, max) in pending {
                entries.raise(self, &mut wtxn, Some(first), max)?;
            }
            self.meta
                .put(&mut wtxn, META_TIMES_SIZE, &end.to_be_bytes())?;
            wtxn.commit()?;
            indexed += end - covered;
        }
    }
}
