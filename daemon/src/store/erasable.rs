//! Which records of a selection have content to erase (docs/DESIGN.md
//! section 3b): the store's half of an erasure request. The records are
//! read in chunks, each in its own snapshot, so that a selection over a long
//! log never holds a read transaction (and the map's resize gate) for long.

use prost::Message;
use tally_attest::content::{BodyFacts, SeqRanges};
use tally_attest::record::HEADER_LEN;
use tally_client::filter;
use tally_client::proto::{Filter, RecordBody};

use super::times::record_time;
use super::{Store, StoreError};

/// Records examined per read transaction.
const CHUNK: u64 = 65_536;

/// What an erasure selects, besides its seq range: `filter` as reads use it
/// (subject, actor, kinds, `until` = received before), and kinds it leaves
/// alone (retention's default rule skips the kinds that have their own).
#[derive(Debug, Clone)]
pub struct Erasable<'a> {
    pub from: u64,
    /// Exclusive, at most the log's size.
    pub to: u64,
    pub filter: &'a Filter,
    pub except_kinds: &'a [String],
}

/// The records a selection matched, sorted by what erasing them means.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selected {
    /// Committed records whose content is still stored: to erase.
    pub erase: SeqRanges,
    /// Committed records whose content is already gone.
    pub already_erased: u64,
    /// Records with no content (no commitment: no payload, no personal
    /// attribute, a daemon record, or a record of a store format before 5
    /// whose payload is inside the hashed bytes).
    pub without_content: u64,
}

impl Store {
    /// The matching records of `[from, to)` and whether each has content to
    /// erase, from snapshots of at most [`CHUNK`] records each.
    pub fn erasable(&self, what: &Erasable<'_>) -> Result<Selected, StoreError> {
        let mut selected = Selected::default();
        let needs_body = filter::matches_beyond_time(what.filter) || !what.except_kinds.is_empty();
        let mut from = what.from;
        while from < what.to {
            let end = what.to.min(from.saturating_add(CHUNK));
            let _gate = self.read_gate();
            let rtxn = self.env.read_txn()?;
            for entry in self.records.range(&rtxn, &(from..end))? {
                let (seq, record) = entry?;
                if !self.selects(what, record, needs_body) {
                    continue;
                }
                let body = record.get(HEADER_LEN..).unwrap_or_default();
                let facts = BodyFacts::parse(body)
                    .map_err(|source| StoreError::BodyUnreadable { seq, source })?;
                if facts.content_commitment.is_none() {
                    selected.without_content += 1;
                } else if self.content.get(&rtxn, &seq)?.is_some() {
                    selected.erase.insert(seq, seq + 1);
                } else {
                    selected.already_erased += 1;
                }
            }
            from = end;
        }
        Ok(selected)
    }

    /// Whether `record` matches the selection's filter and kinds.
    fn selects(&self, what: &Erasable<'_>, record: &[u8], needs_body: bool) -> bool {
        if !needs_body {
            let Some(time) = record_time(record) else {
                return filter::is_empty(what.filter);
            };
            return !(what
                .filter
                .since_unix_nanos
                .is_some_and(|since| time < since)
                || what
                    .filter
                    .until_unix_nanos
                    .is_some_and(|until| time >= until));
        }
        let Some(body) = record.get(HEADER_LEN..) else {
            return false;
        };
        let Ok(body) = RecordBody::decode(body) else {
            return false;
        };
        let kind = body.event.as_ref().map(|e| e.kind.as_str()).unwrap_or("");
        filter::matches(what.filter, &body) && !what.except_kinds.iter().any(|k| k == kind)
    }

    /// The first seq that can have been received at or after `time`: every
    /// record before it was received earlier (retention's watermark).
    pub fn first_seq_received_from(&self, time: i64) -> Result<u64, StoreError> {
        let _gate = self.read_gate();
        let rtxn = self.env.read_txn()?;
        self.time_start(&rtxn, time)
    }
}
