//! SIGKILL at a random instant while clients append: every acked event
//! survives with its seq and entry hash, the store passes `tallyd check`, the
//! chain verifies, and seqs continue densely after the restart.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tally_client::ClientError;
use tally_tests::{
    append_pipelined, check_records, event, read_range, stored_event, wait_until, Daemon,
    DaemonOpts,
};

const ROUNDS: usize = 6;
const APPENDERS: usize = 3;
const BATCH: u64 = 5;
const WINDOW: usize = 2;

/// seq -> (event id, entry hash) of every ack any client received.
type Acked = Arc<Mutex<BTreeMap<u64, (u64, [u8; 32])>>>;

/// Six rounds of: appenders running, SIGKILL after a random 50-400 ms,
/// `tallyd check`, restart; after each, every ack is intact and the log grows
/// on from exactly where it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_events_survive_sigkill_at_random_instants() -> anyhow::Result<()> {
    let mut daemon = Daemon::start(DaemonOpts::default())?;
    let log_id = daemon.client().await?.server_hello().log_id.clone();
    let next_id = Arc::new(AtomicU64::new(0));
    let acked: Acked = Arc::default();
    let mut rng = rand::thread_rng();

    for round in 0..ROUNDS {
        let acked_before = acked.lock().unwrap().len();
        let mut appenders = Vec::new();
        for _ in 0..APPENDERS {
            let mut client = daemon.client().await?;
            let next_id = next_id.clone();
            let acked = acked.clone();
            appenders.push(tokio::spawn(async move {
                let batches = std::iter::repeat_with(move || {
                    let first = next_id.fetch_add(BATCH, Ordering::Relaxed);
                    first..first + BATCH
                });
                append_pipelined(&mut client, batches, WINDOW, |ids, acks| {
                    let mut acked = acked.lock().unwrap();
                    for (id, ack) in ids.zip(acks) {
                        let previous = acked.insert(ack.seq, (id, ack.entry_hash));
                        assert!(previous.is_none(), "seq {} acked twice", ack.seq);
                    }
                })
                .await
            }));
        }
        // Kill while appends are in full flow: after the first acks of the round.
        let flowing = wait_until(Duration::from_secs(10), || {
            acked.lock().unwrap().len() > acked_before
        })
        .await;
        assert!(flowing, "round {round}: no append was acked within 10 s");
        let delay = Duration::from_millis(rng.gen_range(50..=400));
        tokio::time::sleep(delay).await;
        daemon.kill()?;

        for appender in appenders {
            let result = tokio::time::timeout(Duration::from_secs(10), appender).await??;
            match result {
                Err(ClientError::Io(_) | ClientError::Closed) => {}
                other => panic!("round {round}: an appender ended with {other:?}"),
            }
        }
        assert!(daemon.socket().exists(), "SIGKILL leaves the socket file");
        let acked_now = acked.lock().unwrap().clone();

        // The offline checker, on the store exactly as the kill left it.
        let check = daemon.tallyd(&["check"])?;
        assert_eq!(check.code, 0, "tallyd check failed: {check:?}");
        let (checked_size, checked_head) = parse_check(&check.stdout)?;

        daemon.restart()?;
        let mut client = daemon.client().await?;
        assert_eq!(client.server_hello().log_id, log_id, "the log id changed");
        let status = client.status().await?;
        assert_eq!(status.size, checked_size);
        assert_eq!(hex::encode(&status.head_hash), checked_head);
        let (&last_acked, _) = acked_now.last_key_value().unwrap();
        assert!(
            last_acked < status.size,
            "seq {last_acked} was acked but the log has {} records",
            status.size
        );

        let records = read_range(&mut client, 0, status.size).await?;
        check_records(&records, 0)?;
        for (&seq, &(id, hash)) in &acked_now {
            let record = &records[seq as usize];
            assert_eq!(
                tally_attest::entry_hash(&record.record),
                hash,
                "round {round}: seq {seq} differs from its ack"
            );
            assert_eq!(stored_event(record)?, event(id), "round {round}: seq {seq}");
        }

        // The log continues densely from where it stopped.
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let ack = client.append(vec![event(id)]).await?[0];
        assert_eq!(ack.seq, status.size, "round {round}: a seq was skipped");
        acked.lock().unwrap().insert(ack.seq, (id, ack.entry_hash));

        let verified = daemon.export_and_verify()?;
        assert_eq!(verified.size, status.size + 1);
        assert_eq!(verified.head_hash, hex::encode(ack.entry_hash));
        println!(
            "round {round}: killed after {delay:?}; {} acked in the round, log size {}",
            acked_now.len() - acked_before,
            status.size
        );
    }
    Ok(())
}

/// Parses `tallyd check`'s "ok: N records, head H, log id L".
fn parse_check(stdout: &str) -> anyhow::Result<(u64, String)> {
    let line = stdout.trim();
    let rest = line
        .strip_prefix("ok: ")
        .ok_or_else(|| anyhow::anyhow!("unexpected tallyd check output {line:?}"))?;
    let (size, rest) = rest
        .split_once(" records, head ")
        .ok_or_else(|| anyhow::anyhow!("unexpected tallyd check output {line:?}"))?;
    let head = rest.split(',').next().unwrap_or_default();
    Ok((size.parse()?, head.to_owned()))
}
