//! Every client call of the suite is bounded: the harness's clients carry
//! [`CLIENT_TIMEOUT`], and a daemon that stops answering (a listener that
//! accepts and never replies, or a real tallyd frozen with SIGSTOP) fails
//! the call with `ClientError::Timeout` instead of hanging the test.

use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tally_client::{Client, ClientError};
use tally_tests::{event, Daemon, DaemonOpts, CLIENT_TIMEOUT};

/// The bound these tests set, so that they take a second, not 30.
const SHORT: Duration = Duration::from_millis(500);

fn assert_timed_out<T: std::fmt::Debug>(result: &Result<T, ClientError>, waited: Duration) {
    assert!(
        matches!(result, Err(ClientError::Timeout { after }) if *after == SHORT),
        "expected a timeout after {SHORT:?}, got {result:?}"
    );
    assert!(
        waited >= SHORT && waited < SHORT * 10,
        "the timeout fired after {waited:?}"
    );
}

/// Whether every thread of `pid` is in the stopped state (`T` in
/// /proc/PID/task/TID/stat, the field after the parenthesised name).
fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            return false;
        };
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        if state != Some('T') {
            return false;
        }
        any = true;
    }
    any
}

#[tokio::test]
async fn a_listener_that_accepts_and_never_replies_times_out_the_hello() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("mute.sock");
    let listener = tokio::net::UnixListener::bind(&path)?;
    // Accepts, keeps the connection open, never writes.
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await?;
        tokio::time::sleep(SHORT * 20).await;
        drop(stream);
        anyhow::Ok(())
    });
    let started = Instant::now();
    let result = Client::connect_with_timeout(&path, "timeout-e2e", SHORT).await;
    assert_timed_out(&result, started.elapsed());
    server.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_daemon_fails_the_harness_clients_call_with_a_timeout() -> anyhow::Result<()> {
    let daemon = Daemon::start(DaemonOpts::default())?;
    let mut client = daemon.client().await?;
    assert_eq!(client.timeout(), Some(CLIENT_TIMEOUT));
    assert_eq!(client.append(vec![event(0)]).await?[0].seq, 0);

    client.set_timeout(Some(SHORT));
    let pid = Pid::from_raw(i32::try_from(daemon.pid().expect("the daemon runs"))?);
    signal::kill(pid, Signal::SIGSTOP)?;
    // kill() returns before the group stop: the thread picked to take the
    // signal stops the others only once it runs, and meanwhile they serve
    // (a CI run had the append acked). Wait until every thread is stopped.
    let stopped =
        tally_tests::wait_until(Duration::from_secs(5), || all_threads_stopped(pid.as_raw())).await;
    assert!(stopped, "tallyd's threads did not all stop after SIGSTOP");
    let started = Instant::now();
    // The outer bound only keeps a broken client timeout from hanging here.
    let result = tokio::time::timeout(SHORT * 20, client.append(vec![event(1)])).await;
    let waited = started.elapsed();
    signal::kill(pid, Signal::SIGCONT)?;
    let result = result.expect("the client's own timeout did not fire");
    assert_timed_out(&result, waited);

    // Thawed, the daemon answers a new client (the old connection's state
    // is unknown after a timeout: the append may still be acked on it).
    let mut fresh = daemon.client().await?;
    let size = fresh.status().await?.size;
    assert!((1..=2).contains(&size), "size {size}");
    Ok(())
}
