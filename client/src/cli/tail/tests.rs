//! `-n`/`--from` parsing, and the newest-first paging of `tail -n` with a
//! filter against a scripted daemon on an in-memory pipe that evaluates
//! filters with a small scan budget per page (so the answer takes several
//! pages), honestly or not.

use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use prost::Message;
use tally_attest::{entry_hash, RecordHeader, GENESIS_PREV};
use tally_client::frame;
use tally_client::proto::{
    request, response, Event, HelloReply, RecordBody, Records, Request, Response,
};
use tokio_util::codec::Framed;

use super::*;
use crate::cli::render::{Mode, Renderer};

#[test]
fn lines_are_a_count_or_all() {
    assert_eq!(parse_lines("3"), Ok(Lines::Last(3)));
    assert_eq!(parse_lines("0"), Ok(Lines::Last(0)));
    assert_eq!(parse_lines("all"), Ok(Lines::All));
    assert!(parse_lines("-3").is_err());
    assert!(parse_lines("ten").is_err());
}

#[test]
fn from_wins_and_the_default_is_the_last_ten() {
    assert_eq!(Start::of(None, None), Start::Last(10));
    assert_eq!(Start::of(Some(Lines::Last(3)), None), Start::Last(3));
    assert_eq!(Start::of(Some(Lines::All), None), Start::From(0));
    assert_eq!(Start::of(None, Some(5)), Start::From(5));
}

/// A chain of `n` records; every fourth (seq 0, 4, 8...) of kind "hit".
fn log(n: u64) -> Vec<StoredRecord> {
    let mut prev = GENESIS_PREV;
    (0..n)
        .map(|seq| {
            let body = RecordBody {
                receive_time_unix_nanos: 1,
                event: Some(Event {
                    kind: if seq % 4 == 0 { "hit" } else { "miss" }.into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let mut record = Vec::new();
            RecordHeader {
                seq,
                prev_hash: prev,
            }
            .encode_into(&mut record);
            body.encode(&mut record).unwrap();
            prev = entry_hash(&record);
            StoredRecord {
                seq,
                record: record.into(),
                entry_hash: prev.to_vec().into(),
                content: Default::default(),
            }
        })
        .collect()
}

/// Answers the hello (with read_filters) and every read newest-first:
/// examines at most `budget` seqs below `to_seq` per page. `honest: false`
/// ignores the filter, as a daemon that predates it would.
fn daemon(
    server: tokio::io::DuplexStream,
    log: Vec<StoredRecord>,
    budget: u64,
    honest: bool,
) -> tokio::task::JoinHandle<Vec<ReadRequest>> {
    tokio::spawn(async move {
        let mut framed = Framed::new(server, frame::codec(frame::MAX_RESPONSE_FRAME));
        let mut reads = Vec::new();
        while let Some(Ok(bytes)) = framed.next().await {
            let request = Request::decode(bytes).unwrap();
            let body = match request.body.unwrap() {
                request::Body::Hello(_) => response::Body::Hello(HelloReply {
                    protocol_version: tally_client::PROTOCOL_VERSION,
                    read_filters: true,
                    ..Default::default()
                }),
                request::Body::Read(read) => {
                    assert!(read.newest);
                    let resume = read.to_seq.saturating_sub(budget).max(read.from_seq);
                    let filter = read.filter.clone().unwrap_or_default();
                    let mut records: Vec<StoredRecord> = log[resume as usize..read.to_seq as usize]
                        .iter()
                        .filter(|stored| {
                            !honest
                                || filter::matches(
                                    &filter,
                                    &record::decode(&stored.record).unwrap().body,
                                )
                        })
                        .cloned()
                        .collect();
                    let max = read.max_records as usize;
                    if records.len() > max {
                        records.drain(..records.len() - max);
                    }
                    // A page that filled up stopped its scan at its oldest record.
                    let resume = if records.len() == max {
                        records.first().map_or(resume, |first| first.seq)
                    } else {
                        resume
                    };
                    reads.push(read);
                    response::Body::Records(Records {
                        records,
                        resume_seq: resume,
                    })
                }
                other => panic!("unexpected request {other:?}"),
            };
            let reply = Response {
                id: request.id,
                body: Some(body),
            };
            framed.send(frame::encode(&reply)).await.unwrap();
        }
        reads
    })
}

/// A `Write` into a buffer the test keeps.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The seqs `tail -n n --kind hit` prints from a log of 30 against the
/// scripted daemon, and the reads it made.
async fn last_hits(n: u64, budget: u64, honest: bool) -> (Vec<u64>, Vec<ReadRequest>) {
    let (stream, server) = tokio::io::duplex(1 << 20);
    let daemon = daemon(server, log(30), budget, honest);
    let stream: Box<dyn crate::cli::connect::Stream> = Box::new(stream);
    let mut client = tally_client::Client::handshake(stream, "t").await.unwrap();
    let hit = Filter {
        kinds: vec!["hit".into()],
        ..Default::default()
    };
    let out = Shared::default();
    let sink = Sink::to(
        Renderer::with_zone(Mode::Json, None),
        hit.clone(),
        Box::new(out.clone()),
    );
    let mut shown = Shown::new(sink);
    newest(&mut client, n, 30, &hit, &mut shown).await.unwrap();
    drop(client);
    let reads = daemon.await.unwrap();
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let seqs = text
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    (seqs, reads)
}

#[tokio::test]
async fn the_last_n_matching_are_gathered_over_pages_newest_first() {
    // Hits at 0, 4, ..., 28; pages of 5 seqs: [25,30) holds 28, [20,25) 20 and 24...
    let (seqs, reads) = last_hits(3, 5, true).await;
    assert_eq!(seqs, [20, 24, 28]);
    let ends: Vec<u64> = reads.iter().map(|read| read.to_seq).collect();
    assert_eq!(ends, [30, 25]);
    assert_eq!(
        reads[1].max_records, 2,
        "asks only for what is still missing"
    );
    // More than there are: every hit, down to seq 0, then it stops.
    let (seqs, reads) = last_hits(100, 7, true).await;
    assert_eq!(seqs, (0..30).step_by(4).collect::<Vec<_>>());
    assert_eq!(reads.last().unwrap().to_seq, 2);
}

#[tokio::test]
async fn records_a_daemon_sends_against_the_filter_are_not_shown() {
    let (seqs, _) = last_hits(3, 5, false).await;
    assert!(seqs.iter().all(|seq| seq % 4 == 0), "{seqs:?}");
    assert_eq!(seqs, [28]);
}

fn shown() -> (Shown, Shared) {
    let out = Shared::default();
    let sink = Sink::to(
        Renderer::with_zone(Mode::Json, None),
        Filter::default(),
        Box::new(out.clone()),
    );
    (Shown::new(sink), out)
}

#[test]
fn a_record_that_does_not_hold_together_is_refused_before_it_is_shown() {
    let records = log(4);
    let refused = |sequence: &[StoredRecord]| {
        let (mut shown, out) = shown();
        let (last, before) = sequence.split_last().unwrap();
        for stored in before {
            shown.show(stored).unwrap();
        }
        let err = shown.show(last).unwrap_err().to_string();
        let printed = out
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        assert_eq!(printed, before.len(), "{err}");
        err
    };
    // In order, with a gap (a filtered read skips seqs): all shown.
    let (mut ok, out) = shown();
    for stored in [&records[0], &records[1], &records[3]] {
        ok.show(stored).unwrap();
    }
    assert_eq!(
        out.0
            .lock()
            .unwrap()
            .iter()
            .filter(|b| **b == b'\n')
            .count(),
        3
    );
    // Repeated, or going back.
    let err = refused(&[records[0].clone(), records[1].clone(), records[1].clone()]);
    assert!(err.contains("sent seq 1 after seq 1"), "{err}");
    // The daemon's entry hash is not the record's.
    let mut wrong_hash = records[2].clone();
    wrong_hash.entry_hash = vec![0; 32].into();
    let err = refused(&[records[1].clone(), wrong_hash]);
    assert!(err.contains("entry hash does not match"), "{err}");
    // Served as another seq than its own.
    let mut moved = records[2].clone();
    moved.seq = 3;
    let err = refused(&[moved]);
    assert!(
        err.contains("served seq 3 holding a record of seq 2"),
        "{err}"
    );
    // Seq 2 with another previous-hash (and its entry hash to match): the
    // link to seq 1 is broken.
    let mut relinked = records[2].clone();
    let mut bytes = relinked.record.to_vec();
    bytes[9..41].copy_from_slice(&[7; 32]);
    relinked.entry_hash = entry_hash(&bytes).to_vec().into();
    relinked.record = bytes.into();
    let err = refused(&[records[1].clone(), relinked]);
    assert!(
        err.contains("seq 2: its previous-hash is not the entry hash of seq 1"),
        "{err}"
    );
}
