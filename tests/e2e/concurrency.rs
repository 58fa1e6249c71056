//! Many clients appending at once: seqs are unique and dense, each client's
//! requests keep their order, and the exported chain verifies to the head the
//! daemon reports.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tally_client::Ack;
use tally_tests::{append_pipelined, read_range, stored_event, Daemon, DaemonOpts};

const CLIENTS: u64 = 10;
const EVENTS_PER_CLIENT: u64 = 10_000;
const BATCH: u64 = 100;
const WINDOW: usize = 4;

/// 10 pipelining clients append 100,000 events: every ack's seq is unique and
/// the seqs are exactly 0..100,000; export + verify (the CLI) recompute the
/// head the daemon reports, which is the entry hash of the last ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_get_dense_unique_seqs_and_a_verifiable_chain() -> anyhow::Result<()> {
    let daemon = Daemon::start(DaemonOpts::default())?;
    let started = Instant::now();
    let acks: Arc<Mutex<Vec<(u64, Ack)>>> = Arc::default();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut client = daemon.client().await?;
        let acks = acks.clone();
        tasks.push(tokio::spawn(async move {
            let first = c * EVENTS_PER_CLIENT;
            let batches = (0..EVENTS_PER_CLIENT / BATCH)
                .map(move |b| first + b * BATCH..first + (b + 1) * BATCH);
            let mut last_seq = None;
            append_pipelined(&mut client, batches, WINDOW, |ids, batch_acks| {
                // Requests of one connection are sequenced in the order sent.
                assert!(
                    last_seq < Some(batch_acks[0].seq),
                    "client {c} out of order"
                );
                last_seq = batch_acks.last().map(|ack| ack.seq);
                let mut acks = acks.lock().unwrap();
                acks.extend(ids.zip(batch_acks.iter().copied()));
            })
            .await
        }));
    }
    for task in tasks {
        task.await??;
    }
    let appended = started.elapsed();

    let mut acks = Arc::try_unwrap(acks).unwrap().into_inner().unwrap();
    let total = CLIENTS * EVENTS_PER_CLIENT;
    assert_eq!(acks.len() as u64, total);
    acks.sort_by_key(|(_, ack)| ack.seq);
    for (expected, (_, ack)) in acks.iter().enumerate() {
        assert_eq!(ack.seq, expected as u64, "seqs are not unique and dense");
    }

    let mut client = daemon.client().await?;
    let status = client.status().await?;
    let (_, last) = acks.last().copied().unwrap();
    assert_eq!(status.size, total);
    assert_eq!(status.head_hash, last.entry_hash.to_vec());

    // Each ack names the record holding that client's event (sampled: the
    // first and last event of every client).
    for c in 0..CLIENTS {
        for id in [c * EVENTS_PER_CLIENT, (c + 1) * EVENTS_PER_CLIENT - 1] {
            let (_, ack) = acks
                .iter()
                .find(|(event, _)| *event == id)
                .copied()
                .unwrap();
            let record = read_range(&mut client, ack.seq, ack.seq + 1).await?;
            assert_eq!(stored_event(&record[0])?, tally_tests::event(id));
            assert_eq!(tally_attest::entry_hash(&record[0].record), ack.entry_hash);
        }
    }

    let exported = Instant::now();
    let verified = daemon.export_and_verify()?;
    assert_eq!(verified.size, total);
    assert_eq!(verified.head_hash, hex::encode(&status.head_hash));
    assert_eq!(verified.head_hash, hex::encode(last.entry_hash));
    println!(
        "appended {total} events in {appended:?}; export + verify took {:?}",
        exported.elapsed()
    );
    Ok(())
}
