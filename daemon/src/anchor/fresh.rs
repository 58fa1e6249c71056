//! Fresh attestations, made on the anchoring task so that no anchor happens between
//! reading the anchors a verifier lacks and certifying the counter: the fresh value F
//! is then exactly one past the newest anchor returned (or the verifier's own).
//!
//! A fresh attestation is step 4 of the commit order only: the current checkpoint
//! (no anchor line) certified at the open counter value, never incremented.

use tally_attest::anchor::{fresh_qualifying_data, Checkpoint, EvidenceRecord, FreshAttestation};

use super::{AnchorError, Anchorer};

/// Most anchors one fresh attestation carries (`since_size`); beyond, the verifier is
/// told to export a new bundle.
pub const MAX_SINCE_ANCHORS: usize = 100_000;

/// Room kept in a reply frame for everything but the anchors (checkpoint, evidence,
/// a consistency path of at most 64 hashes).
const FRAME_SLACK: usize = 8192;

/// Anchors read from the store at a time.
const READ_PAGE: usize = 1024;

/// What a fresh attestation asks for.
#[derive(Debug, Clone)]
pub struct FreshRequest {
    /// The verifier's nonce (1 to 64 bytes, checked by the handler).
    pub nonce: Vec<u8>,
    /// The log size of the newest anchor the verifier holds.
    pub since_size: Option<u64>,
    /// Largest reply frame the daemon sends (bytes).
    pub max_reply_bytes: usize,
}

/// Why a fresh attestation was not made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FreshError {
    #[error("since_size {since_size} is beyond the log (size {size})")]
    SinceBeyondLog { since_size: u64, size: u64 },
    #[error(
        "no anchor covers exactly {since_size} records: since_size must be the size of an anchor you hold \
         (the newest anchor of your export)"
    )]
    SinceNotAnchored { since_size: u64 },
    #[error(
        "more than {MAX_SINCE_ANCHORS} anchors were made since the anchor at {since_size} records: \
         export a new bundle (tally export) and verify that instead"
    )]
    TooManySince { since_size: u64 },
    #[error(
        "the anchors made since the anchor at {since_size} records take more than one reply carries \
         ({max_reply_bytes} bytes, max_frame_bytes): export a new bundle (tally export) and verify that instead"
    )]
    SinceTooLarge {
        since_size: u64,
        max_reply_bytes: usize,
    },
    #[error(transparent)]
    Anchor(#[from] AnchorError),
}

/// The anchors made after the verifier's, and the consistency path to the newest.
#[derive(Debug, Default)]
struct Since {
    anchors: Vec<Vec<u8>>,
    consistency: Vec<Vec<u8>>,
}

impl Anchorer {
    /// A fresh attestation for `request` (see the module docs).
    pub async fn fresh(&mut self, request: FreshRequest) -> Result<FreshAttestation, FreshError> {
        let head = self.settle().await?;
        // A committed anchor whose value is still open would make the fresh value
        // equal to it; closing it is the anchor's own step 6, not the attestation's.
        self.close_pending().await?;
        let since = match request.since_size {
            Some(size) => Some(self.since(size, head.size, request.max_reply_bytes)?),
            None => None,
        };
        let checkpoint = Checkpoint {
            log_id: self.store.log_id(),
            size: head.size,
            root: head.root,
            anchor: None,
        }
        .sign(&self.signer)
        .map_err(AnchorError::from)?;
        let qualifying_data = fresh_qualifying_data(checkpoint.as_bytes(), &request.nonce);
        let evidence = self.tpm_call(self.tpm.certify(qualifying_data)).await?;
        let since_size = request.since_size;
        let since = since.unwrap_or_default();
        Ok(FreshAttestation {
            checkpoint: checkpoint.into_bytes(),
            nonce: request.nonce,
            evidence: Some(EvidenceRecord::from_evidence(&evidence)),
            anchors: since.anchors,
            consistency: since.consistency,
            since_size,
        })
    }

    /// Every anchor after the (oldest) anchor covering `since_size` records, and the
    /// RFC 9162 consistency path from `since_size` to the newest of them.
    fn since(
        &self,
        since_size: u64,
        size: u64,
        max_reply_bytes: usize,
    ) -> Result<Since, FreshError> {
        if since_size > size {
            return Err(FreshError::SinceBeyondLog { since_size, size });
        }
        let store = &self.store;
        let Some((counter, _, _)) = store
            .first_anchor_for_size(since_size)
            .map_err(AnchorError::from)?
        else {
            return Err(FreshError::SinceNotAnchored { since_size });
        };
        // Read in pages, so that neither bound is checked after reading too much.
        let mut anchors: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut bytes = 0usize;
        let mut next = counter.checked_add(1);
        while let Some(from) = next {
            let page = store.anchors(from, READ_PAGE).map_err(AnchorError::from)?;
            next = match page.last() {
                Some((last, _)) if page.len() == READ_PAGE => last.checked_add(1),
                _ => None,
            };
            for anchor in page {
                bytes += anchor.1.len() + 8;
                anchors.push(anchor);
                if anchors.len() > MAX_SINCE_ANCHORS {
                    return Err(FreshError::TooManySince { since_size });
                }
                if bytes + FRAME_SLACK > max_reply_bytes {
                    return Err(FreshError::SinceTooLarge {
                        since_size,
                        max_reply_bytes,
                    });
                }
            }
        }
        let newest_size = match anchors.last() {
            Some((_, anchor)) => crate::store::anchor_size(anchor).map_err(AnchorError::from)?,
            None => since_size,
        };
        let consistency = store
            .consistency_proof(since_size, newest_size)
            .map_err(AnchorError::from)?;
        Ok(Since {
            anchors: anchors.into_iter().map(|(_, anchor)| anchor).collect(),
            consistency: consistency.iter().map(|hash| hash.to_vec()).collect(),
        })
    }
}
