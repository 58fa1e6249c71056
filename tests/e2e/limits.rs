//! Limits: each one hit, with its clear error, and other clients unaffected;
//! idle connections cost a bounded amount of memory; a stalled follower is
//! cut off and memory stays flat.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use tally_client::proto::ErrorCode;
use tally_client::ClientError;
use tally_tests::raw::{self, RawConn};
use tally_tests::skip::{skip, Needs, Part};
use tally_tests::{Daemon, DaemonOpts};

/// Resident memory of a process, in KiB (VmRSS).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `tally status` as uid 65534, through a world-readable copy of the CLI:
/// a second peer. None when the test cannot switch uids.
fn status_as_nobody(daemon: &Daemon) -> Option<std::process::Output> {
    if !nix::unistd::getuid().is_root() {
        return None;
    }
    std::fs::set_permissions(daemon.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tally = daemon.dir().join("tally");
    if !tally.exists() {
        std::fs::copy(tally_tests::binary("tally").unwrap(), &tally).unwrap();
    }
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&tally)
        .arg("status")
        .env("TALLY_SOCKET", daemon.socket())
        .output()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_refuse_with_busy_and_free_on_close() {
    let daemon = Daemon::start(DaemonOpts::with_config(
        "socket_mode = \"0666\"\nmax_connections = 3\nmax_connections_per_peer = 100\n",
    ))
    .unwrap();
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(RawConn::greeted(&daemon.socket()).await.unwrap());
    }
    let mut refused = RawConn::connect(&daemon.socket()).await.unwrap();
    let (_, code, message) = refused.recv_error().await.unwrap();
    assert_eq!(code, ErrorCode::Busy);
    assert!(message.contains("the daemon serves at most 3"), "{message}");
    refused.expect_closed().await.unwrap();
    open.pop();
    // The place is free again once a connection closes: a hello is answered
    // (a connect alone proves nothing, it succeeds at the limit too).
    let mut client = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(client) = daemon.client().await {
                return client;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    client.append(tally_tests::events(0, 5)).await.unwrap();

    let per_peer = Daemon::start(DaemonOpts::with_config(
        "socket_mode = \"0666\"\nmax_connections = 100\nmax_connections_per_peer = 2\n",
    ))
    .unwrap();
    let _a = RawConn::greeted(&per_peer.socket()).await.unwrap();
    let _b = RawConn::greeted(&per_peer.socket()).await.unwrap();
    let mut refused = RawConn::connect(&per_peer.socket()).await.unwrap();
    let (_, code, message) = refused.recv_error().await.unwrap();
    assert_eq!(code, ErrorCode::Busy);
    assert!(message.contains("from this peer: at most 2"), "{message}");
    match status_as_nobody(&per_peer) {
        Some(output) => assert!(
            output.status.success(),
            "another peer was refused: {output:?}"
        ),
        None => skip(
            Needs::Ci,
            Part::Only("second-peer part"),
            "needs root and setpriv",
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_append_rate_limit_refuses_with_rate_limited_and_stores_nothing() {
    let daemon = Daemon::start(DaemonOpts::with_config(
        "socket_mode = \"0666\"\nappend_rate_per_peer = 200\nappend_burst_per_peer = 200\n",
    ))
    .unwrap();
    let mut client = daemon.client().await.unwrap();
    client.append(tally_tests::events(0, 200)).await.unwrap();
    match client.append(tally_tests::events(200, 100)).await {
        Err(ClientError::Server {
            code: ErrorCode::RateLimited,
            message,
        }) => assert!(message.contains("append rate of 200 events/s"), "{message}"),
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_eq!(
        client.status().await.unwrap().size,
        200,
        "a refused append stored something"
    );
    if let Some(output) = status_as_nobody(&daemon) {
        assert!(output.status.success(), "{output:?}");
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let acks = client.append(tally_tests::events(200, 100)).await.unwrap();
    assert_eq!(acks[0].seq, 200, "the bucket refills");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let daemon = Daemon::start(DaemonOpts::with_config("idle_timeout_secs = 1\n")).unwrap();
    let mut idle = RawConn::greeted(&daemon.socket()).await.unwrap();
    let mut busy = RawConn::greeted(&daemon.socket()).await.unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        busy.send(&raw::status(7)).await.unwrap();
        assert!(
            busy.recv().await.unwrap().is_some(),
            "the busy connection was closed"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (_, code, message) = idle.recv_error().await.unwrap();
    assert_eq!(code, ErrorCode::Busy);
    assert!(message.contains("no request for 1 s"), "{message}");
    idle.expect_closed().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_stay_within_the_documented_memory_bound() {
    //! docs: about 64 KiB per idle connection at most (measured far less).
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < 4096 && setrlimit(Resource::RLIMIT_NOFILE, hard.min(65_536), hard).is_err() {
        skip(
            Needs::Ci,
            Part::Whole,
            &format!("cannot raise the open-file limit above {soft}"),
        );
        return;
    }
    let daemon = Daemon::start(DaemonOpts::with_config(
        "max_connections = 2000\nmax_connections_per_peer = 2000\n",
    ))
    .unwrap();
    let pid = daemon.pid().unwrap();
    let mut warm = daemon.client().await.unwrap();
    warm.append(tally_tests::events(0, 10)).await.unwrap();
    let before = rss_kib(pid);
    let mut conns = Vec::with_capacity(1000);
    for _ in 0..1000 {
        conns.push(RawConn::greeted(&daemon.socket()).await.unwrap());
    }
    let after = rss_kib(pid);
    let per_connection = (after.saturating_sub(before)) as f64 / 1000.0;
    println!("1000 idle connections: tallyd RSS {before} KiB -> {after} KiB ({per_connection:.1} KiB each)");
    assert!(
        per_connection < 64.0,
        "{per_connection:.1} KiB per idle connection exceeds the documented 64 KiB"
    );
    // Still serving.
    warm.append(tally_tests::events(10, 10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_follower_is_cut_off_and_memory_stays_flat() {
    let daemon = Daemon::start(DaemonOpts::with_config("slow_reader_timeout_secs = 1\n")).unwrap();
    let pid = daemon.pid().unwrap();
    let mut stalled = RawConn::greeted(&daemon.socket()).await.unwrap();
    stalled
        .send(&tally_client::proto::Request {
            id: 2,
            body: Some(tally_client::proto::request::Body::Follow(
                tally_client::proto::FollowRequest {
                    from_seq: 0,
                    ..Default::default()
                },
            )),
        })
        .await
        .unwrap();
    let before = rss_kib(pid);
    let mut writer = daemon.client().await.unwrap();
    // About 50 MB of records that the follower never reads.
    let mut next = 0;
    for _ in 0..50 {
        let events: Vec<_> = (next..next + 1000)
            .map(|i| {
                let mut event = tally_tests::event(i);
                event.payload = vec![b'x'; 1000];
                event
            })
            .collect();
        writer.append(events).await.unwrap();
        next += 1000;
    }
    let cut = tally_tests::wait_until(Duration::from_secs(10), || {
        daemon.stderr().contains("not reading its responses")
    })
    .await;
    assert!(
        cut,
        "the stalled follower was not disconnected: {}",
        daemon.stderr()
    );
    let after = rss_kib(pid);
    println!("stalled follower + 50 MB appended: tallyd RSS {before} KiB -> {after} KiB");
    assert!(
        after < before + 48 * 1024,
        "memory grew with the follower's backlog: {before} KiB -> {after} KiB"
    );
    assert_eq!(writer.status().await.unwrap().size, next);
}
