//! `tally tail` and `tally show` as a responder runs them (issue 14, items
//! 1 and 3): the last N, --from, -f across a daemon restart, --cursor, the
//! output modes, escaping of what clients wrote, a closed stdout, and a
//! bundle shown offline exactly as tail shows the daemon's log.

mod follow;
mod output;
mod show;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use tally_client::proto::Event;
use tally_tests::{binary, events, Daemon, DaemonOpts, Run};

fn ok(run: Run) -> Run {
    assert_eq!(run.code, 0, "{run:?}");
    run
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{line:?}: {err}")))
        .collect()
}

/// The seqs `tally tail ARGS -o json` prints.
fn tail_seqs(daemon: &Daemon, args: &[&str]) -> Vec<u64> {
    let mut all = vec!["tail", "-o", "json"];
    all.extend(args);
    json_lines(&ok(daemon.tally(&all).unwrap()).stdout)
        .iter()
        .map(|record| record["seq"].as_u64().unwrap())
        .collect()
}

async fn append(daemon: &Daemon, events: Vec<Event>) {
    daemon.client().await.unwrap().append(events).await.unwrap();
}

/// A `tally` process whose stdout lines arrive on a channel as it prints them.
struct Spawned {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Spawned {
    fn start(daemon: &Daemon, args: &[&str], env: &[(&str, &str)]) -> Spawned {
        let mut command = Command::new(binary("tally").unwrap());
        command
            .args(args)
            .env("TALLY_SOCKET", daemon.socket())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Spawned { child, lines }
    }

    /// The next `n` lines, failing the test if they take over 20 s.
    fn take(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                self.lines
                    .recv_timeout(Duration::from_secs(20))
                    .unwrap_or_else(|err| panic!("line {i} of {n} did not come: {err}"))
            })
            .collect()
    }

    /// Nothing more is printed within a short wait.
    fn assert_quiet(&self) {
        if let Ok(extra) = self.lines.recv_timeout(Duration::from_millis(500)) {
            panic!("printed more than expected: {extra}");
        }
    }

    /// SIGINT (Ctrl-C), then the exit code and stderr.
    fn interrupt(mut self) -> (i32, String) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let status = self.child.wait().unwrap();
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status.code().unwrap_or(-1), stderr)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tail -n 3` prints exactly the last three; with no -n, the last ten;
/// `--from` from there to the end; `-n all` everything; `-n 0` nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_shows_the_last_n_or_from_a_seq() {
    let daemon = Daemon::start(DaemonOpts::default()).unwrap();
    assert_eq!(tail_seqs(&daemon, &[]), Vec::<u64>::new());
    append(&daemon, events(0, 15)).await;
    assert_eq!(tail_seqs(&daemon, &["-n", "3"]), [12, 13, 14]);
    assert_eq!(tail_seqs(&daemon, &[]), (5..15).collect::<Vec<_>>());
    assert_eq!(tail_seqs(&daemon, &["--from", "12"]), [12, 13, 14]);
    assert_eq!(tail_seqs(&daemon, &["--from", "15"]), Vec::<u64>::new());
    assert_eq!(
        tail_seqs(&daemon, &["-n", "all"]),
        (0..15).collect::<Vec<_>>()
    );
    assert_eq!(tail_seqs(&daemon, &["-n", "0"]), Vec::<u64>::new());
    assert_eq!(
        tail_seqs(&daemon, &["-n", "100"]),
        (0..15).collect::<Vec<_>>()
    );
    // The text lines are the same records, one line each.
    let text = ok(daemon.tally(&["tail", "-n", "3"]).unwrap()).stdout;
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.lines()
            .next()
            .unwrap()
            .contains(" 12 test.event actor=tally-e2e subject=event-12 ["),
        "{text}"
    );
    let refused = daemon.tally(&["tail", "-n", "3", "--from", "1"]).unwrap();
    assert_eq!(refused.code, 2, "{refused:?}");
}

/// `tally tail | head -3`: the reader goes away after three lines; tail
/// ends with exit 0 and nothing on stderr (it used to print "Broken pipe"
/// and exit 2). The output is far larger than a pipe's buffer, so tail is
/// still writing when the pipe closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_tail_and_show_quietly() {
    let daemon = Daemon::start(DaemonOpts::default()).unwrap();
    for first in (0..3_000).step_by(500) {
        append(&daemon, events(first, 500)).await;
    }
    let bundle = daemon.dir().join("head.bundle");
    let bundle = bundle.to_str().unwrap();
    ok(daemon.tally(&["export", "--out", bundle]).unwrap());
    for args in [
        &["tail", "-n", "all"][..],
        &["show", bundle],
        &["tail", "-n", "all", "-o", "json-pretty"],
    ] {
        let mut command = Command::new(binary("tally").unwrap());
        command
            .args(args)
            .env("TALLY_SOCKET", daemon.socket())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        for _ in 0..3 {
            let mut line = String::new();
            assert!(stdout.read_line(&mut line).unwrap() > 0, "{args:?}");
        }
        drop(stdout);
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{args:?}: {output:?}");
        assert_eq!(String::from_utf8_lossy(&output.stderr), "", "{args:?}");
    }
}

/// With a filter, tail asks the daemon to evaluate it (`read_where`,
/// `follow_where`). A daemon whose hello lacks read_filters is refused
/// before anything is sent (exit 2, saying so); one that has them gives
/// the last N matching records, each checked again by the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_filters_are_the_daemons_to_evaluate() {
    let daemon = Daemon::start(DaemonOpts::default()).unwrap();
    let mut mixed = events(0, 12);
    for (i, event) in mixed.iter_mut().enumerate() {
        if i % 3 == 0 {
            event.kind = "model.load".into();
        }
    }
    append(&daemon, mixed).await;
    let filters = daemon.client().await.unwrap().server_hello().read_filters;
    if !filters {
        let refused = daemon.tally(&["tail", "--kind", "model.load"]).unwrap();
        assert_eq!(refused.code, 2, "{refused:?}");
        assert!(
            refused.stderr.contains("predates read filters"),
            "{refused:?}"
        );
        assert_eq!(refused.stdout, "");
        tally_tests::skip::skip(
            tally_tests::skip::Needs::ThisMachine,
            tally_tests::skip::Part::Only("filters evaluated by the daemon"),
            "this tallyd's hello has no read_filters (the daemon-side filters are not merged yet)",
        );
        return;
    }
    assert_eq!(tail_seqs(&daemon, &["--kind", "model.load"]), [0, 3, 6, 9]);
    assert_eq!(
        tail_seqs(&daemon, &["--kind", "model.load", "-n", "2"]),
        [6, 9]
    );
    assert_eq!(
        tail_seqs(&daemon, &["--kind", "model.load", "--from", "4"]),
        [6, 9]
    );
    assert_eq!(
        tail_seqs(&daemon, &["--subject", "event-4", "--subject", "event-5"]),
        [4, 5]
    );
    assert_eq!(tail_seqs(&daemon, &["--attr", "i=7"]), [7]);
    assert_eq!(
        tail_seqs(&daemon, &["--actor", "nobody"]),
        Vec::<u64>::new()
    );
    // A filtered follower gets only the matching new records.
    let follower = Spawned::start(
        &daemon,
        &[
            "tail",
            "-f",
            "-n",
            "1",
            "--kind",
            "model.load",
            "-o",
            "json",
        ],
        &[],
    );
    assert_eq!(json_lines(&follower.take(1).join("\n"))[0]["seq"], 9);
    let mut more = events(12, 6);
    more[4].kind = "model.load".into();
    append(&daemon, more).await;
    assert_eq!(json_lines(&follower.take(1).join("\n"))[0]["seq"], 16);
    follower.assert_quiet();
}
