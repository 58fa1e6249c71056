//! Fan-out under load: followers served from shared pages, one paused, one
//! joining late (it reads the store until it reaches the shared pages), one
//! on a raw connection with a multi-byte request id, all get every committed
//! record exactly once, in order, with its entry hash; a follower that never
//! reads is cut off by the slow-reader timeout while ingest goes on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_client::proto::{request, response, FollowRequest, Request, StoredRecord};
use tally_client::Follow;
use tally_tests::raw::RawConn;
use tally_tests::{append_pipelined, check_records, Daemon, DaemonOpts};

/// seq -> entry hash of every ack the appenders received.
type Acked = Arc<Mutex<HashMap<u64, [u8; 32]>>>;

/// Events per phase: before and after the stalled follower is cut off.
const PHASE: u64 = 12_000;

/// Where the late follower starts.
const LATE_FROM: u64 = PHASE / 2 + 1;

/// How long a follower may wait for a record that must come.
const NEXT_TIMEOUT: Duration = Duration::from_secs(20);

/// Takes records `from..to`, each once and in order, pausing once after
/// `pause_at` records when asked to.
async fn take(
    mut follow: Follow,
    from: u64,
    to: u64,
    pause: Option<(u64, Duration)>,
) -> anyhow::Result<Vec<StoredRecord>> {
    let mut records = Vec::new();
    for seq in from..to {
        if pause.is_some_and(|(at, _)| at == seq) {
            tokio::time::sleep(pause.map_or(Duration::ZERO, |(_, wait)| wait)).await;
        }
        let record = tokio::time::timeout(NEXT_TIMEOUT, follow.next())
            .await
            .map_err(|_| anyhow::anyhow!("follower hung waiting for seq {seq}"))??;
        anyhow::ensure!(record.seq == seq, "got seq {} for {seq}", record.seq);
        records.push(record);
    }
    // Nothing more: no record is sent twice.
    if let Ok(extra) = tokio::time::timeout(Duration::from_millis(300), follow.next()).await {
        anyhow::bail!("the follower got more than was appended: {extra:?}");
    }
    Ok(records)
}

/// A raw follower with request id 300: every frame is a `Records` page for
/// that id, and together they hold seqs `0..to` once each, in order.
async fn take_raw(mut conn: RawConn, to: u64) -> anyhow::Result<Vec<StoredRecord>> {
    let mut records: Vec<StoredRecord> = Vec::new();
    while (records.len() as u64) < to {
        let response = tokio::time::timeout(NEXT_TIMEOUT, conn.recv())
            .await
            .map_err(|_| anyhow::anyhow!("raw follower hung at {}", records.len()))??
            .ok_or_else(|| anyhow::anyhow!("raw follower closed at {}", records.len()))?;
        anyhow::ensure!(response.id == 300, "a frame for id {}", response.id);
        let Some(response::Body::Records(page)) = response.body else {
            anyhow::bail!("not a page: {response:?}");
        };
        let start = records.len() as u64;
        anyhow::ensure!(
            page.resume_seq == start + page.records.len() as u64,
            "page resume_seq {} after {start} + {} records",
            page.resume_seq,
            page.records.len()
        );
        records.extend(page.records);
    }
    anyhow::ensure!(
        records.len() as u64 == to,
        "{} records for {to}",
        records.len()
    );
    Ok(records)
}

async fn append_phase(daemon: &Daemon, acked: &Acked, first: u64) -> anyhow::Result<()> {
    let mut appenders = Vec::new();
    for c in 0..2 {
        let mut client = daemon.client().await?;
        let acked = acked.clone();
        let start = first + c * PHASE / 2;
        appenders.push(tokio::spawn(async move {
            let batches = (0..PHASE / 2 / 100).map(move |b| start + b * 100..start + b * 100 + 100);
            append_pipelined(&mut client, batches, 8, |_, acks| {
                acked
                    .lock()
                    .unwrap()
                    .extend(acks.iter().map(|ack| (ack.seq, ack.entry_hash)));
            })
            .await
        }));
    }
    for appender in appenders {
        appender.await??;
    }
    Ok(())
}

fn follow_request(id: u64) -> Request {
    Request {
        id,
        body: Some(request::Body::Follow(FollowRequest {
            from_seq: 0,
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_follower_gets_every_record_and_a_stalled_one_is_cut_off() -> anyhow::Result<()> {
    let daemon = Daemon::start(DaemonOpts::with_config("slow_reader_timeout_secs = 2\n"))?;
    let total = 2 * PHASE;
    let acked: Acked = Arc::default();

    let mut stalled = RawConn::greeted(&daemon.socket()).await?;
    stalled.send(&follow_request(2)).await?;
    let mut raw = RawConn::greeted(&daemon.socket()).await?;
    raw.send(&follow_request(300)).await?;
    let raw = tokio::spawn(take_raw(raw, total));
    let mut followers = Vec::new();
    for pause in [None, None, Some((PHASE / 3, Duration::from_millis(700)))] {
        let follow = daemon.client().await?.follow(0).await?;
        followers.push(tokio::spawn(take(follow, 0, total, pause)));
    }

    append_phase(&daemon, &acked, 0).await?;
    // A follower after the first phase from a seq inside a shared page
    // (appends are of 100 events): the store up to the next page start,
    // then the ring.
    let late = daemon.client().await?.follow(LATE_FROM).await?;
    followers.push(tokio::spawn(take(late, LATE_FROM, total, None)));

    let cut = tally_tests::wait_until(Duration::from_secs(20), || {
        daemon.stderr().contains("not reading its responses")
    })
    .await;
    anyhow::ensure!(
        cut,
        "the stalled follower was not cut off: {}",
        daemon.stderr()
    );
    // Ingest goes on after (and despite) the stalled follower.
    append_phase(&daemon, &acked, PHASE).await?;
    assert_eq!(daemon.client().await?.status().await?.size, total);

    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len() as u64, total);
    let mut all = vec![raw.await??];
    for follower in followers {
        all.push(follower.await??);
    }
    for (n, records) in all.iter().enumerate() {
        // In order from the start asked for, entry hashes that are the
        // records' (recomputed), each linked to the one before...
        let from = records.first().map_or(0, |record| record.seq);
        assert_eq!(from, if n == all.len() - 1 { LATE_FROM } else { 0 });
        check_records(records, from).map_err(|err| anyhow::anyhow!("follower {n}: {err}"))?;
        // ... and what the appenders were acked for.
        for record in records {
            assert_eq!(
                record.entry_hash.as_ref(),
                acked[&record.seq].as_slice(),
                "follower {n}, seq {}",
                record.seq
            );
        }
    }
    // The stalled follower's connection was closed: what it reads now is
    // what the socket held when it was cut off, far short of the log.
    let mut got = 0;
    loop {
        match stalled.recv().await {
            Ok(Some(response)) => {
                if let Some(response::Body::Records(page)) = response.body {
                    got += page.records.len() as u64;
                }
            }
            Ok(None) => break,
            // The timeout cut the frame it was writing short.
            Err(err) if err.to_string().contains("closed the connection inside") => break,
            Err(err) => return Err(err),
        }
    }
    assert!(
        got < PHASE,
        "the stalled follower got {got} records before it was cut off"
    );
    Ok(())
}

/// Takes `count` records from `from` off a follow (in order, once each).
async fn take_n(follow: &mut Follow, from: u64, count: u64) -> anyhow::Result<Vec<StoredRecord>> {
    let mut records = Vec::new();
    for seq in from..from + count {
        let record = tokio::time::timeout(NEXT_TIMEOUT, follow.next())
            .await
            .map_err(|_| anyhow::anyhow!("follower hung waiting for seq {seq}"))??;
        anyhow::ensure!(record.seq == seq, "got seq {} for {seq}", record.seq);
        records.push(record);
    }
    Ok(records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_behind_the_ring_share_their_reads_and_an_erasure_drops_them(
) -> anyhow::Result<()> {
    //! Followers that start behind the shared pages read the store in pages
    //! that end at the catch-up boundaries and keep them for each other
    //! (fanout.rs). From seq 0 and from inside a page, each gets every
    //! record once, in order, with its acked entry hash. A page a follower
    //! read is dropped by an erasure like the ring's: while that follower
    //! stays connected, one that follows the same seqs afterwards is sent
    //! none of the erased content.
    use tally_client::proto::{EraseRequest, Event};
    let daemon = Daemon::start(DaemonOpts::default())?;
    let acked: Acked = Arc::default();
    append_phase(&daemon, &acked, 0).await?;
    let mut followers = Vec::new();
    for from in [0, 0, 0, 4_097, 777] {
        let follow = daemon.client().await?.follow(from).await?;
        followers.push((from, tokio::spawn(take(follow, from, PHASE, None))));
    }
    let acked = acked.lock().unwrap().clone();
    for (n, (from, follower)) in followers.into_iter().enumerate() {
        let records = follower.await??;
        check_records(&records, from).map_err(|err| anyhow::anyhow!("follower {n}: {err}"))?;
        for record in &records {
            assert_eq!(
                record.entry_hash.as_ref(),
                acked[&record.seq].as_slice(),
                "follower {n}, seq {}",
                record.seq
            );
        }
    }

    // 40 events of one subject past the ring (nobody follows while they
    // are appended, so the publisher restarts past them).
    let secret = |i: u64| format!("fanout-catch-up-secret-{i:03}").into_bytes();
    let events: Vec<Event> = (0..40)
        .map(|i| Event {
            kind: "prompt".into(),
            subject: "user-gone".into(),
            payload: secret(i),
            ..Event::default()
        })
        .collect();
    daemon.client().await?.append(events).await?;
    let mut reader = daemon.client().await?.follow(PHASE).await?;
    let read = take_n(&mut reader, PHASE, 40).await?;
    assert!(
        read.iter()
            .all(|r| r.content.windows(12).any(|w| w == b"catch-up-sec")),
        "the first follower was sent the content"
    );
    let mut client = daemon.client().await?;
    let reply = client
        .erase(EraseRequest {
            subject: "user-gone".into(),
            reason: "test".into(),
            ..EraseRequest::default()
        })
        .await?;
    assert_eq!(reply.erased, 40);
    // `reader` is still connected (the pages it read would stay kept).
    let mut after = daemon.client().await?.follow(PHASE).await?;
    let again = take_n(&mut after, PHASE, 40).await?;
    for record in &again {
        assert!(
            record.content.is_empty(),
            "seq {} was sent content after its erasure",
            record.seq
        );
    }
    assert_eq!(
        again
            .iter()
            .map(|r| r.entry_hash.clone())
            .collect::<Vec<_>>(),
        read.iter()
            .map(|r| r.entry_hash.clone())
            .collect::<Vec<_>>()
    );
    drop(reader);
    Ok(())
}
