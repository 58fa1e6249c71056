//! Hostile and broken clients: each misbehaviour gets the documented error
//! (or a closed connection), and afterwards a well-behaved client can still
//! append and every acked record is intact.

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use prost::Message;
use tally_client::proto::{response, ErrorCode};
use tally_client::ClientError;
use tally_tests::raw::{self, RawConn};
use tally_tests::{
    check_records, event, events, never_reading_client, read_range, stored_event, Daemon,
    DaemonOpts,
};

/// Acks a well-behaved client received; checks they stay intact.
struct Witness {
    /// (seq, entry hash, event id) of every witnessed ack.
    acks: Vec<(u64, [u8; 32], u64)>,
    next_id: u64,
}

impl Witness {
    /// Appends a few events so there is acked data to protect.
    async fn new(daemon: &Daemon) -> anyhow::Result<Witness> {
        let mut witness = Witness {
            acks: Vec::new(),
            next_id: 0,
        };
        for _ in 0..3 {
            witness.append(daemon).await?;
        }
        Ok(witness)
    }

    async fn append(&mut self, daemon: &Daemon) -> anyhow::Result<u64> {
        let mut client = daemon.client().await?;
        let ids = self.next_id..self.next_id + 5;
        self.next_id = ids.end;
        let acks = client.append(ids.clone().map(event).collect()).await?;
        self.acks.extend(
            acks.iter()
                .zip(ids)
                .map(|(ack, id)| (ack.seq, ack.entry_hash, id)),
        );
        Ok(acks[0].seq)
    }

    /// A new client appends (its first seq must be the log size: nothing
    /// skipped), the whole chain checks out, and every witnessed ack is
    /// still there, unchanged. Returns the log size before the append.
    async fn check(&mut self, daemon: &Daemon) -> anyhow::Result<u64> {
        let status = tokio::time::timeout(Duration::from_secs(5), async {
            anyhow::Ok(daemon.client().await?.status().await?)
        })
        .await
        .map_err(|_| anyhow::anyhow!("the daemon did not answer status within 5 s"))??;
        let before = status.size;
        let first = self.append(daemon).await?;
        assert_eq!(first, before, "the next append must take seq == size");
        let mut client = daemon.client().await?;
        let records = read_range(&mut client, 0, before + 5).await?;
        check_records(&records, 0)?;
        for &(seq, hash, id) in &self.acks {
            let record = &records[seq as usize];
            assert_eq!(tally_attest::entry_hash(&record.record), hash, "seq {seq}");
            assert_eq!(stored_event(record)?, event(id), "seq {seq}");
        }
        Ok(before)
    }

    /// [`Witness::check`], and no record besides the witnessed ones exists.
    async fn check_only_witnessed(&mut self, daemon: &Daemon) -> anyhow::Result<()> {
        let witnessed = self.acks.len() as u64;
        let size = self.check(daemon).await?;
        assert_eq!(
            size, witnessed,
            "records appeared that nobody was acked for"
        );
        Ok(())
    }
}

/// Undecodable frames after hello get BAD_REQUEST and the connection stays
/// usable; before hello they get BAD_REQUEST and the connection is closed.
#[tokio::test]
async fn undecodable_frames_are_bad_requests() -> anyhow::Result<()> {
    let daemon = Daemon::start(DaemonOpts::default())?;
    let mut witness = Witness::new(&daemon).await?;

    let mut conn = RawConn::greeted(&daemon.socket()).await?;
    let garbage: [&[u8]; 3] = [
        &[0x00],             // field number 0
        &[0xff; 11],         // a varint that never ends
        &[0x12, 0x05, 0x01], // hello (field 2) claiming 5 bytes, with 1
    ];
    for bytes in garbage {
        conn.send_frame(bytes).await?;
        let (id, code, message) = conn.recv_error().await?;
        assert_eq!(
            (id, code),
            (0, ErrorCode::BadRequest),
            "{bytes:?}: {message}"
        );
    }
    conn.send(&raw::status(9)).await?;
    match conn.recv().await? {
        Some(reply) => {
            assert_eq!(reply.id, 9);
            assert!(
                matches!(reply.body, Some(response::Body::Status(_))),
                "{reply:?}"
            );
        }
        None => panic!("the connection was closed after a bad request"),
    }

    let mut conn = RawConn::connect(&daemon.socket()).await?;
    conn.send_frame(&[0xff; 11]).await?;
    let (_, code, _) = conn.recv_error().await?;
    assert_eq!(code, ErrorCode::BadRequest);
    conn.expect_closed().await?;

    witness.check_only_witnessed(&daemon).await
}

/// A request before hello (and a hello with protocol version 0) gets a
/// PROTOCOL error and a closed connection; a second hello is refused but the
/// connection stays usable.
#[tokio::test]
async fn requests_before_hello_are_refused_and_closed() -> anyhow::Result<()> {
    let daemon = Daemon::start(DaemonOpts::default())?;
    let mut witness = Witness::new(&daemon).await?;

    let mut conn = RawConn::connect(&daemon.socket()).await?;
    conn.send(&raw::append(4, events(1000, 1))).await?;
    let (id, code, message) = conn.recv_error().await?;
    assert_eq!((id, code), (4, ErrorCode::Protocol), "{message}");
    conn.expect_closed().await?;

    let mut conn = RawConn::connect(&daemon.socket()).await?;
    let mut hello = raw::hello(1);
    if let Some(tally_client::proto::request::Body::Hello(hello)) = hello.body.as_mut() {
        hello.protocol_version = 0;
    }
    conn.send(&hello).await?;
    let (_, code, _) = conn.recv_error().await?;
    assert_eq!(code, ErrorCode::Protocol);
    conn.expect_closed().await?;

    let mut conn = RawConn::greeted(&daemon.socket()).await?;
    conn.send(&raw::hello(2)).await?;
    let (id, code, _) = conn.recv_error().await?;
    assert_eq!((id, code), (2, ErrorCode::Protocol));
    conn.send(&raw::status(3)).await?;
    assert_eq!(conn.recv().await?.map(|reply| reply.id), Some(3));

    witness.check_only_witnessed(&daemon).await
}

fn vm_size_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmSize:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// With max_frame_bytes = 65536: a 65536-byte frame is served; a longer one,
/// or a length header claiming ~4 GiB, gets FRAME_TOO_LARGE and a closed
/// connection, and the daemon never reserves memory for the claimed frame.
#[tokio::test]
async fn oversized_frames_are_refused_without_allocating() -> anyhow::Result<()> {
    const MAX: usize = 65_536;
    let daemon = Daemon::start(DaemonOpts::with_config(&format!("max_frame_bytes = {MAX}")))?;
    let mut witness = Witness::new(&daemon).await?;

    let mut conn = RawConn::greeted(&daemon.socket()).await?;
    conn.send(&raw::append_of_len(5, event(2000), MAX)?).await?;
    let reply = conn.recv().await?.unwrap();
    assert!(
        matches!(reply.body, Some(response::Body::Append(_))),
        "{reply:?}"
    );
    let size = witness.acks.len() as u64 + 1;

    let mut conn = RawConn::greeted(&daemon.socket()).await?;
    conn.send_bytes(&(MAX as u32 + 1).to_be_bytes()).await?;
    let (id, code, message) = conn.recv_error().await?;
    assert_eq!((id, code), (0, ErrorCode::FrameTooLarge), "{message}");
    conn.expect_closed().await?;

    let pid = daemon.pid().unwrap();
    let before = vm_size_kib(pid);
    let mut conn = RawConn::greeted(&daemon.socket()).await?;
    conn.send_bytes(&0xffff_fff0u32.to_be_bytes()).await?;
    let (_, code, _) = conn.recv_error().await?;
    assert_eq!(code, ErrorCode::FrameTooLarge);
    conn.expect_closed().await?;
    let after = vm_size_kib(pid);
    assert!(
        after < before + 1024 * 1024,
        "the daemon's address space grew from {before} KiB to {after} KiB"
    );

    // The 65536-byte append is the only unwitnessed record.
    assert_eq!(witness.check(&daemon).await?, size);
    Ok(())
}

/// Clients that vanish inside a length header or inside a frame commit
/// nothing and disturb no one.
#[tokio::test]
async fn disconnecting_mid_frame_commits_nothing() -> anyhow::Result<()> {
    let daemon = Daemon::start(DaemonOpts::default())?;
    let mut witness = Witness::new(&daemon).await?;

    let frame = raw::append(2, events(3000, 10)).encode_to_vec();
    let mut conn = RawConn::greeted(&daemon.socket()).await?;
    conn.send_bytes(&(frame.len() as u32).to_be_bytes()).await?;
    conn.send_bytes(&frame[..frame.len() / 2]).await?;
    drop(conn);

    let mut conn = RawConn::greeted(&daemon.socket()).await?;
    conn.send_bytes(&(frame.len() as u32).to_be_bytes()[..2])
        .await?;
    drop(conn);

    // Unframed bytes from a client that never said hello.
    let mut conn = RawConn::connect(&daemon.socket()).await?;
    conn.send_bytes(&[0, 0, 1]).await?;
    drop(conn);

    witness.check_only_witnessed(&daemon).await
}

/// A request with only an unknown field (no known request type) gets
/// BAD_REQUEST with its id, and the connection stays usable.
#[tokio::test]
async fn unknown_request_types_are_bad_requests() -> anyhow::Result<()> {
    let daemon = Daemon::start(DaemonOpts::default())?;
    let mut witness = Witness::new(&daemon).await?;

    let mut conn = RawConn::greeted(&daemon.socket()).await?;
    // id = 7 (field 1, varint), then field 99 as a varint: tag 99 << 3 = 792.
    conn.send_frame(&[0x08, 0x07, 0x98, 0x06, 0x01]).await?;
    let (id, code, message) = conn.recv_error().await?;
    assert_eq!((id, code), (7, ErrorCode::BadRequest), "{message}");
    conn.send(&raw::status(8)).await?;
    assert_eq!(conn.recv().await?.map(|reply| reply.id), Some(8));

    witness.check_only_witnessed(&daemon).await
}

/// An append of 0 events is BAD_REQUEST, one of more than
/// max_events_per_append is TOO_MANY_EVENTS (nothing of it stored), one of
/// exactly the maximum is stored.
#[tokio::test]
async fn empty_and_oversized_appends_are_refused() -> anyhow::Result<()> {
    let daemon = Daemon::start(DaemonOpts::with_config("max_events_per_append = 100"))?;
    let mut witness = Witness::new(&daemon).await?;

    let mut client = daemon.client().await?;
    match client.append(Vec::new()).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::BadRequest),
        other => panic!("append of no events: {other:?}"),
    }
    match client.append(events(4000, 101)).await {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::TooManyEvents, "{message}")
        }
        other => panic!("append of 101 events: {other:?}"),
    }
    witness.check_only_witnessed(&daemon).await?;

    let acks = client.append(events(witness.next_id, 100)).await?;
    assert_eq!(acks.len(), 100);
    assert_eq!(acks[0].seq, witness.acks.len() as u64);
    for (offset, ack) in acks.iter().enumerate() {
        witness
            .acks
            .push((ack.seq, ack.entry_hash, witness.next_id + offset as u64));
    }
    witness.next_id += 100;
    witness.check_only_witnessed(&daemon).await
}

const BATCH: u64 = 50;

/// Waits until the log size stops changing; returns it.
async fn settled_size(client: &mut tally_client::Client) -> anyhow::Result<u64> {
    let mut size = client.status().await?.size;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = client.status().await?.size;
        if now == size {
            return Ok(size);
        }
        size = now;
    }
    anyhow::bail!("the log kept growing for 10 s after every client stopped")
}

/// A client that pipelines appends and never reads its acks stalls only
/// itself: others are served promptly; once it is dropped, what it got
/// committed is whole requests, a prefix of what it sent, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_stalls_only_itself() -> anyhow::Result<()> {
    const FIRST: u64 = 1_000_000;
    let daemon = Daemon::start(DaemonOpts::default())?;
    let mut witness = Witness::new(&daemon).await?;
    let (writer, requests) = never_reading_client(&daemon, FIRST, BATCH).await?;

    // Served promptly: connect, status and a durable append.
    let started = Instant::now();
    daemon.client().await?.status().await?;
    witness.append(&daemon).await?;
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(2),
        "a well-behaved client waited {waited:?} behind a stuck one"
    );
    let size = witness.check(&daemon).await?;
    writer.abort();
    let _ = writer.await;

    let mut client = daemon.client().await?;
    let size_after = settled_size(&mut client).await?;
    let records = read_range(&mut client, 0, size_after).await?;
    let mut stuck_ids = Vec::new();
    for record in &records {
        let id: u64 = stored_event(record)?.attributes["i"].parse()?;
        if id >= FIRST {
            stuck_ids.push(id);
        }
    }
    assert!(
        !stuck_ids.is_empty(),
        "nothing of the stuck client was committed"
    );
    assert_eq!(stuck_ids.len() as u64 % BATCH, 0, "a request was split");
    let expected: Vec<u64> = (FIRST..FIRST + stuck_ids.len() as u64).collect();
    assert_eq!(
        stuck_ids, expected,
        "not a prefix of what it sent, in order"
    );
    assert!(stuck_ids.len() as u64 <= requests * BATCH);
    println!(
        "stuck client: {requests} requests written before the stall, {} events committed; \
         log size {size}, then {size_after}",
        stuck_ids.len()
    );
    witness.check(&daemon).await?;
    Ok(())
}

/// Once a never-reading client is dropped and every commit is done, status
/// reports no queued events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_events_return_to_zero_after_a_stuck_client_leaves() -> anyhow::Result<()> {
    let daemon = Daemon::start(DaemonOpts::with_config("max_inflight_per_connection = 4"))?;
    let (writer, _) = never_reading_client(&daemon, 0, BATCH).await?;
    writer.abort();
    let _ = writer.await;
    let mut client = daemon.client().await?;
    settled_size(&mut client).await?;
    let queued = client.status().await?.queued_events;
    assert_eq!(
        queued, 0,
        "status reports queued events of a dropped connection"
    );
    Ok(())
}

/// A second tallyd on the same data directory exits non-zero saying it is in
/// use, and leaves the first daemon and its socket alone.
#[tokio::test]
async fn a_second_daemon_on_the_same_data_dir_is_refused() -> anyhow::Result<()> {
    let daemon = Daemon::start(DaemonOpts::default())?;
    let mut witness = Witness::new(&daemon).await?;

    let other_socket = daemon.dir().join("other.sock");
    let second = tally_tests::tallyd(&[
        OsStr::new("--data-dir"),
        daemon.data_dir().as_os_str(),
        OsStr::new("--socket"),
        other_socket.as_os_str(),
        OsStr::new("--config"),
        daemon.config_path().as_os_str(),
    ])?;
    assert_ne!(second.code, 0, "{second:?}");
    assert!(second.stderr.contains("in use"), "{second:?}");
    assert!(!other_socket.exists(), "the refused daemon bound a socket");

    let check = daemon.tallyd(&["check"])?;
    assert_ne!(
        check.code, 0,
        "tallyd check ran beside a live daemon: {check:?}"
    );
    assert!(check.stderr.contains("in use"), "{check:?}");

    witness.check_only_witnessed(&daemon).await
}

/// A second tallyd on another data directory but the same socket exits
/// non-zero naming the socket in use; once the first is SIGKILLed, its stale
/// socket file is replaced on restart.
#[tokio::test]
async fn a_live_socket_is_refused_and_a_stale_one_replaced() -> anyhow::Result<()> {
    let mut daemon = Daemon::start(DaemonOpts::default())?;
    let mut witness = Witness::new(&daemon).await?;

    let other_data = daemon.dir().join("other-data");
    let second = tally_tests::tallyd(&[
        OsStr::new("--data-dir"),
        other_data.as_os_str(),
        OsStr::new("--socket"),
        daemon.socket().as_os_str(),
        OsStr::new("--config"),
        daemon.config_path().as_os_str(),
    ])?;
    assert_ne!(second.code, 0, "{second:?}");
    assert!(
        second.stderr.contains("socket") && second.stderr.contains("in use"),
        "{second:?}"
    );
    witness.check_only_witnessed(&daemon).await?;

    daemon.kill()?;
    assert!(
        daemon.socket().exists(),
        "SIGKILL should leave the socket file"
    );
    assert!(
        std::os::unix::net::UnixStream::connect(daemon.socket()).is_err(),
        "nobody should be listening on the stale socket"
    );
    daemon.restart()?;
    assert!(
        daemon.stderr().contains("replacing stale socket"),
        "{}",
        daemon.stderr()
    );
    witness.check_only_witnessed(&daemon).await
}

/// A data directory written with another format version is refused (by the
/// daemon and by `tallyd check`) and left untouched.
#[tokio::test]
async fn another_format_version_is_refused() -> anyhow::Result<()> {
    let mut daemon = Daemon::start(DaemonOpts::default())?;
    let mut witness = Witness::new(&daemon).await?;
    let status = daemon.terminate()?;
    assert!(status.success(), "{status}");

    let store = daemon.data_dir().join("store");
    let original = set_format_version(&store, 7)?;
    let refused = daemon.tallyd::<&str>(&[])?;
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stderr.contains("format version 7"), "{refused:?}");
    let check = daemon.tallyd(&["check"])?;
    assert_ne!(check.code, 0, "{check:?}");
    assert!(check.stderr.contains("format version 7"), "{check:?}");

    // Nothing was rewritten: with the version put back, everything is there.
    set_format_version(&store, original)?;
    daemon.restart()?;
    witness.check_only_witnessed(&daemon).await
}

/// Writes `meta["format_version"]` of a stopped daemon's LMDB store and
/// returns the version it replaced.
fn set_format_version(store: &std::path::Path, version: u32) -> anyhow::Result<u32> {
    use heed::types::{Bytes, Str};
    let mut options = heed::EnvOpenOptions::new();
    options.max_dbs(4).map_size(1 << 30);
    // SAFETY: the daemon is stopped and nothing else in this process opens
    // this environment, which is all heed asks.
    let env = unsafe { options.open(store) }?;
    let opened = env.create_databases_and_commit(env.write_txn()?, |opener, wtxn| {
        let meta: heed::Database<Str, Bytes> = opener.create_database(wtxn, Some("meta"))?;
        Ok::<_, heed::Error>(heed::CommitOrAbort::<_, std::convert::Infallible>::Commit(
            meta,
        ))
    })?;
    let meta = match opened {
        heed::CommitOrAbort::Commit(meta) => meta,
        heed::CommitOrAbort::Abort(never) => match never {},
    };
    let mut wtxn = env.write_txn()?;
    let old = meta
        .get(&wtxn, "format_version")?
        .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| anyhow::anyhow!("no format_version in the store"))?;
    meta.put(&mut wtxn, "format_version", &version.to_be_bytes())?;
    wtxn.commit()?;
    Ok(old)
}
