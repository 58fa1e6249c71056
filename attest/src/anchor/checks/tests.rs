//! Unit tests of `anchor::checks`: counter findings and the checkpoint
//! signature.

use super::*;
use crate::anchor::format::AnchorLine;

fn anchor(counter: u64, size: u64, reset_count: u32, clock: u64) -> VerifiedAnchor {
    let clock = ClockInfo {
        clock,
        reset_count,
        restart_count: 0,
        safe: true,
    };
    VerifiedAnchor {
        counter,
        checkpoint: Checkpoint {
            log_id: [0x11; 16],
            size,
            root: [0xab; 32],
            anchor: Some(AnchorLine {
                counter,
                prev: Some([counter.wrapping_sub(1) as u8; 32]),
            }),
        },
        clock,
        hash: [counter as u8; 32],
        evidence: VerifiedEvidence {
            counter,
            counter_clock: clock,
            quote_clock: clock,
            pcr_digest: vec![],
        },
        signature_checked: true,
    }
}

fn findings(anchors: &[VerifiedAnchor], acks: &[GapAck]) -> Vec<CounterFinding> {
    let mut checker = SequenceChecker::new(acks);
    anchors
        .iter()
        .flat_map(|a| checker.push(a.clone()))
        .collect()
}

fn linked(mut b: VerifiedAnchor, a: &VerifiedAnchor) -> VerifiedAnchor {
    if let Some(line) = b.checkpoint.anchor.as_mut() {
        line.prev = Some(a.hash);
    }
    b
}

#[test]
fn sequence_findings_are_named() {
    let a = anchor(5, 10, 1, 100);
    assert!(findings(&[a.clone(), anchor(6, 20, 1, 200)], &[]).is_empty());
    assert_eq!(
        findings(&[a.clone(), linked(anchor(7, 20, 1, 200), &a)], &[]),
        vec![CounterFinding::Gap { after: 5, next: 7 }]
    );
    assert_eq!(
        findings(&[a.clone(), linked(anchor(255, 20, 2, 10), &a)], &[]),
        vec![CounterFinding::GapAcrossReset {
            after: 5,
            next: 255,
            reset_before: 1,
            reset_after: 2
        }]
    );
    assert_eq!(
        findings(&[a.clone(), linked(anchor(5, 20, 1, 200), &a)], &[]),
        vec![CounterFinding::NotIncreasing { after: 5, next: 5 }]
    );
    assert_eq!(
        findings(&[a.clone(), anchor(6, 9, 1, 200)], &[]),
        vec![CounterFinding::SizeShrank {
            after: 5,
            next: 6,
            size_before: 10,
            size_after: 9
        }]
    );
    assert_eq!(
        findings(&[a.clone(), anchor(6, 10, 1, 50)], &[]),
        vec![CounterFinding::ClockWentBack {
            after: 5,
            next: 6,
            clock_before: 100,
            clock_after: 50
        }]
    );
    assert_eq!(
        findings(&[a.clone(), anchor(6, 10, 0, 500)], &[]),
        vec![CounterFinding::ResetCountWentBack {
            after: 5,
            next: 6,
            reset_before: 1,
            reset_after: 0
        }]
    );
    let mut unlinked = anchor(6, 20, 1, 200);
    unlinked.checkpoint.anchor = Some(AnchorLine {
        counter: 6,
        prev: Some([0xee; 32]),
    });
    assert_eq!(
        findings(&[a, unlinked], &[]),
        vec![CounterFinding::PrevMismatch { after: 5, next: 6 }]
    );
}

#[test]
fn only_the_acknowledged_gap_is_accepted() {
    let a = anchor(5, 10, 1, 100);
    let b = linked(anchor(255, 20, 2, 10), &a);
    let ack = GapAck {
        log_id: [0x11; 16],
        after_counter: 5,
        after_anchor: a.hash,
        next_counter: 255,
        next_anchor: b.hash,
        reviewed_by: "oncall".into(),
        reason: "power loss on 2026-11-30".into(),
        reviewed_at_unix: 0,
    };
    let mut checker = SequenceChecker::new(std::slice::from_ref(&ack));
    assert!(checker.push(a.clone()).is_empty());
    assert!(checker.push(b.clone()).is_empty());
    assert_eq!(checker.acknowledged.len(), 1);
    // The same acknowledgement does not cover another pair of anchors.
    let other = linked(anchor(255, 20, 2, 10), &a);
    let mut other = other;
    other.hash = [0x77; 32];
    assert_eq!(
        findings(&[a, other], std::slice::from_ref(&ack)).len(),
        1,
        "a gap with other anchors stays a finding"
    );
}

/// The checkpoint signature's negatives each name their error: an
/// unsigned checkpoint, one signed by another key, and a signed one
/// whose text was changed are refused as `CheckpointSignature` with the
/// note error saying which; without a pinned key nothing is checked.
#[test]
fn checkpoint_signature_negatives_name_the_error() {
    use crate::evidence::verify::{AkPublicKey, EvidenceKeys};
    use crate::note::{NoteError, Signer};
    const NAME: &str = "tally/11111111111111111111111111111111";
    let ak = AkPublicKey::from_sec1(&[
        4, 107, 23, 209, 242, 225, 44, 66, 71, 248, 188, 230, 229, 99, 164, 64, 242, 119, 3, 125,
        129, 45, 235, 51, 160, 244, 161, 57, 69, 216, 152, 194, 150, 79, 227, 66, 226, 254, 26,
        127, 155, 142, 231, 235, 74, 124, 15, 158, 22, 43, 206, 51, 87, 107, 49, 94, 206, 203, 182,
        64, 104, 55, 191, 81, 245,
    ])
    .unwrap();
    let pinned = |key: Option<&Signer>| AnchorPolicy {
        keys: EvidenceKeys {
            ak: ak.clone(),
            owner_key: ak.clone(),
        },
        counter_index: 1,
        log_key: key.map(|signer| signer.verifier().clone()),
        log_id: None,
    };
    let signer = Signer::from_seed(NAME, &[7u8; 32]).unwrap();
    let other = Signer::from_seed(NAME, &[8u8; 32]).unwrap();
    let text = anchor(5, 10, 1, 100).checkpoint.to_text();
    let signed = crate::note::sign(&text, &signer).unwrap();
    let key_id = |signer: &Signer| signer.verifier().key_id();

    assert_eq!(
        check_note_signature(&pinned(Some(&signer)), signed.as_bytes()),
        Ok(())
    );
    assert_eq!(check_note_signature(&pinned(None), text.as_bytes()), Ok(()));
    // A bare checkpoint (no signature lines at all) is not a signed note.
    assert_eq!(
        check_note_signature(&pinned(Some(&signer)), text.as_bytes()),
        Err(AnchorError::CheckpointSignature(NoteError::MalformedNote(
            "no blank line before the signatures"
        )))
    );
    // Signed by another key of the same name: no known key signed it.
    assert_eq!(
        check_note_signature(&pinned(Some(&other)), signed.as_bytes()),
        Err(AnchorError::CheckpointSignature(NoteError::UnknownKey {
            name: NAME.into(),
            key_id: key_id(&signer),
        }))
    );
    // The size changed after signing (10 -> 11): the log key's
    // signature no longer verifies.
    let tampered = signed.replacen("\n10\n", "\n11\n", 1);
    assert_ne!(tampered, signed);
    assert_eq!(
        check_note_signature(&pinned(Some(&signer)), tampered.as_bytes()),
        Err(AnchorError::CheckpointSignature(NoteError::BadSignature {
            name: NAME.into(),
            key_id: key_id(&signer),
        }))
    );
}
