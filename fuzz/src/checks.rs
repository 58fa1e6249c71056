//! What the `bundle_verify` and `checkpoint_and_attest_parse` fuzz targets
//! run on each input. Shared with `tests/e2e/fuzz_corpus.rs`, which replays
//! the corpus through exactly these functions without libFuzzer.
//!
//! Contract under test: every parser and verifier in `tally-attest` returns
//! (`Ok` or a precise error) on any input; none panics.

use prost::Message;
use tally_attest::anchor::{
    check_note_signature, decode_anchor, verify_anchor, AnchorPolicy, Checkpoint, EvidenceRecord,
    FreshAttestation,
};
use tally_attest::evidence::parse::{parse_attest, parse_pcr_selection_bytes, parse_signature};
use tally_attest::evidence::verify::{AkPublicKey, EvidenceKeys};
use tally_attest::identity::{GapAck, LogIdentity};
use tally_attest::verify::{AnchorChecks, Origin};
use tally_attest::{verify_bundle, VerifyOptions};

/// The identity of the log (on swtpm) that produced the seed bundle and
/// `fresh.att`: with it the fuzzer reaches the "evidence verifies" paths,
/// not only the parsers.
const IDENTITY: &str = include_str!("../fixtures/identity.json");

/// A fresh attestation from that swtpm (log size 3, counter 3) and its nonce.
const FRESH_ATTESTATION: &[u8] = include_bytes!("../fixtures/fresh.att");
const FRESH_NONCE: [u8; 16] = [
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
];

/// A P-256 public key generated once for these targets (SEC1, uncompressed).
/// Nothing was ever signed with it: every signature check against it fails.
const UNRELATED_AK_SEC1: [u8; 65] = [
    0x04, 0xd5, 0x2b, 0x94, 0xcf, 0xd6, 0x82, 0xfb, 0x4c, 0x66, 0xe4, 0x93, 0xff, 0xb2, 0x86, 0x10,
    0xe6, 0x00, 0x48, 0x33, 0xcf, 0x35, 0x66, 0x9f, 0xb0, 0x40, 0x37, 0x77, 0x14, 0xef, 0x61, 0xe0,
    0x97, 0x5e, 0x5b, 0x25, 0xf1, 0x31, 0x9b, 0xcb, 0xae, 0x88, 0x58, 0xd9, 0x7d, 0x33, 0x85, 0x1b,
    0xe0, 0x7a, 0xef, 0x65, 0xc7, 0x82, 0xcb, 0xa6, 0x1d, 0x92, 0xcf, 0x0d, 0x3f, 0x23, 0xa0, 0xfd,
    0x33,
];

/// The counter index tallyd defines by default (`tpm.counter_index`).
const COUNTER_INDEX: u32 = 0x01c1_7a11;

/// Fixed verifier inputs, built once per process.
#[derive(Debug)]
pub struct Fixtures {
    identity: LogIdentity,
    unrelated: AnchorPolicy,
    fresh: FreshAttestation,
}

impl Fixtures {
    /// Fails only on a broken checkout (the fixtures are not findings).
    pub fn load() -> Result<Fixtures, String> {
        let unrelated =
            AkPublicKey::from_sec1(&UNRELATED_AK_SEC1).map_err(|err| err.to_string())?;
        Ok(Fixtures {
            identity: LogIdentity::from_json(IDENTITY).map_err(|err| err.to_string())?,
            unrelated: AnchorPolicy {
                keys: EvidenceKeys {
                    ak: unrelated.clone(),
                    owner_key: unrelated,
                },
                counter_index: COUNTER_INDEX,
                log_key: None,
                log_id: None,
            },
            fresh: FreshAttestation::decode(FRESH_ATTESTATION).map_err(|err| err.to_string())?,
        })
    }

    fn genesis(&self) -> Origin {
        Origin::Genesis {
            counter: self.identity.genesis_counter,
            anchor: self.identity.genesis_anchor,
        }
    }
}

/// `verify_bundle` on `data` with no options, with an AK that signed nothing,
/// and with the swtpm's AK and log key plus a fresh attestation. Returns how
/// many of the three runs produced a report (for the corpus test's summary).
pub fn bundle_verify(data: &[u8], fixtures: &Fixtures) -> usize {
    // An acknowledgement that names no real anchors: it must never turn a
    // finding into a PASS, and parsing it in the loop costs nothing.
    let gap = [GapAck {
        log_id: fixtures.identity.log_id,
        after_counter: 1,
        after_anchor: [1; 32],
        next_counter: 9,
        next_anchor: [9; 32],
        reviewed_by: "fuzz".into(),
        reason: "fuzz".into(),
        reviewed_at_unix: 0,
    }];
    let runs = [
        VerifyOptions::default(),
        VerifyOptions {
            policy: Some(&fixtures.unrelated),
            ..VerifyOptions::default()
        },
        VerifyOptions {
            policy: Some(&fixtures.identity.policy),
            origin: Some(fixtures.genesis()),
            fresh: Some((&fixtures.fresh, &FRESH_NONCE)),
            acknowledged_gaps: &gap,
            anchor_checks: AnchorChecks::All,
        },
        VerifyOptions {
            policy: Some(&fixtures.identity.policy),
            origin: Some(fixtures.genesis()),
            anchor_checks: AnchorChecks::Newest,
            ..VerifyOptions::default()
        },
    ];
    runs.into_iter()
        .filter_map(|options| verify_bundle(data, options, |_, _| {}).ok())
        // Rendering the verdicts runs every Display impl on hostile values too.
        .map(|report| {
            let _ = format!("{report:?} {:?}", report.verdict());
        })
        .count()
}

/// True when `data` verifies completely (chain, origin, anchors, counter,
/// current) with the fixtures' identity and fresh attestation: holds for the
/// seed bundle `corpus/bundle_verify/anchored_swtpm.tally`, which keeps the
/// fixtures and the seeds from drifting apart.
pub fn passes_with_fixtures(data: &[u8], fixtures: &Fixtures) -> bool {
    let options = VerifyOptions {
        policy: Some(&fixtures.identity.policy),
        origin: Some(fixtures.genesis()),
        fresh: Some((&fixtures.fresh, &FRESH_NONCE)),
        ..VerifyOptions::default()
    };
    verify_bundle(data, options, |_, _| {}).is_ok_and(|report| report.passed())
}

/// Every parser of TPM structures and anchor formats on `data`, and the
/// signed-note check with the seed log's key; for an input that decodes as
/// an anchor record or a fresh attestation, the parsers again on the fields
/// inside it. Returns how many parses succeeded.
pub fn parse_all(data: &[u8], fixtures: &Fixtures) -> usize {
    let mut parsed = count([
        Checkpoint::parse(data).is_ok(),
        check_note_signature(&fixtures.identity.policy, data).is_ok(),
        verify_anchor(&fixtures.identity.policy, data).is_ok(),
        LogIdentity::from_json(&String::from_utf8_lossy(data)).is_ok(),
        GapAck::from_json(&String::from_utf8_lossy(data)).is_ok(),
        parse_attest(data).is_ok(),
        parse_signature(data).is_ok(),
        parse_pcr_selection_bytes(data).is_ok(),
    ]);
    if let Ok(anchor) = decode_anchor(data) {
        parsed += 1 + usize::from(Checkpoint::parse(&anchor.checkpoint).is_ok());
        parsed += usize::from(
            check_note_signature(&fixtures.identity.policy, &anchor.checkpoint).is_ok(),
        );
        parsed += anchor.evidence.as_ref().map_or(0, parse_evidence);
    }
    if let Ok(fresh) = FreshAttestation::decode(data) {
        parsed += 1 + usize::from(Checkpoint::parse(&fresh.checkpoint).is_ok());
        parsed += fresh.evidence.as_ref().map_or(0, parse_evidence);
    }
    parsed
}

fn parse_evidence(evidence: &EvidenceRecord) -> usize {
    count([
        parse_attest(&evidence.nv_certify_attest).is_ok(),
        parse_signature(&evidence.nv_certify_signature).is_ok(),
        parse_attest(&evidence.quote_attest).is_ok(),
        parse_signature(&evidence.quote_signature).is_ok(),
        evidence.to_evidence([0; 32]).is_ok(),
    ])
}

fn count<const N: usize>(results: [bool; N]) -> usize {
    results.into_iter().filter(|ok| *ok).count()
}
