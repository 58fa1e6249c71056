//! The time index and filtered scans: `since` starts exactly where it must
//! however the clock moved, a store without the index is indexed at open,
//! and the scan's bounds say where to resume.

use prost::Message;
use tally_client::proto::{Event, Filter, RecordBody};

use super::times::times_key;
use super::*;

const SMALL: MapSizing = MapSizing {
    initial: 1 << 20,
    max: 1 << 30,
};

fn body(time: i64, kind: &str) -> Vec<u8> {
    RecordBody {
        receive_time_unix_nanos: time,
        peer: None,
        event: Some(Event {
            kind: kind.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Commits one batch per slice of times (kind "even"/"odd" by seq), each
/// in its own transaction, and returns every record's time by seq.
fn commit(store: &Store, batches: &[&[i64]]) -> Vec<i64> {
    let mut times = Vec::new();
    for batch_times in batches {
        let mut batch = store.start_batch().unwrap();
        for &time in *batch_times {
            let kind = if times.len() % 2 == 0 { "even" } else { "odd" };
            batch
                .push(|bytes| bytes.extend_from_slice(&body(time, kind)))
                .unwrap();
            times.push(time);
        }
        store.append(&batch).unwrap();
    }
    times
}

fn scan_all(store: &Store, filter: &Filter, newest: bool, max_records: usize) -> ScanPage {
    let size = store.head().unwrap().size;
    store
        .scan(&Scan {
            from: 0,
            to: size,
            newest,
            filter,
            max_records,
            max_bytes: usize::MAX,
            max_examined: u64::MAX,
            deadline: None,
        })
        .unwrap()
}

fn seqs(page: &ScanPage) -> Vec<u64> {
    page.records.iter().map(|r| r.seq).collect()
}

/// Batches whose times step back (15 after 21, 25 after 30, 5 after 40):
/// the records a monotonic clock would have put elsewhere.
const STEPPED: &[&[i64]] = &[
    &[10, 11, 12],
    &[20, 21],
    &[15, 16],
    &[30],
    &[25, 26, 29],
    &[40, 5],
    &[41],
];

/// For every `since` (and `until`), the scan returns exactly the records
/// a brute-force pass over the times selects, and every record before the
/// seek's start is earlier than `since`.
fn assert_exact(store: &Store, times: &[i64]) {
    for since in 0..45 {
        let filter = Filter {
            since_unix_nanos: Some(since),
            ..Default::default()
        };
        let want: Vec<u64> = (0..times.len() as u64)
            .filter(|&seq| times[seq as usize] >= since)
            .collect();
        assert_eq!(
            seqs(&scan_all(store, &filter, false, 100)),
            want,
            "since {since}"
        );
        assert_eq!(
            seqs(&scan_all(store, &filter, true, 100)),
            want,
            "newest, since {since}"
        );
        let rtxn = store.env.read_txn().unwrap();
        let start = store.time_start(&rtxn, since).unwrap();
        assert!(
            times[..start as usize].iter().all(|&t| t < since),
            "since {since}: start {start} skips a record at or after it"
        );
        let until = Filter {
            until_unix_nanos: Some(since),
            ..Default::default()
        };
        let want: Vec<u64> = (0..times.len() as u64)
            .filter(|&seq| times[seq as usize] < since)
            .collect();
        assert_eq!(
            seqs(&scan_all(store, &until, false, 100)),
            want,
            "until {since}"
        );
    }
}

#[test]
fn since_is_exact_when_the_clock_steps_back() {
    //! Receive times are stamped before the sequencer orders jobs, and the
    //! wall clock can step back: a seek on the times alone would skip them.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    let times = commit(&store, STEPPED);
    assert_exact(&store, &times);
    // The seek is not a scan: one entry per batch that raised the maximum
    // (the batch [25, 26, 29] after 30 raised nothing).
    let rtxn = store.env.read_txn().unwrap();
    assert_eq!(store.times.len(&rtxn).unwrap(), 5);
    assert_eq!(store.time_start(&rtxn, 22).unwrap(), 7, "the batch of 30");
    assert_eq!(store.time_start(&rtxn, 42).unwrap(), times.len() as u64);
    drop(rtxn);
    // Reopened, the running maximum carries on from the last entry.
    drop(store);
    let store = Store::open(dir.path(), SMALL).unwrap();
    let mut more = times.clone();
    more.extend(commit(&store, &[&[35], &[44]]));
    let rtxn = store.env.read_txn().unwrap();
    assert_eq!(store.times.len(&rtxn).unwrap(), 6, "35 < 41 raises nothing");
    drop(rtxn);
    assert_exact(&store, &more);
}

#[test]
fn a_store_written_before_the_index_is_indexed_at_open() {
    //! A store written by a tallyd without the time index (format 4 all the
    //! same), or appended to by one after this one, must keep working.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    let times = commit(&store, STEPPED);
    // As such a tallyd leaves it: no entries and no `times_size`...
    let mut wtxn = store.env.write_txn().unwrap();
    store.times.clear(&mut wtxn).unwrap();
    store.meta.delete(&mut wtxn, META_TIMES_SIZE).unwrap();
    wtxn.commit().unwrap();
    drop(store);
    let store = Store::open(dir.path(), SMALL).unwrap();
    let rtxn = store.env.read_txn().unwrap();
    assert_eq!(store.times_size(&rtxn).unwrap(), times.len() as u64);
    assert!(store.times.len(&rtxn).unwrap() > 0);
    drop(rtxn);
    assert_exact(&store, &times);
    // ... or covering fewer records than the head: an older tallyd
    // appended the batches from seq 8 on ([25, 26, 29], [40, 5], [41])
    // and left the index as it was.
    drop(store);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    let times = commit(&store, STEPPED);
    let covered = 8u64;
    let mut wtxn = store.env.write_txn().unwrap();
    store
        .meta
        .put(&mut wtxn, META_TIMES_SIZE, &covered.to_be_bytes())
        .unwrap();
    let later: Vec<Vec<u8>> = store
        .times
        .iter(&wtxn)
        .unwrap()
        .map(|entry| entry.unwrap().0.to_vec())
        .filter(|key| u64::from_be_bytes(key[8..].try_into().unwrap()) >= covered)
        .collect();
    assert_eq!(later.len(), 2, "the entries of 40 and 41");
    for key in later {
        store.times.delete(&mut wtxn, &key).unwrap();
    }
    wtxn.commit().unwrap();
    drop(store);
    let store = Store::open(dir.path(), SMALL).unwrap();
    assert_exact(&store, &times);
}

#[test]
fn newest_and_the_bounds_say_where_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    let times = commit(&store, &[&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]);
    let odd = Filter {
        kinds: vec!["odd".into()],
        ..Default::default()
    };
    // The newest two odd records, in seq order; the next page ends at the
    // older one.
    let page = scan_all(&store, &odd, true, 2);
    assert_eq!(seqs(&page), [7, 9]);
    assert_eq!(page.resume_seq, 7);
    let page = scan_all(&store, &odd, false, 2);
    assert_eq!(seqs(&page), [1, 3]);
    assert_eq!(page.resume_seq, 4);
    // Every record examined, nothing matches: resume at the range's end.
    let none = Filter {
        kinds: vec!["absent".into()],
        ..Default::default()
    };
    assert_eq!(
        scan_all(&store, &none, false, 5).resume_seq,
        times.len() as u64
    );
    assert_eq!(scan_all(&store, &none, true, 5).resume_seq, 0);
    // Examining at most 4: forward [2, 6) examined, newest [6, 10).
    let bounded = |from, newest| {
        store
            .scan(&Scan {
                from,
                to: 10,
                newest,
                filter: &none,
                max_records: 5,
                max_bytes: usize::MAX,
                max_examined: 4,
                deadline: None,
            })
            .unwrap()
    };
    let page = bounded(2, false);
    assert!(page.records.is_empty());
    assert_eq!(page.resume_seq, 6);
    assert_eq!(bounded(2, true).resume_seq, 6);
    // The byte bound: one record always, then no more than max_bytes.
    let record_len = body(1, "even").len() + tally_attest::record::HEADER_LEN;
    let page = store
        .scan(&Scan {
            from: 0,
            to: 10,
            newest: false,
            filter: &Filter::default(),
            max_records: 10,
            max_bytes: record_len * 3,
            max_examined: u64::MAX,
            deadline: None,
        })
        .unwrap();
    assert_eq!(seqs(&page), [0, 1, 2]);
    assert_eq!(page.resume_seq, 3);
}

#[test]
fn the_times_key_is_that_of_the_layout_table() {
    //! docs/DESIGN.md, section 4: max time i64 with its sign bit flipped,
    //! big-endian, then the first seq u64 big-endian; `times_size` in meta.
    assert_eq!(
        times_key(-1, 2),
        [0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 2]
    );
    assert_eq!(
        times_key(0x0102, 0x0304),
        [0x80, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 3, 4]
    );
    assert!(times_key(-5, 9) < times_key(3, 0));
    assert_eq!(META_TIMES_SIZE, "times_size");
}

#[test]
fn a_scan_past_its_deadline_stops_at_the_next_clock_check() {
    //! The time bound: a slow scan (here, one whose deadline has passed)
    //! stops within `CLOCK_EVERY` records and says where.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    let times: Vec<i64> = (0..1_000).collect();
    commit(&store, &[&times]);
    let none = Filter {
        kinds: vec!["absent".into()],
        ..Default::default()
    };
    let past = std::time::Instant::now() - std::time::Duration::from_secs(1);
    let scan = |newest, deadline| {
        store
            .scan(&Scan {
                from: 0,
                to: 1_000,
                newest,
                filter: &none,
                max_records: 10,
                max_bytes: usize::MAX,
                max_examined: u64::MAX,
                deadline,
            })
            .unwrap()
            .resume_seq
    };
    assert_eq!(scan(false, Some(past)), 255);
    assert_eq!(scan(true, Some(past)), 1_000 - 255);
    assert_eq!(scan(false, None), 1_000);
}

#[test]
fn served_entry_hashes_are_the_entry_hashes_at_and_before_the_head() {
    //! The hash a scan serves comes from the next record's link or the head;
    //! it must equal SHA-256's entry hash for every page shape: forward and
    //! newest, filtered (gaps between kept records) or not, pages ending at
    //! the head, before it, or cut by the record bound.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    commit(&store, &[&[1, 2, 3, 4], &[5, 6, 7], &[8, 9, 10, 11, 12]]);
    let size = store.head().unwrap().size;
    let filters = [
        Filter::default(),
        Filter {
            kinds: vec!["odd".into()],
            ..Default::default()
        },
        Filter {
            kinds: vec!["even".into()],
            ..Default::default()
        },
    ];
    let mut checked = 0;
    for filter in &filters {
        for from in 0..size {
            for to in from + 1..=size {
                for newest in [false, true] {
                    for max_records in [1, 2, 5, 100] {
                        let page = store
                            .scan(&Scan {
                                from,
                                to,
                                newest,
                                filter,
                                max_records,
                                max_bytes: usize::MAX,
                                max_examined: u64::MAX,
                                deadline: None,
                            })
                            .unwrap();
                        assert_eq!(page.records.len(), page.entry_hashes.len());
                        for (record, hash) in page.records.iter().zip(&page.entry_hashes) {
                            assert_eq!(
                                *hash,
                                tally_attest::entry_hash(&record.bytes),
                                "seq {} of [{from}, {to}) newest {newest} max {max_records}",
                                record.seq
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 1000, "only {checked} records checked");
}
