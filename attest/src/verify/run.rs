//! [`verify_bundle`]: one pass over the bundle. Anchors come first in the
//! file and are streamed: each is verified (in parallel batches, the ECDSA
//! checks are the cost), then checked in order against the one before, and
//! only a 48-byte summary of it is kept for comparing its Merkle root with
//! the records during the replay that follows.

use std::io::BufRead;

use crate::anchor::checks::{clock_finding, parse_anchor_unverified};
use crate::anchor::{
    anchor_hash, verify_anchor, verify_fresh, AnchorError, AnchorPolicy, CounterFinding,
    FreshAttestation, SequenceChecker, VerifiedAnchor, VerifiedFresh,
};
use crate::bundle::{BundleHeader, BundleReader};
use crate::chain::{verify_chain_observed, ChainError};
use crate::merkle::{self, Frontier, EMPTY_ROOT};
use crate::record::Hash;
use crate::verify::{
    AnchorChecks, AnchorViolation, AnchorsVerdict, CounterVerdict, Coverage, CurrentVerdict,
    Origin, OriginVerdict, Report, SinceError, VerifyError, VerifyOptions,
};

/// Anchors verified together (in parallel across cores).
const BATCH: usize = 1024;

/// What is kept of each anchor: enough to compare its root with the records.
#[derive(Debug, Clone, Copy)]
struct RootClaim {
    size: u64,
    root: Hash,
    by: Claimant,
}

/// Who claims a root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claimant {
    /// An anchor of the bundle (counter): must lie within its records.
    Bundle(u64),
    /// An anchor the fresh attestation brought: may lie beyond the bundle
    /// (the consistency proof binds it).
    Since(u64),
    /// The fresh attestation's checkpoint.
    Fresh,
}

/// The anchors' pass: state carried from one anchor to the next.
struct AnchorPass<'a> {
    policy: &'a AnchorPolicy,
    options: VerifyOptions<'a>,
    log_id: Vec<u8>,
    checker: SequenceChecker<'a>,
    findings: Vec<CounterFinding>,
    failure: Option<AnchorViolation>,
    claims: Vec<RootClaim>,
    /// Set while pushing the attestation's anchors.
    in_since: bool,
    origin: OriginVerdict,
    /// Whether the origin anchor has been seen (anchors before a trusted one are skipped).
    origin_seen: bool,
    count: u64,
    signatures_checked: u64,
    position: u64,
    /// The last two anchors' stored bytes (the newest closed one is one of them).
    last_bytes: Option<Vec<u8>>,
    before_last_bytes: Option<Vec<u8>>,
}

enum Plan {
    Verify,
    Parse,
    Skip,
}

impl<'a> AnchorPass<'a> {
    fn new(policy: &'a AnchorPolicy, options: VerifyOptions<'a>, header: &BundleHeader) -> Self {
        AnchorPass {
            policy,
            options,
            log_id: header.log_id.clone(),
            checker: SequenceChecker::new(options.acknowledged_gaps),
            findings: Vec::new(),
            failure: None,
            claims: Vec::new(),
            in_since: false,
            origin: match options.origin {
                Some(Origin::Genesis { counter, .. }) | Some(Origin::Trusted { counter, .. }) => {
                    OriginVerdict::Mismatch {
                        expected_counter: counter,
                        found_counter: None,
                    }
                }
                None => OriginVerdict::NotPinned(
                    "no genesis or trusted checkpoint pinned (--identity, --trusted)",
                ),
            },
            origin_seen: options.origin.is_none(),
            count: 0,
            signatures_checked: 0,
            position: 0,
            last_bytes: None,
            before_last_bytes: None,
        }
    }

    fn origin_hash(&self) -> Option<Hash> {
        match self.options.origin {
            Some(Origin::Genesis { anchor, .. }) | Some(Origin::Trusted { anchor, .. }) => {
                Some(anchor)
            }
            None => None,
        }
    }

    /// Decides, in file order, what each anchor of a batch needs; cheap (one
    /// SHA-256 per anchor), so the expensive checks can then run in parallel.
    fn plan(&mut self, batch: &[Vec<u8>], last_batch: bool) -> Vec<Plan> {
        let origin = self.origin_hash();
        let trusted = matches!(self.options.origin, Some(Origin::Trusted { .. }));
        let mut seen = self.origin_seen;
        batch
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let is_origin = !seen && origin == Some(anchor_hash(bytes));
                if is_origin {
                    seen = true;
                    return Plan::Verify;
                }
                if !seen && trusted {
                    return Plan::Skip;
                }
                let is_last = last_batch && i + 1 == batch.len();
                match self.options.anchor_checks {
                    AnchorChecks::All => Plan::Verify,
                    AnchorChecks::Newest if is_last => Plan::Verify,
                    AnchorChecks::Newest => Plan::Parse,
                }
            })
            .collect()
    }

    fn run_batch(&mut self, batch: Vec<Vec<u8>>, last_batch: bool) {
        if self.failure.is_some() || batch.is_empty() {
            return;
        }
        let plans = self.plan(&batch, last_batch);
        let results = check_parallel(self.policy, &batch, &plans);
        for (bytes, result) in batch.into_iter().zip(results) {
            let position = self.position;
            self.position += 1;
            let anchor = match result {
                // Skipped: before the trusted anchor.
                None => continue,
                Some(Ok(anchor)) => anchor,
                Some(Err(error)) => {
                    self.failure = Some(AnchorViolation::Invalid { position, error });
                    return;
                }
            };
            self.push(anchor, bytes);
            if self.failure.is_some() {
                return;
            }
        }
    }

    fn push(&mut self, anchor: VerifiedAnchor, bytes: Vec<u8>) {
        if anchor.checkpoint.log_id.as_slice() != self.log_id.as_slice() {
            self.failure = Some(AnchorViolation::WrongLog {
                counter: anchor.counter,
                found: anchor.checkpoint.log_id,
            });
            return;
        }
        if self.count == 0 {
            self.judge_origin(&anchor);
        }
        self.count += 1;
        self.signatures_checked += u64::from(anchor.signature_checked);
        self.claims.push(RootClaim {
            size: anchor.checkpoint.size,
            root: anchor.checkpoint.root,
            by: if self.in_since {
                Claimant::Since(anchor.counter)
            } else {
                Claimant::Bundle(anchor.counter)
            },
        });
        self.before_last_bytes = self.last_bytes.replace(bytes);
        let findings = self.checker.push(anchor);
        self.findings.extend(findings);
    }

    fn judge_origin(&mut self, first: &VerifiedAnchor) {
        self.origin_seen = true;
        self.origin = match self.options.origin {
            None => return,
            Some(Origin::Genesis { counter, anchor }) if first.hash == anchor => {
                OriginVerdict::Genesis { counter }
            }
            Some(Origin::Trusted { counter, anchor }) if first.hash == anchor => {
                OriginVerdict::Trusted {
                    counter,
                    size: first.checkpoint.size,
                }
            }
            Some(Origin::Genesis { counter, .. }) | Some(Origin::Trusted { counter, .. }) => {
                OriginVerdict::Mismatch {
                    expected_counter: counter,
                    found_counter: Some(first.counter),
                }
            }
        };
    }

    /// The anchors a fresh attestation brought (made after the bundle's
    /// last), and the consistency proof from that last anchor to the newest.
    fn push_since(&mut self, attestation: &FreshAttestation) {
        if attestation.anchors.is_empty() || self.failure.is_some() {
            return;
        }
        let Some(base) = self.checker.last().cloned() else {
            self.failure = Some(AnchorViolation::Since(SinceError::NoBase));
            return;
        };
        if attestation.since_size != Some(base.checkpoint.size) {
            self.failure = Some(AnchorViolation::Since(SinceError::WrongBase {
                since_size: attestation.since_size,
                base_size: base.checkpoint.size,
            }));
            return;
        }
        self.in_since = true;
        let plans: Vec<Plan> = attestation.anchors.iter().map(|_| Plan::Verify).collect();
        let results = check_parallel(self.policy, &attestation.anchors, &plans);
        for (bytes, result) in attestation.anchors.iter().zip(results) {
            let position = self.position;
            self.position += 1;
            match result {
                // The daemon starts after the oldest anchor covering
                // `since_size`; later ones of the same size are in the bundle.
                Some(Ok(anchor)) if anchor.counter <= base.counter => {}
                Some(Ok(anchor)) => self.push(anchor, bytes.clone()),
                Some(Err(error)) => {
                    self.failure = Some(AnchorViolation::Invalid { position, error })
                }
                None => {}
            }
            if self.failure.is_some() {
                return;
            }
        }
        let Some(newest) = self.checker.last() else {
            return;
        };
        let (from, to) = (base.checkpoint.size, newest.checkpoint.size);
        let path: Result<Vec<Hash>, _> = attestation
            .consistency
            .iter()
            .map(|hash| <[u8; 32]>::try_from(hash.as_slice()))
            .collect();
        let proven = path
            .map_err(|_| SinceError::ProofHashLength { from, to })
            .and_then(|path| {
                merkle::verify_consistency(
                    from,
                    to,
                    &base.checkpoint.root,
                    &newest.checkpoint.root,
                    &path,
                )
                .map_err(|source| SinceError::Proof { from, to, source })
            });
        if let Err(why) = proven {
            self.failure = Some(AnchorViolation::Since(why));
        }
    }
}

/// Runs each planned check, spread over the machine's cores for big batches.
fn check_parallel(
    policy: &AnchorPolicy,
    batch: &[Vec<u8>],
    plans: &[Plan],
) -> Vec<Option<Result<VerifiedAnchor, AnchorError>>> {
    let one = |(bytes, plan): (&Vec<u8>, &Plan)| match plan {
        Plan::Verify => Some(verify_anchor(policy, bytes)),
        Plan::Parse => Some(parse_anchor_unverified(bytes)),
        Plan::Skip => None,
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads == 1 || batch.len() < 32 {
        return batch.iter().zip(plans).map(one).collect();
    }
    let chunk = batch.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = batch
            .chunks(chunk)
            .zip(plans.chunks(chunk))
            .map(|(bytes, plans)| {
                scope.spawn(move || bytes.iter().zip(plans).map(one).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| vec![Some(Err(AnchorError::VerifierPanicked))])
            })
            .collect()
    })
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

    let mut pass = options
        .policy
        .map(|policy| AnchorPass::new(policy, options, &header));
    if let Some(pass) = pass.as_mut() {
        let mut batch = Vec::with_capacity(BATCH + 1);
        let mut buf = Vec::new();
        while reader.next_anchor(&mut buf)? {
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
    let mut claims: Vec<RootClaim> = pass.as_ref().map_or_else(Vec::new, |p| p.claims.clone());
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
    let mut cursor = claims.partition_point(|claim| claim.size == 0);
    let mut frontier = (!claims.is_empty()).then(Frontier::new);
    let chain = verify_chain_observed(
        &mut reader,
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
    );
    let chain = match chain {
        Ok(summary) => Ok(summary),
        Err(ChainError::Damaged(damage)) => Err(damage),
        Err(ChainError::Source(err)) => return Err(VerifyError::Format(err)),
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
        });
    };
    let roots = compare_roots(&claims, &computed, log_size);
    judge(pass, header, chain, log_size, roots, fresh)
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
                first: pass
                    .claims
                    .first()
                    .map_or(last.counter, |claim| match claim.by {
                        Claimant::Bundle(counter) | Claimant::Since(counter) => counter,
                        Claimant::Fresh => last.counter,
                    }),
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
                pass.claims
                    .iter()
                    .rev()
                    .nth(1)
                    .map_or(0, |claim| claim.size)
                    .min(size)
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
            "the attested head does not match the chain at its size",
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
