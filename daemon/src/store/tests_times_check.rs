//! `Store::verify`'s check of the `times` index: every kind of edit root can
//! make is named at its first bad entry, an index tallyd wrote (by commits,
//! after a clock step back, or rebuilt at open) passes, and an index that
//! passes makes every `since` seek exact.

use prost::Message;
use tally_client::proto::{Event, RecordBody};

use super::times::times_key;
use super::*;

const SMALL: MapSizing = MapSizing {
    initial: 1 << 20,
    max: 1 << 30,
};

fn body(time: i64) -> Vec<u8> {
    RecordBody {
        receive_time_unix_nanos: time,
        peer: None,
        event: Some(Event {
            kind: "k".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// One batch per slice, each in its own transaction; `None` is a record
/// whose body does not parse (it has no time).
fn commit(store: &Store, batches: &[&[Option<i64>]]) {
    for times in batches {
        let mut batch = store.start_batch().unwrap();
        for time in *times {
            let bytes = time.map_or(vec![0xff], body);
            batch.push(|out| out.extend_from_slice(&bytes)).unwrap();
        }
        store.append(&batch).unwrap();
    }
}

/// Batches whose times step back (15 after 21, 25 after 30, 5 after 40).
/// Entries: (12, 0), (21, 3), (30, 7), (40, 11), (41, 13); 14 records.
const STEPPED: &[&[Option<i64>]] = &[
    &[Some(10), Some(11), Some(12)],
    &[Some(20), Some(21)],
    &[Some(15), Some(16)],
    &[Some(30)],
    &[Some(25), Some(26), Some(29)],
    &[Some(40), Some(5)],
    &[Some(41)],
];

fn stepped() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    commit(&store, STEPPED);
    (dir, store)
}

fn entries(store: &Store) -> Vec<(i64, u64)> {
    let rtxn = store.env.read_txn().unwrap();
    store
        .times
        .iter(&rtxn)
        .unwrap()
        .map(|entry| {
            let (key, _) = entry.unwrap();
            let max = times::unflip(u64::from_be_bytes(key[..8].try_into().unwrap()));
            (max, u64::from_be_bytes(key[8..].try_into().unwrap()))
        })
        .collect()
}

fn edit(store: &Store, edit: impl FnOnce(&Store, &mut heed::RwTxn<'_>)) {
    let mut wtxn = store.env.write_txn().unwrap();
    edit(store, &mut wtxn);
    wtxn.commit().unwrap();
}

fn delete(store: &Store, (max, seq): (i64, u64)) {
    edit(store, |store, wtxn| {
        assert!(store.times.delete(wtxn, &times_key(max, seq)).unwrap());
    });
}

fn put(store: &Store, (max, seq): (i64, u64)) {
    edit(store, |store, wtxn| {
        store.times.put(wtxn, &times_key(max, seq), &[]).unwrap();
    });
}

fn replace(store: &Store, old: (i64, u64), new: (i64, u64)) {
    delete(store, old);
    put(store, new);
}

fn fault(store: &Store) -> TimesFault {
    match store.verify() {
        Err(StoreError::TimesUnsound(fault)) => fault,
        other => panic!("expected the index refused, got {other:?}"),
    }
}

/// Every `since` from below the first time to past the last: does the seek
/// skip a record received at or after it?
fn seeks_are_exact(store: &Store) -> bool {
    let rtxn = store.env.read_txn().unwrap();
    let times: Vec<Option<i64>> = store
        .records
        .iter(&rtxn)
        .unwrap()
        .map(|entry| times::record_time(entry.unwrap().1))
        .collect();
    (-1..60).all(|since| {
        let start = store.time_start(&rtxn, since).unwrap() as usize;
        times[..start.min(times.len())]
            .iter()
            .all(|time| time.is_none_or(|time| time < since))
    })
}

#[test]
fn an_index_written_by_commits_passes_also_after_a_clock_step_back() {
    let (_dir, store) = stepped();
    assert_eq!(
        entries(&store),
        [(12, 0), (21, 3), (30, 7), (40, 11), (41, 13)]
    );
    assert_eq!(store.verify().unwrap().size, 14);
    // Records without a time first: the first entry starts after them.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    commit(&store, &[&[None, None], &[Some(7), None], &[Some(3)]]);
    assert_eq!(entries(&store), [(7, 2)]);
    assert_eq!(store.verify().unwrap().size, 5);
    // And an empty log.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    assert_eq!(store.verify().unwrap().size, 0);
    put(&store, (1, 0));
    assert_eq!(
        fault(&store),
        TimesFault::PastEnd {
            index: 0,
            max: 1,
            seq: 0,
            size: 0
        }
    );
}

#[test]
fn an_index_rebuilt_at_open_passes() {
    //! The repair path: `tallyd check --rebuild-times` drops the index and
    //! the open builds it anew in groups of 256 records.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    // 1,000 records in uneven batches, the clock stepping back every 7th.
    let times: Vec<Option<i64>> = (0..1000i64)
        .map(|i| Some(if i % 7 == 6 { i - 300 } else { i }))
        .collect();
    let batches: Vec<&[Option<i64>]> = times.chunks(37).collect();
    commit(&store, &batches);
    assert!(store.verify().is_ok());
    delete(&store, entries(&store)[5]);
    assert!(matches!(fault(&store), TimesFault::Before { index: 5, .. }));
    drop(store);
    let store = Store::open_with(dir.path(), SMALL, true).unwrap();
    assert_eq!(store.verify().unwrap().size, 1000);
    assert_eq!(entries(&store).len(), 4, "one entry per 256 records");
    // Commits after the rebuild extend it soundly.
    commit(&store, &[&[Some(2000), Some(5)]]);
    assert_eq!(store.verify().unwrap().size, 1002);
    // A last key of the wrong length refuses the open, naming the repair.
    edit(&store, |store, wtxn| {
        store.times.put(wtxn, &[0xff; 17], &[]).unwrap();
    });
    drop(store);
    match Store::open(dir.path(), SMALL) {
        Err(StoreError::TimesUnsound(TimesFault::Malformed { index: 5 })) => {}
        other => panic!("{other:?}"),
    }
    let store = Store::open_with(dir.path(), SMALL, true).unwrap();
    assert_eq!(store.verify().unwrap().size, 1002);
    // Nor can one that sorts first.
    edit(&store, |store, wtxn| {
        store.times.put(wtxn, b"short", &[]).unwrap();
    });
    drop(store);
    let store = Store::open_with(dir.path(), SMALL, true).unwrap();
    assert_eq!(store.verify().unwrap().size, 1002);
}

#[test]
fn a_deleted_entry_is_named() {
    //! Root deletes an entry: a `since` between the maxima around it seeks
    //! past records that match.
    for (deleted, want) in [
        (
            (12, 0),
            TimesFault::Before {
                index: 0,
                max: 21,
                seq: 3,
                claimed: None,
                found: Some(12),
            },
        ),
        (
            (30, 7),
            TimesFault::Before {
                index: 2,
                max: 40,
                seq: 11,
                claimed: Some(21),
                found: Some(30),
            },
        ),
        (
            (41, 13),
            TimesFault::End {
                entries: 4,
                size: 14,
                claimed: Some(40),
                found: Some(41),
            },
        ),
    ] {
        let (_dir, store) = stepped();
        delete(&store, deleted);
        assert!(!seeks_are_exact(&store), "{deleted:?}: a seek misses");
        assert_eq!(fault(&store), want, "{deleted:?}");
    }
}

#[test]
fn a_lowered_or_raised_maximum_is_named() {
    for (new, want) in [
        // Lowered: a since of 30 seeks past seq 7.
        ((29, 7), 3),
        // Raised: no seek misses, but tallyd never writes it.
        ((35, 7), 3),
    ] {
        let (_dir, store) = stepped();
        replace(&store, (30, 7), new);
        assert!(
            matches!(fault(&store), TimesFault::Before { index, claimed: Some(c), found: Some(30), .. } if index == want && c == new.0),
            "{new:?}: {:?}",
            fault(&store)
        );
    }
    // The last entry lowered to the one before's maximum: a since of 41
    // finds no entry and seeks to the end, past seq 13.
    let (_dir, store) = stepped();
    replace(&store, (41, 13), (40, 13));
    assert!(!seeks_are_exact(&store));
    assert_eq!(
        fault(&store),
        TimesFault::MaxNotIncreasing {
            index: 4,
            max: 40,
            seq: 13,
            before: 40
        }
    );
    // Raised: every seek stays exact (it scans more), but tallyd never
    // writes it.
    let (_dir, store) = stepped();
    replace(&store, (41, 13), (45, 13));
    assert!(seeks_are_exact(&store));
    assert_eq!(
        fault(&store),
        TimesFault::End {
            entries: 5,
            size: 14,
            claimed: Some(45),
            found: Some(41),
        }
    );
}

#[test]
fn a_shifted_seq_is_named_unless_the_seek_stays_exact() {
    let (_dir, store) = stepped();
    // Seq 3 (received at 20) is skipped by a since of 20.
    replace(&store, (21, 3), (21, 4));
    assert!(!seeks_are_exact(&store));
    assert_eq!(
        fault(&store),
        TimesFault::Before {
            index: 1,
            max: 21,
            seq: 4,
            claimed: Some(12),
            found: Some(20),
        }
    );
    // Moved back over a record received before the maximum before it (seq
    // 6, at 16 < 21): every seek stays exact, so the check accepts it.
    let (_dir, store) = stepped();
    replace(&store, (30, 7), (30, 6));
    assert!(seeks_are_exact(&store));
    assert!(store.verify().is_ok());
    let (_dir, store) = stepped();
    // Past the next entry's seq: entry 2 (seq 7) waits behind it, and
    // entry 1 is reached with the records before seq 8 at 30.
    replace(&store, (21, 3), (21, 8));
    assert_eq!(
        fault(&store),
        TimesFault::Before {
            index: 1,
            max: 21,
            seq: 8,
            claimed: Some(12),
            found: Some(30),
        }
    );
}

#[test]
fn an_extra_entry_is_named() {
    for (extra, want) in [
        // Between two entries, with a maximum between theirs.
        (
            (35, 9),
            TimesFault::Before {
                index: 4,
                max: 40,
                seq: 11,
                claimed: Some(35),
                found: Some(30),
            },
        ),
        // Same maximum as an entry.
        (
            (30, 8),
            TimesFault::MaxNotIncreasing {
                index: 3,
                max: 30,
                seq: 8,
                before: 30,
            },
        ),
        // After the last, at its seq and past the log's end.
        (
            (50, 13),
            TimesFault::SeqNotIncreasing {
                index: 5,
                max: 50,
                seq: 13,
                before: 13,
            },
        ),
        (
            (50, 14),
            TimesFault::PastEnd {
                index: 5,
                max: 50,
                seq: 14,
                size: 14,
            },
        ),
    ] {
        let (_dir, store) = stepped();
        put(&store, extra);
        assert_eq!(fault(&store), want, "{extra:?}");
    }
    let (_dir, store) = stepped();
    edit(&store, |store, wtxn| {
        store.times.put(wtxn, &times_key(35, 9)[..15], &[]).unwrap();
    });
    assert_eq!(fault(&store), TimesFault::Malformed { index: 3 });
    let (_dir, store) = stepped();
    edit(&store, |store, wtxn| {
        store.times.put(wtxn, &times_key(30, 7), b"x").unwrap();
    });
    assert_eq!(fault(&store), TimesFault::Malformed { index: 2 });
}

#[test]
fn a_times_size_off_by_one_is_named() {
    for times_size in [13u64, 15] {
        let (_dir, store) = stepped();
        edit(&store, |store, wtxn| {
            store
                .meta
                .put(wtxn, META_TIMES_SIZE, &times_size.to_be_bytes())
                .unwrap();
        });
        assert_eq!(
            fault(&store),
            TimesFault::Size {
                times_size,
                size: 14
            }
        );
    }
}

#[test]
fn any_single_edit_that_passes_leaves_every_seek_exact() {
    //! The check's claim, brute-forced: each entry's maximum or seq moved
    //! by one or two either way, or the entry deleted; where verify passes,
    //! no `since` seek skips a record that matches.
    let original = {
        let (_dir, store) = stepped();
        entries(&store)
    };
    let mut refused = 0;
    for (i, &(max, seq)) in original.iter().enumerate() {
        let mut edits: Vec<Option<(i64, u64)>> = vec![None];
        for delta in [-2i64, -1, 1, 2] {
            edits.push(Some((max + delta, seq)));
            edits.push(Some((max, seq.saturating_add_signed(delta))));
        }
        for new in edits {
            let (_dir, store) = stepped();
            delete(&store, (max, seq));
            if let Some(new) = new {
                put(&store, new);
            }
            match store.verify() {
                Ok(_) => assert!(seeks_are_exact(&store), "entry {i} -> {new:?} passed"),
                Err(StoreError::TimesUnsound(_)) => refused += 1,
                Err(other) => panic!("{other}"),
            }
        }
    }
    assert!(refused > 30, "only {refused} edits refused");
}

#[test]
fn a_fault_names_the_entry_its_seq_and_the_times_in_rfc_3339() {
    //! The operator reads this in `tallyd check`'s error.
    let (_dir, store) = stepped();
    replace(&store, (21, 3), (21, 4));
    let text = store.verify().unwrap_err().to_string();
    assert!(
        text.contains(
            "entry 1 (max 1970-01-01T00:00:00.000000021Z, seq 4): the records before seq 4 were \
             received up to 1970-01-01T00:00:00.00000002Z, entry 0 says up to \
             1970-01-01T00:00:00.000000012Z"
        ) && text.contains("tallyd check --rebuild-times"),
        "{text}"
    );
    let first = TimesFault::Before {
        index: 0,
        max: 21,
        seq: 3,
        claimed: None,
        found: Some(12),
    };
    assert!(
        first
            .to_string()
            .ends_with("none should have a time before the first entry"),
        "{first}"
    );
}

#[test]
fn times_the_pushers_give_make_the_index_the_records_make() {
    //! The commit takes a batch's maximum from its pushers (the sequencer's
    //! jobs) instead of each body: the entries must be exactly those read
    //! from the bodies, across step-backs, and a batch with one untimed
    //! record falls back to the bodies.
    let timed_dir = tempfile::tempdir().unwrap();
    let timed = Store::open(timed_dir.path(), SMALL).unwrap();
    for times in STEPPED {
        let mut batch = timed.start_batch().unwrap();
        for time in times.iter().flatten() {
            let bytes = body(*time);
            batch
                .push_received(*time, |out| out.extend_from_slice(&bytes))
                .unwrap();
        }
        assert!(matches!(
            batch.receive_times(),
            crate::batch::ReceiveTimes::Max(Some(_))
        ));
        timed.append(&batch).unwrap();
    }
    let (_dir, read_back) = stepped();
    assert_eq!(entries(&timed), entries(&read_back));
    assert_eq!(
        entries(&timed),
        [(12, 0), (21, 3), (30, 7), (40, 11), (41, 13)]
    );
    timed.verify().unwrap();

    let mut mixed = timed.start_batch().unwrap();
    let (early, late) = (body(50), body(60));
    mixed
        .push_received(50, |out| out.extend_from_slice(&early))
        .unwrap();
    mixed.push(|out| out.extend_from_slice(&late)).unwrap();
    assert_eq!(mixed.receive_times(), crate::batch::ReceiveTimes::Unknown);
    // Journaled batches commit absorbed into one: an untimed one makes the
    // whole unknown, timed ones keep the larger maximum.
    let mut first = timed.start_batch().unwrap();
    first
        .push_received(70, |out| out.extend_from_slice(&body(70)))
        .unwrap();
    let mut second = crate::batch::Batch::new(first.tip(), first.frontier().clone());
    second
        .push_received(65, |out| out.extend_from_slice(&body(65)))
        .unwrap();
    let mut untimed = crate::batch::Batch::new(second.tip(), second.frontier().clone());
    untimed
        .push(|out| out.extend_from_slice(&body(80)))
        .unwrap();
    first.absorb(&second).unwrap();
    assert_eq!(
        first.receive_times(),
        crate::batch::ReceiveTimes::Max(Some(70))
    );
    first.absorb(&untimed).unwrap();
    assert_eq!(first.receive_times(), crate::batch::ReceiveTimes::Unknown);
    timed.append(&mixed).unwrap();
    assert_eq!(entries(&timed).last(), Some(&(60, 14)));
    timed.verify().unwrap();
}
