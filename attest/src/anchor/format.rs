//! The anchor formats, byte by byte as docs/DESIGN.md section 10 gives
//! them: the checkpoint with its anchor line, the qualifying data, the
//! anchor hash, and the protobuf records stored and exported.

use base64::Engine as _;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::anchor::error::AnchorError;
use crate::evidence::parse::parse_pcr_selection_bytes;
use crate::evidence::{marshal_pcr_selection, Evidence, PcrValues, SignedAttest, StepTimings};
use crate::note::{
    decode_hash, parse_body, parse_canonical_u64, CheckpointError, NoteError, Signer,
};
use crate::record::Hash;

/// Domain prefix of an anchor's qualifying data.
pub const ANCHOR_DOMAIN: &[u8] = b"tally.anchor.v2\0";
/// Domain prefix of a fresh attestation's qualifying data.
pub const FRESH_DOMAIN: &[u8] = b"tally.fresh.v2\0";

/// The checkpoint's extension line on an anchor: `anchor <counter> <prev>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnchorLine {
    /// The counter value the anchor is certified at.
    pub counter: u64,
    /// SHA-256 of the previous anchor's stored [`AnchorRecord`] bytes
    /// ([`anchor_hash`]); `None` for the log's genesis anchor.
    pub prev: Option<Hash>,
}

/// The log state an anchor or attestation commits to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's random identity (the origin is `tally/<its hex>`).
    pub log_id: [u8; 16],
    /// Number of records covered.
    pub size: u64,
    /// RFC 6962 Merkle root over the first `size` entry hashes.
    pub root: Hash,
    /// Present on anchors (never on fresh attestations).
    pub anchor: Option<AnchorLine>,
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

impl Checkpoint {
    /// The checkpoint's text, a C2SP tlog-checkpoint body:
    /// `tally/<log id hex>\n<size>\n<base64 Merkle root>\n`, then on an anchor
    /// the extension line `anchor <counter> <base64 prev anchor hash, or ->\n`.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "tally/{}\n{}\n{}\n",
            hex::encode(self.log_id),
            self.size,
            B64.encode(self.root)
        );
        if let Some(line) = &self.anchor {
            let prev = line.prev.map_or_else(|| "-".to_owned(), |h| B64.encode(h));
            text.push_str(&format!("anchor {} {prev}\n", line.counter));
        }
        text
    }

    /// Parses the text [`Checkpoint::to_text`] writes, alone or as the body
    /// of a C2SP signed note (the signature lines after the blank line are
    /// not checked here: see `checks::check_note_signature`). The body's shape
    /// is checked by the one tlog-checkpoint parser (`note::parse_body`); this
    /// reads Tally's origin and anchor line from it and demands canonical form.
    pub fn parse(text: &[u8]) -> Result<Checkpoint, CheckpointError> {
        let body = match text.windows(2).position(|pair| pair == b"\n\n") {
            Some(at) => &text[..=at],
            None => text,
        };
        let text = std::str::from_utf8(body).map_err(|_| CheckpointError::NotUtf8)?;
        let body = parse_body(text)?;
        let mut extensions = body.extensions();
        let anchor = extensions.next().map(parse_anchor_line).transpose()?;
        if extensions.next().is_some() {
            return Err(CheckpointError::ExtraLines);
        }
        let log_id = body
            .origin
            .strip_prefix("tally/")
            .and_then(|id| hex::decode(id).ok())
            .and_then(|id| <[u8; 16]>::try_from(id).ok())
            .ok_or(CheckpointError::NotTallyOrigin)?;
        let checkpoint = Checkpoint {
            log_id,
            size: body.size,
            root: body.root_hash,
            anchor,
        };
        if checkpoint.to_text() != text {
            return Err(CheckpointError::NotCanonical);
        }
        Ok(checkpoint)
    }

    /// The signed checkpoint: [`Checkpoint::to_text`] as a C2SP signed note by
    /// `signer` (the log key). What anchors and fresh attestations carry, and
    /// what their TPM qualifying data covers.
    pub fn sign(&self, signer: &Signer) -> Result<String, NoteError> {
        crate::note::sign(&self.to_text(), signer)
    }

    /// The C2SP origin line, `tally/<log id hex>` (also the log key's name).
    pub fn origin(&self) -> String {
        format!("tally/{}", hex::encode(self.log_id))
    }
}

fn parse_anchor_line(line: &str) -> Result<AnchorLine, CheckpointError> {
    let bad = CheckpointError::BadAnchorLine;
    let mut words = line.split(' ');
    let (Some("anchor"), Some(counter), Some(prev), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(bad);
    };
    let counter = parse_canonical_u64(counter).ok_or(bad.clone())?;
    let prev = match prev {
        "-" => None,
        hash => Some(decode_hash(hash).ok_or(bad)?),
    };
    Ok(AnchorLine { counter, prev })
}

/// Qualifying data of an anchor over its signed checkpoint.
pub fn anchor_qualifying_data(checkpoint_text: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(ANCHOR_DOMAIN);
    hasher.update(checkpoint_text);
    hasher.finalize().into()
}

/// Qualifying data of a fresh attestation over `checkpoint_text` and `nonce`.
pub fn fresh_qualifying_data(checkpoint_text: &[u8], nonce: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(FRESH_DOMAIN);
    hasher.update(checkpoint_text);
    hasher.update(nonce);
    hasher.finalize().into()
}

/// An anchor's identity in the chain of anchors: SHA-256 of its stored
/// [`AnchorRecord`] bytes (stored, exported and hashed verbatim). The next
/// anchor's checkpoint names it; a log identity pins the genesis anchor's.
pub fn anchor_hash(record_bytes: &[u8]) -> Hash {
    Sha256::digest(record_bytes).into()
}

/// TPM evidence as stored and exported (protobuf).
///
/// Schema: `tally.formats.v1.EvidenceRecord` in
/// `attest/proto/tally/formats/v1/formats.proto`
/// (a test checks that this struct encodes exactly as that message).
#[derive(Clone, PartialEq, Message)]
pub struct EvidenceRecord {
    /// Counter value, as the TPM certified it (the verifier checks the signed value).
    #[prost(uint64, tag = "1")]
    pub counter: u64,
    /// Handle of the NV counter index.
    #[prost(uint32, tag = "2")]
    pub counter_index: u32,
    /// TPM2_NV_Certify signed by the owner key: the marshalled TPMS_ATTEST...
    #[prost(bytes = "vec", tag = "3")]
    pub nv_certify_attest: Vec<u8>,
    /// ... and its marshalled TPMT_SIGNATURE.
    #[prost(bytes = "vec", tag = "4")]
    pub nv_certify_signature: Vec<u8>,
    /// TPM2_Quote signed by the AK: the marshalled TPMS_ATTEST...
    #[prost(bytes = "vec", tag = "5")]
    pub quote_attest: Vec<u8>,
    /// ... and its marshalled TPMT_SIGNATURE.
    #[prost(bytes = "vec", tag = "6")]
    pub quote_signature: Vec<u8>,
    /// The quoted PCR selection (marshalled TPML_PCR_SELECTION).
    #[prost(bytes = "vec", tag = "7")]
    pub pcr_selection: Vec<u8>,
    /// The quoted PCR values, one digest per selected PCR, in TPM order.
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub pcr_digests: Vec<Vec<u8>>,
}

/// One anchor, as stored in LMDB (`anchors` database) and in bundles.
/// (Tag 4, v1's `recovered`, is retired.)
///
/// Schema: `tally.formats.v1.AnchorRecord` in
/// `attest/proto/tally/formats/v1/formats.proto`
/// (a test checks that this struct encodes exactly as that message).
#[derive(Clone, PartialEq, Message)]
pub struct AnchorRecord {
    /// The signed checkpoint (a C2SP signed note whose body carries the anchor
    /// line); its anchor qualifying data is what the evidence signs.
    #[prost(bytes = "vec", tag = "1")]
    pub checkpoint: Vec<u8>,
    /// The TPM evidence at the counter value the anchor line names.
    #[prost(message, optional, tag = "2")]
    pub evidence: Option<EvidenceRecord>,
    /// Daemon clock when the anchor was made, Unix nanoseconds (informational).
    #[prost(int64, tag = "3")]
    pub created_unix_nanos: i64,
}

/// A fresh attestation for a verifier's nonce (what `tally attest` writes).
///
/// Schema: `tally.formats.v1.FreshAttestation` in
/// `attest/proto/tally/formats/v1/formats.proto`
/// (a test checks that this struct encodes exactly as that message).
#[derive(Clone, PartialEq, Message)]
pub struct FreshAttestation {
    /// The daemon's current signed checkpoint (no anchor line).
    #[prost(bytes = "vec", tag = "1")]
    pub checkpoint: Vec<u8>,
    /// The nonce the daemon was given (the verifier uses its own copy).
    #[prost(bytes = "vec", tag = "2")]
    pub nonce: Vec<u8>,
    /// Evidence at the TPM's current counter value, which is open.
    #[prost(message, optional, tag = "3")]
    pub evidence: Option<EvidenceRecord>,
    /// With `since_size`: every anchor made after the one covering
    /// `since_size` records, in counter order (stored `AnchorRecord` bytes).
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub anchors: Vec<Vec<u8>>,
    /// RFC 9162 consistency path from the tree of `since_size` records to the
    /// newest anchor in `anchors` (32-byte hashes).
    #[prost(bytes = "vec", repeated, tag = "5")]
    pub consistency: Vec<Vec<u8>>,
    /// The log size of the anchor the verifier already holds; absent without `anchors`.
    #[prost(uint64, optional, tag = "6")]
    pub since_size: Option<u64>,
}

impl EvidenceRecord {
    /// Stores TPM evidence.
    pub fn from_evidence(evidence: &Evidence) -> EvidenceRecord {
        EvidenceRecord {
            counter: evidence.counter,
            counter_index: evidence.counter_index,
            nv_certify_attest: evidence.nv_certify.attest.clone(),
            nv_certify_signature: evidence.nv_certify.signature.clone(),
            quote_attest: evidence.quote.attest.clone(),
            quote_signature: evidence.quote.signature.clone(),
            pcr_selection: marshal_pcr_selection(&evidence.pcrs.selection),
            pcr_digests: evidence.pcrs.digests.clone(),
        }
    }

    /// Back to [`Evidence`], given the qualifying data the verifier computed.
    pub fn to_evidence(&self, qualifying_data: [u8; 32]) -> Result<Evidence, AnchorError> {
        Ok(Evidence {
            counter: self.counter,
            counter_index: self.counter_index,
            qualifying_data,
            nv_certify: SignedAttest {
                attest: self.nv_certify_attest.clone(),
                signature: self.nv_certify_signature.clone(),
            },
            quote: SignedAttest {
                attest: self.quote_attest.clone(),
                signature: self.quote_signature.clone(),
            },
            pcrs: PcrValues {
                selection: parse_pcr_selection_bytes(&self.pcr_selection)
                    .map_err(AnchorError::Evidence)?,
                digests: self.pcr_digests.clone(),
            },
            timings: StepTimings::default(),
        })
    }
}

/// Decodes a stored anchor record.
pub fn decode_anchor(bytes: &[u8]) -> Result<AnchorRecord, AnchorError> {
    AnchorRecord::decode(bytes).map_err(AnchorError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(size: u64) -> Checkpoint {
        Checkpoint {
            log_id: [0x11; 16],
            size,
            root: [0xab; 32],
            anchor: None,
        }
    }

    #[test]
    fn checkpoint_text_round_trips_and_is_canonical() {
        let text = checkpoint(42).to_text();
        assert_eq!(
            text,
            "tally/11111111111111111111111111111111\n42\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n"
        );
        assert_eq!(Checkpoint::parse(text.as_bytes()).unwrap(), checkpoint(42));
        for bad in [
            "tally/11111111111111111111111111111111\n042\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n",
            "tally/11111111111111111111111111111111\n42\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=",
            "tally/1111\n42\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n",
            "tally/11111111111111111111111111111111\n42\nq6ur\n",
            "tally/11111111111111111111111111111111\n42\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\nextra\n",
            "tally/11111111111111111111111111111111\n42\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\nanchor 07 -\n",
            "tally/11111111111111111111111111111111\n42\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\nanchor 7 -\nanchor 8 -\n",
            "tally/11111111111111111111111111111111\n42\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\nanchor 7 q6ur\n",
        ] {
            assert!(Checkpoint::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_anchor_line_round_trips() {
        for prev in [None, Some([0xab; 32])] {
            let anchored = Checkpoint {
                anchor: Some(AnchorLine { counter: 7, prev }),
                ..checkpoint(42)
            };
            let text = anchored.to_text();
            assert!(text.ends_with(match prev {
                None => "\nanchor 7 -\n",
                Some(_) => "\nanchor 7 q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n",
            }));
            assert_eq!(Checkpoint::parse(text.as_bytes()).unwrap(), anchored);
        }
    }

    #[test]
    fn anchor_and_fresh_qualifying_data_differ() {
        let text = checkpoint(1).to_text();
        assert_ne!(
            anchor_qualifying_data(text.as_bytes()),
            fresh_qualifying_data(text.as_bytes(), b"")
        );
        assert_ne!(
            fresh_qualifying_data(text.as_bytes(), b"a"),
            fresh_qualifying_data(text.as_bytes(), b"b")
        );
    }
}
