//! Access control end to end: identities from SO_PEERCRED (a second uid via
//! setpriv), denials answered, logged and recorded in the log, and grants
//! reloaded on SIGHUP.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tally_tests::skip::{skip, Needs, Part};
use tally_tests::{Daemon, DaemonOpts};

const NOBODY: u32 = 65534;

/// Runs the `tally` CLI as `uid` (also as gid `uid`, no supplementary groups).
fn tally_as(daemon: &Daemon, tally: &Path, uid: u32, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(tally)
        .args(args)
        .env("TALLY_SOCKET", daemon.socket())
        .output()
        .unwrap()
}

fn config(grants: &str) -> String {
    format!("socket_mode = \"0666\"\n[access]\nunix_default = []\n{grants}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_come_from_the_kernel_and_denials_are_recorded() {
    let root = nix::unistd::getuid().is_root();
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok();
    if !root || !setpriv {
        skip(
            Needs::Ci,
            Part::Whole,
            &format!(
                "needs root and setpriv to act as a second uid (root: {root}, setpriv: {setpriv})"
            ),
        );
        return;
    }
    let reader_grant = format!("[[access.grants]]\nuid = {NOBODY}\nroles = [\"read\"]\n");
    let mut daemon = Daemon::start(DaemonOpts::with_config(&config(&reader_grant))).unwrap();
    // The second uid must reach the socket and run the CLI: a world-readable
    // directory with a copy of the binary.
    std::fs::set_permissions(daemon.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tally = daemon.dir().join("tally");
    std::fs::copy(tally_tests::binary("tally").unwrap(), &tally).unwrap();

    // Root (and the daemon's own uid) may do anything.
    let run = daemon.tally(&["append", "--kind", "by-root"]).unwrap();
    assert_eq!(run.code, 0, "{run:?}");

    // nobody holds "read" but not "append".
    let denied = tally_as(&daemon, &tally, NOBODY, &["append", "--kind", "by-nobody"]);
    assert_eq!(denied.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("PermissionDenied") && stderr.contains("lacks the 'append' role"),
        "{stderr}"
    );
    let read = tally_as(&daemon, &tally, NOBODY, &["tail", "--json"]);
    assert_eq!(
        read.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );

    // A uid without "read" cannot export (to stdout: it may not write in
    // the test's directory).
    let export = tally_as(&daemon, &tally, NOBODY - 1, &["export", "--out", "-"]);
    assert_eq!(export.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&export.stderr).contains("lacks the 'read' role"),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );

    // The denials are in the log, with the kernel's identity of the peer
    // (recorded without waiting: give the writer a moment).
    let recorded = tally_tests::wait_until(std::time::Duration::from_secs(5), || {
        daemon
            .tally(&["status", "--json"])
            .ok()
            .and_then(|run| serde_json::from_str::<Value>(&run.stdout).ok())
            .is_some_and(|status| status["size"] == 3)
    })
    .await;
    assert!(recorded, "the two denials were not recorded");
    let tail = daemon.tally(&["tail", "--json"]).unwrap();
    let events: Vec<Value> = tail
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let denials: Vec<&Value> = events
        .iter()
        .filter(|event| event["kind"] == "tally.access_denied")
        .collect();
    assert_eq!(denials.len(), 2, "{}", tail.stdout);
    assert_eq!(denials[0]["peer"]["unix"]["uid"], NOBODY);
    assert_eq!(denials[0]["subject"], "append");
    assert_eq!(denials[1]["peer"]["unix"]["uid"], NOBODY - 1);
    assert!(
        daemon.stderr().contains("permission denied"),
        "the denial was not logged"
    );

    // Grant "append" in the config file and SIGHUP: it takes effect without restart.
    let both = format!("[[access.grants]]\nuid = {NOBODY}\nroles = [\"read\", \"append\"]\n");
    std::fs::write(
        daemon.config_path(),
        format!("{}\n[tpm]\nenabled = false\n", config(&both)),
    )
    .unwrap();
    let pid = Pid::from_raw(daemon.pid().unwrap() as i32);
    signal::kill(pid, Signal::SIGHUP).unwrap();
    let reloaded = tally_tests::wait_until(std::time::Duration::from_secs(5), || {
        daemon.stderr().contains("access grants reloaded")
    })
    .await;
    assert!(reloaded, "no reload logged: {}", daemon.stderr());
    let allowed = tally_as(&daemon, &tally, NOBODY, &["append", "--kind", "by-nobody"]);
    assert_eq!(
        allowed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    daemon.terminate().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_denials_is_rate_limited_in_the_log() {
    let root = nix::unistd::getuid().is_root();
    if !root {
        skip(Needs::Ci, Part::Whole, "needs root to act as a second uid");
        return;
    }
    let daemon = Daemon::start(DaemonOpts::with_config(
        "socket_mode = \"0666\"
[access]
unix_default = []
denials_logged_per_minute = 3
",
    ))
    .unwrap();
    std::fs::set_permissions(daemon.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tally = daemon.dir().join("tally");
    std::fs::copy(tally_tests::binary("tally").unwrap(), &tally).unwrap();
    let lines: String = (0..50)
        .map(|i| format!("{{\"kind\":\"flood-{i}\"}}\n"))
        .collect();
    for _ in 0..10 {
        let out = Command::new("setpriv")
            .args([
                format!("--reuid={NOBODY}"),
                format!("--regid={NOBODY}"),
                "--clear-groups".into(),
            ])
            .arg(&tally)
            .args(["append", "--stdin", "--batch", "1"])
            .env("TALLY_SOCKET", daemon.socket())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                if let Some(mut stdin) = child.stdin.take() {
                    let _ = stdin.write_all(lines.as_bytes());
                }
                child.wait_with_output()
            })
            .unwrap();
        assert_ne!(out.status.code(), Some(0));
    }
    let status: Value =
        serde_json::from_str(&daemon.tally(&["status", "--json"]).unwrap().stdout).unwrap();
    assert_eq!(
        status["size"], 3,
        "only the per-minute budget of denials is recorded: {status}"
    );
}
