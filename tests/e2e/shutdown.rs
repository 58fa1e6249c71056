//! SIGTERM: the daemon drains (every ack it sent is durable), exits 0 and
//! removes its socket, even with followers, idle and stuck clients attached.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tally_client::ClientError;
use tally_tests::{
    append_pipelined, check_records, event, events, never_reading_client, read_range, stored_event,
    wait_until, Daemon, DaemonOpts,
};

/// seq -> (event id, entry hash) of every ack any client received.
type Acked = Arc<Mutex<BTreeMap<u64, (u64, [u8; 32])>>>;

/// Restarts the daemon and checks every ack in `acked` is stored unchanged
/// and the whole chain verifies. Returns the log size.
async fn restart_and_check(daemon: &mut Daemon, acked: &Acked) -> anyhow::Result<u64> {
    daemon.restart()?;
    let mut client = daemon.client().await?;
    let size = client.status().await?.size;
    let records = read_range(&mut client, 0, size).await?;
    check_records(&records, 0)?;
    let acked = acked.lock().unwrap().clone();
    for (&seq, &(id, hash)) in &acked {
        let record = records
            .get(seq as usize)
            .unwrap_or_else(|| panic!("seq {seq} was acked but the log has {size} records"));
        assert_eq!(tally_attest::entry_hash(&record.record), hash, "seq {seq}");
        assert_eq!(stored_event(record)?, event(id), "seq {seq}");
    }
    let verified = daemon.export_and_verify()?;
    assert_eq!(verified.size, size);
    Ok(size)
}

/// SIGTERM while three clients append (and a follower and an idle client are
/// connected): exit status 0, socket removed, and after a restart every ack
/// any client received is stored with its seq and entry hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_acks_exits_zero_and_removes_the_socket() -> anyhow::Result<()> {
    let mut daemon = Daemon::start(DaemonOpts::default())?;
    let next_id = Arc::new(AtomicU64::new(0));
    let acked: Acked = Arc::default();
    let mut appenders = Vec::new();
    for _ in 0..3 {
        let mut client = daemon.client().await?;
        let (next_id, acked) = (next_id.clone(), acked.clone());
        appenders.push(tokio::spawn(async move {
            let batches = std::iter::repeat_with(move || {
                let first = next_id.fetch_add(10, Ordering::Relaxed);
                first..first + 10
            });
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
    let mut follow = daemon.client().await?.follow(0).await?;
    let _idle = daemon.client().await?;
    let flowing = wait_until(Duration::from_secs(10), || {
        acked.lock().unwrap().len() > 500
    })
    .await;
    assert!(flowing, "appends did not get going");
    follow.next().await?;

    let started = Instant::now();
    let status = daemon.terminate()?;
    let stopping = started.elapsed();
    assert_eq!(
        status.code(),
        Some(0),
        "{status}; stderr:\n{}",
        daemon.stderr()
    );
    assert!(!daemon.socket().exists(), "the socket file was left behind");
    assert!(
        daemon.stderr().contains("stopped"),
        "no orderly stop in the log:\n{}",
        daemon.stderr()
    );
    for appender in appenders {
        match tokio::time::timeout(Duration::from_secs(10), appender).await?? {
            Err(ClientError::Io(_) | ClientError::Closed) => {}
            other => panic!("an appender ended with {other:?}"),
        }
    }

    let acked_count = acked.lock().unwrap().len();
    let size = restart_and_check(&mut daemon, &acked).await?;
    // Draining answers every request it read: nothing is stored unacked.
    assert_eq!(
        size, acked_count as u64,
        "events were committed but never acked"
    );
    println!("stopped in {stopping:?}; {acked_count} acked, {size} stored");
    Ok(())
}

/// A client that never reads its acks cannot hold a shutdown past
/// shutdown_grace_secs: the daemon still exits 0, removes its socket, and
/// the acked data of others is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_client_cannot_hold_shutdown_past_the_grace_period() -> anyhow::Result<()> {
    let mut daemon = Daemon::start(DaemonOpts::with_config("shutdown_grace_secs = 1"))?;
    let acked: Acked = Arc::default();
    let acks = daemon.client().await?.append(events(0, 10)).await?;
    acked.lock().unwrap().extend(
        acks.iter()
            .zip(0..)
            .map(|(ack, id)| (ack.seq, (id, ack.entry_hash))),
    );

    let (writer, _) = never_reading_client(&daemon, 1_000_000, 50).await?;

    let started = Instant::now();
    let status = daemon.terminate()?;
    let stopping = started.elapsed();
    writer.abort();
    assert_eq!(
        status.code(),
        Some(0),
        "{status}; stderr:\n{}",
        daemon.stderr()
    );
    assert!(!daemon.socket().exists(), "the socket file was left behind");
    assert!(
        stopping < Duration::from_secs(8),
        "shutdown took {stopping:?} with a 1 s grace period"
    );
    restart_and_check(&mut daemon, &acked).await?;
    Ok(())
}
