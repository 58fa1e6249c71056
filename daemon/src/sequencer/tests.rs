//! The sequencer's unit tests: dense chaining under concurrency, failed
//! commits, sealing, the ack journal's commits, applies and crash recovery,
//! and a model-based test of random operations against a reference list.

use std::sync::atomic::AtomicU64;

use tally_client::proto::{peer, Event, Peer, UnixPeer};
use tokio::sync::oneshot;

use super::commit::CommitRole;
use super::intake::{lock, Pipeline};
use super::*;
use crate::store::MapSizing;

pub(super) type Answer = oneshot::Receiver<Result<Vec<Ack>, AppendError>>;

pub(super) fn job(count: usize, payload: usize, counter: &Arc<AtomicU64>) -> (AppendJob, Answer) {
    let (reply, answer) = oneshot::channel();
    let events = (0..count)
        .map(|i| Event {
            kind: "test".into(),
            subject: format!("event-{i}"),
            payload: vec![b'x'; payload],
            ..Default::default()
        })
        .collect();
    let peer = Peer {
        kind: Some(peer::Kind::Unix(UnixPeer {
            uid: 1,
            gid: 1,
            pid: 1,
        })),
    };
    let queued = QueuedEvents::new(counter, count as u64);
    let job = AppendJob::new(
        events,
        count * payload,
        peer,
        1,
        reply,
        None,
        queued,
        &Default::default(),
    );
    (job, answer)
}

/// A store in a temporary directory whose map never grows past `max`.
pub(super) fn store(max: usize) -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let sizing = MapSizing {
        initial: 1 << 20,
        max,
    };
    let store = Arc::new(Store::open(dir.path(), sizing).unwrap());
    (dir, store)
}

pub(super) fn policy(max_events: usize) -> BatchPolicy {
    BatchPolicy {
        max_events,
        max_bytes: 64 << 20,
        max_jobs: 16,
        linger: Duration::ZERO,
        journal_max_bytes: 0,
        // Tests apply by hand.
        apply_after: Duration::from_secs(3600),
    }
}

/// The job's answer; fails the test (rather than hanging it) when none
/// comes within 10 s.
pub(super) fn answered(answer: Answer) -> Result<Vec<Ack>, AppendError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), answer).await })
        .expect("no answer within 10 s")
        .expect("the job was dropped unanswered")
}

/// Submits from a plain thread.
fn submit(handle: &SequencerHandle, job: AppendJob) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(handle.submit(job)).unwrap();
}

/// Every `Ok` ack is in the store with its entry hash, the acked seqs are
/// exactly 0..size, and the chain verifies to the sequencer's head.
fn check(store: &Store, head: Head, acked: &[Ack]) {
    let mut seqs: Vec<u64> = acked.iter().map(|ack| ack.seq).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (0..head.size).collect::<Vec<_>>(),
        "acked seqs are dense"
    );
    let records = store.read(0, usize::MAX, usize::MAX).unwrap();
    for ack in acked {
        let record = &records[ack.seq as usize];
        assert_eq!(tally_attest::entry_hash(&record.bytes), ack.entry_hash);
    }
    assert_eq!(store.verify().unwrap(), head);
    assert_eq!(store.head().unwrap(), head);
}

/// Four threads each submit 40 jobs of 1-7 events, one at a time, and
/// call `after_ack` with each job's acks; returns every ack.
fn submit_from_four_threads(
    handle: &SequencerHandle,
    counter: &Arc<AtomicU64>,
    after_ack: impl Fn(&SequencerHandle, &[Ack]) + Clone + Send + 'static,
) -> Vec<Ack> {
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let handle = handle.clone();
            let counter = counter.clone();
            let after_ack = after_ack.clone();
            thread::spawn(move || {
                let mut acked = Vec::new();
                for size in (1..=40).map(|i| i % 7 + 1) {
                    let (job, answer) = job(size, 100, &counter);
                    submit(&handle, job);
                    let acks = answered(answer).unwrap();
                    after_ack(&handle, &acks);
                    acked.extend(acks);
                }
                acked
            })
        })
        .collect();
    senders
        .into_iter()
        .flat_map(|sender| sender.join().unwrap())
        .collect()
}

#[test]
fn concurrent_jobs_are_chained_densely_and_acked_with_their_entry_hashes() {
    let (_dir, store) = store(1 << 30);
    let (handle, thread) = start(store.clone(), None, policy(64)).unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let acked = submit_from_four_threads(&handle, &counter, |_, _| {});
    let head = *handle.head.borrow();
    drop(handle);
    thread.join().unwrap();
    assert_eq!(counter.load(Ordering::Relaxed), 0, "every job was answered");
    check(&store, head, &acked);
}

#[test]
fn a_failed_commit_fails_what_was_built_on_it_and_building_restarts_from_the_committed_state() {
    // A map that cannot grow past 2 MiB: a 100 KiB job is refused as
    // "full" well before a one-event job is.
    let (_dir, store) = store(2 << 20);
    // Driven by hand, without the commit thread.
    let (pipeline, head) = Pipeline::new(store.clone(), None, policy(10_000)).unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let offer = |count, payload| {
        let (job, answer) = job(count, payload, &counter);
        pipeline.offer(job).unwrap();
        answer
    };
    let commit_open = || {
        let taken = pipeline.take(&mut lock(&pipeline));
        pipeline.commit(taken);
    };
    let mut acked = Vec::new();
    // Fill the map until a big job is refused; a small job is built onto
    // each big one while the big one commits.
    // Two small jobs: one in a sealed batch, one in the open batch.
    let (big_error, small_errors) = loop {
        let big = offer(25, 4096);
        let taken = pipeline.take(&mut lock(&pipeline));
        let sealed = offer(1, 10);
        lock(&pipeline).seal();
        let open = offer(1, 10);
        pipeline.commit(taken);
        match answered(big) {
            Ok(acks) => {
                acked.extend(acks);
                commit_open();
                commit_open();
                acked.extend(answered(sealed).unwrap());
                acked.extend(answered(open).unwrap());
            }
            Err(error) => {
                let small = [sealed, open].map(answered);
                break (error, small);
            }
        }
    };
    assert!(matches!(big_error, AppendError::Full(_)), "{big_error}");
    for small_error in small_errors {
        assert!(
            matches!(small_error, Err(AppendError::Full(_))),
            "a job built onto the refused batch fails with it: {small_error:?}"
        );
    }
    assert!(lock(&pipeline).sealed.is_empty());
    // Alone, a small job fits: it is chained onto the committed state,
    // not onto the refused batch.
    let small = offer(1, 10);
    commit_open();
    let acks = answered(small).unwrap();
    assert_eq!(acks[0].seq + 1, store.head().unwrap().size);
    acked.extend(acks);
    assert_eq!(counter.load(Ordering::Relaxed), 0, "every job was answered");
    check(&store, *head.borrow(), &acked);
}

#[test]
fn a_hundred_one_event_submitters_are_all_answered_with_the_commit_thread_signalled_only_while_it_waits(
) {
    //! Submitters signal `filled` only while the commit thread waits: a
    //! wrong flag leaves jobs in the open batch with nobody to take them.
    let (_dir, store) = store(1 << 30);
    let policy = BatchPolicy {
        max_jobs: 4096,
        ..policy(16_384)
    };
    let (handle, thread) = start(store.clone(), None, policy).unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = (0..100)
        .map(|_| {
            let (handle, counter) = (handle.clone(), counter.clone());
            thread::spawn(move || {
                let mut acked = Vec::new();
                for _ in 0..20 {
                    let (job, answer) = job(1, 100, &counter);
                    submit(&handle, job);
                    acked.extend(answered(answer).unwrap());
                }
                acked
            })
        })
        .collect();
    let acked: Vec<Ack> = senders
        .into_iter()
        .flat_map(|sender| sender.join().unwrap())
        .collect();
    assert_eq!(acked.len(), 2000);
    let head = *handle.head.borrow();
    drop(handle);
    thread.join().unwrap();
    assert_eq!(counter.load(Ordering::Relaxed), 0, "every job was answered");
    check(&store, head, &acked);
}

#[test]
fn an_offer_to_a_busy_commit_thread_joins_the_open_batch_without_a_signal_and_is_taken_next() {
    let (_dir, store) = store(1 << 30);
    let policy = BatchPolicy {
        max_jobs: 4096,
        ..policy(16_384)
    };
    let (pipeline, head) = Pipeline::new(store.clone(), None, policy).unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    // The commit thread is busy (holds the role, not waiting).
    lock(&pipeline).committing = true;
    let answers: Vec<Answer> = (0..300)
        .map(|_| {
            let (job, answer) = job(1, 10, &counter);
            pipeline.offer(job).unwrap();
            answer
        })
        .collect();
    {
        let building = lock(&pipeline);
        assert!(!building.commit_waiting);
        // Group commit: every job that came during the commit is one batch.
        assert_eq!(building.open.jobs.len(), 300);
        assert!(building.sealed.is_empty());
    }
    let taken = pipeline.take(&mut lock(&pipeline));
    assert_eq!(taken.batch.len(), 300, "one commit for all 300");
    pipeline.commit(taken);
    lock(&pipeline).committing = false;
    let acked: Vec<Ack> = answers
        .into_iter()
        .flat_map(|answer| answered(answer).unwrap())
        .collect();
    check(&store, *head.borrow(), &acked);
}

#[test]
fn while_a_commit_is_pending_full_batches_are_sealed_and_queued_up_to_max_jobs() {
    let (_dir, store) = store(1 << 30);
    let policy = BatchPolicy {
        max_events: 4,
        max_jobs: 6,
        ..policy(4)
    };
    let (pipeline, head) = Pipeline::new(store.clone(), None, policy).unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    // Jobs of 2 events: a batch is full after 2 jobs.
    let answers: Vec<Answer> = (0..6)
        .map(|_| {
            let (job, answer) = job(2, 10, &counter);
            pipeline.offer(job).unwrap();
            answer
        })
        .collect();
    assert_eq!(lock(&pipeline).sealed.len(), 2, "two full batches sealed");
    let (seventh, _) = job(1, 10, &counter);
    assert!(
        matches!(pipeline.offer(seventh), Err(SubmitError::Busy(_))),
        "max_jobs waiting"
    );
    for _ in 0..3 {
        let taken = pipeline.take(&mut lock(&pipeline));
        assert_eq!(taken.batch.len(), 4, "each commit is one batch");
        pipeline.commit(taken);
    }
    let acked: Vec<Ack> = answers
        .into_iter()
        .flat_map(|answer| answered(answer).unwrap())
        .collect();
    check(&store, *head.borrow(), &acked);
}

/// A policy that journals batches of up to 16 KiB.
pub(super) fn journaling(max_events: usize) -> BatchPolicy {
    BatchPolicy {
        journal_max_bytes: 16 << 10,
        ..policy(max_events)
    }
}

pub(super) fn journal(dir: &tempfile::TempDir, store: &Store) -> Journal {
    let (journal, replayed) = Journal::recover(dir.path(), store).unwrap();
    assert_eq!(replayed, 0);
    journal
}

/// A pipeline with the journal, on a fresh store whose map stops at
/// `max`, driven by hand (no commit thread).
fn journaled_pipeline(
    max: usize,
) -> (
    tempfile::TempDir,
    Arc<Store>,
    Pipeline,
    watch::Receiver<Head>,
) {
    let (dir, store) = store(max);
    let journal = journal(&dir, &store);
    let (pipeline, head) = Pipeline::new(store.clone(), Some(journal), journaling(64)).unwrap();
    (dir, store, pipeline, head)
}

/// What the commit thread does when an apply is due.
pub(super) fn apply_now(pipeline: &Pipeline) {
    lock(pipeline).committing = true;
    pipeline.apply(CommitRole(pipeline));
}

#[test]
fn a_lone_job_is_journaled_and_acked_by_its_submitter_and_readable_after_the_apply() {
    // No commit thread: a job nobody else competes with is committed by
    // the submitting call itself.
    let (_dir, store, pipeline, head) = journaled_pipeline(1 << 30);
    let counter = Arc::new(AtomicU64::new(0));
    let mut acked = Vec::new();
    for _ in 0..3 {
        let (job, mut answer) = job(2, 100, &counter);
        pipeline.offer(job).unwrap();
        let acks = answer.try_recv().expect("answered before offer returned");
        acked.extend(acks.unwrap());
    }
    assert_eq!(pipeline.acked.load(Ordering::Acquire), 6);
    assert_eq!(store.head().unwrap().size, 0, "journaled, not yet in LMDB");
    assert_eq!(head.borrow().size, 0, "readers see the store's head");
    assert!(lock(&pipeline).apply_due.is_some(), "an apply is scheduled");
    apply_now(&pipeline);
    assert_eq!(head.borrow().size, 6);
    assert!(lock(&pipeline).apply_due.is_none());
    check(&store, *head.borrow(), &acked);
}

#[test]
fn journaled_acks_survive_a_crash_before_the_apply() {
    let (dir, store, pipeline, _) = journaled_pipeline(1 << 30);
    let counter = Arc::new(AtomicU64::new(0));
    let mut acked = Vec::new();
    // Some applied, some only journaled (in both regions) at the "crash".
    for round in 0..9 {
        let (job, answer) = job(round % 3 + 1, 100, &counter);
        pipeline.offer(job).unwrap();
        acked.extend(answered(answer).unwrap());
        if round % 4 == 1 {
            apply_now(&pipeline);
        }
    }
    let in_store = store.head().unwrap().size;
    assert!(in_store > 0 && in_store < acked.len() as u64, "{in_store}");
    // The crash: no apply, no stop; the pipeline and journal just go.
    drop(pipeline);
    let (_, replayed) = Journal::recover(dir.path(), &store).unwrap();
    assert_eq!(replayed, acked.len() as u64 - in_store);
    check(&store, store.head().unwrap(), &acked);
}

#[test]
fn a_failed_apply_keeps_acked_events_in_the_journal() {
    // A map that cannot grow past 2 MiB; 10 KiB jobs are journaled.
    let (dir, store, pipeline, head) = journaled_pipeline(2 << 20);
    let counter = Arc::new(AtomicU64::new(0));
    let mut acked = Vec::new();
    let offer = |acked: &mut Vec<Ack>| {
        let (job, answer) = job(10, 1000, &counter);
        pipeline.offer(job).unwrap();
        acked.extend(answered(answer).unwrap());
    };
    loop {
        for _ in 0..20 {
            offer(&mut acked);
        }
        apply_now(&pipeline);
        if head.borrow().size < acked.len() as u64 {
            break; // the apply failed: storage full
        }
        assert!(acked.len() < 10_000, "the map never filled");
    }
    assert!(lock(&pipeline).apply_due.is_some(), "a retry is scheduled");
    // Acks go on from the journal meanwhile.
    for _ in 0..3 {
        offer(&mut acked);
    }
    drop(pipeline);
    drop(store);
    // With room again, every acked event is replayed.
    let sizing = MapSizing {
        initial: 1 << 20,
        max: 1 << 30,
    };
    let store = Store::open(dir.path(), sizing).unwrap();
    let (_, replayed) = Journal::recover(dir.path(), &store).unwrap();
    assert!(replayed > 20, "{replayed}");
    check(&store, store.head().unwrap(), &acked);
}

#[test]
fn with_the_journal_concurrent_jobs_are_dense_and_settle_makes_them_readable() {
    let (dir, store) = store(1 << 30);
    let journal = journal(&dir, &store);
    let (handle, thread) = start(store.clone(), Some(journal), journaling(64)).unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let reader = store.clone();
    let acked = submit_from_four_threads(&handle, &counter, move |handle, acks| {
        // Read your writes: after settle, the store has it.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(handle.settle()).unwrap();
        let last = acks.last().unwrap();
        let read = reader.read(last.seq, 1, usize::MAX).unwrap();
        assert_eq!(tally_attest::entry_hash(&read[0].bytes), last.entry_hash);
    });
    drop(handle);
    thread.join().unwrap();
    assert_eq!(counter.load(Ordering::Relaxed), 0, "every job was answered");
    // The stop applied everything.
    check(&store, store.head().unwrap(), &acked);
    let (_, replayed) = Journal::recover(dir.path(), &store).unwrap();
    assert_eq!(replayed, 0);
}

#[test]
fn a_weak_handle_settles_records_ack_times_and_does_not_keep_the_sequencer_running() {
    //! The anchorer holds a weak handle: the drain's last handle drop must
    //! still stop the commit thread, and after the stop the head it sees
    //! includes what the stop applied from the journal.
    let (dir, store) = store(1 << 30);
    let journal = journal(&dir, &store);
    let (handle, thread) = start(store.clone(), Some(journal), journaling(64)).unwrap();
    let weak = handle.downgrade();
    let ack_times = handle.ack_times();
    let counter = Arc::new(AtomicU64::new(0));
    let (first, answer) = job(3, 10, &counter);
    submit(&handle, first);
    answered(answer).unwrap();
    let exposure = ack_times.exposure();
    assert_eq!(exposure.unanchored, 3);
    assert!(exposure.oldest_acked_unix_nanos.is_some());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(weak.settle()).unwrap();
    assert_eq!(
        weak.head.borrow().size,
        3,
        "settled: the store holds the acked events"
    );
    let (second, answer) = job(2, 10, &counter);
    submit(&handle, second);
    answered(answer).unwrap();
    drop(handle);
    thread.join().unwrap();
    // Stopped: settle returns at once, and the head includes the stop's apply.
    runtime.block_on(weak.settle()).unwrap();
    assert_eq!(weak.head.borrow().size, 5);
    assert_eq!(store.head().unwrap().size, 5);
}

/// A small seeded generator (xorshift64*): the model test's runs repeat.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// A hand-driven pipeline with the journal on the store under `dir`, whose
/// map stops at `max` (the journal replayed first, as at start-up).
fn reopen(
    dir: &tempfile::TempDir,
    max: usize,
) -> (Arc<Store>, Pipeline, watch::Receiver<Head>, u64) {
    let sizing = MapSizing {
        initial: 1 << 20,
        max,
    };
    let store = match Store::open(dir.path(), sizing) {
        Ok(store) => Arc::new(store),
        // Opening indexes receive times with a MiB of margin, which a small
        // full map does not have (content rows made records' total bytes
        // larger than before): as an operator would, a larger map.
        Err(err) if err.is_full() && max < 1 << 30 => return reopen(dir, 1 << 30),
        Err(err) => panic!("{err}"),
    };
    let (journal, replayed) = match Journal::recover(dir.path(), &store) {
        Ok(recovered) => recovered,
        // The replay needs more room than this map has: as an operator
        // would, start again with a larger one.
        Err(crate::journal::JournalError::Store(err)) if err.is_full() && max < 1 << 30 => {
            drop(store);
            return reopen(dir, 1 << 30);
        }
        Err(err) => panic!("{err}"),
    };
    let (pipeline, head) = Pipeline::new(store.clone(), Some(journal), journaling(8)).unwrap();
    (store, pipeline, head, replayed)
}

/// The entry hashes of every record in the store, in seq order.
fn stored_hashes(store: &Store) -> Vec<[u8; 32]> {
    let records = store.read(0, usize::MAX, usize::MAX).unwrap();
    records
        .iter()
        .enumerate()
        .map(|(seq, record)| {
            assert_eq!(record.seq, seq as u64, "stored seqs are dense");
            tally_attest::entry_hash(&record.bytes)
        })
        .collect()
}

#[test]
fn random_offers_seals_commits_applies_failures_and_crashes_keep_exactly_the_acked_records() {
    //! The reference model is a plain list of the acked entry hashes, in seq
    //! order. Whatever the sequence of operations, an `Ok` ack extends it
    //! densely, `acked` is its length, the readable head is a prefix of it,
    //! and after a crash (everything dropped, the store reopened and the
    //! journal replayed) the store holds exactly it: nothing acked is lost,
    //! nothing refused is stored. Small maps make commits and applies fail
    //! for lack of room; a reopen may give room again.
    let maxes = [2 << 20, 2 << 20, 1 << 30];
    for seed in 1..=4u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let dir = tempfile::tempdir().unwrap();
        let counter = Arc::new(AtomicU64::new(0));
        let (mut store, mut pipeline, mut head, _) = reopen(&dir, maxes[0]);
        let mut model: Vec<[u8; 32]> = Vec::new();
        let mut waiting: Vec<Answer> = Vec::new();
        let mut refused = 0;
        for step in 0..250 {
            match rng.below(20) {
                // Offer: mostly small jobs (journaled), some too large for
                // the journal (committed to LMDB with the journaled ones).
                0..=9 => {
                    let events = 1 + rng.below(4) as usize;
                    let payload = if rng.below(4) == 0 {
                        20_000 + rng.below(20_000) as usize
                    } else {
                        10 + rng.below(300) as usize
                    };
                    let (job, answer) = job(events, payload, &counter);
                    if pipeline.offer(job).is_ok() {
                        waiting.push(answer);
                    }
                }
                10 | 11 => lock(&pipeline).seal(),
                // What the commit thread does for a commit.
                12..=15 => {
                    let mut building = lock(&pipeline);
                    if !building.open.jobs.is_empty() || !building.sealed.is_empty() {
                        building.committing = true;
                        let taken = pipeline.take(&mut building);
                        drop(building);
                        pipeline.commit_own(taken);
                    }
                }
                16..=18 => apply_now(&pipeline),
                // A crash: nothing is stopped or applied; the next start
                // replays the journal, perhaps with more room.
                _ => {
                    drop(pipeline);
                    drop(store);
                    (store, pipeline, head, _) =
                        reopen(&dir, maxes[rng.below(maxes.len() as u64) as usize]);
                    assert_eq!(
                        stored_hashes(&store),
                        model,
                        "seed {seed}, step {step}: the store after a crash holds exactly the acked records"
                    );
                    assert_eq!(store.verify().unwrap().size, model.len() as u64);
                }
            }
            // Collect answers: acks extend the model densely.
            waiting.retain_mut(|answer| match answer.try_recv() {
                Ok(Ok(acks)) => {
                    for ack in acks {
                        assert_eq!(
                            ack.seq,
                            model.len() as u64,
                            "seed {seed}, step {step}: dense acks"
                        );
                        model.push(ack.entry_hash);
                    }
                    false
                }
                Ok(Err(_)) => {
                    refused += 1;
                    false
                }
                Err(oneshot::error::TryRecvError::Empty) => true,
                // Dropped by a crash: never acked.
                Err(oneshot::error::TryRecvError::Closed) => false,
            });
            assert_eq!(pipeline.acked.load(Ordering::Acquire), model.len() as u64);
            // The readable head is the store's, and a prefix of the model:
            // its entry hash pins every record before it.
            let readable = *head.borrow();
            assert_eq!(store.head().unwrap(), readable);
            let size = readable.size as usize;
            assert!(size <= model.len(), "seed {seed}, step {step}");
            let last = size
                .checked_sub(1)
                .map_or(tally_attest::GENESIS_PREV, |at| model[at]);
            assert_eq!(readable.hash, last, "seed {seed}, step {step}");
        }
        assert!(!model.is_empty(), "seed {seed}: something was acked");
        apply_now(&pipeline);
        let stored = stored_hashes(&store);
        assert_eq!(stored[..], model[..stored.len()], "seed {seed}");
        eprintln!(
            "seed {seed}: {} records acked, {refused} jobs refused",
            model.len()
        );
    }
}
