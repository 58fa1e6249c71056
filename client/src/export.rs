//! Exporting the log into a bundle file (see `tally_attest::bundle`), or a
//! range of it into a range bundle ([`range`], `tally_attest::range`).

pub mod live;
pub mod range;

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use tally_attest::bundle::{BundleHeader, BundleWriter, BUNDLE_FORMAT_VERSION};
use tally_attest::{entry_hash, RecordHeader, GENESIS_PREV};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::clock::now_unix_nanos;
use crate::{Client, ClientError};

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// Records written: seqs `0..size`.
    pub size: u64,
    /// Content sections written (openings the daemon served); 0 when
    /// redacted.
    pub openings: u64,
    /// The bundle is redacted (`--redact`): no content section.
    pub redacted: bool,
    /// Anchors written (those covering at most `size` records).
    pub anchors: usize,
    /// The log size the newest written anchor covers (for `tally attest --since`).
    pub last_anchor_size: Option<u64>,
    /// Entry hash of record `size - 1` (32 zero bytes for an empty log): the
    /// daemon's reported head, which the replayed chain reached. Not the
    /// Merkle root.
    pub head_hash: [u8; 32],
    /// The bundle file (`-` for stdout).
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the daemon served an inconsistent log: {0}")]
    Inconsistent(#[from] Inconsistency),
}

/// How what the daemon served contradicts itself (its status, its anchors, its
/// records): the export stops rather than write such a bundle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Inconsistency {
    #[error("head hash is not 32 bytes")]
    HeadHashLength,
    #[error("anchor {counter}: {source}")]
    Anchor {
        counter: u64,
        source: tally_attest::anchor::AnchorError,
    },
    #[error("anchor {counter}: {source}")]
    AnchorCheckpoint {
        counter: u64,
        source: tally_attest::note::CheckpointError,
    },
    #[error("the daemon returned no records at seq {seq} of {size}")]
    NoRecords { seq: u64, size: u64 },
    #[error("seq {seq}: {source}")]
    Record {
        seq: u64,
        source: tally_attest::record::RecordError,
    },
    #[error("chain broken at seq {seq}")]
    ChainBroken { seq: u64 },
    #[error("records do not chain up to the reported head")]
    HeadMismatch,
    /// The served content does not open the record's commitment (the
    /// sealed value was changed in the store): `tally verify --live` names
    /// the same seq; `--redact` exports without it.
    #[error("seq {seq}: the content served does not open the record's commitment (changed in the store)")]
    ContentMismatch { seq: u64 },
    #[error("seq {seq}: content was served for a record without a content commitment")]
    ContentWithoutCommitment { seq: u64 },
    #[error("seq {seq}: {source}")]
    Body {
        seq: u64,
        source: tally_attest::content::ContentError,
    },
    #[error("the proof of seq {seq}: {why}")]
    Proof { seq: u64, why: String },
    #[error("the records and the daemon's proof hashes do not lead to the root of anchor {counter} ({source})")]
    RangeRoot {
        counter: u64,
        source: tally_attest::merkle::MerkleError,
    },
}

/// Exports records `0..size` (the size when the export starts) into `path`.
/// The file is written beside `path` and renamed into place only once
/// complete and synced, so `path` never holds a partial bundle. The chain is
/// replayed while exporting: a daemon serving records that do not chain up
/// to its own reported head is an error, not a bundle.
pub async fn export<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client<S>,
    path: &Path,
    progress: impl FnMut(u64, u64),
) -> Result<ExportSummary, ExportError> {
    export_with(client, path, Content::Included, progress).await
}

/// Whether an export writes the records' openings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Content {
    /// Each committed record's opening, as the daemon serves it, in a
    /// content section after the record (none for an erased one).
    #[default]
    Included,
    /// No content section at all, and the header says so (`--redact`): the
    /// bundle shows commitments only and still verifies against the anchors.
    Redacted,
}

impl Content {
    pub fn redacted(self) -> bool {
        self == Content::Redacted
    }
}

/// [`export`], choosing whether content is written.
pub async fn export_with<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client<S>,
    path: &Path,
    content: Content,
    progress: impl FnMut(u64, u64),
) -> Result<ExportSummary, ExportError> {
    let partial = partial_path(path);
    let file = File::create(&partial).map_err(|source| ExportError::Write {
        path: partial.clone(),
        source,
    })?;
    let out = BufWriter::with_capacity(1 << 20, file);
    let (mut summary, out) = export_to(client, out, &partial, content, progress)
        .await
        .inspect_err(|_| remove_partial(&partial))?;
    commit_file(out, &partial, path)?;
    summary.path = path.to_owned();
    Ok(summary)
}

/// `FILE.partial`, beside `FILE`: the name an export writes under until it
/// is complete (appended, not an extension replaced, so `a.tally` and
/// `a.range` never share one).
pub(crate) fn partial_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    name.into()
}

/// Removes the partial file of an export that failed (refused by the
/// daemon, a damaged chain, ...): it is not a bundle, and leaving it would
/// look like one half-written. A failure to remove it is not the error
/// worth reporting.
pub(crate) fn remove_partial(partial: &Path) {
    let _ = fs::remove_file(partial);
}

/// Syncs the finished `partial` file and renames it to `path`.
pub(crate) fn commit_file(
    out: BufWriter<File>,
    partial: &Path,
    path: &Path,
) -> Result<(), ExportError> {
    let write_err = |source| ExportError::Write {
        path: partial.to_owned(),
        source,
    };
    let file = out
        .into_inner()
        .map_err(|err| write_err(err.into_error()))?;
    file.sync_all().map_err(write_err)?;
    fs::rename(partial, path).map_err(|source| ExportError::Write {
        path: path.to_owned(),
        source,
    })?;
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        // Make the rename durable; failure here loses nothing already written.
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// [`export_with`] into any writer (`tally export --out -`: stdout); `name`
/// names it in errors and in the summary. Returns the writer, flushed.
///
/// Each served opening is checked against its record's commitment before
/// it is written ([`check_opening`]), as the links are: a daemon serving
/// content its records did not commit to is an error, not a bundle.
pub async fn export_to<S: AsyncRead + AsyncWrite + Unpin, W: Write>(
    client: &mut Client<S>,
    out: W,
    name: &Path,
    content: Content,
    mut progress: impl FnMut(u64, u64),
) -> Result<(ExportSummary, W), ExportError> {
    let status = client.status().await?;
    // The status's head hash: the entry hash of record size-1.
    let head_hash: [u8; 32] = status
        .head_hash
        .as_slice()
        .try_into()
        .map_err(|_| Inconsistency::HeadHashLength)?;
    let header = BundleHeader {
        format_version: BUNDLE_FORMAT_VERSION,
        log_id: status.log_id.clone(),
        size: status.size,
        head_hash: head_hash.to_vec(),
        exported_at_unix_nanos: now_unix_nanos(),
        producer: format!(
            "tally/{} from {}",
            env!("CARGO_PKG_VERSION"),
            status.server_name
        ),
        redacted: content.redacted(),
    };
    // Anchors that cover at most the exported records, in counter order.
    let mut anchors = Vec::new();
    let mut last_anchor_size = None;
    let mut from_counter = 0u64;
    loop {
        let page = client.read_anchors(from_counter, 0).await?;
        let Some(last) = page.last() else { break };
        from_counter = last.counter + 1;
        for stored in page {
            let counter = stored.counter;
            let record = tally_attest::anchor::decode_anchor(&stored.anchor)
                .map_err(|source| Inconsistency::Anchor { counter, source })?;
            let checkpoint = tally_attest::anchor::Checkpoint::parse(&record.checkpoint)
                .map_err(|source| Inconsistency::AnchorCheckpoint { counter, source })?;
            if checkpoint.size <= status.size {
                anchors.push(stored.anchor);
                last_anchor_size = Some(checkpoint.size);
            }
        }
    }
    let write_err = |source| ExportError::Write {
        path: name.to_owned(),
        source,
    };
    let mut writer = BundleWriter::new(out, &header).map_err(write_err)?;
    for anchor in &anchors {
        writer.anchor(anchor).map_err(write_err)?;
    }

    let mut next = 0u64;
    let mut openings = 0u64;
    let mut running = GENESIS_PREV;
    while next < status.size {
        let page = client.read(next, 0).await?;
        if page.is_empty() {
            return Err(Inconsistency::NoRecords {
                seq: next,
                size: status.size,
            }
            .into());
        }
        for record in page {
            if next == status.size {
                break;
            }
            let (record_header, _) = RecordHeader::parse(&record.record)
                .map_err(|source| Inconsistency::Record { seq: next, source })?;
            if record.seq != next || record_header.seq != next || record_header.prev_hash != running
            {
                return Err(Inconsistency::ChainBroken { seq: next }.into());
            }
            running = entry_hash(&record.record);
            writer.record(&record.record).map_err(write_err)?;
            if !content.redacted() && !record.content.is_empty() {
                check_opening(next, &record.record, &record.content)?;
                writer.content(next, &record.content).map_err(write_err)?;
                openings += 1;
            }
            next += 1;
        }
        progress(next, status.size);
    }
    if running != head_hash {
        return Err(Inconsistency::HeadMismatch.into());
    }
    let out = writer.finish().map_err(write_err)?;
    Ok((
        ExportSummary {
            size: status.size,
            openings,
            redacted: content.redacted(),
            anchors: anchors.len(),
            last_anchor_size,
            head_hash,
            path: name.to_owned(),
        },
        out,
    ))
}

/// That `opening` (served with record `seq`, not empty) opens the record's
/// commitment: the check `tally verify` makes, made before writing it.
pub(crate) fn check_opening(seq: u64, record: &[u8], opening: &[u8]) -> Result<(), Inconsistency> {
    let body = record.get(tally_attest::HEADER_LEN..).unwrap_or_default();
    let facts = tally_attest::content::BodyFacts::parse(body)
        .map_err(|source| Inconsistency::Body { seq, source })?;
    match facts.content_commitment {
        None => Err(Inconsistency::ContentWithoutCommitment { seq }),
        Some(commitment)
            if tally_attest::content::commitment_of_opening(opening).ok() == Some(commitment) =>
        {
            Ok(())
        }
        Some(_) => Err(Inconsistency::ContentMismatch { seq }),
    }
}
