//! `Store::verify`'s parallel pass: faults at a chunk's edges and at the
//! last record are named exactly as a one-record-at-a-time loop names them,
//! and the pass leaves few of the map's pages resident.

use super::verify::TEST_CHUNK as CHUNK;
use super::*;

const SMALL: MapSizing = MapSizing {
    initial: 1 << 20,
    max: 1 << 32,
};

/// A store of `n` records of `payload` bytes each, committed in batches.
fn store_of(dir: &Path, n: usize, payload: usize) -> Store {
    store_with_content(dir, n, payload, 0)
}

/// [`store_of`], each record with a content row of `content` bytes beside
/// it (as the sequencer writes them: the rows' pages interleave with the
/// records' in the file; the check reads the records only).
fn store_with_content(dir: &Path, n: usize, payload: usize, content: usize) -> Store {
    let store = Store::open(dir, SMALL).unwrap();
    let row = vec![0xc5u8; content];
    let mut left = n;
    while left > 0 {
        let count = left.min(5000);
        let mut batch = store.start_batch().unwrap();
        for _ in 0..count {
            batch
                .push(|bytes| bytes.extend(std::iter::repeat_n(b'x', payload)))
                .unwrap();
            if content > 0 {
                batch.seal_last(&row);
            }
        }
        store.append(&batch).unwrap();
        left -= count;
    }
    store
}

/// The stored bytes of record `seq`.
fn record(store: &Store, seq: u64) -> Vec<u8> {
    let rtxn = store.env.read_txn().unwrap();
    store.records.get(&rtxn, &seq).unwrap().unwrap().to_vec()
}

/// Overwrites (or, with `None`, deletes) record `seq`, as root could.
fn tamper(store: &Store, seq: u64, bytes: Option<&[u8]>) {
    let mut wtxn = store.env.write_txn().unwrap();
    match bytes {
        Some(bytes) => store.records.put(&mut wtxn, &seq, bytes).unwrap(),
        None => assert!(store.records.delete(&mut wtxn, &seq).unwrap()),
    }
    wtxn.commit().unwrap();
}

/// Record `seq` with one byte flipped at `offset` (from the end if negative).
fn flipped(store: &Store, seq: u64, offset: isize) -> Vec<u8> {
    let mut bytes = record(store, seq);
    let at = if offset < 0 {
        bytes.len() - offset.unsigned_abs()
    } else {
        offset.unsigned_abs()
    };
    bytes[at] ^= 0x01;
    bytes
}

/// The first fault named, as (kind, seq or sizes).
fn finding(store: &Store) -> String {
    match store.verify() {
        Ok(head) => format!("ok {}", head.size),
        Err(StoreError::ChainBroken { seq }) => format!("chain {seq}"),
        Err(StoreError::RecordUnreadable { seq, .. }) => format!("unreadable {seq}"),
        Err(StoreError::HeadMismatch { head, records }) => format!("head {head} {records}"),
        Err(other) => format!("other {other}"),
    }
}

#[test]
fn faults_at_chunk_edges_and_the_last_record_are_named_as_before() {
    //! Hashing moved onto every core in chunks; a fault on either side of
    //! a chunk boundary, at the last record, or in two places must still be
    //! named by the first seq a sequential replay stops at.
    let dir = tempfile::tempdir().unwrap();
    let n = 2 * CHUNK + 5;
    let store = store_of(dir.path(), n, 16);
    let chunk = CHUNK as u64;
    let last = n as u64 - 1;
    assert_eq!(finding(&store), format!("ok {n}"));
    // (seq edited, how, what check must say)
    type Edit = (u64, Option<Vec<u8>>, String);
    let cases: Vec<Edit> = vec![
        // The last record of the first chunk: its successor's link breaks.
        (
            chunk - 1,
            Some(flipped(&store, chunk - 1, -1)),
            format!("chain {chunk}"),
        ),
        // The first record of the second chunk: its own prev_hash.
        (
            chunk,
            Some(flipped(&store, chunk, 9)),
            format!("chain {chunk}"),
        ),
        // The first of the second chunk deleted: the next seq is out of place.
        (chunk, None, format!("chain {}", chunk + 1)),
        // The first record of the third chunk does not parse.
        (
            2 * chunk,
            Some(vec![1, 2, 3]),
            format!("unreadable {}", 2 * chunk),
        ),
        // The last record: only the head commits to its body...
        (
            last,
            Some(flipped(&store, last, -1)),
            format!("head {n} {n}"),
        ),
        // ... and to its existence.
        (last, None, format!("head {n} {}", n - 1)),
    ];
    for (seq, bytes, expected) in cases {
        let original = record(&store, seq);
        tamper(&store, seq, bytes.as_deref());
        assert_eq!(finding(&store), expected, "edit at seq {seq}");
        tamper(&store, seq, Some(&original));
        assert_eq!(finding(&store), format!("ok {n}"), "restored seq {seq}");
    }
    // Two faults, the later one in an earlier-hashed position of its chunk:
    // the first in seq order is named.
    let (early, late) = (chunk + 3, 2 * chunk + 1);
    let (keep_early, keep_late) = (record(&store, early), record(&store, late));
    tamper(&store, late, Some(&flipped(&store, late, 9)));
    tamper(&store, early, Some(&flipped(&store, early, 9)));
    assert_eq!(finding(&store), format!("chain {early}"));
    tamper(&store, early, Some(&keep_early));
    assert_eq!(finding(&store), format!("chain {late}"));
    tamper(&store, late, Some(&keep_late));
    assert_eq!(finding(&store), format!("ok {n}"));
}

/// This process's resident bytes of its mapping of `file` (from smaps).
fn mapped_rss(file: &Path) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let name = file.to_str().unwrap();
    let mut inside = false;
    let mut total = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            inside = line.ends_with(name);
        } else if inside && first == "Rss:" {
            let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            total += kib << 10;
        }
    }
    total
}

#[test]
fn the_check_leaves_few_map_pages_resident() {
    //! `tallyd check` kept every page of the read-only map it touched
    //! resident (file-backed RSS grew to the store's size: 23 GB at 69M
    //! events). After the pass the map's resident pages are a few chunks'
    //! worth; a plain read of every record, as control, leaves them all.
    let dir = tempfile::tempdir().unwrap();
    // ~48 MiB of records, three chunks of 1 KiB records.
    let store = store_of(dir.path(), 3 * CHUNK, 1024);
    let data = dir.path().join("data.mdb");
    store.verify().unwrap();
    let after_check = mapped_rss(&data);
    let all = store.read(0, usize::MAX, usize::MAX).unwrap();
    let bytes: usize = all.iter().map(|r| r.bytes.len()).sum();
    let after_read = mapped_rss(&data);
    assert!(
        after_read as usize > bytes / 2,
        "control: a plain read should leave its pages resident ({after_read} of {bytes} bytes)"
    );
    assert!(
        after_check < 8 << 20,
        "the check left {after_check} bytes of the map resident ({bytes} bytes of records)"
    );
}

#[test]
fn the_check_drops_the_content_rows_mapped_beside_the_records() {
    //! Since content moved beside the records (store format 5), a chunk's
    //! record pages alternate with content-row pages the check never reads
    //! but the kernel maps with them (fault-around): dropping only the
    //! records' pages left 640 MiB of a 2M-event store's 897 MiB mapped.
    let dir = tempfile::tempdir().unwrap();
    // Records of 64 bytes (~7 MiB), content rows of 1 KiB (~48 MiB).
    let store = store_with_content(dir.path(), 3 * CHUNK, 64, 1024);
    let data = dir.path().join("data.mdb");
    let file = std::fs::metadata(&data).unwrap().len();
    assert!(file > 48 << 20, "the store is {file} bytes");
    assert_eq!(store.verify().unwrap().size, 3 * CHUNK as u64);
    let after_check = mapped_rss(&data);
    assert!(
        after_check < 8 << 20,
        "the check left {after_check} bytes of the map resident (data.mdb is {file} bytes)"
    );
}

#[test]
fn bulk_scans_drop_the_pages_behind_them_and_small_ones_keep_theirs() {
    //! A `tally verify --live` of 50M events grew tallyd's file-backed RSS
    //! to 21 GiB: the scans serving its pages kept every map page they read.
    //! Scans of pages of 4,096 records (an export, a live verify, a
    //! follower catching up) now drop them behind them; a scan of a few
    //! records (a follower at the head) leaves its pages mapped.
    let dir = tempfile::tempdir().unwrap();
    let n = 3 * CHUNK as u64;
    // ~48 MiB of records of 1 KiB.
    let store = store_of(dir.path(), 3 * CHUNK, 1024);
    let data = dir.path().join("data.mdb");
    let filter = tally_client::proto::Filter::default();
    let scan = |from: u64, max_records: usize| {
        store
            .scan(&Scan {
                from,
                to: n,
                newest: false,
                filter: &filter,
                max_records,
                max_bytes: usize::MAX,
                max_examined: u64::MAX,
                deadline: None,
            })
            .unwrap()
    };
    let (mut from, mut served) = (0, 0usize);
    while from < n {
        let page = scan(from, 4096);
        served += page.records.iter().map(|r| r.bytes.len()).sum::<usize>();
        assert!(page.resume_seq > from, "the scan made no progress");
        from = page.resume_seq;
    }
    let after_bulk = mapped_rss(&data);
    assert!(served > 40 << 20, "the scans served {served} bytes");
    assert!(
        after_bulk < 8 << 20,
        "bulk scans left {after_bulk} bytes of the map resident ({served} bytes served)"
    );
    // Control: 200 records (under the bulk threshold) stay mapped.
    let page = scan(n - 200, 200);
    assert_eq!(page.records.len(), 200);
    let after_small = mapped_rss(&data);
    assert!(
        after_small >= after_bulk + (150 << 10),
        "a small scan's pages should stay resident ({after_bulk} -> {after_small} bytes)"
    );
}
