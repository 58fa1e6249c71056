//! Content beside the records (DESIGN 3b) in the store: sealed rows written
//! with their records and read back decrypted, an erasure's commit (rows
//! gone, `shred_pending`, keys destroyed), a crash before the shred redone
//! at open, `content_rows`, and the format-4 upgrade.

use prost::Message;
use tally_attest::content::{commit, commitment_of_opening, SeqRanges};
use tally_client::proto::{Content, Event, Filter, RecordBody};

use super::*;

const SMALL: MapSizing = MapSizing {
    initial: 1 << 20,
    max: 1 << 30,
};

/// An opening (salt || Content) whose payload is `payload`.
fn opening(payload: &[u8]) -> Vec<u8> {
    let salt = [0x5a; 32];
    let mut opening = salt.to_vec();
    Content {
        payload: payload.to_vec(),
        ..Default::default()
    }
    .encode(&mut opening)
    .unwrap();
    opening
}

/// Commits one record per entry: with content (`Some(payload)`, sealed
/// with its key as the sequencer does) or without.
fn commit_records(store: &Store, payloads: &[Option<&[u8]>]) {
    let mut batch = store.start_batch().unwrap();
    let first = batch.tip().size;
    store
        .content_keys()
        .ensure(first + payloads.len() as u64)
        .unwrap();
    let keys = store
        .content_keys()
        .keys(first, payloads.len() as u64)
        .unwrap();
    for (i, payload) in payloads.iter().enumerate() {
        let opening = payload.map(opening);
        let body = RecordBody {
            receive_time_unix_nanos: 1,
            event: Some(Event {
                kind: "prompt".into(),
                ..Default::default()
            }),
            content_commitment: opening
                .as_ref()
                .map(|o| commitment_of_opening(o).unwrap().to_vec())
                .unwrap_or_default(),
            ..Default::default()
        }
        .encode_to_vec();
        let (seq, _) = batch.push(|bytes| bytes.extend_from_slice(&body)).unwrap();
        if let Some(opening) = opening {
            seal::apply(&keys[i], seq, batch.seal_last(&opening));
        }
    }
    store.append(&batch).unwrap();
}

/// Every record of the store, one scan (the content tests' reader).
pub(crate) fn scan_all(store: &Store) -> Vec<StoredRecord> {
    let filter = Filter::default();
    store
        .scan(&Scan {
            from: 0,
            to: store.head().unwrap().size,
            newest: false,
            filter: &filter,
            max_records: 1000,
            max_bytes: usize::MAX,
            max_examined: u64::MAX,
            deadline: None,
        })
        .unwrap()
        .records
}

/// Every byte of every file under `dir`.
fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        bytes.windows(needle.len()).any(|w| w == needle)
    })
}

#[test]
fn scan_fills_content_decrypted_and_the_files_hold_it_sealed() {
    //! A read serves each record's opening (decrypted from its row) and
    //! none for a record without content; the payload is nowhere on disk in
    //! the clear.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    commit_records(
        &store,
        &[
            Some(b"PAYLOAD-ALPHA-0001"),
            None,
            Some(b"PAYLOAD-BETA-0002"),
        ],
    );
    let records = scan_all(&store);
    assert_eq!(records.len(), 3);
    assert_eq!(
        records[0].content.as_deref(),
        Some(&opening(b"PAYLOAD-ALPHA-0001")[..])
    );
    assert_eq!(records[1].content, None);
    assert_eq!(
        records[2].content.as_deref(),
        Some(&opening(b"PAYLOAD-BETA-0002")[..])
    );
    for record in &records {
        assert!(!record.bytes.windows(7).any(|w| w == b"PAYLOAD"));
    }
    drop(store);
    assert!(!files_contain(dir.path(), b"PAYLOAD-ALPHA"));
    assert!(!files_contain(dir.path(), b"PAYLOAD-BETA"));
}

#[test]
fn content_rows_names_the_seqs_with_content() {
    //! content_rows reads the content database's keys in the range asked.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    commit_records(
        &store,
        &[Some(b"a"), Some(b"b"), None, Some(b"c"), Some(b"d")],
    );
    let rows = store.content_rows(0, 5).unwrap();
    assert_eq!(rows.ranges(), &[(0, 2), (3, 5)]);
    assert_eq!(
        store.content_rows(1, 4).unwrap().ranges(),
        &[(1, 2), (3, 4)]
    );
    assert!(store.content_rows(4, 4).unwrap().is_empty());
}

/// Commits an erasure batch (one record without content) erasing `ranges`,
/// without finishing the shred: the state a crash after DESIGN 3b's step 2
/// leaves.
fn commit_erasure(store: &Store, ranges: &SeqRanges) {
    let mut batch = store.start_batch().unwrap();
    let body = RecordBody {
        event: Some(Event {
            kind: "tally.erasure".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec();
    batch.push(|bytes| bytes.extend_from_slice(&body)).unwrap();
    batch.erase(ranges);
    store.append(&batch).unwrap();
}

#[test]
fn an_erasure_deletes_rows_and_finish_shred_zeroes_keys_and_clears_the_marker() {
    //! Step 2 deletes the rows and writes shred_pending in the records'
    //! transaction; steps 3-4 zero exactly the erased keys and delete it.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    commit_records(&store, &[Some(b"keep-0"), Some(b"gone-1"), Some(b"gone-2")]);
    let before = store.content_keys().keys(0, 3).unwrap();
    let erased = SeqRanges::from_ordered([(1, 3)]).unwrap();
    commit_erasure(&store, &erased);
    assert_eq!(store.content_rows(0, 4).unwrap().ranges(), &[(0, 1)]);
    assert_eq!(store.shred_pending().unwrap(), Some(erased.clone()));
    assert_eq!(store.content_keys().keys(1, 2).unwrap(), before[1..]);
    store.finish_shred().unwrap();
    assert_eq!(store.shred_pending().unwrap(), None);
    let after = store.content_keys().keys(0, 3).unwrap();
    assert_eq!(after[0], before[0]);
    assert_eq!(after[1..], [[0; 32], [0; 32]]);
    let records = scan_all(&store);
    assert!(records[0].content.is_some());
    assert!(records[1].content.is_none() && records[2].content.is_none());
    drop(store);
    let keyfile = std::fs::read(dir.path().join(content_keys::FILE_NAME)).unwrap();
    for key in &before[1..] {
        assert!(
            !keyfile.windows(32).any(|w| w == key),
            "a destroyed key is gone from the file"
        );
    }
}

#[test]
fn a_shred_left_pending_by_a_crash_is_redone_at_open() {
    //! A crash between the erasure's commit and the key destruction: the
    //! next open destroys the keys and clears shred_pending before anything
    //! can be read.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    commit_records(&store, &[Some(b"gone-0"), Some(b"keep-1")]);
    let before = store.content_keys().keys(0, 2).unwrap();
    commit_erasure(&store, &SeqRanges::from_ordered([(0, 1)]).unwrap());
    drop(store);
    let store = Store::open(dir.path(), SMALL).unwrap();
    assert_eq!(store.shred_pending().unwrap(), None);
    let after = store.content_keys().keys(0, 2).unwrap();
    assert_eq!(after, [[0; 32], before[1]]);
}

#[test]
fn a_content_row_past_the_head_refuses_the_open_naming_it() {
    //! Root emptied or cut the records behind LMDB's back and left their
    //! content: the open refuses the store as damaged (exit 3), naming the
    //! stray row and the log's size, instead of failing a later put.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    commit_records(&store, &[Some(b"row-0"), Some(b"row-1")]);
    let mut wtxn = store.env.write_txn().unwrap();
    store.content.put(&mut wtxn, &5, b"stray").unwrap();
    wtxn.commit().unwrap();
    drop(store);
    match Store::open(dir.path(), SMALL) {
        Err(StoreError::Damaged { file, detail }) => {
            assert!(file.ends_with("data.mdb"), "{}", file.display());
            assert!(
                matches!(*detail, StoreError::ContentPastHead { seq: 5, size: 2 }),
                "{detail:?}"
            );
            assert!(detail.to_string().contains("seq 5"), "{detail}");
        }
        other => panic!("expected a damaged store naming ContentPastHead, got {other:?}"),
    }
}

#[test]
fn a_sealed_row_opens_only_with_its_key_and_seq() {
    //! The row on disk is the opening under AES-256-CTR with slot seq's key
    //! and IV seq: reading it with the key of another seq gives other bytes.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    commit_records(&store, &[Some(b"first"), Some(b"second")]);
    let _gate = store.read_gate();
    let rtxn = store.env.read_txn().unwrap();
    let row = store.content.get(&rtxn, &1).unwrap().unwrap().to_vec();
    let keys = store.content_keys().keys(0, 2).unwrap();
    let mut right = row.clone();
    seal::apply(&keys[1], 1, &mut right);
    assert_eq!(right, opening(b"second"));
    let mut wrong = row;
    seal::apply(&keys[0], 1, &mut wrong);
    assert_ne!(wrong, opening(b"second"));
    let (salt, content) = right.split_at(32);
    let commitment = commit(salt.try_into().unwrap(), content);
    assert_eq!(Some(commitment), commitment_of_opening(&right).ok());
}

#[test]
fn a_format_4_store_is_upgraded_in_place() {
    //! A store written by the tallyd before content (format 4) opens: its
    //! version becomes 5 and its key file is created; its records are kept.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    commit_records(&store, &[None, None]);
    store
        .write_meta(|store, wtxn| {
            store
                .meta
                .put(wtxn, META_FORMAT_VERSION, &4u32.to_be_bytes())
        })
        .unwrap();
    drop(store);
    std::fs::remove_file(dir.path().join(content_keys::FILE_NAME)).unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    assert_eq!(store.head().unwrap().size, 2);
    assert!(dir.path().join(content_keys::FILE_NAME).exists());
    let _gate = store.read_gate();
    let rtxn = store.env.read_txn().unwrap();
    let version = store.meta.get(&rtxn, META_FORMAT_VERSION).unwrap().unwrap();
    assert_eq!(version, &FORMAT_VERSION.to_be_bytes());
    assert_eq!(FORMAT_VERSION, 5);
}

#[test]
fn a_key_file_left_by_an_interrupted_first_start_is_replaced() {
    //! A crash of a first start after the key file was created and before
    //! the store's log id committed left a key file of a log that never
    //! was: the next start replaces it instead of refusing (found by the
    //! power-loss explorer).
    let dir = tempfile::tempdir().unwrap();
    drop(ContentKeys::open(dir.path(), &[9; 16], 0).unwrap());
    let store = Store::open(dir.path(), SMALL).unwrap();
    commit_records(&store, &[Some(b"after")]);
    assert!(scan_all(&store)[0].content.is_some());
    drop(store);
    // Once the store exists, another log's key file is refused, not replaced.
    std::fs::remove_file(dir.path().join(content_keys::FILE_NAME)).unwrap();
    drop(ContentKeys::open(dir.path(), &[9; 16], 0).unwrap());
    let err = Store::open(dir.path(), SMALL).unwrap_err();
    assert!(err.to_string().contains("belongs to another log"), "{err}");
}

#[test]
fn an_unfiltered_scan_joins_the_same_content_as_one_that_looks_each_row_up() {
    //! An unfiltered forward scan reads the content rows with a cursor
    //! beside the records; a filtered one looks each row up. Over records
    //! with and without content, rows deleted by an erasure, and pages
    //! starting anywhere and cut by `max_records`, both serve the same.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    let payloads: Vec<Option<Vec<u8>>> = (0..60u32)
        .map(|i| (i % 3 != 1).then(|| format!("row-{i}").into_bytes()))
        .collect();
    let refs: Vec<Option<&[u8]>> = payloads.iter().map(Option::as_deref).collect();
    commit_records(&store, &refs);
    let erased = SeqRanges::from_ordered([(10, 20), (33, 34)]).unwrap();
    commit_erasure(&store, &erased);
    store.finish_shred().unwrap();
    let everything = Filter::default();
    let prompts = Filter {
        kinds: vec!["prompt".into()],
        ..Default::default()
    };
    let page = |from: u64, max_records: usize, filter: &Filter| {
        store
            .scan(&Scan {
                from,
                to: 60,
                newest: false,
                filter,
                max_records,
                max_bytes: usize::MAX,
                max_examined: u64::MAX,
                deadline: None,
            })
            .unwrap()
    };
    for from in [0, 1, 9, 10, 19, 20, 33, 34, 59] {
        for max_records in [1, 2, 7, 1000] {
            let cursor = page(from, max_records, &everything);
            let lookup = page(from, max_records, &prompts);
            assert_eq!(cursor.resume_seq, lookup.resume_seq, "from {from}");
            assert_eq!(cursor.records.len(), lookup.records.len(), "from {from}");
            for (a, b) in cursor.records.iter().zip(&lookup.records) {
                assert_eq!((a.seq, &a.bytes), (b.seq, &b.bytes));
                assert_eq!(a.content, b.content, "seq {} from {from}", a.seq);
                let kept = payloads[a.seq as usize].is_some() && !erased.contains(a.seq);
                assert_eq!(a.content.is_some(), kept, "seq {}", a.seq);
            }
        }
    }
}
