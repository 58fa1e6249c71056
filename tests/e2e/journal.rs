//! The ack journal on a real daemon: a lone client's acks come from it, a
//! SIGKILL before they reach LMDB loses none of them (the next start, or
//! `tallyd check`, replays them), and a frame damaged in the middle refuses
//! the start with exit 3 instead of dropping the acked frames after it.
//! With `ack_journal_max_bytes = 0` the journal is off: every ack follows an
//! LMDB commit, no frame is ever written, and a SIGKILL under concurrent
//! load loses no acked event either.
//!
//! The daemons run with the debug build's `TALLYD_HOLD_APPLY=1`, which holds
//! the timed apply (100 ms) for an hour: the journaled frames are still only
//! in the journal when the daemon is killed, however long this machine's
//! flushes stall, so the damaged-frame half always runs.

use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tally_tests::{
    append_pipelined, check_records, event, read_range, seed, stored_event, tallyd, wait_until,
    Daemon, DaemonOpts,
};

/// Offset of the frame tag (after magic, first seq, count and length).
const TAG_OFFSET: u64 = 24;

/// A frame's first bytes (docs/DESIGN.md, section 5b).
const FRAME_MAGIC: &[u8; 8] = b"TALLYJ02";

/// Frames start at multiples of this.
const JOURNAL_BLOCK: usize = 4096;

/// What tallyd logs when a start (or `tallyd check`) replays the journal.
const REPLAYED: &str = "committed them from the ack journal";

/// Options of a daemon whose journaled batches stay in the journal.
fn held_apply(config: &str) -> DaemonOpts {
    DaemonOpts {
        env: vec![("TALLYD_HOLD_APPLY".into(), "1".into())],
        ..DaemonOpts::with_config(config)
    }
}

fn journal_path(daemon: &Daemon) -> std::path::PathBuf {
    daemon.data_dir().join("store").join("ack-journal")
}

/// Offsets of the blocks of `journal` that start with a frame's magic.
fn frames_in(journal: &Path) -> anyhow::Result<Vec<usize>> {
    let content = std::fs::read(journal)?;
    Ok((0..content.len())
        .step_by(JOURNAL_BLOCK)
        .filter(|&at| content[at..].starts_with(FRAME_MAGIC))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journaled_acks_survive_sigkill_and_a_damaged_frame_refuses_the_start() -> anyhow::Result<()>
{
    let mut daemon = Daemon::start(held_apply(""))?;
    let mut client = daemon.client().await?;
    let mut acked = Vec::new();
    for i in 0..5 {
        acked.extend(client.append(vec![event(i)]).await?);
    }
    daemon.kill()?;
    assert_eq!(
        acked.iter().map(|ack| ack.seq).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    // One frame per append (a lone client journals its own job), each at a
    // block of its own, from the region's start: all five only there.
    assert_eq!(
        frames_in(&journal_path(&daemon))?,
        [0, 1, 2, 3, 4].map(|block| block * JOURNAL_BLOCK),
        "the five acked appends are five frames in the journal"
    );

    // On a copy: `tallyd check` replays the journal and sees every ack.
    let copy = daemon.dir().join("copy");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(daemon.data_dir())
        .arg(&copy)
        .status()?;
    assert!(copied.success(), "cp -a of the data directory failed");
    let check = tallyd(&[
        OsStr::new("--data-dir"),
        copy.as_os_str(),
        OsStr::new("--log"),
        OsStr::new("info"),
        OsStr::new("--config"),
        daemon.config_path().as_os_str(),
        OsStr::new("check"),
    ])?;
    assert_eq!(check.code, 0, "{check:?}");
    assert!(
        check.stdout.starts_with("ok: 5 records,"),
        "every acked event is in the log: {check:?}"
    );
    assert!(
        check.stderr.contains(REPLAYED) && check.stderr.contains("records=5"),
        "the five records came from the journal, not from LMDB: {check:?}"
    );

    // The first frame's tag, flipped: four acked frames follow it.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(journal_path(&daemon))?;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, TAG_OFFSET)?;
    file.write_all_at(&[byte[0] ^ 1], TAG_OFFSET)?;
    drop(file);
    let refused = daemon.tallyd(&["check"])?;
    assert_eq!(refused.code, 3, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("the frame at offset 0 is damaged and acknowledged events follow it")
            && refused.stderr.contains("ack-journal"),
        "the refusal names the file and the frame: {refused:?}"
    );
    let restarted = daemon.restart();
    let err = restarted.expect_err("tallyd started on a damaged journal");
    assert!(
        err.to_string().contains("exit status: 3")
            && err.to_string().contains("offset 0 is damaged"),
        "the daemon refuses with exit 3, naming the damaged frame: {err:#}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_journal_off_every_ack_is_an_lmdb_commit_and_survives_sigkill(
) -> anyhow::Result<()> {
    let mut rng = seed::rng("journal_off_sigkill");
    // The apply held too: a frame written despite the setting would stay
    // in the journal, where the check below finds it.
    let mut daemon = Daemon::start(held_apply("ack_journal_max_bytes = 0"))?;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for client_index in 0..3u64 {
        let mut client = daemon.client().await?;
        // Ids from a range of its own per client; batch sizes 1-20 events
        // (each far below the 256 KiB the journal would take), pipelined;
        // more than the test lets it send before the kill.
        let sizes: Vec<u64> = (0..5_000).map(|_| rng.gen_range(1..=20)).collect();
        let window = rng.gen_range(1..=4);
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut next = client_index * 1_000_000;
            let batches = sizes.into_iter().map(move |size| {
                next += size;
                next - size..next
            });
            append_pipelined(&mut client, batches, window, |ids, acks| {
                let mut acked = acked.lock().unwrap();
                acked.extend(ids.zip(acks.iter().copied()));
            })
            .await
        }));
    }
    // SIGKILL under load, once a random number of events has been acked.
    let kill_after = rng.gen_range(200..2_000);
    let loaded = wait_until(Duration::from_secs(60), || {
        acked.lock().unwrap().len() >= kill_after
    })
    .await;
    assert!(loaded, "{kill_after} events were not acked within 60 s");
    daemon.kill()?;
    for task in tasks {
        let ended = task.await?;
        assert!(
            ended.is_err(),
            "a client finished its appends before the kill"
        );
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    println!("{} events acked before the kill", acked.len());
    assert!(
        frames_in(&journal_path(&daemon))?.is_empty(),
        "ack_journal_max_bytes = 0, yet the journal holds frames"
    );

    // The daemon itself restarts (no `tallyd check` first) and has nothing
    // to replay: every acked event is in LMDB already.
    daemon.restart()?;
    assert!(
        !daemon.stderr().contains(REPLAYED),
        "the restart replayed a journal that should be unused:\n{}",
        daemon.stderr()
    );
    let mut client = daemon.client().await?;
    let size = client.status().await?.size;
    // Events committed whose acks the kill cut off may be there too.
    assert!(
        size >= acked.len() as u64,
        "{size} records, {} acked",
        acked.len()
    );
    let records = read_range(&mut client, 0, size).await?;
    check_records(&records, 0)?;
    for (id, ack) in &acked {
        let record = &records[usize::try_from(ack.seq)?];
        assert_eq!(
            record.entry_hash.as_ref(),
            ack.entry_hash.as_slice(),
            "seq {}: not the acked entry hash",
            ack.seq
        );
        assert_eq!(stored_event(record)?, event(*id), "seq {}", ack.seq);
    }
    // The log goes on densely after the restart.
    let next = client.append(vec![event(9_999_999)]).await?;
    assert_eq!(next[0].seq, size);
    Ok(())
}
