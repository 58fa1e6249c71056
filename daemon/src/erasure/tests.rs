use prost::Message;
use tally_attest::content::{BodyFacts, SeqRanges};
use tally_client::proto::{EraseRequest, RecordBody};

use super::*;

fn peer() -> PeerId {
    PeerId::Unix {
        uid: 1000,
        gid: 1000,
        pid: 42,
    }
}

#[test]
fn a_request_must_select_something_and_give_a_reason() {
    //! An erase request with no selector would erase the whole log's
    //! content by accident; one without a reason leaves the record mute.
    assert!(matches!(
        Selection::from_request(&EraseRequest {
            reason: "gdpr".into(),
            ..EraseRequest::default()
        }),
        Err(SelectionError::NoSelector)
    ));
    assert!(matches!(
        Selection::from_request(&EraseRequest {
            from_seq: Some(9),
            to_seq: 9,
            ..EraseRequest::default()
        }),
        Err(SelectionError::EmptyRange { from: 9, to: 9 })
    ));
    assert!(matches!(check_reason("  "), Err(SelectionError::NoReason)));
    assert!(matches!(
        check_reason(&"x".repeat(MAX_REASON_BYTES + 1)),
        Err(SelectionError::ReasonTooLong { .. })
    ));
    assert!(check_reason("ticket 4711").is_ok());

    let selection = Selection::from_request(&EraseRequest {
        from_seq: Some(5),
        to_seq: 9,
        subject: "u-17".into(),
        actor: "agent".into(),
        before_unix_nanos: Some(1_764_460_800_000_000_000),
        reason: "gdpr".into(),
    })
    .unwrap();
    assert_eq!(selection.from, 5);
    assert_eq!(selection.to, Some(9));
    assert_eq!(selection.filter.subjects, vec!["u-17".to_owned()]);
    assert_eq!(selection.filter.actors, vec!["agent".to_owned()]);
    assert_eq!(
        selection.describe(),
        "seq=[5,9) subject=\"u-17\" actor=\"agent\" before=2025-11-30T00:00:00Z"
    );
}

#[test]
fn erasure_records_name_their_ranges_and_parse_as_erasures() {
    let mut erased = SeqRanges::default();
    for seq in (0..(2 * MAX_RANGES_PER_RECORD as u64 + 3)).map(|i| i * 2) {
        erased.insert(seq, seq + 1);
    }
    let bodies = erasure_bodies(&erased, "gdpr", "subject=\"u\"", &peer(), 77);
    assert_eq!(bodies.len(), 3, "16,384 ranges per record at most");
    let mut covered = SeqRanges::default();
    for body in &bodies {
        let facts = BodyFacts::parse(body).unwrap();
        assert_eq!(facts.content_commitment, None);
        covered.extend(&facts.erasure.unwrap());
        let decoded = RecordBody::decode(body.as_slice()).unwrap();
        let event = decoded.event.unwrap();
        assert_eq!(event.kind, "tally.erasure");
        assert_eq!(event.attributes["reason"], "gdpr");
        assert_eq!(
            event.attributes["erased"],
            decoded.erasure.unwrap().erased.len().to_string()
        );
        assert_eq!(decoded.peer, Some(peer().to_proto()));
        assert_eq!(decoded.receive_time_unix_nanos, 77);
    }
    assert_eq!(covered, erased);
}
