//! Verifying an export bundle end to end, one verdict per property
//! (docs/DESIGN.md sections 8 and 9):
//!
//! * **chain intact**: the records replay into the declared head;
//! * **origin**: the first anchor is the log's genesis, as its identity pins
//!   it, or an anchor the verifier already trusts;
//! * **anchors valid**: every anchor's TPM evidence verifies with the pinned
//!   keys and counter index, and its checkpoint matches the records;
//! * **counter continuous**: consecutive anchors carry consecutive counter
//!   values and name each other, with a TPM clock that never goes back
//!   (a gap is a gap unless a reviewed acknowledgement names it);
//! * **current**: a fresh attestation for the verifier's nonce shows the TPM
//!   counter one past the last anchor, so that anchor's value is closed;
//! * **content** ([`content`]): every opening opens its record's commitment,
//!   and every absent one is covered by an erasure record (or the bundle is
//!   redacted).
//!
//! [`Report::verdict`] is PASS only when all six were checked and hold;
//! anything not checked makes it PARTIAL, never PASS.

mod anchor_pass;
pub mod content;
mod run;
pub mod source;

pub use content::{ContentDamage, ContentSummary, ContentVerdict};
pub use run::{verify_bundle, verify_sections};
pub use source::{Sections, TrustedStart};

use crate::anchor::checks::AcknowledgedGap;
use crate::anchor::{AnchorError, CounterFinding};
use crate::bundle::{BundleError, BundleHeader};
use crate::chain::{ChainSummary, Damage};
use crate::identity::GapAck;
use crate::record::Hash;

/// Where a verifier's trust in the anchors starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The log's genesis anchor, from its identity.
    Genesis { counter: u64, anchor: Hash },
    /// An anchor the verifier checked before (`--trusted`); anchors before it
    /// are not checked again.
    Trusted { counter: u64, anchor: Hash },
}

/// How many anchors' TPM signatures are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnchorChecks {
    /// Every anchor's (the default; the only mode that can PASS).
    #[default]
    All,
    /// Only the origin's and the newest anchor's; the others are bound to the
    /// newest by the chain of anchor hashes. Sound only if the newest anchor
    /// was made before any compromise, so the verdict is at best PARTIAL.
    Newest,
}

/// What the verifier is given besides the bundle.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions<'a> {
    /// The pinned keys and counter index; `None`: anchors are not checked.
    pub policy: Option<&'a crate::anchor::AnchorPolicy>,
    /// Where the anchors must start; `None`: not pinned (PARTIAL at best).
    pub origin: Option<Origin>,
    /// A fresh attestation and the nonce the verifier chose for it.
    pub fresh: Option<(&'a crate::anchor::FreshAttestation, &'a [u8])>,
    /// Reviewed counter gaps to accept.
    pub acknowledged_gaps: &'a [GapAck],
    pub anchor_checks: AnchorChecks,
}

/// Why an anchor is not valid for this log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnchorViolation {
    #[error("anchor #{position}: {error}")]
    Invalid { position: u64, error: AnchorError },
    #[error("anchor {counter} is for another log (log id {})", hex::encode(.found))]
    WrongLog { counter: u64, found: [u8; 16] },
    #[error("anchor {counter}: its checkpoint's Merkle root for size {size} does not match the records (records before seq {size} were changed)")]
    CheckpointMismatch { counter: u64, size: u64 },
    #[error("log truncated: anchor {counter} covers {size} records but the bundle holds only {log_size}")]
    BeyondLog {
        counter: u64,
        size: u64,
        log_size: u64,
    },
    #[error("the attestation's anchors since the export: {0}")]
    Since(#[source] SinceError),
    /// The source starts at seq `start`, after the trusted anchor `counter`
    /// (size `size`), but its proof that record `start - 1` is that
    /// tree's last leaf does not lead to the trusted root.
    #[error("the records from seq {start} do not extend your trusted anchor {counter} (size {size}): the proof that record {start} links to the trusted tree does not verify (records before seq {start} were rewritten, or the start is not the trusted size)")]
    StartUnproven { counter: u64, size: u64, start: u64 },
}

/// Why the anchors a fresh attestation brought (made after the bundle's last
/// anchor) do not extend the bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SinceError {
    #[error("the bundle has no anchor for them to extend")]
    NoBase,
    /// The attestation's `since_size` is not the bundle's last anchor's size.
    #[error("they extend the anchor at size {since_size:?}, not this bundle's last anchor (size {base_size})")]
    WrongBase {
        since_size: Option<u64>,
        base_size: u64,
    },
    #[error("the consistency proof from size {from} to {to} does not verify: a proof hash is not 32 bytes")]
    ProofHashLength { from: u64, to: u64 },
    #[error("the consistency proof from size {from} to {to} does not verify: {source}")]
    Proof {
        from: u64,
        to: u64,
        #[source]
        source: crate::merkle::MerkleError,
    },
}

/// Verdict on "origin".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginVerdict {
    Genesis {
        counter: u64,
    },
    Trusted {
        counter: u64,
        size: u64,
    },
    /// The first anchor is not the pinned one: another log, a log rebuilt
    /// from seq 0, or a store whose first anchors were deleted.
    Mismatch {
        expected_counter: u64,
        found_counter: Option<u64>,
    },
    NotPinned(&'static str),
}

/// Verdict on "anchors valid".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorsVerdict {
    Valid {
        count: u64,
        signatures_checked: u64,
    },
    Invalid(AnchorViolation),
    /// The bundle holds no anchor although an origin was pinned.
    NoAnchors,
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
    /// The last anchor (the bundle's, or the newest the attestation brought)
    /// is one below the TPM's counter now.
    Current {
        tpm_counter: u64,
        /// Anchors the attestation brought, made after the bundle's last.
        anchors_since: u64,
        /// Records the live log holds beyond the bundle (proven by a
        /// consistency proof when `anchors_since > 0`).
        grown_by: u64,
    },
    /// The TPM counter is past the last anchor + 1: closed values without an
    /// anchor here (rolled back, truncated, or an older export).
    NotCurrent {
        last_anchor: u64,
        tpm_counter: u64,
    },
    /// The attestation's counter is not past the last anchor: an old
    /// attestation, another counter, or the last anchor's value is still open.
    AttestationBehind {
        last_anchor: u64,
        tpm_counter: u64,
    },
    NoAnchor {
        tpm_counter: u64,
    },
    /// The TPM clock or reset count went back between the last anchor and
    /// the attestation (TPM2_Clear, another TPM).
    ClockWentBack(CounterFinding),
    Invalid(AnchorError),
    /// The attestation's checkpoint is for another log, or disagrees with the chain.
    Inconsistent(&'static str),
    NotChecked(&'static str),
}

/// Which records the anchors protect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    /// Records in the bundle.
    pub size: u64,
    /// Records `[0, protected)` are covered by a closed anchor: an anchor
    /// with a later anchor, or shown closed by the fresh attestation.
    pub protected: u64,
    /// Records covered by the last anchor, closed or not.
    pub last_anchor_size: u64,
}

/// Every verdict on one bundle.
#[derive(Debug, Clone)]
pub struct Report {
    pub header: BundleHeader,
    pub chain: Result<ChainSummary, Damage>,
    pub origin: OriginVerdict,
    pub anchors: AnchorsVerdict,
    pub counter: CounterVerdict,
    pub current: CurrentVerdict,
    pub coverage: Option<Coverage>,
    pub acknowledged_gaps: Vec<AcknowledgedGap>,
    pub anchor_checks: AnchorChecks,
    /// The newest anchor whose value the verdict shows closed (what
    /// `--save-trusted` writes), as stored bytes.
    pub last_closed_anchor: Option<Vec<u8>>,
    /// The first record replayed: 0, or the size of the trusted checkpoint
    /// the source started from ([`TrustedStart`]).
    pub start_seq: u64,
    /// Openings against commitments, and absent content against erasures.
    pub content: ContentVerdict,
}

/// The overall verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Everything was checked and holds (acknowledged gaps are listed).
    Pass,
    /// Something checked does not hold.
    Fail,
    /// Nothing checked failed, but these were not checked.
    Partial(Vec<&'static str>),
}

impl Verdict {
    /// `tally verify`'s exit code: 0 pass, 1 fail, 3 partial.
    pub fn exit_code(&self) -> u8 {
        match self {
            Verdict::Pass => 0,
            Verdict::Fail => 1,
            Verdict::Partial(_) => 3,
        }
    }
}

impl Report {
    /// PASS only when the chain, the origin, every anchor and currentness
    /// were checked and hold.
    pub fn verdict(&self) -> Verdict {
        let failed = self.chain.is_err()
            || matches!(self.content, ContentVerdict::Damaged(_))
            || matches!(self.origin, OriginVerdict::Mismatch { .. })
            || matches!(
                self.anchors,
                AnchorsVerdict::Invalid(_) | AnchorsVerdict::NoAnchors
            )
            || matches!(self.counter, CounterVerdict::Broken(_))
            || !matches!(
                self.current,
                CurrentVerdict::Current { .. } | CurrentVerdict::NotChecked(_)
            );
        if failed {
            return Verdict::Fail;
        }
        let mut missing = Vec::new();
        if let OriginVerdict::NotPinned(why) = self.origin {
            missing.push(why);
        }
        if let AnchorsVerdict::NotChecked(why) = self.anchors {
            missing.push(why);
        }
        if let CounterVerdict::NotChecked(why) = self.counter {
            missing.push(why);
        }
        if let CurrentVerdict::NotChecked(why) = self.current {
            missing.push(why);
        }
        if self.anchor_checks == AnchorChecks::Newest {
            missing.push("only the origin's and the newest anchor's TPM signatures were checked (--anchors newest)");
        }
        missing.dedup();
        if missing.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Partial(missing)
        }
    }

    /// True for a PASS.
    pub fn passed(&self) -> bool {
        self.verdict() == Verdict::Pass
    }
}

/// A bundle that is not even readable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("bad bundle: {0}")]
    Format(#[from] BundleError),
    /// A source other than a file failed (the daemon's stream).
    #[error("reading the log failed: {0}")]
    Source(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the records start at seq {seq}, but no trusted anchor (--trusted) stands for the records before it")]
    UntrustedStart { seq: u64 },
    #[error("the records start at seq {seq}, past the log's size {size}")]
    StartBeyondLog { seq: u64, size: u64 },
    /// A content section (or a served opening) for a record that has no
    /// content commitment: nothing it could open.
    #[error("the content given for seq {seq} belongs to no commitment (the record has none)")]
    ContentWithoutCommitment { seq: u64 },
}
