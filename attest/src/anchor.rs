//! TPM anchors: what the TPM signs about the log, how it is stored, and the
//! checks a verifier makes on a sequence of anchors and a fresh attestation.
//!
//! An anchor binds a *checkpoint* (log id, size, head hash) to a value of the
//! TPM's monotonic NV counter: the daemon increments the counter, then has the
//! TPM sign `TPM2_NV_Certify(counter)` and `TPM2_Quote(PCRs)`, both with
//! qualifying data `SHA-256("tally.anchor.v1\0" || checkpoint text)`. A fresh
//! attestation is the same pair without an increment, with qualifying data
//! `SHA-256("tally.fresh.v1\0" || checkpoint text || verifier nonce)`. The
//! distinct prefixes keep one from being passed off as the other.

use base64::Engine as _;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::evidence::parse::parse_pcr_selection_bytes;
use crate::evidence::parse::ClockInfo;
use crate::evidence::verify::{
    verify_evidence, AkPublicKey, VerifiedEvidence, VerifyError as EvidenceError,
};
use crate::evidence::{marshal_pcr_selection, Evidence, PcrValues, SignedAttest, StepTimings};
use crate::record::Hash;

/// Domain prefix of an anchor's qualifying data.
pub const ANCHOR_DOMAIN: &[u8] = b"tally.anchor.v1\0";
/// Domain prefix of a fresh attestation's qualifying data.
pub const FRESH_DOMAIN: &[u8] = b"tally.fresh.v1\0";

/// The log state an anchor or attestation commits to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub log_id: [u8; 16],
    /// Number of records covered.
    pub size: u64,
    /// RFC 6962 Merkle root over the first `size` entry hashes.
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint's text, a C2SP tlog-checkpoint body:
    /// `tally/<log id hex>\n<size>\n<base64 Merkle root>\n`.
    pub fn to_text(&self) -> String {
        format!(
            "tally/{}\n{}\n{}\n",
            hex::encode(self.log_id),
            self.size,
            base64::engine::general_purpose::STANDARD.encode(self.root)
        )
    }

    /// Parses the text [`Checkpoint::to_text`] writes, alone or as the body
    /// of a C2SP signed note (the signature lines after the blank line are
    /// not checked here: see [`check_note_signature`]).
    pub fn parse(text: &[u8]) -> Result<Checkpoint, AnchorError> {
        let bad = |why: &'static str| AnchorError::BadCheckpoint(why);
        let body = match text.windows(2).position(|pair| pair == b"\n\n") {
            Some(at) => &text[..=at],
            None => text,
        };
        let text = std::str::from_utf8(body).map_err(|_| bad("not UTF-8"))?;
        let body = text.strip_suffix('\n').ok_or(bad("no final newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().ok_or(bad("no origin line"))?;
        let size = lines.next().ok_or(bad("no size line"))?;
        let head = lines.next().ok_or(bad("no root line"))?;
        if lines.next().is_some() {
            return Err(bad("extra lines"));
        }
        let log_id = origin
            .strip_prefix("tally/")
            .and_then(|id| hex::decode(id).ok())
            .and_then(|id| <[u8; 16]>::try_from(id).ok())
            .ok_or(bad("origin is not tally/<32 hex digits>"))?;
        if size.is_empty() || (size.len() > 1 && size.starts_with('0')) {
            return Err(bad("size is not a canonical decimal"));
        }
        let size = size.parse().map_err(|_| bad("size is not a decimal"))?;
        let root = base64::engine::general_purpose::STANDARD
            .decode(head)
            .ok()
            .and_then(|head| <[u8; 32]>::try_from(head).ok())
            .ok_or(bad("root is not base64 of 32 bytes"))?;
        let checkpoint = Checkpoint { log_id, size, root };
        if checkpoint.to_text() != text {
            return Err(bad("not in canonical form"));
        }
        Ok(checkpoint)
    }
}

/// Qualifying data of an anchor over `checkpoint_text`.
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

/// TPM evidence as stored and exported (protobuf).
#[derive(Clone, PartialEq, Message)]
pub struct EvidenceRecord {
    /// Counter value, as the TPM certified it (the verifier checks the signed value).
    #[prost(uint64, tag = "1")]
    pub counter: u64,
    /// Handle of the NV counter index.
    #[prost(uint32, tag = "2")]
    pub counter_index: u32,
    /// TPM2_NV_Certify: marshalled TPMS_ATTEST and TPMT_SIGNATURE.
    #[prost(bytes = "vec", tag = "3")]
    pub nv_certify_attest: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub nv_certify_signature: Vec<u8>,
    /// TPM2_Quote: marshalled TPMS_ATTEST and TPMT_SIGNATURE.
    #[prost(bytes = "vec", tag = "5")]
    pub quote_attest: Vec<u8>,
    #[prost(bytes = "vec", tag = "6")]
    pub quote_signature: Vec<u8>,
    /// The quoted PCR selection (marshalled TPML_PCR_SELECTION) and values.
    #[prost(bytes = "vec", tag = "7")]
    pub pcr_selection: Vec<u8>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub pcr_digests: Vec<Vec<u8>>,
}

/// One anchor, as stored in LMDB (`anchors` database) and in bundles.
#[derive(Clone, PartialEq, Message)]
pub struct AnchorRecord {
    /// The checkpoint text (see [`Checkpoint::to_text`]); its anchor qualifying
    /// data is what the evidence signs.
    #[prost(bytes = "vec", tag = "1")]
    pub checkpoint: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    pub evidence: Option<EvidenceRecord>,
    /// Daemon clock when the anchor was made, Unix nanoseconds (informational).
    #[prost(int64, tag = "3")]
    pub created_unix_nanos: i64,
    /// True when the evidence was obtained at start-up, completing an anchor
    /// whose counter increment happened before a crash.
    #[prost(bool, tag = "4")]
    pub recovered: bool,
}

/// A fresh attestation for a verifier's nonce (what `tally attest` writes).
#[derive(Clone, PartialEq, Message)]
pub struct FreshAttestation {
    /// The daemon's current checkpoint text.
    #[prost(bytes = "vec", tag = "1")]
    pub checkpoint: Vec<u8>,
    /// The nonce the daemon was given (the verifier uses its own copy).
    #[prost(bytes = "vec", tag = "2")]
    pub nonce: Vec<u8>,
    #[prost(message, optional, tag = "3")]
    pub evidence: Option<EvidenceRecord>,
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

/// What a verifier pins: the AK public key and the counter index.
#[derive(Debug, Clone)]
pub struct AnchorPolicy {
    pub ak: AkPublicKey,
    pub counter_index: u32,
    /// The log's Ed25519 checkpoint key; when set, every checkpoint must be a
    /// C2SP signed note with a valid signature by it.
    pub log_key: Option<crate::note::Verifier>,
}

/// Why an anchor or attestation does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnchorError {
    #[error("malformed record: {0}")]
    Decode(String),
    #[error("checkpoint is malformed: {0}")]
    BadCheckpoint(&'static str),
    #[error("no TPM evidence")]
    MissingEvidence,
    #[error("counter index {found:#010x} is not the pinned index {expected:#010x}")]
    WrongCounterIndex { expected: u32, found: u32 },
    #[error("TPM evidence does not verify: {0}")]
    Evidence(EvidenceError),
    #[error("checkpoint is for log {found}, not {expected}")]
    WrongLog { expected: String, found: String },
    #[error("attestation was made for another nonce (replayed or mixed up)")]
    NonceMismatch,
    #[error("checkpoint signature: {0}")]
    CheckpointSignature(String),
}

/// An anchor whose TPM evidence verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAnchor {
    pub counter: u64,
    pub checkpoint: Checkpoint,
    /// TPM clock at the NV certify.
    pub clock: ClockInfo,
    pub evidence: VerifiedEvidence,
}

fn verify_bound_evidence(
    policy: &AnchorPolicy,
    evidence: Option<&EvidenceRecord>,
    qualifying_data: [u8; 32],
) -> Result<VerifiedEvidence, AnchorError> {
    let record = evidence.ok_or(AnchorError::MissingEvidence)?;
    if record.counter_index != policy.counter_index {
        return Err(AnchorError::WrongCounterIndex {
            expected: policy.counter_index,
            found: record.counter_index,
        });
    }
    let evidence = record.to_evidence(qualifying_data)?;
    verify_evidence(
        &policy.ak,
        &evidence,
        &qualifying_data,
        policy.counter_index,
    )
    .map_err(AnchorError::Evidence)
}

/// When the policy pins a log key, checks that `checkpoint` is a signed note
/// with a valid signature by it.
pub fn check_note_signature(policy: &AnchorPolicy, checkpoint: &[u8]) -> Result<(), AnchorError> {
    let Some(key) = &policy.log_key else {
        return Ok(());
    };
    let opened = crate::note::open(checkpoint, std::slice::from_ref(key))
        .map_err(|err| AnchorError::CheckpointSignature(err.to_string()))?;
    if opened.verified_by.is_empty() {
        return Err(AnchorError::CheckpointSignature(format!(
            "not signed by {}",
            key.name()
        )));
    }
    Ok(())
}

/// Verifies one anchor's TPM evidence (and, with a pinned log key, its
/// checkpoint signature) against its own checkpoint. It does not check the
/// checkpoint against a chain: see `verify::verify_bundle`.
pub fn verify_anchor(
    policy: &AnchorPolicy,
    record: &AnchorRecord,
) -> Result<VerifiedAnchor, AnchorError> {
    let checkpoint = Checkpoint::parse(&record.checkpoint)?;
    check_note_signature(policy, &record.checkpoint)?;
    let qualifying_data = anchor_qualifying_data(&record.checkpoint);
    let evidence = verify_bound_evidence(policy, record.evidence.as_ref(), qualifying_data)?;
    Ok(VerifiedAnchor {
        counter: evidence.counter,
        checkpoint,
        clock: evidence.counter_clock,
        evidence,
    })
}

/// A fresh attestation whose evidence verified for the verifier's nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedFresh {
    /// The TPM's counter when the attestation was made.
    pub counter: u64,
    pub checkpoint: Checkpoint,
    pub clock: ClockInfo,
}

/// Verifies a fresh attestation for `nonce` (the verifier's own copy: the
/// attestation's nonce field is only compared, never trusted).
pub fn verify_fresh(
    policy: &AnchorPolicy,
    attestation: &FreshAttestation,
    nonce: &[u8],
) -> Result<VerifiedFresh, AnchorError> {
    if attestation.nonce != nonce {
        return Err(AnchorError::NonceMismatch);
    }
    let checkpoint = Checkpoint::parse(&attestation.checkpoint)?;
    check_note_signature(policy, &attestation.checkpoint)?;
    let qualifying_data = fresh_qualifying_data(&attestation.checkpoint, nonce);
    let evidence = verify_bound_evidence(policy, attestation.evidence.as_ref(), qualifying_data)
        .map_err(|err| match err {
            // With the nonce fields equal, a qualifying-data mismatch means the
            // evidence was made for another nonce or checkpoint.
            AnchorError::Evidence(EvidenceError::QualifyingDataMismatch) => {
                AnchorError::NonceMismatch
            }
            other => other,
        })?;
    Ok(VerifiedFresh {
        counter: evidence.counter,
        checkpoint,
        clock: evidence.counter_clock,
    })
}

/// How two consecutive anchors' counters relate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CounterFinding {
    /// A counter value between them has no anchor: an anchor was removed, or
    /// an anchoring attempt failed after its increment.
    #[error("counter gap: anchor {after} is followed by anchor {next} ({} counter values without an anchor)", next - after - 1)]
    Gap { after: u64, next: u64 },
    /// As `Gap`, across a TPM reset: consistent with an orderly counter's
    /// forward jump after an unclean reset (power loss), and equally with
    /// removed anchors. Reported as a gap, never as continuity.
    #[error("counter gap across a TPM reset: anchor {after} (reset count {reset_before}) is followed by anchor {next} (reset count {reset_after}); an orderly counter jumps forward after an unclean TPM reset, but removed anchors cannot be ruled out")]
    GapAcrossReset {
        after: u64,
        next: u64,
        reset_before: u32,
        reset_after: u32,
    },
    /// The counter did not increase: duplicated or reordered anchors.
    #[error("counter did not increase: anchor {after} is followed by anchor {next}")]
    NotIncreasing { after: u64, next: u64 },
    /// A later anchor covers fewer records than an earlier one.
    #[error("log shrank: anchor {after} covers {size_before} records, the next anchor {next} only {size_after}")]
    SizeShrank {
        after: u64,
        next: u64,
        size_before: u64,
        size_after: u64,
    },
    /// The TPM clock went back between anchors of the same TPM reset.
    #[error("TPM clock went back between anchors {after} and {next}")]
    ClockWentBack { after: u64, next: u64 },
}

/// Checks that consecutive anchors carry consecutive counter values, growing
/// logs and a forward-moving TPM clock. Returns every finding, in order.
pub fn check_sequence(anchors: &[VerifiedAnchor]) -> Vec<CounterFinding> {
    let mut findings = Vec::new();
    for pair in anchors.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let (after, next) = (a.counter, b.counter);
        if next <= after {
            findings.push(CounterFinding::NotIncreasing { after, next });
        } else if next != after + 1 {
            if b.clock.reset_count > a.clock.reset_count {
                findings.push(CounterFinding::GapAcrossReset {
                    after,
                    next,
                    reset_before: a.clock.reset_count,
                    reset_after: b.clock.reset_count,
                });
            } else {
                findings.push(CounterFinding::Gap { after, next });
            }
        }
        if b.checkpoint.size < a.checkpoint.size {
            findings.push(CounterFinding::SizeShrank {
                after,
                next,
                size_before: a.checkpoint.size,
                size_after: b.checkpoint.size,
            });
        }
        let same_boot = a.clock.reset_count == b.clock.reset_count
            && a.clock.restart_count == b.clock.restart_count;
        if (same_boot && b.clock.clock < a.clock.clock) || b.clock.reset_count < a.clock.reset_count
        {
            findings.push(CounterFinding::ClockWentBack { after, next });
        }
    }
    findings
}

/// Whether the log's last anchor is the TPM's current counter value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Currentness {
    /// The last anchor carries the counter value the TPM reports now.
    Current,
    /// The TPM counter has moved past the last anchor: anchors (and the events
    /// they cover) are missing from this log: rolled back, truncated, or an
    /// older export.
    NotCurrent { last_anchor: u64, tpm_counter: u64 },
    /// The attestation's counter is below the log's last anchor: the
    /// attestation predates the log, or comes from another counter.
    AttestationBehind { last_anchor: u64, tpm_counter: u64 },
    /// The log has no anchor at all.
    NoAnchor { tpm_counter: u64 },
}

/// Compares the log's last anchor with a verified fresh attestation.
pub fn currentness(last_anchor: Option<&VerifiedAnchor>, fresh: &VerifiedFresh) -> Currentness {
    let tpm_counter = fresh.counter;
    match last_anchor {
        None => Currentness::NoAnchor { tpm_counter },
        Some(last) if last.counter == tpm_counter => Currentness::Current,
        Some(last) if last.counter < tpm_counter => Currentness::NotCurrent {
            last_anchor: last.counter,
            tpm_counter,
        },
        Some(last) => Currentness::AttestationBehind {
            last_anchor: last.counter,
            tpm_counter,
        },
    }
}

/// Decodes a stored anchor record.
pub fn decode_anchor(bytes: &[u8]) -> Result<AnchorRecord, AnchorError> {
    AnchorRecord::decode(bytes).map_err(|err| AnchorError::Decode(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(size: u64) -> Checkpoint {
        Checkpoint {
            log_id: [0x11; 16],
            size,
            root: [0xab; 32],
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
        ] {
            assert!(Checkpoint::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_signed_checkpoint_parses_and_its_signature_is_checked_when_pinned() {
        let text = checkpoint(42).to_text();
        let signer =
            crate::note::Signer::from_seed("tally/11111111111111111111111111111111", &[7u8; 32])
                .unwrap();
        let signed = crate::note::sign(&text, &signer).unwrap();
        assert_eq!(
            Checkpoint::parse(signed.as_bytes()).unwrap(),
            checkpoint(42)
        );
        let ak = crate::evidence::verify::AkPublicKey::from_sec1(&[
            4, 107, 23, 209, 242, 225, 44, 66, 71, 248, 188, 230, 229, 99, 164, 64, 242, 119, 3,
            125, 129, 45, 235, 51, 160, 244, 161, 57, 69, 216, 152, 194, 150, 79, 227, 66, 226,
            254, 26, 127, 155, 142, 231, 235, 74, 124, 15, 158, 22, 43, 206, 51, 87, 107, 49, 94,
            206, 203, 182, 64, 104, 55, 191, 81, 245,
        ])
        .unwrap();
        let pinned = |key: Option<crate::note::Verifier>| AnchorPolicy {
            ak: ak.clone(),
            counter_index: 1,
            log_key: key,
        };
        check_note_signature(&pinned(Some(signer.verifier().clone())), signed.as_bytes()).unwrap();
        check_note_signature(&pinned(None), text.as_bytes()).unwrap();
        assert!(
            check_note_signature(&pinned(Some(signer.verifier().clone())), text.as_bytes())
                .is_err(),
            "unsigned"
        );
        let other =
            crate::note::Signer::from_seed("tally/11111111111111111111111111111111", &[8u8; 32])
                .unwrap();
        assert!(
            check_note_signature(&pinned(Some(other.verifier().clone())), signed.as_bytes())
                .is_err()
        );
        let mut tampered = signed.clone().into_bytes();
        tampered[text.len() - 3] ^= 1;
        assert!(check_note_signature(&pinned(Some(signer.verifier().clone())), &tampered).is_err());
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

    fn anchor(counter: u64, size: u64, reset_count: u32, clock: u64) -> VerifiedAnchor {
        let clock = ClockInfo {
            clock,
            reset_count,
            restart_count: 0,
            safe: true,
        };
        VerifiedAnchor {
            counter,
            checkpoint: checkpoint(size),
            clock,
            evidence: VerifiedEvidence {
                counter,
                counter_clock: clock,
                quote_clock: clock,
                pcr_digest: vec![],
            },
        }
    }

    #[test]
    fn sequence_findings_are_named() {
        assert!(check_sequence(&[anchor(5, 10, 1, 100), anchor(6, 20, 1, 200)]).is_empty());
        assert_eq!(
            check_sequence(&[anchor(5, 10, 1, 100), anchor(7, 20, 1, 200)]),
            vec![CounterFinding::Gap { after: 5, next: 7 }]
        );
        assert_eq!(
            check_sequence(&[anchor(5, 10, 1, 100), anchor(255, 20, 2, 10)]),
            vec![CounterFinding::GapAcrossReset {
                after: 5,
                next: 255,
                reset_before: 1,
                reset_after: 2
            }]
        );
        assert_eq!(
            check_sequence(&[anchor(5, 10, 1, 100), anchor(5, 20, 1, 200)]),
            vec![CounterFinding::NotIncreasing { after: 5, next: 5 }]
        );
        assert_eq!(
            check_sequence(&[anchor(5, 10, 1, 100), anchor(6, 9, 1, 200)]),
            vec![CounterFinding::SizeShrank {
                after: 5,
                next: 6,
                size_before: 10,
                size_after: 9
            }]
        );
        assert_eq!(
            check_sequence(&[anchor(5, 10, 1, 100), anchor(6, 10, 1, 50)]),
            vec![CounterFinding::ClockWentBack { after: 5, next: 6 }]
        );
    }

    #[test]
    fn currentness_compares_counters() {
        let fresh = |counter| VerifiedFresh {
            counter,
            checkpoint: checkpoint(3),
            clock: anchor(0, 0, 0, 0).clock,
        };
        let last = anchor(9, 3, 1, 1);
        assert_eq!(currentness(Some(&last), &fresh(9)), Currentness::Current);
        assert_eq!(
            currentness(Some(&last), &fresh(12)),
            Currentness::NotCurrent {
                last_anchor: 9,
                tpm_counter: 12
            }
        );
        assert_eq!(
            currentness(Some(&last), &fresh(8)),
            Currentness::AttestationBehind {
                last_anchor: 9,
                tpm_counter: 8
            }
        );
        assert_eq!(
            currentness(None, &fresh(8)),
            Currentness::NoAnchor { tpm_counter: 8 }
        );
    }
}
