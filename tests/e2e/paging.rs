//! Read and follow pages of large records: a page the daemon sends must fit
//! the frame limit of the client that asked for it.

use std::ffi::OsStr;
use std::time::Duration;

use tally_client::proto::Event;
use tally_tests::{check_records, event, read_range, Daemon, DaemonOpts};

/// Events whose records are ~4 KiB: 1,024 of them (one default read page)
/// hold just over 4 MiB of record bytes, the client's frame limit.
fn large_event(i: u64) -> Event {
    Event {
        payload: vec![b'x'; 4_060],
        ..event(i)
    }
}

/// With default limits, reading, following and exporting a log of ~4 KiB
/// records works: the daemon's page (bounded by max_frame_bytes of *record*
/// bytes) plus its per-record framing must not exceed the 4 MiB the client
/// accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_large_records_fit_the_clients_frame_limit() -> anyhow::Result<()> {
    const COUNT: u64 = 1_024;
    let daemon = Daemon::start(DaemonOpts::default())?;
    let mut client = daemon.client().await?;
    for first in (0..COUNT).step_by(256) {
        client
            .append((first..first + 256).map(large_event).collect())
            .await?;
    }

    let records = read_range(&mut client, 0, COUNT).await?;
    check_records(&records, 0)?;

    let mut follow = daemon.client().await?.follow(0).await?;
    for seq in 0..COUNT {
        let record = tokio::time::timeout(Duration::from_secs(10), follow.next()).await??;
        assert_eq!(record.seq, seq);
    }

    let bundle = daemon.dir().join("large.bundle");
    let run = daemon.tally(&[OsStr::new("export"), "--out".as_ref(), bundle.as_os_str()])?;
    assert_eq!(run.code, 0, "{run:?}");
    Ok(())
}

/// An event the daemon accepted (its append frame is exactly the 4 MiB
/// limit) can be read back: its record, with the daemon's header, peer and
/// time added, must still fit a response frame the client accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_of_the_maximum_frame_size_can_be_read_back() -> anyhow::Result<()> {
    let daemon = Daemon::start(DaemonOpts::default())?;
    let max = tally_client::frame::DEFAULT_MAX_FRAME;
    let request = tally_tests::raw::append_of_len(2, event(0), max)?;
    let mut conn = tally_tests::raw::RawConn::greeted(&daemon.socket()).await?;
    conn.send(&request).await?;
    let reply = conn.recv().await?.unwrap();
    assert!(
        matches!(
            reply.body,
            Some(tally_client::proto::response::Body::Append(_))
        ),
        "the daemon refused a frame of exactly max_frame_bytes: {reply:?}"
    );

    let mut client = daemon.client().await?;
    let records = read_range(&mut client, 0, 1).await?;
    check_records(&records, 0)?;
    Ok(())
}
