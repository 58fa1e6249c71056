//! What a verifier checks on one anchor, on a sequence of anchors and on a
//! fresh attestation (docs/DESIGN.md section 9). Every failure is a named
//! variant; nothing here reads a file or talks to a TPM.

use crate::anchor::error::AnchorError;
use crate::anchor::format::{
    anchor_hash, anchor_qualifying_data, decode_anchor, fresh_qualifying_data, Checkpoint,
    EvidenceRecord, FreshAttestation,
};
use crate::evidence::parse::ClockInfo;
use crate::evidence::verify::{verify_evidence, VerifiedEvidence};
use crate::evidence::EvidenceError;
use crate::identity::{AnchorPolicy, GapAck};
use crate::record::Hash;

/// An anchor whose TPM evidence verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAnchor {
    pub counter: u64,
    pub checkpoint: Checkpoint,
    /// The TPM clock of the quote (AK-signed, so resetCount and restartCount are real).
    pub clock: ClockInfo,
    /// [`anchor_hash`] of the record's bytes.
    pub hash: Hash,
    pub evidence: VerifiedEvidence,
    /// False when only parsed ([`parse_anchor_unverified`]): its TPM
    /// signatures were not checked and it is trusted only through the chain
    /// of anchor hashes.
    pub signature_checked: bool,
}

impl VerifiedAnchor {
    /// The previous anchor's hash this one names (`None` on a genesis anchor).
    pub fn prev(&self) -> Option<Hash> {
        self.checkpoint.anchor.and_then(|line| line.prev)
    }
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
        &policy.keys,
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
    // `open` succeeds only when at least one known key (here: the only one) signed.
    crate::note::open(checkpoint, std::slice::from_ref(key))
        .map_err(AnchorError::CheckpointSignature)?;
    Ok(())
}

fn check_log_id(policy: &AnchorPolicy, checkpoint: &Checkpoint) -> Result<(), AnchorError> {
    match policy.log_id {
        Some(expected) if expected != checkpoint.log_id => Err(AnchorError::WrongLog {
            expected,
            found: checkpoint.log_id,
        }),
        _ => Ok(()),
    }
}

/// Verifies one stored anchor: its checkpoint (with its anchor line), its log
/// id and checkpoint signature when pinned, and its TPM evidence, whose
/// certified counter must be the one the anchor line names. It does not check
/// the checkpoint against records or other anchors: see `verify::verify_bundle`.
pub fn verify_anchor(policy: &AnchorPolicy, bytes: &[u8]) -> Result<VerifiedAnchor, AnchorError> {
    let record = decode_anchor(bytes)?;
    let checkpoint = Checkpoint::parse(&record.checkpoint)?;
    let line = checkpoint.anchor.ok_or(AnchorError::MissingAnchorLine)?;
    check_log_id(policy, &checkpoint)?;
    check_note_signature(policy, &record.checkpoint)?;
    let qualifying_data = anchor_qualifying_data(&record.checkpoint);
    let evidence = verify_bound_evidence(policy, record.evidence.as_ref(), qualifying_data)?;
    if line.counter != evidence.counter {
        return Err(AnchorError::CounterLineMismatch {
            line: line.counter,
            certified: evidence.counter,
        });
    }
    Ok(VerifiedAnchor {
        counter: evidence.counter,
        checkpoint,
        clock: evidence.quote_clock,
        hash: anchor_hash(bytes),
        evidence,
        signature_checked: true,
    })
}

/// Parses a stored anchor *without* checking any signature: counter from its
/// anchor line, clocks and pcrDigest from the unverified attest structures.
/// For `--anchors newest`, where only the chain of anchor hashes binds such
/// an anchor to one whose signatures were checked.
pub fn parse_anchor_unverified(bytes: &[u8]) -> Result<VerifiedAnchor, AnchorError> {
    use crate::evidence::parse::{parse_attest, Attested};
    let record = decode_anchor(bytes)?;
    let checkpoint = Checkpoint::parse(&record.checkpoint)?;
    let line = checkpoint.anchor.ok_or(AnchorError::MissingAnchorLine)?;
    let evidence = record
        .evidence
        .as_ref()
        .ok_or(AnchorError::MissingEvidence)?;
    let certify = parse_attest(&evidence.nv_certify_attest).map_err(AnchorError::Evidence)?;
    let quote = parse_attest(&evidence.quote_attest).map_err(AnchorError::Evidence)?;
    let pcr_digest = match quote.attested {
        Attested::Quote(info) => info.pcr_digest,
        Attested::Nv(_) => Vec::new(),
    };
    Ok(VerifiedAnchor {
        counter: line.counter,
        checkpoint,
        clock: quote.clock_info,
        hash: anchor_hash(bytes),
        evidence: VerifiedEvidence {
            counter: line.counter,
            counter_clock: certify.clock_info,
            quote_clock: quote.clock_info,
            pcr_digest,
        },
        signature_checked: false,
    })
}

/// A fresh attestation whose evidence verified for the verifier's nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedFresh {
    /// The TPM's counter when the attestation was made (an open value).
    pub counter: u64,
    pub checkpoint: Checkpoint,
    /// The TPM clock of the quote.
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
    if checkpoint.anchor.is_some() {
        return Err(AnchorError::UnexpectedAnchorLine);
    }
    check_log_id(policy, &checkpoint)?;
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
        clock: evidence.quote_clock,
    })
}

/// How two consecutive anchors relate, when they do not follow each other as
/// an honest daemon makes them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CounterFinding {
    /// A counter value between them has no anchor: an anchor was removed, or
    /// the counter was moved by someone else.
    #[error("counter gap: anchor {after} is followed by anchor {next} ({} counter values without an anchor)", next - after - 1)]
    Gap { after: u64, next: u64 },
    /// As `Gap`, across a TPM reset: consistent with an orderly counter's
    /// forward jump after an unclean reset (power loss), and equally with
    /// removed anchors. Reported as a gap, never as continuity; a reviewed
    /// one can be acknowledged (`--accept-gap`).
    #[error("counter gap across a TPM reset: anchor {after} (reset count {reset_before}) is followed by anchor {next} (reset count {reset_after}); an orderly counter jumps forward after an unclean TPM reset (power loss), but removed anchors cannot be ruled out")]
    GapAcrossReset {
        after: u64,
        next: u64,
        reset_before: u32,
        reset_after: u32,
    },
    /// The counter did not increase: duplicated or reordered anchors.
    #[error("counter did not increase: anchor {after} is followed by anchor {next}")]
    NotIncreasing { after: u64, next: u64 },
    /// The anchor does not name the anchor before it: anchors were replaced,
    /// or come from another log.
    #[error("anchor {next} does not name anchor {after} as its predecessor (the chain of anchors is broken)")]
    PrevMismatch { after: u64, next: u64 },
    /// A later anchor covers fewer records than an earlier one.
    #[error("log shrank: anchor {after} covers {size_before} records, the next anchor {next} only {size_after}")]
    SizeShrank {
        after: u64,
        next: u64,
        size_before: u64,
        size_after: u64,
    },
    /// The TPM clock went back within one TPM reset.
    #[error("TPM clock went back between anchors {after} and {next} ({clock_before} ms -> {clock_after} ms, same reset count)")]
    ClockWentBack {
        after: u64,
        next: u64,
        clock_before: u64,
        clock_after: u64,
    },
    /// The TPM's reset count went down: TPM2_Clear resets it (and lets an
    /// orderly counter restart low), or the evidence is from another TPM.
    #[error("TPM reset count went back between anchors {after} and {next} ({reset_before} -> {reset_after}): the TPM was cleared (TPM2_Clear) or replaced")]
    ResetCountWentBack {
        after: u64,
        next: u64,
        reset_before: u32,
        reset_after: u32,
    },
}

/// A counter gap a person reviewed and acknowledged (`--accept-gap`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcknowledgedGap {
    pub after: u64,
    pub next: u64,
    pub reviewed_by: String,
    pub reason: String,
}

/// Checks anchors one at a time, in bundle order, against the one before:
/// consecutive counter values, a chain of anchor hashes, growing sizes and a
/// TPM clock that does not go back. Keeps only the previous anchor, so a
/// bundle of millions of anchors is checked in constant memory.
#[derive(Debug)]
pub struct SequenceChecker<'a> {
    prev: Option<VerifiedAnchor>,
    acks: &'a [GapAck],
    /// The gaps an acknowledgement covered, in order.
    pub acknowledged: Vec<AcknowledgedGap>,
}

impl<'a> SequenceChecker<'a> {
    /// A checker that accepts exactly the gaps `acks` name (each pinned by the
    /// hashes of the anchors on both sides).
    pub fn new(acks: &'a [GapAck]) -> Self {
        SequenceChecker {
            prev: None,
            acks,
            acknowledged: Vec::new(),
        }
    }

    /// The last anchor pushed.
    pub fn last(&self) -> Option<&VerifiedAnchor> {
        self.prev.as_ref()
    }

    /// Checks `next` against the previous anchor; returns what is wrong.
    pub fn push(&mut self, next: VerifiedAnchor) -> Vec<CounterFinding> {
        let findings = match self.prev.take() {
            Some(prev) => self.compare(&prev, &next),
            None => Vec::new(),
        };
        self.prev = Some(next);
        findings
    }

    fn compare(&mut self, a: &VerifiedAnchor, b: &VerifiedAnchor) -> Vec<CounterFinding> {
        let mut findings = Vec::new();
        let (after, next) = (a.counter, b.counter);
        if next <= after {
            findings.push(CounterFinding::NotIncreasing { after, next });
        } else if next != after + 1 {
            let ack = self.acks.iter().find(|ack| {
                (
                    ack.after_counter,
                    ack.after_anchor,
                    ack.next_counter,
                    ack.next_anchor,
                ) == (after, a.hash, next, b.hash)
            });
            match ack {
                Some(ack) => self.acknowledged.push(AcknowledgedGap {
                    after,
                    next,
                    reviewed_by: ack.reviewed_by.clone(),
                    reason: ack.reason.clone(),
                }),
                None if b.clock.reset_count > a.clock.reset_count => {
                    findings.push(CounterFinding::GapAcrossReset {
                        after,
                        next,
                        reset_before: a.clock.reset_count,
                        reset_after: b.clock.reset_count,
                    })
                }
                None => findings.push(CounterFinding::Gap { after, next }),
            }
        }
        if b.prev() != Some(a.hash) {
            findings.push(CounterFinding::PrevMismatch { after, next });
        }
        if b.checkpoint.size < a.checkpoint.size {
            findings.push(CounterFinding::SizeShrank {
                after,
                next,
                size_before: a.checkpoint.size,
                size_after: b.checkpoint.size,
            });
        }
        findings.extend(clock_finding(after, &a.clock, next, &b.clock));
        findings
    }
}

/// A TPM clock at `next` that cannot follow the one at `after` on one TPM
/// that was never cleared.
pub fn clock_finding(
    after: u64,
    a: &ClockInfo,
    next: u64,
    b: &ClockInfo,
) -> Option<CounterFinding> {
    if b.reset_count < a.reset_count {
        Some(CounterFinding::ResetCountWentBack {
            after,
            next,
            reset_before: a.reset_count,
            reset_after: b.reset_count,
        })
    } else if b.reset_count == a.reset_count && b.clock < a.clock {
        Some(CounterFinding::ClockWentBack {
            after,
            next,
            clock_before: a.clock,
            clock_after: b.clock,
        })
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
