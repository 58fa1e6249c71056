//! Content through the sequencer (DESIGN 3b): a job's openings are sealed
//! with their records' keys and committed to in their bodies; an erasure
//! job commits with the journaled batches before it, deletes the rows,
//! destroys the keys and clears `shred_pending` before its ack; an erasure
//! naming records not before it is refused.

use std::sync::atomic::AtomicU64;

use prost::Message;
use tally_attest::content::{commitment_of_opening, split_opening, BodyFacts, SeqRanges};
use tally_client::proto::{Content, Event, RecordBody};
use tokio::sync::oneshot;

use super::intake::{lock, Pipeline};
use super::tests::{answered, job, journal, journaling, store, Answer};
use super::*;
use crate::content::{ContentSettings, PersonalAttributes};
use crate::store::tests_content::scan_all;

/// The body of a `tally.erasure` record (what the lead's handler builds).
fn erasure_body() -> Vec<u8> {
    RecordBody {
        event: Some(Event {
            kind: "tally.erasure".into(),
            actor: "tallyd".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

fn erasure_job(erased: &SeqRanges, counter: &Arc<AtomicU64>) -> (AppendJob, Answer) {
    let (reply, answer) = oneshot::channel();
    let job = AppendJob::erasure(
        vec![erasure_body()],
        erased.clone(),
        5,
        reply,
        QueuedEvents::new(counter, 1),
    );
    (job, answer)
}

/// Takes the open batch and commits it, as the commit thread would.
fn commit_open(pipeline: &Pipeline) {
    let taken = pipeline.take(&mut lock(pipeline));
    lock(pipeline).committing = true;
    pipeline.commit(taken);
    lock(pipeline).committing = false;
}

#[test]
fn a_jobs_content_is_committed_in_the_body_and_served_from_its_sealed_row() {
    //! AppendJob::new moves the payload and personal attributes into the
    //! opening; the body commits to it; a read serves the opening that opens
    //! that commitment; a record without content has neither.
    let (_dir, store) = store(1 << 30);
    let (pipeline, _head) = Pipeline::new(store.clone(), None, journaling(64)).unwrap();
    let personal = PersonalAttributes::new(&ContentSettings {
        personal_attributes: vec![],
        personal_attribute_prefixes: vec!["user.".into()],
    });
    let events = vec![
        Event {
            kind: "prompt".into(),
            payload: b"what is my diagnosis".to_vec(),
            attributes: [("user.email".to_string(), "p@x".to_string())].into(),
            ..Default::default()
        },
        Event {
            kind: "model.load".into(),
            attributes: [("model".to_string(), "m1".to_string())].into(),
            ..Default::default()
        },
    ];
    let counter = Arc::new(AtomicU64::new(0));
    let (reply, answer) = oneshot::channel();
    let peer = tally_client::proto::Peer::default();
    let job = AppendJob::new(
        events,
        64,
        peer,
        9,
        reply,
        None,
        QueuedEvents::new(&counter, 2),
        &personal,
    );
    pipeline.offer(job).unwrap();
    commit_open(&pipeline);
    answered(answer).unwrap();
    let records = scan_all(&store);
    let body = &records[0].bytes[tally_attest::record::HEADER_LEN..];
    let facts = BodyFacts::parse(body).unwrap();
    let opening = records[0].content.as_deref().unwrap();
    assert_eq!(
        Some(commitment_of_opening(opening).unwrap()),
        facts.content_commitment
    );
    let (_, content) = split_opening(opening).unwrap();
    let content = Content::decode(content).unwrap();
    assert_eq!(content.payload, b"what is my diagnosis");
    assert_eq!(content.attributes["user.email"], "p@x");
    let hashed = RecordBody::decode(body).unwrap().event.unwrap();
    assert!(hashed.payload.is_empty() && hashed.attributes.is_empty());
    let second = &records[1].bytes[tally_attest::record::HEADER_LEN..];
    assert_eq!(BodyFacts::parse(second).unwrap().content_commitment, None);
    assert_eq!(records[1].content, None);
    assert_eq!(store.content_rows(0, 2).unwrap().ranges(), &[(0, 1)]);
}

#[test]
fn an_erasure_job_applies_the_journal_then_erases_and_shreds_before_its_ack() {
    //! DESIGN 3b's commit order: the journaled (acked) records reach LMDB in
    //! the erasure's transaction, their erased rows go, the keys are zeroed
    //! and shred_pending is gone by the time the erasure is answered.
    let (dir, store) = store(1 << 30);
    let journal = journal(&dir, &store);
    let (pipeline, head) = Pipeline::new(store.clone(), Some(journal), journaling(64)).unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    for _ in 0..2 {
        let (job, mut answer) = job(2, 100, &counter);
        pipeline.offer(job).unwrap();
        answer
            .try_recv()
            .expect("journaled by its submitter")
            .unwrap();
    }
    assert_eq!(store.head().unwrap().size, 0, "journaled, not in LMDB");
    let keys_before = store.content_keys().keys(0, 4).unwrap();
    let erased = SeqRanges::from_ordered([(1, 3)]).unwrap();
    let (erasure, answer) = erasure_job(&erased, &counter);
    pipeline.offer(erasure).unwrap();
    assert!(
        lock(&pipeline).open.since.is_some(),
        "not journaled by its submitter"
    );
    commit_open(&pipeline);
    let acks = answered(answer).unwrap();
    assert_eq!(acks.iter().map(|a| a.seq).collect::<Vec<_>>(), [4]);
    assert_eq!(store.head().unwrap().size, 5);
    assert_eq!(head.borrow().size, 5);
    assert_eq!(
        store.content_rows(0, 5).unwrap().ranges(),
        &[(0, 1), (3, 4)]
    );
    let keys = store.content_keys().keys(0, 4).unwrap();
    assert_eq!(keys, [keys_before[0], [0; 32], [0; 32], keys_before[3]]);
    assert_eq!(store.shred_pending().unwrap(), None);
    let records = scan_all(&store);
    let served: Vec<bool> = records.iter().map(|r| r.content.is_some()).collect();
    assert_eq!(served, [true, false, false, true, false]);
}

#[test]
fn an_erasure_naming_records_not_before_it_is_refused() {
    //! The engine's bound: an erasure may name only seqs below its own
    //! first record; one naming itself or later is refused, nothing stored.
    let (_dir, store) = store(1 << 30);
    let (pipeline, _head) = Pipeline::new(store.clone(), None, journaling(64)).unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let (job, answer) = job(2, 10, &counter);
    pipeline.offer(job).unwrap();
    commit_open(&pipeline);
    answered(answer).unwrap();
    let keys_before = store.content_keys().keys(0, 3).unwrap();
    let (erasure, answer) = erasure_job(&SeqRanges::from_ordered([(1, 3)]).unwrap(), &counter);
    pipeline.offer(erasure).unwrap();
    commit_open(&pipeline);
    let err = answered(answer).unwrap_err();
    assert!(
        matches!(
            err,
            AppendError::Storage(StorageCause::ErasureBeyond { end: 3, first: 2 })
        ),
        "{err}"
    );
    assert_eq!(store.head().unwrap().size, 2);
    assert_eq!(store.content_keys().keys(0, 3).unwrap(), keys_before);
    assert_eq!(store.content_rows(0, 2).unwrap().ranges(), &[(0, 2)]);
}
