//! `tally tail -f` across a daemon restart, and `--cursor`.

use std::fs;

use serde_json::Value;
use tally_tests::{events, Daemon, DaemonOpts};

use super::{append, ok, tail_seqs, Spawned};

fn seqs(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap_or_else(|err| panic!("{line:?}: {err}"))
                ["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// -f shows the last N, then new records; the daemon is killed and started
/// again twice (records appended before, between and after), and the
/// follower prints each seq of the log exactly once (killed, then stopped
/// in order), with one notice per
/// loss on stderr. Ctrl-C ends it with exit 0, its cursor at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_across_daemon_restarts_misses_and_repeats_nothing() {
    let mut daemon = Daemon::start(DaemonOpts::default()).unwrap();
    append(&daemon, events(0, 12)).await;
    let cursor = daemon.dir().join("follow.cursor");
    let follower = Spawned::start(
        &daemon,
        &[
            "tail",
            "-f",
            "-n",
            "2",
            "-o",
            "json",
            "--cursor",
            cursor.to_str().unwrap(),
        ],
        &[],
    );
    let mut printed = follower.take(2);
    append(&daemon, events(12, 5)).await;
    printed.extend(follower.take(5));
    for restart in 0..2u64 {
        // First a crash (SIGKILL), then an orderly stop (SIGTERM: the
        // daemon may tell its followers it is shutting down).
        if restart == 1 {
            daemon.terminate().unwrap();
        }
        daemon.restart().unwrap();
        // Appended while the follower is still reconnecting (its first
        // retry is 100 ms away) and after.
        append(&daemon, events(100 + restart * 10, 3)).await;
        printed.extend(follower.take(3));
        append(&daemon, events(200 + restart * 10, 2)).await;
        printed.extend(follower.take(2));
    }
    follower.assert_quiet();
    let (code, stderr) = follower.interrupt();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(seqs(&printed), (10..27).collect::<Vec<_>>());
    assert_eq!(
        stderr.matches("tally: lost the daemon (").count(),
        2,
        "{stderr}"
    );
    assert!(stderr.contains("); reconnecting\n"), "{stderr}");
    assert!(stderr.contains("tally: resumed at seq 17\n"), "{stderr}");
    assert!(stderr.contains("tally: resumed at seq 22\n"), "{stderr}");
    // Every record printed is the log's, byte for byte what tail shows now.
    let now = ok(daemon
        .tally(&["tail", "-o", "json", "--from", "10"])
        .unwrap())
    .stdout;
    assert_eq!(now.lines().collect::<Vec<_>>(), printed);
    let saved = fs::read_to_string(&cursor).unwrap();
    assert!(saved.ends_with(" next=27\n"), "{saved}");
}

/// --cursor: the first run (no file yet) shows what -n says and saves the
/// end; the next shows only what came since, whatever -n says; a cursor of
/// another log is refused, naming both logs, and left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_resumes_where_the_last_run_stopped_and_only_on_its_log() {
    let daemon = Daemon::start(DaemonOpts::default()).unwrap();
    append(&daemon, events(0, 5)).await;
    let cursor = daemon.dir().join("script.cursor");
    let cursor = cursor.to_str().unwrap();
    assert_eq!(tail_seqs(&daemon, &["--cursor", cursor, "-n", "2"]), [3, 4]);
    append(&daemon, events(5, 3)).await;
    assert_eq!(
        tail_seqs(&daemon, &["--cursor", cursor, "-n", "1"]),
        [5, 6, 7]
    );
    assert_eq!(tail_seqs(&daemon, &["--cursor", cursor]), Vec::<u64>::new());
    append(&daemon, events(8, 1)).await;
    assert_eq!(
        tail_seqs(&daemon, &["--cursor", cursor, "--from", "0"]),
        [8]
    );
    let saved = fs::read_to_string(cursor).unwrap();
    let log_id = hex::encode(&daemon.client().await.unwrap().server_hello().log_id);
    assert_eq!(saved, format!("tally-cursor v1 log={log_id} next=9\n"));

    let other = Daemon::start(DaemonOpts::default()).unwrap();
    append(&other, events(0, 20)).await;
    let refused = other.tally(&["tail", "--cursor", cursor]).unwrap();
    assert_eq!(refused.code, 2, "{refused:?}");
    assert_eq!(refused.stdout, "");
    assert!(refused.stderr.contains(&log_id), "{refused:?}");
    assert!(
        refused.stderr.contains("use another --cursor file"),
        "{refused:?}"
    );
    assert_eq!(fs::read_to_string(cursor).unwrap(), saved);
    // A file that is not a cursor is refused too, not overwritten.
    fs::write(cursor, "next=3\n").unwrap();
    let refused = daemon.tally(&["tail", "--cursor", cursor]).unwrap();
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("is not a tally cursor"),
        "{refused:?}"
    );
    assert_eq!(fs::read_to_string(cursor).unwrap(), "next=3\n");
}

/// A follower whose socket is taken over by a daemon of another log (a
/// fresh data directory) does not resume there, where its seq would name
/// other records: it stops with exit 2, naming both logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_does_not_resume_on_another_log() {
    let mut daemon = Daemon::start(DaemonOpts::default()).unwrap();
    append(&daemon, events(0, 3)).await;
    let log_id = hex::encode(&daemon.client().await.unwrap().server_hello().log_id);
    let mut follower = Spawned::start(&daemon, &["tail", "-f", "-o", "json"], &[]);
    follower.take(3);
    daemon.kill().unwrap();
    let other_data = daemon.dir().join("other-data");
    let mut other = std::process::Command::new(tally_tests::binary("tallyd").unwrap())
        .arg("--data-dir")
        .arg(&other_data)
        .arg("--socket")
        .arg(daemon.socket())
        .arg("--config")
        .arg(daemon.config_path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait up to 30 s for the follower to stop; one that keeps going on
    // the other log is killed (so the test fails instead of hanging).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let code = loop {
        if let Some(status) = follower.child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = follower.child.kill();
            let _ = follower.child.wait();
            break None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut follower.child.stderr.take().unwrap(), &mut stderr).unwrap();
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(
        code,
        Some(2),
        "the follower kept going on another log: {stderr}"
    );
    assert!(stderr.contains("tally: lost the daemon ("), "{stderr}");
    assert!(
        stderr.contains("the daemon now serves another log (")
            && stderr.contains(&format!(", was {log_id}); not resuming")),
        "{stderr}"
    );
}
