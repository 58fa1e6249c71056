//! The ack journal on a real daemon: a lone client's acks come from it, a
//! SIGKILL before they reach LMDB loses none of them (the next start, or
//! `tallyd check`, replays them), and a frame damaged in the middle refuses
//! the start with exit 3 instead of dropping the acked frames after it.

use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::process::Command;

use tally_tests::skip::{skip, Needs, Part};
use tally_tests::{event, tallyd, Daemon, DaemonOpts};

/// Offset of the frame tag (after magic, first seq, count and length).
const TAG_OFFSET: u64 = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journaled_acks_survive_sigkill_and_a_damaged_frame_refuses_the_start() -> anyhow::Result<()>
{
    let mut daemon = Daemon::start(DaemonOpts::default())?;
    let mut client = daemon.client().await?;
    let mut acked = Vec::new();
    for i in 0..5 {
        acked.extend(client.append(vec![event(i)]).await?);
    }
    // Within milliseconds of the acks; journaled batches reach LMDB 100 ms
    // after the first of them.
    daemon.kill()?;
    assert_eq!(
        acked.iter().map(|ack| ack.seq).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
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
    let replayed = check.stderr.contains("committed them from the ack journal");
    if !replayed {
        skip(
            Needs::ThisMachine,
            Part::Only("damaged-frame part"),
            "the acks reached LMDB before the kill (the machine stalled over 100 ms), so the journal holds nothing to damage",
        );
        return Ok(());
    }

    // The first frame's tag, flipped: four acked frames follow it.
    let journal = daemon.data_dir().join("store").join("ack-journal");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&journal)?;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, TAG_OFFSET)?;
    file.write_all_at(&[byte[0] ^ 1], TAG_OFFSET)?;
    drop(file);
    let refused = daemon.tallyd(&["check"])?;
    assert_eq!(refused.code, 3, "{refused:?}");
    assert!(
        refused.stderr.contains("offset 0 is damaged") && refused.stderr.contains("ack-journal"),
        "the refusal names the file and the frame: {refused:?}"
    );
    let restarted = daemon.restart();
    assert!(restarted.is_err(), "tallyd started on a damaged journal");
    Ok(())
}
