//! The ack journal and content (DESIGN 3b, 5b): frames carry each record's
//! sealed opening, never the opening; replay fills the content table and
//! refuses a sealed opening that does not open its record's commitment; a
//! frame of the tallyd before content (`TALLYJ01`) replays as records only.

use prost::Message;
use tally_attest::content::commitment_of_opening;
use tally_client::proto::{Content, Event, RecordBody};

use super::*;
use crate::store::tests_content::scan_all;
use crate::store::MapSizing;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let sizing = MapSizing {
        initial: 1 << 20,
        max: 1 << 30,
    };
    let store = Store::open(dir.path(), sizing).unwrap();
    (dir, store)
}

fn opening(payload: &[u8]) -> Vec<u8> {
    let mut opening = vec![0x33; 32];
    Content {
        payload: payload.to_vec(),
        ..Default::default()
    }
    .encode(&mut opening)
    .unwrap();
    opening
}

/// A batch on the store's head: record i commits to `payloads[i]` (sealed
/// with its key, as the sequencer seals) or has no content.
fn content_batch(store: &Store, payloads: &[Option<&[u8]>]) -> Batch {
    let mut batch = store.start_batch().unwrap();
    let first = batch.tip().size;
    let keys = store
        .content_keys()
        .keys(first, payloads.len() as u64)
        .unwrap();
    for (i, payload) in payloads.iter().enumerate() {
        let opening = payload.map(opening);
        let body = RecordBody {
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
    batch
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_frame_carries_sealed_openings_and_replay_fills_the_content_table() {
    //! J02 round trip: the frame holds the sealed bytes (not the payload);
    //! after a crash (the journal not applied), replay restores the records
    //! and their content rows, read back decrypted.
    let (dir, store) = store();
    let (mut journal, _) = Journal::recover(dir.path(), &store).unwrap();
    let batch = content_batch(&store, &[Some(b"JOURNALED-SECRET-1"), None]);
    journal.append(&batch).unwrap();
    drop(journal);
    let file = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
    assert!(
        !contains(&file, b"JOURNALED-SECRET"),
        "no opening in the clear"
    );
    let (_, sealed) = batch
        .records_sealed()
        .next()
        .map(|(_, r, s)| (r, s))
        .unwrap();
    assert!(
        contains(&file, sealed),
        "the sealed opening is in the frame"
    );
    assert_eq!(store.head().unwrap().size, 0);
    let (_, replayed) = Journal::recover(dir.path(), &store).unwrap();
    assert_eq!(replayed, 2);
    let records = scan_all(&store);
    assert_eq!(
        records[0].content.as_deref(),
        Some(&opening(b"JOURNALED-SECRET-1")[..])
    );
    assert_eq!(records[1].content, None);
    assert_eq!(store.content_rows(0, 2).unwrap().ranges(), &[(0, 1)]);
}

#[test]
fn a_damaged_sealed_opening_refuses_the_replay_naming_the_seq() {
    //! The frame's tag and chain cover the records, not the sealed bytes
    //! beside them: replay checks each opening against its commitment, so a
    //! changed byte is refused (naming the seq) rather than stored.
    let (dir, store) = store();
    let (mut journal, _) = Journal::recover(dir.path(), &store).unwrap();
    let batch = content_batch(&store, &[None, Some(b"will be damaged")]);
    journal.append(&batch).unwrap();
    drop(journal);
    let file = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
    let (_, _, sealed) = batch.records_sealed().nth(1).unwrap();
    let at = file
        .windows(sealed.len())
        .position(|w| w == sealed)
        .unwrap()
        + sealed.len() / 2;
    let handle = OpenOptions::new()
        .write(true)
        .open(dir.path().join(FILE_NAME))
        .unwrap();
    handle.write_all_at(&[file[at] ^ 1], at as u64).unwrap();
    drop(handle);
    let err = Journal::recover(dir.path(), &store).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("record 1"), "{message}");
    assert!(
        message.contains("does not open its commitment"),
        "{message}"
    );
    assert_eq!(
        store.head().unwrap().size,
        0,
        "nothing of the frame was stored"
    );
}

#[test]
fn a_missing_sealed_opening_is_refused() {
    //! A record that commits to content but whose frame entry has no sealed
    //! opening (length 0) is refused: its content would be lost unnoticed.
    let (dir, store) = store();
    let (mut journal, _) = Journal::recover(dir.path(), &store).unwrap();
    let with = content_batch(&store, &[Some(b"x")]);
    // The same record without its sealed opening.
    let mut without = store.start_batch().unwrap();
    let (_, record, _) = with.records_sealed().next().unwrap();
    let body = &record[tally_attest::record::HEADER_LEN..];
    without.push(|bytes| bytes.extend_from_slice(body)).unwrap();
    journal.append(&without).unwrap();
    drop(journal);
    let err = Journal::recover(dir.path(), &store).unwrap_err();
    assert!(
        err.to_string().contains("sealed opening is missing"),
        "{err}"
    );
}

#[test]
fn a_frame_of_the_tallyd_before_content_replays_as_records() {
    //! Upgrading after a crash: a `TALLYJ01` frame (records only, no sealed
    //! lengths) written by the previous tallyd replays, without content.
    let (dir, store) = store();
    let (journal, _) = Journal::recover(dir.path(), &store).unwrap();
    let key = journal.key;
    drop(journal);
    let mut batch = store.start_batch().unwrap();
    let body = RecordBody {
        event: Some(Event {
            kind: "old".into(),
            payload: b"inside the hashed record".to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec();
    batch.push(|bytes| bytes.extend_from_slice(&body)).unwrap();
    let (_, record) = batch.records().next().unwrap();
    let trailer = batch.tip().hash;
    let mut fields = Vec::new();
    fields.extend_from_slice(b"TALLYJ01");
    fields.extend_from_slice(&0u64.to_be_bytes());
    fields.extend_from_slice(&1u32.to_be_bytes());
    fields.extend_from_slice(&(4 + record.len() as u32).to_be_bytes());
    let mut frame = fields.clone();
    frame.extend_from_slice(&tag(&key, &fields, &trailer));
    frame.extend_from_slice(&(record.len() as u32).to_be_bytes());
    frame.extend_from_slice(record);
    frame.extend_from_slice(&trailer);
    let handle = OpenOptions::new()
        .write(true)
        .open(dir.path().join(FILE_NAME))
        .unwrap();
    handle.write_all_at(&frame, 0).unwrap();
    drop(handle);
    let (_, replayed) = Journal::recover(dir.path(), &store).unwrap();
    assert_eq!(replayed, 1);
    let records = scan_all(&store);
    assert_eq!(records[0].bytes, record);
    assert_eq!(records[0].content, None);
}
