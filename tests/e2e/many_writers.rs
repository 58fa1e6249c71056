//! Many small writers: 1,000 connections of one uid, each appending one event
//! and waiting for its ack (a pool of worker processes), at the default
//! limits. Every connection is admitted (the old per-peer default of 256
//! refused 744 of them with BUSY), every ack names the record holding that
//! connection's event at its seq, and the chain over all of them is intact.

use std::sync::Arc;

use tally_client::proto::{response, Response};
use tally_tests::raw::{self, RawConn};
use tally_tests::skip::{skip, Needs, Part};
use tally_tests::{check_records, read_range, stored_event, Daemon, DaemonOpts};
use tokio::sync::Barrier;

const CONNECTIONS: u64 = 1000;
/// Appends per connection, each sent once the previous one is acked.
const ROUNDS: u64 = 3;

/// The event a connection sends in a round: unique across the test.
fn event_id(connection: u64, round: u64) -> u64 {
    round * CONNECTIONS + connection
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_one_event_connections_of_one_uid_are_admitted_and_acked_at_their_seqs() {
    //! The default max_connections_per_peer (256) refused 744 of 1,000 workers.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < 4096 && setrlimit(Resource::RLIMIT_NOFILE, hard.min(65_536), hard).is_err() {
        skip(
            Needs::Ci,
            Part::Whole,
            &format!("cannot raise the open-file limit above {soft}"),
        );
        return;
    }
    // The default limits: no connection key in the config.
    let daemon = Daemon::start(DaemonOpts::default()).unwrap();
    let mut conns = Vec::with_capacity(CONNECTIONS as usize);
    for index in 0..CONNECTIONS {
        // `greeted` fails on anything but a hello reply (a BUSY refusal).
        let conn = RawConn::greeted(&daemon.socket())
            .await
            .unwrap_or_else(|err| panic!("connection {index} was not admitted: {err:#}"));
        conns.push(conn);
    }
    // Every connection open at once, then all append together, round by round.
    let start = Arc::new(Barrier::new(CONNECTIONS as usize));
    let mut tasks = Vec::new();
    for (index, mut conn) in conns.into_iter().enumerate() {
        let start = start.clone();
        let connection = index as u64;
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut acks = Vec::new();
            for round in 0..ROUNDS {
                let id = event_id(connection, round);
                let request = raw::append(10 + round, vec![tally_tests::event(id)]);
                conn.send(&request).await.unwrap();
                match conn.recv().await.unwrap() {
                    Some(Response {
                        id: reply_id,
                        body: Some(response::Body::Append(reply)),
                    }) if reply_id == 10 + round && reply.acks.len() == 1 => {
                        let ack = &reply.acks[0];
                        acks.push((id, ack.seq, ack.entry_hash.clone()));
                    }
                    other => panic!("connection {connection}, round {round}: {other:?}"),
                }
            }
            // A connection's appends are sequenced in the order it sent them.
            assert!(acks.windows(2).all(|pair| pair[0].1 < pair[1].1));
            acks
        }));
    }
    let mut acks = Vec::new();
    for task in tasks {
        acks.extend(task.await.unwrap());
    }
    let total = CONNECTIONS * ROUNDS;
    assert_eq!(acks.len() as u64, total);
    acks.sort_by_key(|(_, seq, _)| *seq);
    for (expected, (_, seq, _)) in acks.iter().enumerate() {
        assert_eq!(*seq, expected as u64, "seqs are not unique and dense");
    }

    // The log: a chain whose hashes this test recomputes, and each ack at
    // the record that holds its event, with that record's entry hash.
    let mut client = daemon.client().await.unwrap();
    let records = read_range(&mut client, 0, total).await.unwrap();
    assert_eq!(records.len() as u64, total);
    check_records(&records, 0).unwrap();
    for ((id, seq, entry_hash), record) in acks.iter().zip(&records) {
        assert_eq!(record.seq, *seq);
        assert_eq!(
            tally_attest::entry_hash(&record.record).as_slice(),
            entry_hash.as_slice(),
            "seq {seq}: the ack's entry hash is not the stored record's"
        );
        assert_eq!(
            stored_event(record).unwrap(),
            tally_tests::event(*id),
            "seq {seq}: the record does not hold the acked event"
        );
    }
    let status = client.status().await.unwrap();
    assert_eq!(status.size, total);
    assert_eq!(
        Some(&status.head_hash),
        acks.last().map(|(_, _, hash)| hash)
    );
}
