use super::*;
use tally_attest::anchor::{decode_anchor, AnchorError};
use tally_attest::evidence::EvidenceError;
use tally_attest::verify::{
    AnchorChecks, AnchorViolation, AnchorsVerdict, CounterVerdict, CurrentVerdict, Origin,
    OriginVerdict, Verdict,
};
use tally_attest::VerifyOptions;

const SHAPE: Shape = Shape {
    records: 1000,
    anchors: 40,
    payload: 256,
};

/// (plain bundle, anchored bundle, identity)
fn generate() -> (Vec<u8>, Vec<u8>, LogIdentity) {
    let keys = Keys::fixed().unwrap();
    let mut plain = Vec::new();
    let (header, roots) = write_plain(&mut plain, &SHAPE).unwrap();
    let mut anchored = Vec::new();
    let genesis =
        write_anchored(&mut anchored, &header, &roots, &SHAPE, &keys, &plain[..], 2).unwrap();
    let identity = LogIdentity::from_json(&keys.identity(genesis).to_json().unwrap()).unwrap();
    (plain, anchored, identity)
}

fn verify(bundle: &[u8], identity: &LogIdentity, checks: AnchorChecks) -> tally_attest::Report {
    let options = VerifyOptions {
        policy: Some(&identity.policy),
        origin: Some(Origin::Genesis {
            counter: identity.genesis_counter,
            anchor: identity.genesis_anchor,
        }),
        anchor_checks: checks,
        ..Default::default()
    };
    tally_attest::verify_bundle(bundle, options, |_, _| {}).unwrap()
}

type Change<'a> = &'a dyn Fn(&mut AnchorRecord);

/// Rewrites `bundle` with anchor number `which` changed by `change`.
fn tamper(bundle: &[u8], which: usize, change: impl Fn(&mut AnchorRecord)) -> Vec<u8> {
    let mut reader = BundleReader::new(bundle).unwrap();
    let mut out = Vec::new();
    let mut writer = BundleWriter::new(&mut out, reader.header()).unwrap();
    let mut buf = Vec::new();
    let mut index = 0;
    while reader.next_anchor(&mut buf).unwrap() {
        if index == which {
            let mut record = decode_anchor(&buf).unwrap();
            change(&mut record);
            buf = record.encode_to_vec();
        }
        writer.anchor(&buf).unwrap();
        index += 1;
    }
    while reader.next_record(&mut buf).unwrap() {
        writer.record(&buf).unwrap();
    }
    writer.finish().unwrap();
    out
}

#[test]
fn anchors_are_spread_from_genesis_to_the_head() {
    assert_eq!(SHAPE.anchor_size(0), 0);
    assert_eq!(SHAPE.anchor_size(SHAPE.anchors - 1), SHAPE.records);
    let one = Shape {
        anchors: 1,
        ..SHAPE
    };
    assert_eq!(one.anchor_size(0), 0);
}

#[test]
fn the_synthetic_bundle_verifies_as_a_real_one() {
    let (plain, anchored, identity) = generate();
    let report = verify(&anchored, &identity, AnchorChecks::All);
    assert_eq!(report.chain.as_ref().unwrap().size, SHAPE.records);
    assert_eq!(
        report.origin,
        OriginVerdict::Genesis {
            counter: GENESIS_COUNTER
        }
    );
    assert_eq!(
        report.anchors,
        AnchorsVerdict::Valid {
            count: SHAPE.anchors,
            signatures_checked: SHAPE.anchors
        }
    );
    assert_eq!(
        report.counter,
        CounterVerdict::Continuous {
            first: GENESIS_COUNTER,
            last: GENESIS_COUNTER + SHAPE.anchors - 1
        }
    );
    assert!(matches!(report.current, CurrentVerdict::NotChecked(_)));
    // PARTIAL only for the missing fresh attestation.
    assert_eq!(
        report.verdict(),
        Verdict::Partial(vec!["no fresh attestation given (--attestation, --nonce)"])
    );

    let newest = verify(&anchored, &identity, AnchorChecks::Newest);
    assert_eq!(
        newest.anchors,
        AnchorsVerdict::Valid {
            count: SHAPE.anchors,
            signatures_checked: 2
        }
    );

    // The plain bundle holds the same records and nothing else.
    let chain_only =
        tally_attest::verify_bundle(&plain[..], VerifyOptions::default(), |_, _| {}).unwrap();
    assert_eq!(chain_only.chain.unwrap(), report.chain.unwrap());
    assert_eq!(
        verify(&plain, &identity, AnchorChecks::All).anchors,
        AnchorsVerdict::NoAnchors
    );
}

#[test]
fn a_flipped_signature_byte_makes_the_anchor_invalid() {
    let (_, anchored, identity) = generate();
    let which = 17;
    let flip_last = |bytes: &mut Vec<u8>| {
        if let Some(last) = bytes.last_mut() {
            *last ^= 0x01;
        }
    };
    let cases: [(Change<'_>, AnchorError); 3] = [
        (
            &|record| flip_last(&mut record.evidence.as_mut().unwrap().quote_signature),
            AnchorError::Evidence(EvidenceError::SignatureInvalid),
        ),
        (
            &|record| flip_last(&mut record.evidence.as_mut().unwrap().nv_certify_signature),
            AnchorError::Evidence(EvidenceError::SignatureInvalid),
        ),
        (
            // The last byte of a signed note is its final newline; flip
            // one inside the base64 signature instead.
            &|record| {
                let at = record.checkpoint.len() - 10;
                record.checkpoint[at] = if record.checkpoint[at] == b'A' {
                    b'B'
                } else {
                    b'A'
                };
            },
            AnchorError::CheckpointSignature(tally_attest::note::NoteError::NotUtf8),
        ),
    ];
    for (change, expected) in cases {
        let bundle = tamper(&anchored, which, change);
        let report = verify(&bundle, &identity, AnchorChecks::All);
        match &report.anchors {
            AnchorsVerdict::Invalid(AnchorViolation::Invalid { position, error }) => {
                assert_eq!(*position, which as u64);
                match (&expected, error) {
                    (AnchorError::CheckpointSignature(_), AnchorError::CheckpointSignature(_)) => {}
                    _ => assert_eq!(error, &expected),
                }
            }
            other => panic!("expected anchor {which} invalid, got {other:?}"),
        }
        assert_eq!(report.verdict(), Verdict::Fail);
    }
}
