//! The hand-written prost structs of the persisted formats agree with their
//! published schema, `proto/tally/formats/v1/formats.proto`: for each message, a
//! value with every field set (to distinct, non-default values) encodes to the
//! same bytes through the hand struct and through the type generated from the
//! schema, and each decodes the other's bytes into an equal value. Both values are
//! written as exhaustive struct literals, so a field added on one side only, a
//! wrong field number or a wrong type fails here.

use std::fmt::Debug;

use prost::Message;

use crate::anchor::{AnchorRecord, EvidenceRecord, FreshAttestation};
use crate::bundle::BundleHeader;
use crate::proof::{ConsistencyProofFile, InclusionProofFile, ProofFile};
use crate::range::RangeHeader;

/// The types generated from the schema at build time (see build.rs).
#[allow(missing_debug_implementations, clippy::all)]
mod schema {
    include!(concat!(env!("OUT_DIR"), "/tally.formats.v1.rs"));
}

fn agree<H, G>(hand: &H, generated: &G)
where
    H: Message + Default + PartialEq + Debug,
    G: Message + Default + PartialEq + Debug,
{
    let hand_bytes = hand.encode_to_vec();
    let generated_bytes = generated.encode_to_vec();
    assert_eq!(hand_bytes, generated_bytes, "{hand:?} vs {generated:?}");
    assert_eq!(&G::decode(hand_bytes.as_slice()).unwrap(), generated);
    assert_eq!(&H::decode(generated_bytes.as_slice()).unwrap(), hand);
    assert_eq!(
        G::decode(hand_bytes.as_slice()).unwrap().encode_to_vec(),
        hand_bytes,
        "re-encoding through the schema's type changes no byte"
    );
}

fn evidence() -> (EvidenceRecord, schema::EvidenceRecord) {
    let hand = EvidenceRecord {
        counter: (1 << 63) + 7,
        counter_index: 0x01c1_7a11,
        nv_certify_attest: b"nv certify attest".to_vec(),
        nv_certify_signature: b"nv certify signature".to_vec(),
        quote_attest: b"quote attest".to_vec(),
        quote_signature: b"quote signature".to_vec(),
        pcr_selection: b"pcr selection".to_vec(),
        pcr_digests: vec![vec![0xd1; 32], vec![0xd2; 32]],
    };
    let generated = schema::EvidenceRecord {
        counter: (1 << 63) + 7,
        counter_index: 0x01c1_7a11,
        nv_certify_attest: b"nv certify attest".to_vec(),
        nv_certify_signature: b"nv certify signature".to_vec(),
        quote_attest: b"quote attest".to_vec(),
        quote_signature: b"quote signature".to_vec(),
        pcr_selection: b"pcr selection".to_vec(),
        pcr_digests: vec![vec![0xd1; 32], vec![0xd2; 32]],
    };
    (hand, generated)
}

#[test]
fn bundle_header() {
    agree(
        &BundleHeader {
            format_version: 2,
            log_id: vec![0x11; 16],
            size: (1 << 40) + 3,
            head_hash: vec![0xab; 32],
            exported_at_unix_nanos: -1_790_000_000_000_000_000,
            producer: "tallyd/0.1.0".into(),
            redacted: true,
        },
        &schema::BundleHeader {
            format_version: 2,
            log_id: vec![0x11; 16],
            size: (1 << 40) + 3,
            head_hash: vec![0xab; 32],
            exported_at_unix_nanos: -1_790_000_000_000_000_000,
            producer: "tallyd/0.1.0".into(),
            redacted: true,
        },
    );
}

#[test]
fn range_header() {
    agree(
        &RangeHeader {
            format_version: 1,
            log_id: vec![0x12; 16],
            first_seq: (1 << 33) + 5,
            count: 77,
            tree_size: (1 << 34) + 1,
            redacted: true,
        },
        &schema::RangeHeader {
            format_version: 1,
            log_id: vec![0x12; 16],
            first_seq: (1 << 33) + 5,
            count: 77,
            tree_size: (1 << 34) + 1,
            redacted: true,
        },
    );
}

#[test]
fn evidence_record() {
    let (hand, generated) = evidence();
    agree(&hand, &generated);
}

#[test]
fn anchor_record() {
    let (hand_evidence, generated_evidence) = evidence();
    agree(
        &AnchorRecord {
            checkpoint: b"tally/11\n3\nroot\nanchor 7 -\n\n- sig\n".to_vec(),
            evidence: Some(hand_evidence),
            created_unix_nanos: -42,
        },
        &schema::AnchorRecord {
            checkpoint: b"tally/11\n3\nroot\nanchor 7 -\n\n- sig\n".to_vec(),
            evidence: Some(generated_evidence),
            created_unix_nanos: -42,
        },
    );
}

#[test]
fn fresh_attestation() {
    let (hand_evidence, generated_evidence) = evidence();
    agree(
        &FreshAttestation {
            checkpoint: b"tally/11\n9\nroot\n\n- sig\n".to_vec(),
            nonce: b"verifier nonce".to_vec(),
            evidence: Some(hand_evidence),
            anchors: vec![b"anchor a".to_vec(), b"anchor b".to_vec()],
            consistency: vec![vec![0xc1; 32], vec![0xc2; 32]],
            since_size: Some(0),
        },
        &schema::FreshAttestation {
            checkpoint: b"tally/11\n9\nroot\n\n- sig\n".to_vec(),
            nonce: b"verifier nonce".to_vec(),
            evidence: Some(generated_evidence),
            anchors: vec![b"anchor a".to_vec(), b"anchor b".to_vec()],
            consistency: vec![vec![0xc1; 32], vec![0xc2; 32]],
            // Zero, not absent: proto3 `optional` keeps presence.
            since_size: Some(0),
        },
    );
}

#[test]
fn proof_files() {
    let inclusion = InclusionProofFile {
        seq: (1 << 35) + 1,
        record: b"stored record".to_vec(),
        path: vec![vec![0xa1; 32], vec![0xa2; 32]],
        anchor: b"anchor record".to_vec(),
    };
    let generated_inclusion = schema::InclusionProofFile {
        seq: (1 << 35) + 1,
        record: b"stored record".to_vec(),
        path: vec![vec![0xa1; 32], vec![0xa2; 32]],
        anchor: b"anchor record".to_vec(),
    };
    let consistency = ConsistencyProofFile {
        path: vec![vec![0xb1; 32], vec![0xb2; 32]],
        old_anchor: b"old anchor".to_vec(),
        new_anchor: b"new anchor".to_vec(),
    };
    let generated_consistency = schema::ConsistencyProofFile {
        path: vec![vec![0xb1; 32], vec![0xb2; 32]],
        old_anchor: b"old anchor".to_vec(),
        new_anchor: b"new anchor".to_vec(),
    };
    agree(&inclusion, &generated_inclusion);
    agree(&consistency, &generated_consistency);
    // A valid file holds exactly one proof; both set here only so that every
    // field of ProofFile is checked at once.
    agree(
        &ProofFile {
            inclusion: Some(inclusion),
            consistency: Some(consistency),
        },
        &schema::ProofFile {
            inclusion: Some(generated_inclusion),
            consistency: Some(generated_consistency),
        },
    );
}
