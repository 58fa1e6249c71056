//! What one page of records is, shared by reads, follows and the fan-out's
//! publisher: the scan's bounds and the page as the protocol sends it.

use std::time::Duration;

use tally_client::proto;

use crate::store::ScanPage;

/// Records one read request examines at most: a filter that matches
/// nothing returns an empty page (with `resume_seq`) after this many, and the
/// client continues from there, instead of pinning a worker for the whole
/// log (a decode and a match is ~1 us; 100,000 is ~0.1 s on a quiet core).
pub(crate) const SCAN_MAX_RECORDS: u64 = 100_000;

/// Time one read request's scan takes at most, for the same reason, on a
/// machine slower than that estimate or a store that is not in the cache.
pub(crate) const SCAN_MAX_TIME: Duration = Duration::from_millis(50);

/// A scanned page as the protocol sends it. The hashes come from the chain's
/// links (`Store::scan`): no SHA-256 to serve a read.
pub(crate) fn records_of(scanned: ScanPage) -> proto::Records {
    proto::Records {
        records: scanned
            .records
            .into_iter()
            .zip(scanned.entry_hashes)
            .map(|(record, hash)| proto::StoredRecord {
                seq: record.seq,
                entry_hash: hash.to_vec().into(),
                record: record.bytes.into(),
                content: record.content.map(Into::into).unwrap_or_default(),
            })
            .collect(),
        resume_seq: scanned.resume_seq,
    }
}
