//! Exporting records `first..=last` into a range bundle
//! (`tally_attest::range`): the records, the oldest anchor that covers them,
//! and the Merkle range proof against that anchor's checkpoint, built from
//! the daemon's inclusion proofs of the range's two end records. No new
//! daemon request is needed.
//!
//! Why the oldest covering anchor: it was made soonest after the records were
//! written, so it is the one least exposed to a later compromise of the host,
//! and its tree is the smallest that holds them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use prost::Message;
use tally_attest::anchor::{decode_anchor, Checkpoint};
use tally_attest::merkle::{range_proof_from_paths, root_from_range_proof, Hash};
use tally_attest::proof::ProofFile;
use tally_attest::range::{RangeHeader, RangeWriter, RANGE_FORMAT_VERSION};
use tally_attest::{entry_hash, RecordHeader};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::export::{
    check_opening, commit_file, partial_path, remove_partial, Content, ExportError, Inconsistency,
};
use crate::{proto, Client, ClientError};

/// What a range export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSummary {
    pub first_seq: u64,
    /// Inclusive.
    pub last_seq: u64,
    /// The anchored log size the range is proven against.
    pub tree_size: u64,
    /// That anchor's TPM counter value.
    pub anchor_counter: u64,
    /// Hashes in the range proof.
    pub proof_hashes: usize,
    /// Content sections written; 0 when redacted.
    pub openings: u64,
    pub redacted: bool,
}

/// Why a range cannot be exported (the request, not the daemon, is wrong).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RangeError {
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("the range is empty: its first seq {first} is after its last seq {last} (--to is inclusive; without it the range ends at the newest anchor)")]
    Empty { first: u64, last: u64 },
    #[error("seq {seq} is not in the log (it holds {size} records)")]
    BeyondLog { seq: u64, size: u64 },
    #[error("the log has no anchor yet, and a range bundle is proven against one: run `tally anchor` (or wait for the next periodic anchor) and export again")]
    NoAnchor,
    #[error("seq {last} is not covered by an anchor yet (the newest anchor covers {anchored} records, seqs 0..{}): run `tally anchor` (or wait for the next periodic anchor) and export again", anchored.saturating_sub(1))]
    NotAnchored { last: u64, anchored: u64 },
}

impl From<ClientError> for RangeError {
    fn from(err: ClientError) -> Self {
        RangeError::Export(ExportError::Client(err))
    }
}

impl From<Inconsistency> for RangeError {
    fn from(err: Inconsistency) -> Self {
        RangeError::Export(ExportError::Inconsistent(err))
    }
}

/// One anchor as read from the daemon.
struct Anchored {
    counter: u64,
    size: u64,
    root: Hash,
}

/// Exports records `first..=last` (`last`: `None` for the last record the
/// newest anchor covers) into `path`, written beside it and renamed into
/// place once complete, as [`crate::export::export`] does.
pub async fn export_range<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client<S>,
    first: u64,
    last: Option<u64>,
    content: Content,
    path: &Path,
) -> Result<RangeSummary, RangeError> {
    let partial = partial_path(path);
    let file = File::create(&partial).map_err(|source| ExportError::Write {
        path: partial.clone(),
        source,
    })?;
    let out = BufWriter::with_capacity(1 << 20, file);
    let (summary, out) = export_range_to(client, first, last, content, out, &partial)
        .await
        .inspect_err(|_| remove_partial(&partial))?;
    commit_file(out, &partial, path)?;
    Ok(summary)
}

/// [`export_range`] into any writer; `name` names it in errors.
pub async fn export_range_to<S: AsyncRead + AsyncWrite + Unpin, W: Write>(
    client: &mut Client<S>,
    first: u64,
    last: Option<u64>,
    content: Content,
    out: W,
    name: &Path,
) -> Result<(RangeSummary, W), RangeError> {
    let status = client.status().await?;
    let anchors = read_anchors(client).await?;
    let newest = anchors.iter().map(|anchor| anchor.size).max();
    let last = match (last, newest) {
        (Some(last), _) => last,
        (None, Some(newest)) if newest > 0 => newest - 1,
        (None, _) => return Err(RangeError::NoAnchor),
    };
    if first > last {
        return Err(RangeError::Empty { first, last });
    }
    if last >= status.size {
        return Err(RangeError::BeyondLog {
            seq: last,
            size: status.size,
        });
    }
    let end = last + 1;
    // The oldest anchor covering the range (anchors are in counter order).
    let Some(anchor) = anchors.iter().find(|anchor| anchor.size >= end) else {
        return Err(match newest {
            None => RangeError::NoAnchor,
            Some(anchored) => RangeError::NotAnchored { last, anchored },
        });
    };
    let (first_path, anchor_bytes) = inclusion_path(client, first, anchor.size).await?;
    let (last_path, last_anchor) = inclusion_path(client, last, anchor.size).await?;
    if last_anchor != anchor_bytes {
        return Err(Inconsistency::Proof {
            seq: last,
            why: format!("proven against another anchor than seq {first}"),
        }
        .into());
    }
    let proof = range_proof_from_paths(first, end, anchor.size, &first_path, &last_path).map_err(
        |err| Inconsistency::Proof {
            seq: first,
            why: err.to_string(),
        },
    )?;
    let header = RangeHeader {
        format_version: RANGE_FORMAT_VERSION,
        log_id: status.log_id.clone(),
        first_seq: first,
        count: end - first,
        tree_size: anchor.size,
        redacted: content.redacted(),
    };
    let write_err = |source| ExportError::Write {
        path: name.to_owned(),
        source,
    };
    let mut writer = RangeWriter::new(out, &header, &anchor_bytes, &proof).map_err(write_err)?;
    let mut leaves = Vec::new();
    let mut openings = 0u64;
    let mut next = first;
    while next < end {
        let page = client.read(next, 0).await?;
        if page.is_empty() {
            return Err(Inconsistency::NoRecords {
                seq: next,
                size: status.size,
            }
            .into());
        }
        for record in page.into_iter().take((end - next) as usize) {
            let (record_header, _) = RecordHeader::parse(&record.record)
                .map_err(|source| Inconsistency::Record { seq: next, source })?;
            let links = leaves
                .last()
                .is_none_or(|prev| record_header.prev_hash == *prev);
            if record.seq != next || record_header.seq != next || !links {
                return Err(Inconsistency::ChainBroken { seq: next }.into());
            }
            leaves.push(entry_hash(&record.record));
            writer.record(&record.record).map_err(write_err)?;
            if !content.redacted() && !record.content.is_empty() {
                check_opening(next, &record.record, &record.content)?;
                writer.content(next, &record.content).map_err(write_err)?;
                openings += 1;
            }
            next += 1;
        }
    }
    // The bundle must verify: the same check the verifier makes, minus the
    // TPM evidence (the daemon is not trusted to have served the right bytes).
    let computed =
        root_from_range_proof(first, anchor.size, &leaves, &proof).map_err(|source| {
            Inconsistency::RangeRoot {
                counter: anchor.counter,
                source,
            }
        })?;
    if computed != anchor.root {
        return Err(Inconsistency::RangeRoot {
            counter: anchor.counter,
            source: tally_attest::merkle::MerkleError::RootMismatch {
                expected: anchor.root,
                computed,
            },
        }
        .into());
    }
    let out = writer.finish().map_err(write_err)?;
    Ok((
        RangeSummary {
            first_seq: first,
            last_seq: last,
            tree_size: anchor.size,
            anchor_counter: anchor.counter,
            proof_hashes: proof.len(),
            openings,
            redacted: content.redacted(),
        },
        out,
    ))
}

/// Why one record's content cannot be disclosed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscloseError {
    #[error(transparent)]
    Range(#[from] RangeError),
    #[error("seq {seq} is not in the log (it holds {size} records)")]
    NoSuchRecord { seq: u64, size: u64 },
    #[error("seq {seq} has no content to disclose: its event had no payload and no personal attribute (or it was written before content commitments), so all of it is in the record itself: `tally export --from {seq} --to {seq}` proves it")]
    NeverHadContent { seq: u64 },
    #[error("seq {seq}'s content was erased (an erasure record covers it): there is nothing left to disclose")]
    Erased { seq: u64 },
    #[error("the daemon served content for seq {seq} that does not open the record's commitment (the stored content was changed): refusing to disclose it")]
    Mismatch { seq: u64 },
    #[error("seq {seq}'s record body is malformed: {source}")]
    Body {
        seq: u64,
        source: tally_attest::content::ContentError,
    },
}

/// Writes a range bundle of record `seq` alone with its content section
/// (`tally disclose`), after checking that the record has content, that the
/// daemon still holds it, and that it opens the record's commitment.
pub async fn disclose_to<S: AsyncRead + AsyncWrite + Unpin, W: Write>(
    client: &mut Client<S>,
    seq: u64,
    out: W,
    name: &Path,
) -> Result<(RangeSummary, W), DiscloseError> {
    // A read past the log's end is the daemon's OUT_OF_RANGE: ask the size
    // first, so the refusal names the record and the log's size.
    let size = client.status().await.map_err(RangeError::from)?.size;
    if seq >= size {
        return Err(DiscloseError::NoSuchRecord { seq, size });
    }
    let page = client.read(seq, 1).await.map_err(RangeError::from)?;
    let Some(record) = page.into_iter().next().filter(|record| record.seq == seq) else {
        return Err(DiscloseError::NoSuchRecord { seq, size });
    };
    let body = record
        .record
        .get(tally_attest::HEADER_LEN..)
        .unwrap_or_default();
    let facts = tally_attest::content::BodyFacts::parse(body)
        .map_err(|source| DiscloseError::Body { seq, source })?;
    let Some(commitment) = facts.content_commitment else {
        return Err(DiscloseError::NeverHadContent { seq });
    };
    if record.content.is_empty() {
        return Err(DiscloseError::Erased { seq });
    }
    if tally_attest::content::commitment_of_opening(&record.content).ok() != Some(commitment) {
        return Err(DiscloseError::Mismatch { seq });
    }
    let (summary, out) =
        export_range_to(client, seq, Some(seq), Content::Included, out, name).await?;
    if summary.openings != 1 {
        // Erased between the two reads: the bundle would disclose nothing.
        return Err(DiscloseError::Erased { seq });
    }
    Ok((summary, out))
}

/// [`disclose_to`] into `path`, written beside it and renamed into place
/// once complete.
pub async fn disclose<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client<S>,
    seq: u64,
    path: &Path,
) -> Result<RangeSummary, DiscloseError> {
    let partial = partial_path(path);
    let file = File::create(&partial)
        .map_err(|source| ExportError::Write {
            path: partial.clone(),
            source,
        })
        .map_err(RangeError::from)?;
    let out = BufWriter::with_capacity(1 << 16, file);
    let (summary, out) = disclose_to(client, seq, out, &partial)
        .await
        .inspect_err(|_| remove_partial(&partial))?;
    commit_file(out, &partial, path).map_err(RangeError::from)?;
    Ok(summary)
}

/// Every stored anchor's counter, size and root, in counter order.
async fn read_anchors<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client<S>,
) -> Result<Vec<Anchored>, RangeError> {
    let mut anchors = Vec::new();
    let mut from_counter = 0u64;
    loop {
        let page = client.read_anchors(from_counter, 0).await?;
        let Some(last) = page.last() else { break };
        from_counter = last.counter + 1;
        for stored in page {
            let counter = stored.counter;
            let record = decode_anchor(&stored.anchor)
                .map_err(|source| Inconsistency::Anchor { counter, source })?;
            let checkpoint = Checkpoint::parse(&record.checkpoint)
                .map_err(|source| Inconsistency::AnchorCheckpoint { counter, source })?;
            anchors.push(Anchored {
                counter,
                size: checkpoint.size,
                root: checkpoint.root,
            });
        }
    }
    Ok(anchors)
}

/// The daemon's inclusion proof of `seq` against the anchor at `size`: the
/// audit path and the anchor's stored bytes.
async fn inclusion_path<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client<S>,
    seq: u64,
    size: u64,
) -> Result<(Vec<Hash>, Vec<u8>), RangeError> {
    let bytes = client.prove_inclusion(seq, size).await?;
    let bad = |why: String| Inconsistency::Proof { seq, why };
    let file = ProofFile::decode(bytes.as_slice()).map_err(|err| bad(err.to_string()))?;
    let inclusion = file
        .inclusion
        .ok_or_else(|| bad("the reply holds no inclusion proof".into()))?;
    if inclusion.seq != seq {
        return Err(bad(format!("the reply proves seq {}", inclusion.seq)).into());
    }
    let path = inclusion
        .path
        .iter()
        .map(|hash| <Hash>::try_from(hash.as_slice()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad("a proof hash is not 32 bytes".into()))?;
    Ok((path, inclusion.anchor))
}

/// The first seq of a record received at or after `since` (Unix nanos), by
/// a daemon-side filtered read (refused by a daemon without read filters).
pub async fn first_seq_since<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client<S>,
    since: i64,
) -> Result<Option<u64>, ClientError> {
    let filter = proto::Filter {
        since_unix_nanos: Some(since),
        ..Default::default()
    };
    let mut from_seq = 0;
    loop {
        let page = client
            .read_where(proto::ReadRequest {
                from_seq,
                max_records: 1,
                filter: Some(filter.clone()),
                ..Default::default()
            })
            .await?;
        if let Some(record) = page.records.first() {
            return Ok(Some(record.seq));
        }
        // An empty page that scanned part of the log: go on from there.
        if page.resume_seq <= from_seq {
            return Ok(None);
        }
        from_seq = page.resume_seq;
    }
}

/// The last seq of a record received before `until` (Unix nanos).
pub async fn last_seq_before<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client<S>,
    until: i64,
) -> Result<Option<u64>, ClientError> {
    let filter = proto::Filter {
        until_unix_nanos: Some(until),
        ..Default::default()
    };
    let mut to_seq = 0;
    loop {
        let page = client
            .read_where(proto::ReadRequest {
                from_seq: 0,
                max_records: 1,
                filter: Some(filter.clone()),
                to_seq,
                newest: true,
            })
            .await?;
        if let Some(record) = page.records.last() {
            return Ok(Some(record.seq));
        }
        // Newest first: [resume_seq, to_seq) was scanned; 0 means all of it.
        if page.resume_seq == 0 || (to_seq != 0 && page.resume_seq >= to_seq) {
            return Ok(None);
        }
        to_seq = page.resume_seq;
    }
}
