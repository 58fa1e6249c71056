//! SIGKILL during an erasure (docs/DESIGN.md, section 3b: one LMDB
//! transaction holds the `tally.erasure` records, the deleted content rows
//! and `shred_pending`; the key slots are zeroed and flushed after it;
//! `shred_pending` goes; then the ack). Each round erases one subject and
//! kills the daemon at the erasure's LMDB commit, at the key file's write or
//! flush (between the commit and the ack), or at a random instant; the
//! daemon's own restart must leave the erasure whole or absent:
//!
//! - whole: exactly one `tally.erasure` record for the subject, none of its
//!   records served with content, every key slot of theirs zero on disk (the
//!   restart finished a pending shred);
//! - absent: no erasure record, every one of its records served with its
//!   payload, its keys intact; the erasure, asked again, erases them all.
//!
//! An acknowledged erasure must be whole. Events acked just before each
//! erasure (journaled, so committed with it) survive at their seqs, and at
//! the end the export verifies with every erasure counted and `tallyd check`
//! agrees.

use std::path::Path;
use std::time::Duration;

use rand::Rng;
use serde_json::Value;
use tally_client::proto::{EraseRequest, Event, StoredRecord};
use tally_tests::{read_range, Daemon, DaemonOpts};

use super::aim::{kill_in_io_on, kill_in_lmdb_commit, Io};

const SUBJECTS: u64 = 12;
const EVENTS: u64 = 600;

fn secret(i: u64) -> Vec<u8> {
    format!("kq7-erasure-crash-payload-{i:05}-kq7").into_bytes()
}

fn event(i: u64) -> Event {
    Event {
        kind: "prompt".into(),
        actor: "agent".into(),
        subject: subject(i % SUBJECTS),
        payload: secret(i),
        ..Event::default()
    }
}

/// An event of a subject no round erases.
fn bystander(i: u64) -> Event {
    Event {
        subject: "crash-bystander".into(),
        ..event(i)
    }
}

fn subject(n: u64) -> String {
    format!("crash-subject-{n}")
}

/// Record `seq`'s key slot, read from the key file as root would.
fn key_slot(data_dir: &Path, seq: u64) -> [u8; 32] {
    let keys = std::fs::read(data_dir.join("store/content-keys")).unwrap();
    let at = 64 + 32 * usize::try_from(seq).unwrap();
    keys[at..at + 32].try_into().unwrap()
}

fn holds(record: &StoredRecord, needle: &[u8]) -> bool {
    record.content.windows(needle.len()).any(|w| w == needle)
}

/// The `tally.erasure` records' events naming `subject` in their selection.
fn erasures_of(daemon: &Daemon, subject: &str) -> Vec<Value> {
    let tail = daemon
        .tally(&["tail", "-n", "100000", "--json", "--kind", "tally.erasure"])
        .unwrap();
    assert_eq!(tail.code, 0, "tally tail: {tail:?}");
    tail.stdout
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|event| event["attributes"]["selection"] == format!("subject={subject:?}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_an_erasure() {
    let mut rng = tally_tests::seed::rng("erasure-kill");
    let mut daemon = Daemon::start(DaemonOpts::default()).unwrap();
    let data_dir = daemon.data_dir();
    let mut client = daemon.client().await.unwrap();
    let mut acked = Vec::new();
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(50) {
        let acks = client
            .append(chunk.iter().copied().map(event).collect())
            .await
            .unwrap();
        acked.extend(acks.iter().map(|ack| (ack.seq, ack.entry_hash)));
    }
    drop(client);
    let seqs_of = |n: u64| (0..EVENTS).filter(move |i| i % SUBJECTS == n);
    let mut landed = std::collections::BTreeMap::<&str, u32>::new();
    let mut erased_total = 0;
    let rounds = super::rounds(8).min(usize::try_from(SUBJECTS).unwrap());
    for round in 0..rounds {
        let n = round as u64;
        let who = subject(n);
        // A few events acked just before the erasure: journaled, so its
        // LMDB commit carries them.
        let mut client = daemon.client().await.unwrap();
        let acks = client
            .append((0..5).map(|i| bystander(EVENTS + n * 5 + i)).collect())
            .await
            .unwrap();
        acked.extend(acks.iter().map(|ack| (ack.seq, ack.entry_hash)));
        let request = EraseRequest {
            subject: who.clone(),
            reason: format!("crash round {round}"),
            ..EraseRequest::default()
        };
        let erasing = tokio::spawn(async move { client.erase(request).await });
        let pid = daemon.pid().unwrap();
        let aim = rng.gen_range(0..3u8);
        let delay = Duration::from_micros(rng.gen_range(0..15_000));
        let hit = tokio::task::spawn_blocking(move || match aim {
            0 => kill_in_lmdb_commit(pid, Duration::from_secs(2)),
            1 => match kill_in_io_on(pid, Duration::from_secs(2), "store/content-keys") {
                Some(Io::Write) => Some("writing the content key file"),
                Some(Io::Flush) => Some("flushing the content key file"),
                None => None,
            },
            _ => {
                std::thread::sleep(delay);
                None
            }
        })
        .await
        .unwrap();
        daemon.kill().unwrap();
        let where_ = hit.unwrap_or("at a random instant");
        *landed.entry(where_).or_default() += 1;
        let reply = erasing.await.unwrap();
        daemon
            .restart()
            .unwrap_or_else(|err| panic!("round {round}: restart after a kill {where_}: {err:#}"));

        // Every acked event is where its ack said.
        let mut client = daemon.client().await.unwrap();
        let size = client.status().await.unwrap().size;
        let records = read_range(&mut client, 0, size).await.unwrap();
        for &(seq, hash) in &acked {
            let record = &records[usize::try_from(seq).unwrap()];
            assert_eq!(
                tally_attest::entry_hash(&record.record),
                hash,
                "round {round}: acked seq {seq} changed"
            );
        }
        let erasures = erasures_of(&daemon, &who);
        let whole = match erasures.len() {
            0 => false,
            1 => true,
            more => panic!("round {round}: {more} erasure records for {who}"),
        };
        if reply.is_ok() {
            assert!(
                whole,
                "round {round}: the erasure was acked, yet after the kill {where_} it is not in the log"
            );
        }
        for seq in seqs_of(n) {
            let record = &records[usize::try_from(seq).unwrap()];
            let slot = key_slot(&data_dir, seq);
            if whole {
                assert!(
                    record.content.is_empty() && slot == [0; 32],
                    "round {round}: seq {seq} of an erasure in the log kept its content or key \
                     after a kill {where_} and the restart"
                );
            } else {
                assert!(
                    holds(record, &secret(seq)) && slot != [0; 32],
                    "round {round}: seq {seq} lost its content or key though no erasure is in \
                     the log (killed {where_})"
                );
            }
        }
        let expected = seqs_of(n).count() as u64;
        if !whole {
            let again = client
                .erase(EraseRequest {
                    subject: who.clone(),
                    reason: format!("crash round {round}, again"),
                    ..EraseRequest::default()
                })
                .await
                .unwrap();
            assert_eq!(again.erased, expected, "round {round}: the retry");
        }
        erased_total += expected;
        println!(
            "erasure-kill round {round}: killed {where_}; the erasure was {} ({}acked)",
            if whole { "whole" } else { "absent, retried" },
            if reply.is_ok() { "" } else { "not " }
        );
    }
    println!("erasure-kill: {rounds} kills {landed:?}");

    let bundle = daemon.dir().join("erased.bundle");
    let export = daemon
        .tally(&["export", "--out", bundle.to_str().unwrap()])
        .unwrap();
    assert_eq!(export.code, 0, "{export:?}");
    let verify = daemon
        .tally(&["verify", "--json", bundle.to_str().unwrap()])
        .unwrap();
    let doc: Value = serde_json::from_str(verify.stdout.trim()).unwrap();
    assert_eq!(verify.code, 3, "PARTIAL without the identity: {verify:?}");
    assert!(doc["first_bad_seq"].is_null(), "{doc}");
    assert_eq!(
        doc["checks"]
            .as_array()
            .and_then(|checks| checks.iter().find(|check| check["name"] == "content"))
            .and_then(|check| check["erased"].as_u64()),
        Some(erased_total),
        "every erasure counted: {doc}"
    );
    assert!(daemon.terminate().unwrap().success());
    let check = daemon.tallyd(&["check"]).unwrap();
    assert_eq!(check.code, 0, "tallyd check: {check:?}");
}
