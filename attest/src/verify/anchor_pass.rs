//! The anchors' pass of [`verify_bundle`](super::verify_bundle). Anchors come
//! first in the file and are streamed: each is verified (in parallel batches,
//! the ECDSA checks are the cost), then checked in order against the one
//! before, and only a small [`RootClaim`] of it (size, root, claimant) is kept for comparing its
//! Merkle root with the records during the replay that follows. The anchors a
//! fresh attestation brought go through the same pass.

use crate::anchor::checks::parse_anchor_unverified;
use crate::anchor::{
    anchor_hash, verify_anchor, AnchorError, AnchorPolicy, CounterFinding, FreshAttestation,
    SequenceChecker, VerifiedAnchor,
};
use crate::bundle::BundleHeader;
use crate::merkle;
use crate::record::Hash;
use crate::verify::{
    AnchorChecks, AnchorViolation, Origin, OriginVerdict, SinceError, VerifyOptions,
};

/// Anchors verified together (in parallel across cores).
pub(super) const BATCH: usize = 1024;

/// What is kept of each anchor: enough to compare its root with the records.
#[derive(Debug, Clone, Copy)]
pub(super) struct RootClaim {
    /// The tree size the root is claimed for.
    pub(super) size: u64,
    /// The claimed Merkle root of the first `size` records.
    pub(super) root: Hash,
    pub(super) by: Claimant,
}

/// Who claims a root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claimant {
    /// An anchor of the bundle (counter): must lie within its records.
    Bundle(u64),
    /// An anchor the fresh attestation brought: may lie beyond the bundle
    /// (the consistency proof binds it).
    Since(u64),
    /// The fresh attestation's checkpoint.
    Fresh,
}

/// The anchors' pass: state carried from one anchor to the next.
pub(super) struct AnchorPass<'a> {
    policy: &'a AnchorPolicy,
    pub(super) options: VerifyOptions<'a>,
    log_id: Vec<u8>,
    pub(super) checker: SequenceChecker<'a>,
    pub(super) findings: Vec<CounterFinding>,
    pub(super) failure: Option<AnchorViolation>,
    /// One per pushed anchor, in push order; the replay takes them (sorted by size).
    pub(super) claims: Vec<RootClaim>,
    /// The first pushed anchor's counter value.
    pub(super) first_counter: Option<u64>,
    /// The size the anchor pushed before the last claims (0 with fewer than two).
    pub(super) before_last_size: u64,
    last_size: Option<u64>,
    /// Set while pushing the attestation's anchors.
    in_since: bool,
    pub(super) origin: OriginVerdict,
    /// Whether the origin anchor has been seen (anchors before a trusted one are skipped).
    origin_seen: bool,
    pub(super) count: u64,
    pub(super) signatures_checked: u64,
    position: u64,
    /// The last two anchors' stored bytes (the newest closed one is one of them).
    pub(super) last_bytes: Option<Vec<u8>>,
    pub(super) before_last_bytes: Option<Vec<u8>>,
}

enum Plan {
    Verify,
    Parse,
    Skip,
}

impl<'a> AnchorPass<'a> {
    pub(super) fn new(
        policy: &'a AnchorPolicy,
        options: VerifyOptions<'a>,
        header: &BundleHeader,
    ) -> Self {
        AnchorPass {
            policy,
            options,
            log_id: header.log_id.clone(),
            checker: SequenceChecker::new(options.acknowledged_gaps),
            findings: Vec::new(),
            failure: None,
            claims: Vec::new(),
            first_counter: None,
            before_last_size: 0,
            last_size: None,
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

    pub(super) fn run_batch(&mut self, batch: Vec<Vec<u8>>, last_batch: bool) {
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
        self.first_counter.get_or_insert(anchor.counter);
        self.before_last_size = self.last_size.unwrap_or(0);
        self.last_size = Some(anchor.checkpoint.size);
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
    pub(super) fn push_since(&mut self, attestation: &FreshAttestation) {
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
