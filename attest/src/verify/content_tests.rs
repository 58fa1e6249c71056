//! Content checks on synthetic bundles: records with and without
//! commitments, erasure records, and the edits root on the host would make
//! (flip an opening byte, drop a content section, forge an erasure).

use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;

use super::*;
use crate::bundle::{BundleError, BundleHeader, BundleWriter, SectionKind, BUNDLE_FORMAT_VERSION};
use crate::content::{commit, ErasureView, SeqRangeView, ERASURE_KIND};
use crate::record::{entry_hash, RecordHeader, GENESIS_PREV};
use crate::verify::{verify_bundle, Verdict, VerifyError, VerifyOptions};

fn len_field(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(field, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// An `Event` with this kind and a field 5 (payload) of `payload`.
fn event(kind: &str, payload: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    len_field(1, kind.as_bytes(), &mut e);
    if !payload.is_empty() {
        len_field(5, payload, &mut e);
    }
    e
}

/// One record's body and the opening the bundle carries for it.
pub(crate) struct Entry {
    pub body: Vec<u8>,
    pub opening: Option<Vec<u8>>,
}

/// A record without content (its payload in the hashed event, as before
/// store format 5).
pub(crate) fn plain(seq: u64) -> Entry {
    let mut body = Vec::new();
    encode_key(1, WireType::Varint, &mut body);
    encode_varint(1_000 + seq, &mut body);
    len_field(3, &event("tool_call", b"inline payload"), &mut body);
    Entry {
        body,
        opening: None,
    }
}

/// A committed record: its event without payload, field 4 the commitment
/// to `content` under a salt of `seq`'s bytes.
pub(crate) fn committed(seq: u64, content: &[u8]) -> Entry {
    let salt = [seq as u8; 32];
    let mut body = Vec::new();
    encode_key(1, WireType::Varint, &mut body);
    encode_varint(1_000 + seq, &mut body);
    len_field(3, &event("prompt", b""), &mut body);
    len_field(4, &commit(&salt, content), &mut body);
    let mut opening = salt.to_vec();
    opening.extend_from_slice(content);
    Entry {
        body,
        opening: Some(opening),
    }
}

/// A `tally.erasure` record naming `ranges`.
pub(crate) fn erasure(ranges: &[(u64, u64)]) -> Entry {
    let erased = ErasureView {
        erased: ranges
            .iter()
            .map(|&(from_seq, to_seq)| SeqRangeView { from_seq, to_seq })
            .collect(),
    };
    let mut body = Vec::new();
    len_field(3, &event(ERASURE_KIND, b""), &mut body);
    len_field(5, &erased.encode_to_vec(), &mut body);
    Entry {
        body,
        opening: None,
    }
}

/// The stored records of `entries`, chained from seq 0.
pub(crate) fn records(entries: &[Entry]) -> Vec<Vec<u8>> {
    let mut prev = GENESIS_PREV;
    entries
        .iter()
        .enumerate()
        .map(|(seq, entry)| {
            let mut record = Vec::new();
            RecordHeader {
                seq: seq as u64,
                prev_hash: prev,
            }
            .encode_into(&mut record);
            record.extend_from_slice(&entry.body);
            prev = entry_hash(&record);
            record
        })
        .collect()
}

fn bundle(entries: &[Entry], redacted: bool) -> Vec<u8> {
    let records = records(entries);
    let head = records.last().map_or(GENESIS_PREV, |r| entry_hash(r));
    let header = BundleHeader {
        format_version: BUNDLE_FORMAT_VERSION,
        log_id: vec![1; 16],
        size: records.len() as u64,
        head_hash: head.to_vec(),
        exported_at_unix_nanos: 0,
        producer: "test".into(),
        redacted,
    };
    let mut writer = BundleWriter::new(Vec::new(), &header).unwrap();
    for (seq, (record, entry)) in records.iter().zip(entries).enumerate() {
        writer.record(record).unwrap();
        if let Some(opening) = &entry.opening {
            writer.content(seq as u64, opening).unwrap();
        }
    }
    writer.finish().unwrap()
}

fn verify(bytes: &[u8]) -> Result<crate::verify::Report, VerifyError> {
    verify_bundle(bytes, VerifyOptions::default(), |_, _| {})
}

fn content_of(bytes: &[u8]) -> ContentVerdict {
    let report = verify(bytes).unwrap();
    assert!(report.chain.is_ok(), "{:?}", report.chain);
    report.content
}

/// Seqs 0..5: plain, committed, committed, plain, committed.
fn log() -> Vec<Entry> {
    vec![
        plain(0),
        committed(1, b"the prompt of seq 1"),
        committed(2, b"the output of seq 2"),
        plain(3),
        committed(4, b"another prompt"),
    ]
}

#[test]
fn openings_that_open_their_commitments_are_counted() {
    let content = content_of(&bundle(&log(), false));
    assert_eq!(
        content,
        ContentVerdict::Checked(ContentSummary {
            committed: 3,
            opened: 3,
            ..ContentSummary::default()
        })
    );
    // No identity given: PARTIAL for the anchors, not FAIL for content.
    let report = verify(&bundle(&log(), false)).unwrap();
    assert!(matches!(report.verdict(), Verdict::Partial(_)));
}

#[test]
fn a_flipped_opening_byte_is_a_mismatch_naming_the_seq() {
    //! An edited content section must FAIL even though no hash in the chain
    //! covers it: only the commitment does.
    let mut entries = log();
    let opening = entries[2].opening.as_mut().unwrap();
    let last = opening.len() - 1;
    opening[last] ^= 1;
    let report = verify(&bundle(&entries, false)).unwrap();
    assert_eq!(
        report.content,
        ContentVerdict::Damaged(ContentDamage::ContentMismatch { seq: 2 })
    );
    assert_eq!(report.verdict(), Verdict::Fail);

    // The salt counts too.
    let mut entries = log();
    entries[4].opening.as_mut().unwrap()[0] ^= 1;
    assert_eq!(
        content_of(&bundle(&entries, false)),
        ContentVerdict::Damaged(ContentDamage::ContentMismatch { seq: 4 })
    );
    // An opening shorter than a salt opens nothing.
    let mut entries = log();
    entries[1].opening = Some(vec![1; 5]);
    assert_eq!(
        content_of(&bundle(&entries, false)),
        ContentVerdict::Damaged(ContentDamage::ContentMismatch { seq: 1 })
    );
}

#[test]
fn a_dropped_content_section_without_an_erasure_is_missing() {
    //! Root deleting a prompt's content (no erasure record) is tampering.
    let mut entries = log();
    entries[2].opening = None;
    let report = verify(&bundle(&entries, false)).unwrap();
    assert_eq!(
        report.content,
        ContentVerdict::Damaged(ContentDamage::ContentMissing { seq: 2 })
    );
    assert_eq!(report.verdict(), Verdict::Fail);
}

#[test]
fn a_dropped_content_section_an_erasure_covers_is_counted_erased() {
    let mut entries = log();
    entries[1].opening = None;
    entries[2].opening = None;
    entries.push(erasure(&[(1, 3)]));
    let content = content_of(&bundle(&entries, false));
    assert_eq!(
        content,
        ContentVerdict::Checked(ContentSummary {
            committed: 3,
            opened: 1,
            erased: 2,
            erasure_records: 1,
            ..ContentSummary::default()
        })
    );
    // Only what the erasure names: seq 4 dropped as well is still missing.
    entries[4].opening = None;
    assert_eq!(
        content_of(&bundle(&entries, false)),
        ContentVerdict::Damaged(ContentDamage::ContentMissing { seq: 4 })
    );
}

#[test]
fn an_erasure_that_reaches_its_own_seq_is_malformed() {
    let mut entries = log();
    entries[4].opening = None;
    entries.push(erasure(&[(4, 6)])); // the erasure is seq 5
    assert_eq!(
        content_of(&bundle(&entries, false)),
        ContentVerdict::Damaged(ContentDamage::ErasureBeyondItself { erasure_seq: 5 })
    );
    // Ending exactly at its own seq is fine.
    let mut entries = log();
    entries[4].opening = None;
    entries.push(erasure(&[(4, 5)]));
    assert!(matches!(
        content_of(&bundle(&entries, false)),
        ContentVerdict::Checked(ContentSummary { erased: 1, .. })
    ));
}

#[test]
fn an_erasure_whose_content_is_still_there_did_not_take_effect() {
    let mut entries = log();
    entries.push(erasure(&[(1, 2)]));
    assert_eq!(
        content_of(&bundle(&entries, false)),
        ContentVerdict::Damaged(ContentDamage::ErasedContentPresent {
            seq: 1,
            erasure_seq: 5
        })
    );
    // Nor may one name a record that never had content.
    let mut entries = log();
    entries.push(erasure(&[(0, 1)]));
    assert_eq!(
        content_of(&bundle(&entries, false)),
        ContentVerdict::Damaged(ContentDamage::ErasedContentPresent {
            seq: 0,
            erasure_seq: 5
        })
    );
}

#[test]
fn a_forged_erasure_under_another_kind_is_a_malformed_body() {
    let mut entries = log();
    entries[2].opening = None;
    let mut forged = erasure(&[(2, 3)]);
    // Same bytes but the event's kind is "prompt".
    let mut body = Vec::new();
    len_field(3, &event("prompt", b""), &mut body);
    body.extend_from_slice(&forged.body[2 + event(ERASURE_KIND, b"").len()..]);
    forged.body = body;
    entries.push(forged);
    assert!(matches!(
        content_of(&bundle(&entries, false)),
        ContentVerdict::Damaged(ContentDamage::MalformedBody { seq: 5, .. })
    ));
}

#[test]
fn a_redacted_bundle_counts_its_absent_content_as_redacted() {
    let mut entries = log();
    entries.push(erasure(&[(4, 5)]));
    for entry in &mut entries {
        entry.opening = None;
    }
    let report = verify(&bundle(&entries, true)).unwrap();
    assert_eq!(
        report.content,
        ContentVerdict::Checked(ContentSummary {
            committed: 3,
            erased: 1,
            redacted: 2,
            erasure_records: 1,
            ..ContentSummary::default()
        })
    );
    assert!(matches!(report.verdict(), Verdict::Partial(_)));
}

#[test]
fn a_content_section_in_a_redacted_bundle_is_refused() {
    let mut entries = log();
    for entry in entries.iter_mut().skip(2) {
        entry.opening = None;
    }
    assert!(matches!(
        verify(&bundle(&entries, true)),
        Err(VerifyError::Format(BundleError::ContentInRedacted { .. }))
    ));
}

#[test]
fn misplaced_content_sections_are_format_errors() {
    // An opening for a record without a commitment.
    let mut entries = log();
    entries[3].opening = Some(vec![0; 40]);
    assert!(matches!(
        verify(&bundle(&entries, false)),
        Err(VerifyError::ContentWithoutCommitment { seq: 3 })
    ));

    // A content section for seq 2 after record 1, and one twice.
    let records = records(&log());
    let head = entry_hash(records.last().unwrap());
    let header = BundleHeader {
        format_version: BUNDLE_FORMAT_VERSION,
        log_id: vec![1; 16],
        size: 5,
        head_hash: head.to_vec(),
        ..BundleHeader::default()
    };
    let build = |section_after_1: &dyn Fn(&mut BundleWriter<Vec<u8>>)| {
        let mut writer = BundleWriter::new(Vec::new(), &header).unwrap();
        for (seq, record) in records.iter().enumerate() {
            writer.record(record).unwrap();
            if seq == 1 {
                section_after_1(&mut writer);
            }
        }
        writer.finish().unwrap()
    };
    let opening = log()[1].opening.clone().unwrap();
    assert!(matches!(
        verify(&build(&|w| w.content(2, &opening).unwrap())),
        Err(VerifyError::Format(BundleError::ContentSeq {
            found: 2,
            record: Some(1),
            ..
        }))
    ));
    assert!(matches!(
        verify(&build(&|w| {
            w.content(1, &opening).unwrap();
            w.content(1, &opening).unwrap();
        })),
        Err(VerifyError::Format(BundleError::ContentOutOfPlace { .. }))
    ));
    // An empty opening is still an opening, and opens nothing.
    assert_eq!(
        verify(&build(&|w| w.content(1, &[]).unwrap()))
            .unwrap()
            .content,
        ContentVerdict::Damaged(ContentDamage::ContentMismatch { seq: 1 })
    );
    // Shorter than its seq.
    let mut bytes = build(&|_| {});
    let end = bytes.len() - 5;
    bytes.truncate(end);
    crate::bundle::write_section(&mut bytes, SectionKind::Content, &[0; 3]).unwrap();
    crate::bundle::write_section(&mut bytes, SectionKind::End, &[]).unwrap();
    assert!(matches!(
        verify(&bytes),
        Err(VerifyError::Format(BundleError::ContentTooShort {
            len: 3,
            ..
        }))
    ));
}

#[test]
fn the_parallel_stage_finds_a_mismatch_far_into_the_log() {
    //! Past `parallel::PARALLEL_MIN` records the facts are computed on the
    //! hashing threads; each must land at its own seq.
    let n = 3 * crate::parallel::PARALLEL_MIN as u64;
    let mut entries: Vec<Entry> = (0..n)
        .map(|seq| {
            if seq % 3 == 0 {
                plain(seq)
            } else {
                committed(seq, format!("content {seq}").as_bytes())
            }
        })
        .collect();
    let clean = content_of(&bundle(&entries, false));
    assert!(matches!(
        clean,
        ContentVerdict::Checked(ContentSummary { committed, opened, .. }) if committed == opened && committed == 2 * n / 3
    ));
    let seq = n - 100; // n - 100 = 2972 is not a multiple of 3
    entries[seq as usize].opening.as_mut().unwrap()[40] ^= 0x80;
    assert_eq!(
        content_of(&bundle(&entries, false)),
        ContentVerdict::Damaged(ContentDamage::ContentMismatch { seq })
    );
}
