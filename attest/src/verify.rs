//! Verifying an export bundle end to end, one verdict per property:
//!
//! * **chain intact**: the records replay into the declared head;
//! * **anchors valid**: every anchor's TPM evidence verifies with the pinned
//!   AK and counter index, and its checkpoint matches the chain at its size;
//! * **counter continuous**: consecutive anchors carry consecutive counter
//!   values (a gap is reported as a gap, never as continuity);
//! * **current**: given a fresh attestation for the verifier's nonce, the
//!   log's last anchor carries the TPM's current counter value.

use std::collections::HashMap;
use std::io::BufRead;

use crate::anchor::{
    check_sequence, currentness, decode_anchor, verify_anchor, verify_fresh, AnchorError,
    AnchorPolicy, CounterFinding, Currentness, FreshAttestation, VerifiedAnchor, VerifiedFresh,
};
use crate::bundle::{BundleError, BundleHeader, BundleReader};
use crate::chain::{verify_chain_observed, ChainError, ChainSummary, Damage};
use crate::merkle::{Frontier, EMPTY_ROOT};
use crate::record::Hash;

/// What the verifier is given besides the bundle.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions<'a> {
    /// The pinned AK public key and counter index; `None`: anchors are not checked.
    pub policy: Option<&'a AnchorPolicy>,
    /// A fresh attestation and the nonce the verifier chose for it.
    pub fresh: Option<(&'a FreshAttestation, &'a [u8])>,
}

/// Why an anchor is not valid for this log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnchorViolation {
    #[error("anchor #{position}: {error}")]
    Invalid { position: usize, error: AnchorError },
    #[error("anchor {counter} is for another log (log id {found})")]
    WrongLog { counter: u64, found: String },
    #[error("anchor {counter}: its checkpoint's Merkle root for size {size} does not match the records (records before seq {size} were changed)")]
    CheckpointMismatch { counter: u64, size: u64 },
    #[error("log truncated: anchor {counter} covers {size} records but the bundle holds only {log_size}")]
    BeyondLog {
        counter: u64,
        size: u64,
        log_size: u64,
    },
}

/// Verdict on "anchors valid".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorsVerdict {
    Valid { count: usize },
    Invalid(AnchorViolation),
    NotChecked(&'static str),
}

/// Verdict on "counter continuous".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CounterVerdict {
    Continuous { first: u64, last: u64 },
    Broken(Vec<CounterFinding>),
    NotChecked(&'static str),
}

/// Verdict on "current".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CurrentVerdict {
    Current {
        counter: u64,
        grown_since: u64,
    },
    NotCurrent {
        last_anchor: u64,
        tpm_counter: u64,
    },
    AttestationBehind {
        last_anchor: u64,
        tpm_counter: u64,
    },
    NoAnchor {
        tpm_counter: u64,
    },
    Invalid(AnchorError),
    /// The attestation's checkpoint is for another log, or disagrees with the chain.
    Inconsistent(&'static str),
    NotChecked(&'static str),
}

/// Every verdict on one bundle.
#[derive(Debug, Clone)]
pub struct Report {
    pub header: BundleHeader,
    pub chain: Result<ChainSummary, Damage>,
    pub anchors: AnchorsVerdict,
    pub counter: CounterVerdict,
    pub current: CurrentVerdict,
    /// Records after the last valid anchor (acked, not yet anchored at export).
    pub unanchored: Option<u64>,
}

impl Report {
    /// True when every property that was checked holds. Properties not
    /// checked (no AK, no attestation) do not fail the report; the CLI says so.
    pub fn passed(&self) -> bool {
        self.chain.is_ok()
            && !matches!(self.anchors, AnchorsVerdict::Invalid(_))
            && !matches!(self.counter, CounterVerdict::Broken(_))
            && matches!(
                self.current,
                CurrentVerdict::Current { .. } | CurrentVerdict::NotChecked(_)
            )
    }
}

/// A bundle that is not even readable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("bad bundle: {0}")]
    Format(#[from] BundleError),
}

/// Reads and verifies a bundle. `progress` gets `(records replayed, declared size)`.
/// Returns `Err` only when the file is not a readable bundle; damage is in the report.
pub fn verify_bundle<R: BufRead>(
    input: R,
    options: VerifyOptions<'_>,
    mut progress: impl FnMut(u64, u64),
) -> Result<Report, VerifyError> {
    let mut reader = BundleReader::new(input)?;
    let header = reader.header().clone();
    let head = header.head()?;
    let size = header.size;

    // Anchors first (cheap, few): verify the evidence, note the sizes whose
    // chain heads the checkpoints claim.
    let mut anchors: Vec<VerifiedAnchor> = Vec::new();
    let mut anchor_failure: Option<AnchorViolation> = None;
    if let Some(policy) = options.policy {
        for (position, bytes) in reader.anchors().iter().enumerate() {
            let verified = decode_anchor(bytes).and_then(|record| verify_anchor(policy, &record));
            match verified {
                Ok(anchor) => anchors.push(anchor),
                Err(error) => {
                    anchor_failure = Some(AnchorViolation::Invalid { position, error });
                    break;
                }
            }
        }
    }
    let fresh: Option<Result<VerifiedFresh, AnchorError>> = match (options.policy, options.fresh) {
        (Some(policy), Some((attestation, nonce))) => {
            Some(verify_fresh(policy, attestation, nonce))
        }
        _ => None,
    };
    let mut wanted: HashMap<u64, Option<Hash>> =
        anchors.iter().map(|a| (a.checkpoint.size, None)).collect();
    if let Some(Ok(fresh)) = &fresh {
        wanted.insert(fresh.checkpoint.size, None);
    }
    if let Some(slot) = wanted.get_mut(&0) {
        *slot = Some(EMPTY_ROOT);
    }

    // The Merkle tree is rebuilt (leaves = the entry hashes the replay
    // computes anyway) only when some checkpoint needs a root.
    let mut frontier = (!wanted.is_empty()).then(Frontier::new);
    let chain = verify_chain_observed(
        &mut reader,
        size,
        &head,
        |done| progress(done, size),
        |at, hash| {
            if let Some(frontier) = frontier.as_mut() {
                if frontier.push(*hash, |_, _, _| {}).is_ok() {
                    if let Some(slot) = wanted.get_mut(&at) {
                        *slot = Some(frontier.root());
                    }
                }
            }
        },
    );
    let chain = match chain {
        Ok(summary) => Ok(summary),
        Err(ChainError::Damaged(damage)) => Err(damage),
        Err(ChainError::Source(err)) => return Err(VerifyError::Format(err)),
    };
    let log_size = chain.as_ref().map(|summary| summary.size).ok();

    let anchors_verdict = if options.policy.is_none() {
        AnchorsVerdict::NotChecked("no AK public key given (--ak)")
    } else if let Some(violation) = anchor_failure {
        AnchorsVerdict::Invalid(violation)
    } else if let Some(log_size) = log_size {
        check_checkpoints(&anchors, &header, &wanted, log_size)
    } else {
        // The TPM evidence verified, but checkpoints cannot be compared with
        // a chain that is already known to be damaged.
        AnchorsVerdict::NotChecked(
            "the chain is damaged, so checkpoints cannot be compared with it",
        )
    };
    let anchors_ok = matches!(anchors_verdict, AnchorsVerdict::Valid { .. });

    let counter = if matches!(anchors_verdict, AnchorsVerdict::NotChecked(_)) {
        CounterVerdict::NotChecked("anchors were not fully checked")
    } else if !anchors_ok {
        CounterVerdict::NotChecked("anchors are not valid")
    } else if anchors.is_empty() {
        CounterVerdict::NotChecked("the bundle has no anchors")
    } else {
        let findings = check_sequence(&anchors);
        match (findings.is_empty(), anchors.first(), anchors.last()) {
            (true, Some(first), Some(last)) => CounterVerdict::Continuous {
                first: first.counter,
                last: last.counter,
            },
            _ => CounterVerdict::Broken(findings),
        }
    };

    let current = match fresh {
        None if options.policy.is_none() => {
            CurrentVerdict::NotChecked("no AK public key given (--ak)")
        }
        None => CurrentVerdict::NotChecked("no fresh attestation given (--attestation, --nonce)"),
        Some(Err(error)) => CurrentVerdict::Invalid(error),
        Some(Ok(_)) if !anchors_ok => CurrentVerdict::NotChecked("anchors are not valid"),
        Some(Ok(fresh)) => judge_current(&fresh, anchors.last(), &header, &wanted, log_size),
    };

    let unanchored = match (log_size, anchors_ok) {
        (Some(log_size), true) => Some(log_size - anchors.last().map_or(0, |a| a.checkpoint.size)),
        _ => None,
    };
    Ok(Report {
        header,
        chain,
        anchors: anchors_verdict,
        counter,
        current,
        unanchored,
    })
}

fn check_checkpoints(
    anchors: &[VerifiedAnchor],
    header: &BundleHeader,
    chain_heads: &HashMap<u64, Option<Hash>>,
    log_size: u64,
) -> AnchorsVerdict {
    for anchor in anchors {
        let counter = anchor.counter;
        if anchor.checkpoint.log_id.as_slice() != header.log_id.as_slice() {
            return AnchorsVerdict::Invalid(AnchorViolation::WrongLog {
                counter,
                found: hex::encode(anchor.checkpoint.log_id),
            });
        }
        let size = anchor.checkpoint.size;
        match chain_heads.get(&size).copied().flatten() {
            Some(root) if root == anchor.checkpoint.root => {}
            Some(_) => {
                return AnchorsVerdict::Invalid(AnchorViolation::CheckpointMismatch {
                    counter,
                    size,
                })
            }
            None => {
                return AnchorsVerdict::Invalid(AnchorViolation::BeyondLog {
                    counter,
                    size,
                    log_size,
                })
            }
        }
    }
    AnchorsVerdict::Valid {
        count: anchors.len(),
    }
}

fn judge_current(
    fresh: &VerifiedFresh,
    last: Option<&VerifiedAnchor>,
    header: &BundleHeader,
    chain_heads: &HashMap<u64, Option<Hash>>,
    log_size: Option<u64>,
) -> CurrentVerdict {
    if fresh.checkpoint.log_id.as_slice() != header.log_id.as_slice() {
        return CurrentVerdict::Inconsistent("the attestation is for another log");
    }
    let grown_since = match log_size {
        Some(log_size) if fresh.checkpoint.size <= log_size => {
            if chain_heads.get(&fresh.checkpoint.size).copied().flatten()
                != Some(fresh.checkpoint.root)
            {
                return CurrentVerdict::Inconsistent(
                    "the attested head does not match the chain at its size",
                );
            }
            0
        }
        Some(log_size) => fresh.checkpoint.size - log_size,
        None => 0,
    };
    match currentness(last, fresh) {
        Currentness::Current => CurrentVerdict::Current {
            counter: fresh.counter,
            grown_since,
        },
        Currentness::NotCurrent {
            last_anchor,
            tpm_counter,
        } => CurrentVerdict::NotCurrent {
            last_anchor,
            tpm_counter,
        },
        Currentness::AttestationBehind {
            last_anchor,
            tpm_counter,
        } => CurrentVerdict::AttestationBehind {
            last_anchor,
            tpm_counter,
        },
        Currentness::NoAnchor { tpm_counter } => CurrentVerdict::NoAnchor { tpm_counter },
    }
}
