//! Followers: every committed record exactly once, in order, from the seq
//! asked for, history first and then live records as they commit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_client::proto::StoredRecord;
use tally_client::{Client, Follow};
use tally_tests::{append_pipelined, check_records, event, stored_event, Daemon, DaemonOpts};

/// seq -> (event id, entry hash) of every ack the appenders received.
type Acked = Arc<Mutex<HashMap<u64, (u64, [u8; 32])>>>;

/// How long a follower may wait for a record that must come.
const NEXT_TIMEOUT: Duration = Duration::from_secs(10);

async fn next(follow: &mut Follow, expected_seq: u64) -> anyhow::Result<StoredRecord> {
    tokio::time::timeout(NEXT_TIMEOUT, follow.next())
        .await
        .map_err(|_| anyhow::anyhow!("follower hung waiting for seq {expected_seq}"))?
        .map_err(Into::into)
}

/// Takes records `from..to` from a follower, checking each arrives once, in order.
async fn take(follow: &mut Follow, from: u64, to: u64) -> anyhow::Result<Vec<StoredRecord>> {
    let mut records = Vec::new();
    for seq in from..to {
        let record = next(follow, seq).await?;
        assert_eq!(record.seq, seq, "follower got seq {} for {seq}", record.seq);
        records.push(record);
    }
    check_records(&records, from)?;
    Ok(records)
}

/// Nothing more arrives within a short wait (no duplicates after the end).
async fn assert_quiet(follow: &mut Follow) {
    if let Ok(extra) = tokio::time::timeout(Duration::from_millis(300), follow.next()).await {
        panic!("the follower got more than was appended: {extra:?}");
    }
}

/// A follower started on an empty log sees all 5,000 events appended by two
/// pipelining clients, each exactly once and in seq order, with the content
/// and entry hash each appender was acked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_sees_every_event_once_in_order() -> anyhow::Result<()> {
    const PER_CLIENT: u64 = 2_500;
    let daemon = Daemon::start(DaemonOpts::default())?;
    let mut follow = daemon.client().await?.follow(0).await?;

    let acked: Acked = Arc::default();
    let mut appenders = Vec::new();
    for c in 0..2 {
        let mut client = daemon.client().await?;
        let acked = acked.clone();
        appenders.push(tokio::spawn(async move {
            let first = c * PER_CLIENT;
            let batches = (0..PER_CLIENT / 50).map(move |b| first + b * 50..first + b * 50 + 50);
            append_pipelined(&mut client, batches, 4, |ids, acks| {
                let mut acked = acked.lock().unwrap();
                acked.extend(
                    acks.iter()
                        .zip(ids)
                        .map(|(ack, id)| (ack.seq, (id, ack.entry_hash))),
                );
            })
            .await
        }));
    }
    let records = take(&mut follow, 0, 2 * PER_CLIENT).await?;
    for appender in appenders {
        appender.await??;
    }
    assert_quiet(&mut follow).await;

    let acked = acked.lock().unwrap();
    assert_eq!(acked.len() as u64, 2 * PER_CLIENT);
    for record in &records {
        let (id, hash) = acked[&record.seq];
        assert_eq!(
            record.entry_hash.as_ref(),
            hash.as_slice(),
            "seq {}",
            record.seq
        );
        assert_eq!(stored_event(record)?, event(id), "seq {}", record.seq);
    }
    Ok(())
}

/// Followers started on a populated log at from = 0, from = N in the middle
/// and from = size get the history from their seq on, then the live records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_start_at_the_seq_they_ask_for() -> anyhow::Result<()> {
    const SIZE: u64 = 3_000;
    const MIDDLE: u64 = 1_234;
    let daemon = Daemon::start(DaemonOpts::default())?;
    let mut client: Client = daemon.client().await?;
    for first in (0..SIZE).step_by(500) {
        client
            .append((first..first + 500).map(event).collect())
            .await?;
    }

    let mut from_start = daemon.client().await?.follow(0).await?;
    let mut from_middle = daemon.client().await?.follow(MIDDLE).await?;
    let mut from_end = daemon.client().await?.follow(SIZE).await?;
    let history = take(&mut from_start, 0, SIZE).await?;
    let middle = take(&mut from_middle, MIDDLE, SIZE).await?;
    assert_eq!(middle.as_slice(), &history[MIDDLE as usize..]);
    assert_quiet(&mut from_end).await;

    let acks = client
        .append((SIZE..SIZE + 10).map(event).collect())
        .await?;
    for follow in [&mut from_start, &mut from_middle, &mut from_end] {
        let live = take(follow, SIZE, SIZE + 10).await?;
        for (record, ack) in live.iter().zip(&acks) {
            assert_eq!(record.entry_hash.as_ref(), ack.entry_hash.as_slice());
        }
        // Linked to the history it followed.
        let (header, _) = tally_attest::RecordHeader::parse(&live[0].record)?;
        assert_eq!(
            header.prev_hash.as_slice(),
            history.last().unwrap().entry_hash.as_ref()
        );
        assert_quiet(follow).await;
    }
    Ok(())
}
