//! The daemon as a verifier's source (`tally verify --live`): the same
//! sections a bundle file holds (header, anchors, records), read over the
//! protocol and handed to `tally_attest::verify_sections` through a bounded
//! channel, so no bundle file is written and memory stays at a few pages.
//!
//! The producer ([`stream_live`]) runs on its own thread and runtime; the
//! verifier pulls from [`LiveSections`] on the caller's. Nothing the daemon
//! says is trusted here: records and anchors are passed on verbatim (not
//! even their links are checked, so that damage is named by the verifier
//! exactly as for a bundle), and the header is only what the daemon claims.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, SyncSender};

use prost::Message;
use tally_attest::anchor::{decode_anchor, Checkpoint, FreshAttestation};
use tally_attest::bundle::{BundleHeader, BUNDLE_FORMAT_VERSION};
use tally_attest::chain::RecordSource;
use tally_attest::proof::{InclusionProofFile, ProofFile};
use tally_attest::verify::{Sections, TrustedStart, VerifyError};
use tally_attest::{entry_hash, Hash};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::clock::now_unix_nanos;
use crate::export::{ExportError, Inconsistency};
use crate::Client;

/// Pages in flight between the daemon and the verifier: with the daemon's
/// page of at most a few MiB, this bounds the stream's memory (the verifier
/// keeps its own chunk of 8,192 records besides).
pub const CHANNEL_PAGES: usize = 8;

/// Where a live verification starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiveFrom {
    /// A trusted anchor's counter and log size: only the anchors from that
    /// counter and the records from that size are read.
    pub trusted: Option<(u64, u64)>,
    /// Take a fresh attestation for this nonce, with the anchors made since
    /// the last one streamed.
    pub nonce: Option<[u8; 32]>,
}

/// What the producer sends, in this order: one `Opened`, the anchors,
/// `AnchorsDone`, record pages, `End`. `Failed` may replace any of them and
/// ends the stream.
#[derive(Debug)]
pub enum LiveItem {
    Opened {
        header: BundleHeader,
        start: Option<TrustedStart>,
        /// The fresh attestation (stored bytes) when a nonce was given.
        attestation: Option<Vec<u8>>,
    },
    Anchor(Vec<u8>),
    AnchorsDone,
    /// Records and their openings (`StoredRecord.content`: empty when the
    /// record has none or it was erased).
    Records(Vec<(Vec<u8>, Vec<u8>)>),
    End,
    Failed(ExportError),
}

/// Why the live source failed (the daemon refused, the connection broke,
/// or the stream ended early): the verifier's [`VerifyError::Source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LiveError {
    #[error(transparent)]
    Daemon(#[from] ExportError),
    #[error("the daemon's stream ended before its {0} section")]
    Cut(&'static str),
}

impl From<LiveError> for VerifyError {
    fn from(error: LiveError) -> VerifyError {
        VerifyError::Source(Box::new(error))
    }
}

/// Streams the log from `client` into `tx`. Returns when the stream is
/// done, the verifier hung up (it stopped at damage), or the daemon failed
/// (sent as [`LiveItem::Failed`]).
pub async fn stream_live<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client<S>,
    from: LiveFrom,
    tx: SyncSender<LiveItem>,
) {
    if let Err(error) = produce(client, from, &tx).await {
        let _ = tx.send(LiveItem::Failed(error));
    }
}

/// A closed channel: the verifier has its verdict and reads no more.
struct HungUp;

async fn produce<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client<S>,
    from: LiveFrom,
    tx: &SyncSender<LiveItem>,
) -> Result<(), ExportError> {
    let send = |item| tx.send(item).map_err(|_| HungUp);
    let status = client.status().await?;
    let head_hash: Hash = status
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
            "tally/{} live from {}",
            env!("CARGO_PKG_VERSION"),
            status.server_name
        ),
        redacted: false,
    };
    let (from_counter, from_seq) = from.trusted.unwrap_or((0, 0));
    let start = match from.trusted {
        Some((_, size)) if size > 0 => Some(start_proof(client, size).await?),
        _ => None,
    };
    // Anchors covering at most the streamed records, in counter order; held
    // until the attestation (which must name the last one's size) is taken.
    // Unparseable anchors are passed on for the verifier to name.
    let mut anchors = Vec::new();
    let mut last_anchor_size = None;
    let mut counter = from_counter;
    loop {
        let page = client.read_anchors(counter, 0).await?;
        let Some(last) = page.last() else { break };
        counter = last.counter + 1;
        for stored in page {
            let size = decode_anchor(&stored.anchor)
                .ok()
                .and_then(|record| Checkpoint::parse(&record.checkpoint).ok())
                .map(|checkpoint| checkpoint.size);
            match size {
                Some(size) if size > status.size => {}
                _ => {
                    last_anchor_size = size.or(last_anchor_size);
                    anchors.push(stored.anchor);
                }
            }
        }
    }
    let attestation = match from.nonce {
        Some(nonce) => Some(client.attest(nonce.to_vec(), last_anchor_size).await?),
        None => None,
    };
    let size = status.size;
    let streamed = async {
        send(LiveItem::Opened {
            header,
            start,
            attestation,
        })?;
        for anchor in anchors {
            send(LiveItem::Anchor(anchor))?;
        }
        send(LiveItem::AnchorsDone)?;
        let mut next = from_seq;
        while next < size {
            let page = client.read(next, 0).await.map_err(|err| Ok(err.into()))?;
            let Some(last) = page.last() else {
                // Fewer records than the status said: the verifier names it.
                break;
            };
            // Continue after the last seq the daemon served (not a count),
            // so a record missing from the store shows as a gap here too.
            let after = last.seq.saturating_add(1).max(next + 1);
            let records: Vec<(Vec<u8>, Vec<u8>)> = page
                .into_iter()
                .take_while(|record| record.seq < size)
                .map(|record| (Vec::from(record.record), Vec::from(record.content)))
                .collect();
            send(LiveItem::Records(records))?;
            next = after;
        }
        send(LiveItem::End)?;
        Ok::<(), Result<ExportError, HungUp>>(())
    };
    match streamed.await {
        Ok(()) | Err(Err(HungUp)) => Ok(()),
        Err(Ok(error)) => Err(error),
    }
}

impl From<HungUp> for Result<ExportError, HungUp> {
    fn from(hung_up: HungUp) -> Self {
        Err(hung_up)
    }
}

/// The proof that the records from `size` extend the trusted tree of
/// `size` leaves: record `size - 1`'s entry hash and its inclusion proof
/// against the anchor at `size` (the trusted one, or one of the same size).
async fn start_proof<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client<S>,
    size: u64,
) -> Result<TrustedStart, ExportError> {
    let seq = size - 1;
    let bytes = client.prove_inclusion(seq, size).await?;
    let undecodable = |why: String| Inconsistency::Proof { seq, why };
    let proof: InclusionProofFile = ProofFile::decode(bytes.as_slice())
        .map_err(|err| undecodable(format!("undecodable: {err}")))?
        .inclusion
        .ok_or_else(|| undecodable("not an inclusion proof".into()))?;
    let path = proof
        .path
        .iter()
        .map(|hash| <[u8; 32]>::try_from(hash.as_slice()))
        .collect::<Result<Vec<Hash>, _>>()
        .map_err(|_| Inconsistency::Proof {
            seq,
            why: "a path hash is not 32 bytes".into(),
        })?;
    Ok(TrustedStart {
        seq: size,
        prev: entry_hash(&proof.record),
        path,
    })
}

/// The verifier's end of the stream.
#[derive(Debug)]
pub struct LiveSections {
    rx: Receiver<LiveItem>,
    header: BundleHeader,
    start: Option<TrustedStart>,
    anchors_done: bool,
    page: VecDeque<(Vec<u8>, Vec<u8>)>,
    /// The opening served with the record last returned (empty: none).
    opening: Vec<u8>,
    done: bool,
}

impl LiveSections {
    /// Waits for the stream's opening: the header, the trusted start (when
    /// asked for) and the fresh attestation (when a nonce was given).
    pub fn open(
        rx: Receiver<LiveItem>,
    ) -> Result<(LiveSections, Option<FreshAttestation>), LiveError> {
        let (header, start, attestation) = match rx.recv() {
            Ok(LiveItem::Opened {
                header,
                start,
                attestation,
            }) => (header, start, attestation),
            Ok(LiveItem::Failed(error)) => return Err(error.into()),
            _ => return Err(LiveError::Cut("header")),
        };
        let attestation = match attestation {
            Some(bytes) => Some(FreshAttestation::decode(bytes.as_slice()).map_err(|err| {
                LiveError::Daemon(ExportError::Inconsistent(Inconsistency::Proof {
                    seq: header.size,
                    why: format!("the attestation is undecodable: {err}"),
                }))
            })?),
            None => None,
        };
        Ok((
            LiveSections {
                rx,
                header,
                start,
                anchors_done: false,
                page: VecDeque::new(),
                opening: Vec::new(),
                done: false,
            },
            attestation,
        ))
    }

    fn recv(&mut self, what: &'static str) -> Result<LiveItem, LiveError> {
        match self.rx.recv() {
            Ok(LiveItem::Failed(error)) => Err(error.into()),
            Ok(item) => Ok(item),
            Err(_) => Err(LiveError::Cut(what)),
        }
    }
}

impl RecordSource for LiveSections {
    type Error = LiveError;
    fn next_record(&mut self, buf: &mut Vec<u8>) -> Result<bool, LiveError> {
        if !self.anchors_done {
            let mut skipped = Vec::new();
            while self.next_anchor(&mut skipped)? {}
        }
        loop {
            if let Some((record, opening)) = self.page.pop_front() {
                *buf = record;
                self.opening = opening;
                return Ok(true);
            }
            self.opening.clear();
            if self.done {
                return Ok(false);
            }
            match self.recv("end")? {
                LiveItem::Records(page) => self.page = page.into(),
                LiveItem::End => self.done = true,
                _ => return Err(LiveError::Cut("record")),
            }
        }
    }
    /// An empty `StoredRecord.content` is no opening (the protocol cannot
    /// tell an empty opening from none; a real one holds at least a salt).
    fn opening(&self) -> Option<&[u8]> {
        (!self.opening.is_empty()).then_some(self.opening.as_slice())
    }
}

impl Sections for LiveSections {
    fn header(&self) -> &BundleHeader {
        &self.header
    }
    fn next_anchor(&mut self, buf: &mut Vec<u8>) -> Result<bool, LiveError> {
        if self.anchors_done {
            return Ok(false);
        }
        match self.recv("anchors' end")? {
            LiveItem::Anchor(bytes) => {
                *buf = bytes;
                Ok(true)
            }
            LiveItem::AnchorsDone => {
                self.anchors_done = true;
                Ok(false)
            }
            _ => Err(LiveError::Cut("anchor")),
        }
    }
    fn start(&self) -> Option<&TrustedStart> {
        self.start.as_ref()
    }
}
