//! Erasure: what an `EraseRequest` (or retention) selects, and the daemon's
//! own `tally.erasure` records that say what was erased, by whom and why
//! (docs/DESIGN.md section 3b).
//!
//! This module holds what does not depend on the server: the selection
//! ([`Selection::from_request`]), the erasure records ([`erasure_bodies`])
//! and the retention rules ([`retention`]). The server runs them
//! (`server/erase.rs`): it takes the erasure lock, asks the store which
//! matching records still have content
//! ([`Store::erasable`](crate::store::Store::erasable)), and submits the
//! erasure records as one job whose commit also deletes the contents and
//! destroys their keys (the sequencer's erase engine, `AppendJob::erasure`).

pub mod retention;

use std::collections::BTreeMap;

use prost::Message;
use tally_attest::content::{SeqRanges, ERASURE_KIND};
use tally_client::proto::{self, Erasure, Event, Filter, RecordBody, SeqRange};

use crate::peer::PeerId;

/// Most ranges one erasure record names (DESIGN 3b): about 230 KiB of
/// ranges at worst, so a record stays far below the store's and a reader's
/// limits; more ranges make several records.
pub const MAX_RANGES_PER_RECORD: usize = 16_384;

/// Longest reason accepted, in bytes.
pub const MAX_REASON_BYTES: usize = 4096;

/// The `Event.actor` of erasure records.
const ERASURE_ACTOR: &str = "tallyd";

/// Why an erase request was refused (nothing was erased).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectionError {
    #[error("an erase request must select records: a seq range, a subject, an actor or a time")]
    NoSelector,
    #[error("an erase request must give a reason")]
    NoReason,
    #[error("the reason is {len} bytes; at most {max}")]
    ReasonTooLong { len: usize, max: usize },
    #[error("seqs [{from}, {to}) select nothing")]
    EmptyRange { from: u64, to: u64 },
}

/// What to erase: the records of `[from, to)` that match `filter` and are not
/// of a kind in `except_kinds`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    pub from: u64,
    /// Exclusive; `None`: the log's size when the erasure runs.
    pub to: Option<u64>,
    pub filter: Filter,
    pub except_kinds: Vec<String>,
}

impl Selection {
    /// The selection of an erase request, refused when it selects nothing in
    /// particular (an erasure of everything must say so with a seq range).
    pub fn from_request(request: &proto::EraseRequest) -> Result<Selection, SelectionError> {
        let has_selector = request.from_seq.is_some()
            || request.to_seq != 0
            || !request.subject.is_empty()
            || !request.actor.is_empty()
            || request.before_unix_nanos.is_some();
        if !has_selector {
            return Err(SelectionError::NoSelector);
        }
        let from = request.from_seq.unwrap_or(0);
        let to = (request.to_seq != 0).then_some(request.to_seq);
        if let Some(to) = to {
            if to <= from {
                return Err(SelectionError::EmptyRange { from, to });
            }
        }
        let filter = Filter {
            until_unix_nanos: request.before_unix_nanos,
            subjects: non_empty(&request.subject),
            actors: non_empty(&request.actor),
            ..Filter::default()
        };
        Ok(Selection {
            from,
            to,
            filter,
            except_kinds: Vec::new(),
        })
    }

    /// The selection as the erasure record's `selection` attribute, e.g.
    /// `seq=[5,9) subject="u-17" before=2026-11-30T00:00:00Z`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match self.to {
            Some(to) => parts.push(format!("seq=[{},{})", self.from, to)),
            None if self.from > 0 => parts.push(format!("seq=[{},end)", self.from)),
            None => {}
        }
        for (name, values) in [
            ("kind", &self.filter.kinds),
            ("subject", &self.filter.subjects),
            ("actor", &self.filter.actors),
        ] {
            for value in values {
                parts.push(format!("{name}={value:?}"));
            }
        }
        for kind in &self.except_kinds {
            parts.push(format!("kind!={kind:?}"));
        }
        if let Some(before) = self.filter.until_unix_nanos {
            parts.push(format!("before={}", rfc3339(before)));
        }
        parts.join(" ")
    }
}

fn non_empty(value: &str) -> Vec<String> {
    if value.is_empty() {
        Vec::new()
    } else {
        vec![value.to_owned()]
    }
}

/// `nanos` as RFC 3339 in UTC (the raw number if out of range).
fn rfc3339(nanos: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(nanos))
        .map(|t| t.to_string())
        .unwrap_or_else(|_| nanos.to_string())
}

/// Checks an erase request's reason.
pub fn check_reason(reason: &str) -> Result<(), SelectionError> {
    if reason.trim().is_empty() {
        return Err(SelectionError::NoReason);
    }
    if reason.len() > MAX_REASON_BYTES {
        return Err(SelectionError::ReasonTooLong {
            len: reason.len(),
            max: MAX_REASON_BYTES,
        });
    }
    Ok(())
}

/// The erasure records (encoded `RecordBody`s) naming `erased`, by `peer`,
/// received at `time`: one per [`MAX_RANGES_PER_RECORD`] ranges.
pub fn erasure_bodies(
    erased: &SeqRanges,
    reason: &str,
    selection: &str,
    peer: &PeerId,
    time: i64,
) -> Vec<Vec<u8>> {
    erased
        .ranges()
        .chunks(MAX_RANGES_PER_RECORD)
        .map(|ranges| {
            let count: u64 = ranges.iter().map(|(from, to)| to - from).sum();
            let attributes = BTreeMap::from([
                ("reason".to_owned(), reason.to_owned()),
                ("selection".to_owned(), selection.to_owned()),
                ("erased".to_owned(), count.to_string()),
            ]);
            RecordBody {
                receive_time_unix_nanos: time,
                peer: Some(peer.to_proto()),
                event: Some(Event {
                    kind: ERASURE_KIND.to_owned(),
                    actor: ERASURE_ACTOR.to_owned(),
                    attributes: attributes.into_iter().collect(),
                    ..Event::default()
                }),
                content_commitment: Vec::new(),
                erasure: Some(Erasure {
                    erased: ranges
                        .iter()
                        .map(|&(from_seq, to_seq)| SeqRange { from_seq, to_seq })
                        .collect(),
                }),
            }
            .encode_to_vec()
        })
        .collect()
}

#[cfg(test)]
mod tests;
