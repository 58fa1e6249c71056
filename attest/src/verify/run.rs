//! [`verify_sections`]: one pass over a source of sections (a bundle file,
//! or the daemon's stream). The anchors come first and go through
//! [`AnchorPass`]; then the chain is replayed, rebuilding the Merkle tree
//! only at the sizes some anchor claims a root for, and the verdicts are
//! judged from both. A source that starts after a trusted checkpoint
//! ([`TrustedStart`]) seeds the replay with the trusted tree's frontier,
//! proven against the trusted anchor's root before any record is read.

use std::io::BufRead;

use crate::anchor::checks::clock_finding;
use crate::anchor::{verify_fresh, AnchorError, VerifiedAnchor, VerifiedFresh};
use crate::bundle::{BundleHeader, BundleReader};
use crate::chain::{verify_chain_with_content, ChainError, ChainStart};
use crate::merkle::{Frontier, EMPTY_ROOT};
use crate::record::Hash;
use crate::verify::anchor_pass::{AnchorPass, Claimant, RootClaim, BATCH};
use crate::verify::content::{ContentAudit, ContentVerdict};
use crate::verify::source::{Sections, TrustedStart};
use crate::verify::{
    AnchorViolation, AnchorsVerdict, CounterVerdict, Coverage, CurrentVerdict, Origin,
    OriginVerdict, Report, VerifyError, VerifyOptions,
};

/// Reads and verifies a bundle. `progress` gets `(records replayed, declared size)`.
/// Returns `Err` only when the file is not a readable bundle; damage is in the report.
pub fn verify_bundle<R: BufRead>(
    input: R,
    options: VerifyOptions<'_>,
    progress: impl FnMut(u64, u64),
) -> Result<Report, VerifyError> {
    let mut reader = BundleReader::new(input)?;
    verify_sections(&mut reader, options, progress)
}

/// Verifies whatever `source` yields, as [`verify_bundle`] does a file.
/// Returns `Err` only when the source fails or is not well-formed (or
/// starts after seq 0 without a trusted origin to start from); damage is in
/// the report.
pub fn verify_sections<S: Sections>(
    source: &mut S,
    options: VerifyOptions<'_>,
    mut progress: impl FnMut(u64, u64),
) -> Result<Report, VerifyError>
where
    S::Error: Into<VerifyError>,
{
    let header = source.header().clone();
    let head = header.head()?;
    let size = header.size;
    let start = source.start().cloned();
    if let Some(start) = &start {
        // Records before the start are not read: only an anchor the
        // verifier already trusts can stand for them.
        if options.policy.is_none() || !matches!(options.origin, Some(Origin::Trusted { .. })) {
            return Err(VerifyError::UntrustedStart { seq: start.seq });
        }
        if start.seq > size {
            return Err(VerifyError::StartBeyondLog {
                seq: start.seq,
                size,
            });
        }
    }

    let mut pass = options
        .policy
        .map(|policy| AnchorPass::new(policy, options, &header));
    if let Some(pass) = pass.as_mut() {
        let mut batch = Vec::with_capacity(BATCH + 1);
        let mut buf = Vec::new();
        while source.next_anchor(&mut buf).map_err(Into::into)? {
            batch.push(std::mem::take(&mut buf));
            if batch.len() > BATCH {
                // Keep the newest anchor back: whether it is the bundle's
                // last (checked in full under `--anchors newest`) is known
                // only once the next section is read.
                let newest = batch.pop().into_iter().collect();
                let full = std::mem::replace(&mut batch, newest);
                pass.run_batch(full, false);
            }
        }
        pass.run_batch(batch, true);
    }
    let fresh: Option<Result<VerifiedFresh, AnchorError>> = match (options.policy, options.fresh) {
        (Some(policy), Some((attestation, nonce))) => {
            Some(verify_fresh(policy, attestation, nonce))
        }
        _ => None,
    };
    if let (Some(pass), Some((attestation, _)), Some(Ok(_))) =
        (pass.as_mut(), options.fresh, fresh.as_ref())
    {
        pass.push_since(attestation);
    }

    // Replay the chain; rebuild the Merkle tree only when something claims a root.
    // Taken, not copied: one claim per anchor, and a bundle may hold 2^24 of them.
    let mut claims: Vec<RootClaim> = pass
        .as_mut()
        .map_or_else(Vec::new, |p| std::mem::take(&mut p.claims));
    if let Some(Ok(fresh)) = &fresh {
        claims.push(RootClaim {
            size: fresh.checkpoint.size,
            root: fresh.checkpoint.root,
            by: Claimant::Fresh,
        });
    }
    claims.sort_by_key(|claim| claim.size);
    let mut computed: Vec<Option<Hash>> = claims
        .iter()
        .map(|claim| (claim.size == 0).then_some(EMPTY_ROOT))
        .collect();
    let (chain_start, start_frontier) = match &start {
        None => (ChainStart::GENESIS, Frontier::new()),
        Some(start) => {
            let frontier = trusted_frontier(start, &claims, pass.as_mut());
            (
                ChainStart {
                    seq: start.seq,
                    prev: start.prev,
                },
                frontier.unwrap_or_default(),
            )
        }
    };
    let start_seq = chain_start.seq;
    // Claims at the start's size are proven by the frontier (checked
    // against the trusted root above); claims below it cannot be compared
    // (no records before the start are read) and stay unproven.
    for (claim, computed) in claims.iter().zip(computed.iter_mut()) {
        if start_seq > 0 && claim.size == start_seq {
            *computed = Some(start_frontier.root());
        }
    }
    let mut cursor = claims.partition_point(|claim| claim.size <= start_seq);
    let mut frontier = (!claims.is_empty()).then_some(start_frontier);
    let mut audit = ContentAudit::new(start_seq, header.redacted);
    let chain = verify_chain_with_content(
        source,
        chain_start,
        size,
        &head,
        |done| progress(done, size),
        |at, hash| {
            if let Some(frontier) = frontier.as_mut() {
                if frontier.push(*hash, |_, _, _| {}).is_ok() {
                    while cursor < claims.len() && claims[cursor].size == at {
                        computed[cursor] = Some(frontier.root());
                        cursor += 1;
                    }
                }
            }
        },
        &mut audit,
    );
    let chain = match chain {
        Ok(summary) => Ok(summary),
        Err(ChainError::Damaged(damage)) => Err(damage),
        Err(ChainError::Source(err)) => return Err(err.into()),
    };
    if let Some(seq) = audit.unexpected_opening() {
        return Err(VerifyError::ContentWithoutCommitment { seq });
    }
    let content = match &chain {
        Ok(_) => audit.finish(false),
        Err(_) => ContentVerdict::NotChecked("the chain is damaged, so the replay stopped early"),
    };
    let log_size = chain.as_ref().map(|summary| summary.size).ok();

    let Some(pass) = pass else {
        return Ok(Report {
            header,
            chain,
            origin: OriginVerdict::NotPinned("no identity or keys given (--identity)"),
            anchors: AnchorsVerdict::NotChecked("no identity or keys given (--identity)"),
            counter: CounterVerdict::NotChecked("anchors were not checked"),
            current: CurrentVerdict::NotChecked("anchors were not checked"),
            coverage: None,
            acknowledged_gaps: Vec::new(),
            anchor_checks: options.anchor_checks,
            last_closed_anchor: None,
            start_seq,
            content,
        });
    };
    let roots = compare_roots(&claims, &computed, log_size);
    let mut report = judge(pass, header, chain, log_size, roots, fresh)?;
    report.start_seq = start_seq;
    report.content = content;
    Ok(report)
}

/// The trusted tree's frontier at `start.seq`, rebuilt from the source's
/// last-leaf proof; `None` (and the anchors FAIL) unless it hashes to the
/// root of the trusted anchor, which must be the first anchor and of
/// exactly that size.
fn trusted_frontier(
    start: &TrustedStart,
    claims: &[RootClaim],
    pass: Option<&mut AnchorPass<'_>>,
) -> Option<Frontier> {
    let pass = pass?;
    let OriginVerdict::Trusted { counter, size } = pass.origin else {
        // Not the trusted anchor: the origin verdict already FAILs.
        return None;
    };
    let trusted_root = claims
        .iter()
        .find(|claim| claim.by == Claimant::Bundle(counter))
        .map(|claim| claim.root);
    let frontier = match (start.seq, trusted_root) {
        (0, Some(root)) if root == EMPTY_ROOT && size == 0 => Some(Frontier::new()),
        (seq, Some(root)) if seq == size && seq > 0 => {
            Frontier::from_last_leaf(seq, &start.prev, &start.path)
                .ok()
                .filter(|frontier| frontier.root() == root)
        }
        _ => None,
    };
    if frontier.is_none() && pass.failure.is_none() {
        pass.failure = Some(AnchorViolation::StartUnproven {
            counter,
            size,
            start: start.seq,
        });
    }
    frontier
}

/// The first anchor whose root disagrees with the records, or lies beyond
/// them; and whether the fresh checkpoint's root (when within the bundle)
/// matches.
struct RootFindings {
    anchor: Option<AnchorViolation>,
    fresh_matches: bool,
}

fn compare_roots(
    claims: &[RootClaim],
    computed: &[Option<Hash>],
    log_size: Option<u64>,
) -> RootFindings {
    let mut findings = RootFindings {
        anchor: None,
        fresh_matches: true,
    };
    // A damaged chain stops the replay early: nothing to compare with.
    let Some(log_size) = log_size else {
        return findings;
    };
    for (claim, computed) in claims.iter().zip(computed) {
        let violation = match (claim.by, computed) {
            (Claimant::Fresh, Some(root)) => {
                findings.fresh_matches &= *root == claim.root;
                None
            }
            (Claimant::Bundle(counter) | Claimant::Since(counter), Some(root))
                if *root != claim.root =>
            {
                Some(AnchorViolation::CheckpointMismatch {
                    counter,
                    size: claim.size,
                })
            }
            (Claimant::Bundle(counter), None) => Some(AnchorViolation::BeyondLog {
                counter,
                size: claim.size,
                log_size,
            }),
            _ => None,
        };
        if findings.anchor.is_none() {
            findings.anchor = violation;
        }
    }
    findings
}

fn judge(
    pass: AnchorPass<'_>,
    header: BundleHeader,
    chain: Result<crate::chain::ChainSummary, crate::chain::Damage>,
    log_size: Option<u64>,
    roots: RootFindings,
    fresh: Option<Result<VerifiedFresh, AnchorError>>,
) -> Result<Report, VerifyError> {
    let violation = pass.failure.clone().or(roots.anchor);
    let anchors = if let Some(violation) = violation {
        AnchorsVerdict::Invalid(violation)
    } else if chain.is_err() {
        AnchorsVerdict::NotChecked(
            "the chain is damaged, so checkpoints cannot be compared with it",
        )
    } else if pass.count == 0 && pass.options.origin.is_some() {
        AnchorsVerdict::NoAnchors
    } else if pass.count == 0 {
        AnchorsVerdict::NotChecked("the bundle has no anchors")
    } else {
        AnchorsVerdict::Valid {
            count: pass.count,
            signatures_checked: pass.signatures_checked,
        }
    };
    let anchors_ok = matches!(anchors, AnchorsVerdict::Valid { .. });
    let last = pass.checker.last().cloned();
    let counter = match (&anchors, last.as_ref()) {
        (AnchorsVerdict::Valid { .. }, Some(last)) if pass.findings.is_empty() => {
            CounterVerdict::Continuous {
                first: pass.first_counter.unwrap_or(last.counter),
                last: last.counter,
            }
        }
        (AnchorsVerdict::Valid { .. }, Some(_)) => CounterVerdict::Broken(pass.findings.clone()),
        _ if !pass.findings.is_empty() => CounterVerdict::Broken(pass.findings.clone()),
        _ => CounterVerdict::NotChecked("anchors are not valid"),
    };
    let current = match fresh {
        None => CurrentVerdict::NotChecked("no fresh attestation given (--attestation, --nonce)"),
        Some(Err(error)) => CurrentVerdict::Invalid(error),
        Some(Ok(_)) if !anchors_ok => CurrentVerdict::NotChecked("anchors are not valid"),
        Some(Ok(fresh)) => judge_current(
            &fresh,
            last.as_ref(),
            &header,
            log_size.unwrap_or(0),
            roots.fresh_matches,
            pass.options
                .fresh
                .map_or(0, |(attestation, _)| attestation.anchors.len() as u64),
        ),
    };
    let current_ok = matches!(current, CurrentVerdict::Current { .. });
    let coverage = match (anchors_ok, log_size, last.as_ref()) {
        (true, Some(size), Some(last)) => Some(Coverage {
            size,
            protected: if current_ok {
                last.checkpoint.size.min(size)
            } else {
                // The anchor before the last is closed by the last one's existence.
                pass.before_last_size.min(size)
            },
            last_anchor_size: last.checkpoint.size,
        }),
        _ => None,
    };
    let last_closed_anchor = match (anchors_ok, current_ok) {
        (true, true) => pass.last_bytes.clone(),
        (true, false) => pass.before_last_bytes.clone(),
        _ => None,
    };
    Ok(Report {
        header,
        chain,
        origin: pass.origin.clone(),
        anchors,
        counter,
        current,
        coverage,
        acknowledged_gaps: pass.checker.acknowledged.clone(),
        anchor_checks: pass.options.anchor_checks,
        last_closed_anchor,
        start_seq: 0,
        content: ContentVerdict::NotChecked("not judged yet"),
    })
}

fn judge_current(
    fresh: &VerifiedFresh,
    last: Option<&VerifiedAnchor>,
    header: &BundleHeader,
    log_size: u64,
    fresh_root_matches: bool,
    anchors_since: u64,
) -> CurrentVerdict {
    let tpm_counter = fresh.counter;
    if fresh.checkpoint.log_id.as_slice() != header.log_id.as_slice() {
        return CurrentVerdict::Inconsistent("the attestation is for another log");
    }
    let Some(last) = last else {
        return CurrentVerdict::NoAnchor { tpm_counter };
    };
    if let Some(finding) = clock_finding(last.counter, &last.clock, tpm_counter, &fresh.clock) {
        return CurrentVerdict::ClockWentBack(finding);
    }
    if fresh.checkpoint.size < last.checkpoint.size {
        return CurrentVerdict::Inconsistent(
            "the attested log is smaller than its last anchor (rolled back)",
        );
    }
    if !fresh_root_matches {
        return CurrentVerdict::Inconsistent(
            "the attested Merkle root does not match the records at its size",
        );
    }
    if tpm_counter <= last.counter {
        CurrentVerdict::AttestationBehind {
            last_anchor: last.counter,
            tpm_counter,
        }
    } else if tpm_counter == last.counter + 1 {
        CurrentVerdict::Current {
            tpm_counter,
            anchors_since,
            grown_by: fresh.checkpoint.size.saturating_sub(log_size),
        }
    } else {
        CurrentVerdict::NotCurrent {
            last_anchor: last.counter,
            tpm_counter,
        }
    }
}
