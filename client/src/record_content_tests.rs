//! Content joined back for display only after it opens the commitment, and
//! the client's `Erasure` is the message tally-attest reads.

use prost::Message;
use tally_attest::bundle::{BundleHeader, BundleWriter, BUNDLE_FORMAT_VERSION};
use tally_attest::content::{commit, BodyFacts, ErasureView, SeqRangeView, ERASURE_KIND};
use tally_attest::verify::{verify_bundle, verify_sections, ContentVerdict, VerifyOptions};
use tally_attest::{entry_hash, RecordHeader, GENESIS_PREV};

use super::*;
use crate::export::live::{LiveItem, LiveSections};
use crate::proto::{Content, Erasure, Event, RecordBody, SeqRange};

/// A record at `seq` whose event's payload and `user.email` were moved into
/// a committed `Content`; returns the record and its opening.
fn committed(seq: u64, prev: [u8; 32], payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let content = Content {
        payload: payload.to_vec(),
        attributes: [("user.email".to_owned(), "a@example.org".to_owned())].into(),
        typed_attributes: Vec::new(),
    }
    .encode_to_vec();
    let salt = [seq as u8 + 1; 32];
    let body = RecordBody {
        receive_time_unix_nanos: 5,
        event: Some(Event {
            kind: "gen_ai.chat".into(),
            attributes: [("model".to_owned(), "m".to_owned())].into(),
            ..Default::default()
        }),
        content_commitment: commit(&salt, &content).to_vec(),
        ..Default::default()
    };
    let mut record = Vec::new();
    RecordHeader {
        seq,
        prev_hash: prev,
    }
    .encode_into(&mut record);
    body.encode(&mut record).unwrap();
    let mut opening = salt.to_vec();
    opening.extend_from_slice(&content);
    (record, opening)
}

#[test]
fn an_opening_that_opens_the_commitment_is_joined_back_into_the_event() {
    let (record, opening) = committed(3, [0; 32], b"the prompt");
    let decoded = decode_with_content(&record, Some(&opening), ContentState::Erased).unwrap();
    assert_eq!(decoded.content, ContentState::Joined);
    let event = decoded.body.event.unwrap();
    assert_eq!(event.payload, b"the prompt");
    assert_eq!(event.attributes["user.email"], "a@example.org");
    assert_eq!(event.attributes["model"], "m");

    let absent = decode_with_content(&record, None, ContentState::Redacted).unwrap();
    assert_eq!(absent.content, ContentState::Redacted);
    assert!(absent.body.event.unwrap().payload.is_empty());
    assert_eq!(decode(&record).unwrap().content, ContentState::Erased);
}

#[test]
fn an_edited_opening_is_refused_naming_the_seq() {
    //! `tail` and `show` display nothing from a content that does not open
    //! the commitment, as they refuse a record whose hash does not match.
    let (record, mut opening) = committed(3, [0; 32], b"the prompt");
    let last = opening.len() - 1;
    opening[last] ^= 1;
    assert!(matches!(
        decode_with_content(&record, Some(&opening), ContentState::Erased),
        Err(DecodeError::ContentMismatch { seq: 3 })
    ));
    let mut plain = Vec::new();
    RecordHeader {
        seq: 4,
        prev_hash: [0; 32],
    }
    .encode_into(&mut plain);
    RecordBody::default().encode(&mut plain).unwrap();
    assert_eq!(decode(&plain).unwrap().content, ContentState::Inline);
    assert!(matches!(
        decode_with_content(&plain, Some(&opening), ContentState::Erased),
        Err(DecodeError::ContentWithoutCommitment { seq: 4 })
    ));
}

#[test]
fn the_clients_erasure_is_the_message_attest_reads() {
    //! tally-attest does not depend on this crate's generated types: this
    //! holds the two `Erasure` definitions to the same bytes both ways.
    let erasure = Erasure {
        erased: vec![
            SeqRange {
                from_seq: 2,
                to_seq: 5,
            },
            SeqRange {
                from_seq: 9,
                to_seq: 1 << 40,
            },
        ],
    };
    let bytes = erasure.encode_to_vec();
    let view = ErasureView::decode(bytes.as_slice()).unwrap();
    assert_eq!(
        view.erased,
        [
            SeqRangeView {
                from_seq: 2,
                to_seq: 5
            },
            SeqRangeView {
                from_seq: 9,
                to_seq: 1 << 40
            }
        ]
    );
    assert_eq!(view.encode_to_vec(), bytes);
    assert_eq!(
        Erasure::decode(view.encode_to_vec().as_slice()).unwrap(),
        erasure
    );

    // And a RecordBody the client encodes is read at its top level.
    let body = RecordBody {
        event: Some(Event {
            kind: ERASURE_KIND.into(),
            ..Default::default()
        }),
        erasure: Some(erasure),
        content_commitment: vec![7; 32],
        ..Default::default()
    };
    let facts = BodyFacts::parse(&body.encode_to_vec()).unwrap();
    assert_eq!(facts.content_commitment, Some([7; 32]));
    assert_eq!(facts.erasure.unwrap().ranges(), &[(2, 5), (9, 1 << 40)]);
}

#[test]
fn the_live_source_passes_the_served_opening_as_a_bundle_does() {
    //! `tally verify --live` must judge content exactly as the bundle of
    //! the same records: a flipped opening fails both at the same seq.
    let (r0, o0) = committed(0, GENESIS_PREV, b"zero");
    let (r1, mut o1) = committed(1, entry_hash(&r0), b"one");
    o1[40] ^= 1;
    let header = BundleHeader {
        format_version: BUNDLE_FORMAT_VERSION,
        log_id: vec![1; 16],
        size: 2,
        head_hash: entry_hash(&r1).to_vec(),
        ..BundleHeader::default()
    };
    let mut writer = BundleWriter::new(Vec::new(), &header).unwrap();
    writer.record(&r0).unwrap();
    writer.content(0, &o0).unwrap();
    writer.record(&r1).unwrap();
    writer.content(1, &o1).unwrap();
    let bundle = writer.finish().unwrap();
    let from_file = verify_bundle(bundle.as_slice(), VerifyOptions::default(), |_, _| {})
        .unwrap()
        .content;

    let (tx, rx) = std::sync::mpsc::sync_channel(8);
    for item in [
        LiveItem::Opened {
            header,
            start: None,
            attestation: None,
        },
        LiveItem::AnchorsDone,
        LiveItem::Records(vec![(r0, o0), (r1, o1)]),
        LiveItem::End,
    ] {
        tx.send(item).unwrap();
    }
    let (mut live, _) = LiveSections::open(rx).unwrap();
    let from_daemon = verify_sections(&mut live, VerifyOptions::default(), |_, _| {})
        .unwrap()
        .content;
    assert_eq!(from_file, from_daemon);
    assert!(
        matches!(
            from_file,
            ContentVerdict::Damaged(tally_attest::verify::ContentDamage::ContentMismatch {
                seq: 1
            })
        ),
        "{from_file:?}"
    );
}

#[test]
fn an_export_refuses_content_its_record_did_not_commit_to() {
    //! A sealed value edited in the store decrypts to other bytes: the
    //! exporter must stop, naming the seq, rather than write them.
    use crate::export::{check_opening, Inconsistency};
    let (record, mut opening) = committed(6, [0; 32], b"six");
    assert!(check_opening(6, &record, &opening).is_ok());
    opening[33] ^= 1;
    assert!(matches!(
        check_opening(6, &record, &opening),
        Err(Inconsistency::ContentMismatch { seq: 6 })
    ));
    let mut plain = Vec::new();
    RecordHeader {
        seq: 2,
        prev_hash: [0; 32],
    }
    .encode_into(&mut plain);
    RecordBody::default().encode(&mut plain).unwrap();
    assert!(matches!(
        check_opening(2, &plain, &opening),
        Err(Inconsistency::ContentWithoutCommitment { seq: 2 })
    ));
}

/// A scripted daemon on the other end of an in-memory pipe, for the
/// exporter's own refusals (the daemon's side of content is the storage
/// slice's; this serves fixed replies only): a log of `records`, no anchors.
fn scripted(
    server: tokio::io::DuplexStream,
    records: Vec<crate::proto::StoredRecord>,
) -> tokio::task::JoinHandle<()> {
    use crate::proto::{request, response, Anchors, Records, Request, Response, StatusReply};
    use futures::{SinkExt, StreamExt};
    tokio::spawn(async move {
        let mut framed = tokio_util::codec::Framed::new(
            server,
            crate::frame::codec(crate::frame::MAX_RESPONSE_FRAME),
        );
        let head = records
            .last()
            .map_or(GENESIS_PREV.to_vec(), |r| entry_hash(&r.record).to_vec());
        while let Some(Ok(bytes)) = framed.next().await {
            let request = Request::decode(bytes).unwrap();
            let body = match request.body.unwrap() {
                request::Body::Hello(_) => response::Body::Hello(crate::proto::HelloReply {
                    protocol_version: crate::PROTOCOL_VERSION,
                    ..Default::default()
                }),
                request::Body::Status(_) => response::Body::Status(StatusReply {
                    size: records.len() as u64,
                    head_hash: head.clone(),
                    log_id: vec![1; 16],
                    ..Default::default()
                }),
                request::Body::ReadAnchors(_) => response::Body::Anchors(Anchors::default()),
                request::Body::Read(read) => response::Body::Records(Records {
                    records: records
                        .iter()
                        .skip(read.from_seq as usize)
                        .cloned()
                        .collect(),
                    ..Default::default()
                }),
                other => panic!("unscripted request {other:?}"),
            };
            let reply = Response {
                id: request.id,
                body: Some(body),
            };
            framed.send(crate::frame::encode(&reply)).await.unwrap();
        }
    })
}

fn stored(seq: u64, record: Vec<u8>, content: Vec<u8>) -> crate::proto::StoredRecord {
    crate::proto::StoredRecord {
        seq,
        entry_hash: entry_hash(&record).to_vec().into(),
        record: record.into(),
        content: content.into(),
    }
}

#[tokio::test]
async fn the_exporter_stops_at_content_that_does_not_open_its_commitment() {
    //! Root edits a sealed opening in the store: the export names the seq
    //! instead of writing a bundle; `--redact` still exports the commitments.
    let (r0, o0) = committed(0, GENESIS_PREV, b"zero");
    let (r1, mut o1) = committed(1, entry_hash(&r0), b"one");
    o1[40] ^= 1;
    let log = vec![stored(0, r0, o0), stored(1, r1, o1)];
    let (stream, server) = tokio::io::duplex(1 << 20);
    let daemon = scripted(server, log.clone());
    let mut client = crate::Client::handshake(stream, "t").await.unwrap();
    let name = std::path::Path::new("-");
    let refused = crate::export::export_to(
        &mut client,
        Vec::new(),
        name,
        crate::export::Content::Included,
        |_, _| {},
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(crate::export::ExportError::Inconsistent(
                crate::export::Inconsistency::ContentMismatch { seq: 1 }
            ))
        ),
        "{refused:?}"
    );
    let (summary, bytes) = crate::export::export_to(
        &mut client,
        Vec::new(),
        name,
        crate::export::Content::Redacted,
        |_, _| {},
    )
    .await
    .unwrap();
    assert!(summary.redacted && summary.openings == 0);
    let report = verify_bundle(bytes.as_slice(), VerifyOptions::default(), |_, _| {}).unwrap();
    assert!(report.header.redacted);
    assert!(matches!(
        report.content,
        ContentVerdict::Checked(tally_attest::verify::ContentSummary { redacted: 2, .. })
    ));
    drop(client);
    daemon.await.unwrap();
}

#[tokio::test]
async fn disclose_refuses_an_erased_content_and_a_record_that_never_had_one() {
    let (r0, _) = committed(0, GENESIS_PREV, b"zero");
    let mut plain = Vec::new();
    RecordHeader {
        seq: 1,
        prev_hash: entry_hash(&r0),
    }
    .encode_into(&mut plain);
    RecordBody::default().encode(&mut plain).unwrap();
    // Seq 0 committed but served without content: erased.
    let log = vec![stored(0, r0, Vec::new()), stored(1, plain, Vec::new())];
    let (stream, server) = tokio::io::duplex(1 << 20);
    let daemon = scripted(server, log);
    let mut client = crate::Client::handshake(stream, "t").await.unwrap();
    let name = std::path::Path::new("-");
    use crate::export::range::{disclose_to, DiscloseError};
    let erased = disclose_to(&mut client, 0, Vec::new(), name).await;
    assert!(
        matches!(erased, Err(DiscloseError::Erased { seq: 0 })),
        "{erased:?}"
    );
    let never = disclose_to(&mut client, 1, Vec::new(), name).await;
    assert!(
        matches!(never, Err(DiscloseError::NeverHadContent { seq: 1 })),
        "{never:?}"
    );
    drop(client);
    daemon.await.unwrap();
}
