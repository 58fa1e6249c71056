use super::*;
use crate::store::{Head, MapSizing};
use tally_attest::merkle::Frontier;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let sizing = MapSizing {
        initial: 1 << 20,
        max: 1 << 30,
    };
    let store = Store::open(dir.path(), sizing).unwrap();
    (dir, store)
}

/// `sizes.len()` consecutive batches on `head`, batch i holding
/// `sizes[i]` records whose bodies start with `tag`.
fn batches(head: Head, frontier: &Frontier, sizes: &[usize], tag: u8) -> Vec<Batch> {
    let mut next = Batch::new(head, frontier.clone());
    sizes
        .iter()
        .map(|&size| {
            let mut batch = next.clone();
            batch.restart(next.tip(), next.frontier());
            for i in 0..size {
                batch
                    .push(|bytes| bytes.extend_from_slice(&[tag, i as u8, 7, 7, 7]))
                    .unwrap();
            }
            next = batch.clone();
            batch
        })
        .collect()
}

fn on_store(store: &Store, sizes: &[usize], tag: u8) -> Vec<Batch> {
    let start = store.start_batch().unwrap();
    batches(start.head(), start.frontier(), sizes, tag)
}

fn write(journal: &mut Journal, batches: &[Batch]) {
    for batch in batches {
        assert!(journal.fits(batch));
        journal.append(batch).unwrap();
    }
}

fn file(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

fn flip_byte(dir: &Path, offset: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(file(dir))
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], offset).unwrap();
}

/// The records of `batches`, in order.
fn records(batches: &[Batch]) -> Vec<Vec<u8>> {
    batches
        .iter()
        .flat_map(|batch| batch.records().map(|(_, record)| record.to_vec()))
        .collect()
}

fn stored(store: &Store) -> Vec<Vec<u8>> {
    let read = store.read(0, usize::MAX, usize::MAX).unwrap();
    read.into_iter().map(|record| record.bytes).collect()
}

#[test]
fn journaled_batches_are_replayed_into_the_store_exactly() {
    let (dir, store) = store();
    let (mut journal, replayed) = Journal::recover(dir.path(), &store).unwrap();
    assert_eq!(replayed, 0);
    let written = on_store(&store, &[1, 3, 40, 1], 1);
    write(&mut journal, &written);
    drop(journal);
    let (_, replayed) = Journal::recover(dir.path(), &store).unwrap();
    assert_eq!(replayed, 45);
    assert_eq!(stored(&store), records(&written));
    assert_eq!(store.head().unwrap(), written.last().unwrap().head());
    assert_eq!(store.verify().unwrap(), store.head().unwrap());
    // Replayed once: a second start finds nothing new.
    let (_, replayed) = Journal::recover(dir.path(), &store).unwrap();
    assert_eq!(replayed, 0);
}

#[test]
fn both_regions_replay_in_seq_order_and_old_frames_are_ignored() {
    let (dir, store) = store();
    let (mut journal, _) = Journal::recover(dir.path(), &store).unwrap();
    // An earlier generation in region 0, already in the store.
    let old = on_store(&store, &[2, 2, 2, 2], 1);
    write(&mut journal, &old);
    for batch in &old {
        store.append(batch).unwrap();
    }
    journal.clear();
    // Then: one frame over the start of region 0, being applied when
    // the journal switched, and two frames in region 1.
    let new = on_store(&store, &[3, 1, 2], 2);
    write(&mut journal, &new[..1]);
    journal.switch();
    write(&mut journal, &new[1..]);
    drop(journal);
    let (_, replayed) = Journal::recover(dir.path(), &store).unwrap();
    assert_eq!(replayed, 6);
    let mut all = old.clone();
    all.extend(new);
    assert_eq!(stored(&store), records(&all));
    assert_eq!(store.verify().unwrap(), all.last().unwrap().head());
}

#[test]
fn a_torn_last_frame_was_never_acked_and_is_dropped() {
    let (dir, store) = store();
    let (mut journal, _) = Journal::recover(dir.path(), &store).unwrap();
    let written = on_store(&store, &[2, 2, 2], 1);
    write(&mut journal, &written);
    drop(journal);
    // Inside the last frame's last record (frames are one block each).
    flip_byte(dir.path(), 2 * BLOCK as u64 + 80);
    let (_, replayed) = Journal::recover(dir.path(), &store).unwrap();
    assert_eq!(replayed, 4);
    assert_eq!(stored(&store), records(&written[..2]));
}

#[test]
fn a_damaged_frame_followed_by_acked_frames_refuses_the_start() {
    for offset in [
        0,         // magic
        9,         // first seq
        20,        // length
        30,        // tag
        60,        // a record
        BLOCK - 1, // untouched padding: not damage
    ] {
        let (dir, store) = store();
        let (mut journal, _) = Journal::recover(dir.path(), &store).unwrap();
        let written = on_store(&store, &[2, 2, 2], 1);
        write(&mut journal, &written);
        drop(journal);
        flip_byte(dir.path(), (BLOCK + offset) as u64);
        let recovered = Journal::recover(dir.path(), &store);
        if offset == BLOCK - 1 {
            assert_eq!(recovered.unwrap().1, 6, "padding is not part of a frame");
            continue;
        }
        match recovered {
            Err(JournalError::Damaged { offset: at, .. }) => assert_eq!(at, BLOCK),
            other => panic!("byte {offset} of frame 1 flipped: {other:?}"),
        }
        assert_eq!(store.head().unwrap().size, 0, "nothing replayed");
    }
}

#[test]
fn a_frame_shaped_payload_without_the_key_is_not_a_frame() {
    // A well-formed frame far ahead (seq 1000) past two real frames, as
    // a client could place inside its payloads: with the journal's key
    // it would be acked data after a gap (the start is refused); under
    // any other key it is no frame at all.
    for (key_known, tag) in [(false, 1), (true, 2)] {
        let (dir, store) = store();
        let (mut journal, _) = Journal::recover(dir.path(), &store).unwrap();
        let written = on_store(&store, &[2, 2], tag);
        write(&mut journal, &written);
        let mut forger = Journal {
            file: open_writer(&file(dir.path()), false).unwrap(),
            path: file(dir.path()),
            active: 0,
            tail: 8 * BLOCK,
            buffer: Vec::new(),
            key: if key_known { journal.key } else { [9; 32] },
        };
        let head = Head {
            size: 1000,
            hash: [3; 32],
            root: [0; 32],
        };
        write(&mut forger, &batches(head, &Frontier::new(), &[2], 9));
        drop((journal, forger));
        let recovered = Journal::recover(dir.path(), &store);
        if key_known {
            assert!(
                matches!(recovered, Err(JournalError::Damaged { .. })),
                "{recovered:?}"
            );
        } else {
            assert_eq!(recovered.unwrap().1, 4);
            assert_eq!(stored(&store), records(&written));
        }
    }
}

#[test]
fn frames_that_do_not_continue_the_store_refuse_the_start() {
    let (dir, store) = store();
    let (mut journal, _) = Journal::recover(dir.path(), &store).unwrap();
    // The journal holds 0..2 then 2..4; the store holds another 0..2.
    let written = on_store(&store, &[2, 2], 1);
    write(&mut journal, &written);
    drop(journal);
    store.append(&on_store(&store, &[2], 5)[0]).unwrap();
    match Journal::recover(dir.path(), &store) {
        Err(JournalError::Mismatch { detail, .. }) => {
            assert!(detail.contains("record 2 does not chain"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
    // A gap: the store is empty, the journal starts at seq 2.
    let (dir, store) = self::store();
    let (mut journal, _) = Journal::recover(dir.path(), &store).unwrap();
    write(&mut journal, &written[1..]);
    drop(journal);
    match Journal::recover(dir.path(), &store) {
        Err(JournalError::Mismatch { detail, .. }) => {
            assert!(
                detail.contains("record 2 where record 0 is due"),
                "{detail}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_short_file_is_replayed_then_rebuilt_at_full_size() {
    let (dir, store) = store();
    let (mut journal, _) = Journal::recover(dir.path(), &store).unwrap();
    let written = on_store(&store, &[2, 2], 1);
    write(&mut journal, &written);
    drop(journal);
    let file = OpenOptions::new()
        .write(true)
        .open(file(dir.path()))
        .unwrap();
    file.set_len(BLOCK as u64 + 100).unwrap();
    // Frame 1 is cut: it is torn, not damaged.
    let (_, replayed) = Journal::recover(dir.path(), &store).unwrap();
    assert_eq!(replayed, 2);
    let len = std::fs::metadata(self::file(dir.path())).unwrap().len();
    assert_eq!(len, CAPACITY as u64);
}

#[test]
fn the_frame_layout_is_that_of_the_design_table() {
    //! docs/DESIGN.md, section 5b is the one table of the frame layout:
    //! this pins every field's offset and size as written to the file.
    assert_eq!((BLOCK, REGION, CAPACITY), (4096, 8 << 20, 16 << 20));
    assert_eq!((FRAME_HEADER, TAG, TRAILER), (40, 16, 32));
    let (dir, store) = store();
    let (mut journal, _) = Journal::recover(dir.path(), &store).unwrap();
    let key = journal.key;
    let mut written = on_store(&store, &[2, 1], 4);
    // The second record of frame 0 carries a sealed opening (these bytes
    // stand for one: the layout does not look inside).
    written[0].seal_last(b"SEALED-OPENING");
    // Frame 0 at the start of region 0; frame 1 at the start of region 1.
    write(&mut journal, &written[..1]);
    journal.switch();
    write(&mut journal, &written[1..]);
    drop(journal);
    let file = std::fs::read(file(dir.path())).unwrap();
    assert_eq!(file.len(), CAPACITY);
    for (batch, at) in written.iter().zip([0, REGION]) {
        let frame = &file[at..at + BLOCK];
        let records: Vec<(&[u8], &[u8])> = batch
            .records_sealed()
            .map(|(_, record, sealed)| (record, sealed))
            .collect();
        let first_seq = batch.records().next().unwrap().0;
        // 8: magic.
        assert_eq!(&frame[0..8], b"TALLYJ02");
        // 8: seq of the first record, u64 big-endian.
        assert_eq!(frame[8..16], first_seq.to_be_bytes());
        // 4: number of records, u32 big-endian.
        assert_eq!(frame[16..20], (records.len() as u32).to_be_bytes());
        // 4: L, bytes from after the tag to the trailer, u32 big-endian.
        let body_len: usize = records
            .iter()
            .map(|(record, sealed)| 4 + record.len() + 4 + sealed.len())
            .sum();
        assert_eq!(frame[20..24], (body_len as u32).to_be_bytes());
        // 16: tag, SHA-256(key || the 24 bytes above || trailer), first 16.
        let trailer = batch.tip().hash;
        let digest = Sha256::new()
            .chain_update(key)
            .chain_update(&frame[..24])
            .chain_update(trailer)
            .finalize();
        assert_eq!(frame[24..40], digest[..16]);
        // L: each record as length u32 big-endian || its bytes || the
        // sealed opening's length u32 big-endian (0: none) || its bytes.
        let mut at = 40;
        for (record, sealed) in &records {
            assert_eq!(frame[at..at + 4], (record.len() as u32).to_be_bytes());
            assert_eq!(&frame[at + 4..at + 4 + record.len()], *record);
            at += 4 + record.len();
            assert_eq!(frame[at..at + 4], (sealed.len() as u32).to_be_bytes());
            assert_eq!(&frame[at + 4..at + 4 + sealed.len()], *sealed);
            at += 4 + sealed.len();
        }
        let sealed = records.iter().filter(|(_, sealed)| !sealed.is_empty());
        assert_eq!(sealed.count(), usize::from(batch.len() == 2));
        assert_eq!(at, 40 + body_len);
        // 32: trailer, the entry hash of the last record.
        assert_eq!(frame[at..at + 32], trailer);
        assert_eq!(trailer, entry_hash(records.last().unwrap().0));
        // Zeros to the end of the block.
        assert!(frame[at + 32..].iter().all(|&byte| byte == 0));
    }
}
