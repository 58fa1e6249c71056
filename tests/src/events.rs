//! The events the tests send and read back, and the clients that send them:
//! deterministic events, reading a range back, checking records against
//! their chain, and pipelined or never-reading appenders.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use tally_client::proto::{Event, StoredRecord};
use tally_client::{Ack, Client, ClientError};

use crate::{raw, Daemon, EVENT_PAYLOAD_BYTES};

/// A test event with a deterministic ~256-byte payload: `event(i)` is the same
/// in every run, so a record read back can be compared with what was sent.
pub fn event(i: u64) -> Event {
    let seed = format!("event {i} ");
    let payload: Vec<u8> = seed.bytes().cycle().take(EVENT_PAYLOAD_BYTES).collect();
    Event {
        kind: "test.event".into(),
        actor: "tally-e2e".into(),
        subject: format!("event-{i}"),
        attributes: BTreeMap::from([("i".to_owned(), i.to_string())]),
        payload,
        content_type: "application/octet-stream".into(),
        client_time_unix_nanos: i64::try_from(i).unwrap_or(i64::MAX),
        typed_attributes: Vec::new(),
    }
}

/// Events `first..first + count`.
pub fn events(first: u64, count: u64) -> Vec<Event> {
    (first..first + count).map(event).collect()
}

/// Reads every stored record in `from..to` (page by page).
pub async fn read_range(
    client: &mut Client,
    from: u64,
    to: u64,
) -> anyhow::Result<Vec<StoredRecord>> {
    let mut out = Vec::new();
    let mut next = from;
    while next < to {
        let page = client.read(next, 0).await?;
        let Some(last) = page.last() else {
            bail!("the daemon returned no records at seq {next} (wanted up to {to})");
        };
        next = last.seq + 1;
        out.extend(page.into_iter().filter(|record| record.seq < to));
    }
    Ok(out)
}

/// Checks that `records` are exactly seqs `from..`, each record's entry hash
/// (recomputed here, not taken from the daemon) is the daemon's, and each
/// links to the one before it.
pub fn check_records(records: &[StoredRecord], from: u64) -> anyhow::Result<()> {
    let mut prev: Option<[u8; 32]> = None;
    for (offset, record) in records.iter().enumerate() {
        let seq = from + offset as u64;
        ensure!(record.seq == seq, "expected seq {seq}, got {}", record.seq);
        let (header, _) = tally_attest::RecordHeader::parse(&record.record)
            .with_context(|| format!("seq {seq}"))?;
        ensure!(header.seq == seq, "seq {seq}: header says {}", header.seq);
        let hash = tally_attest::entry_hash(&record.record);
        ensure!(
            record.entry_hash.as_ref() == hash.as_slice(),
            "seq {seq}: the daemon's entry hash does not match the record"
        );
        if let Some(prev) = prev {
            ensure!(header.prev_hash == prev, "seq {seq}: broken link");
        }
        prev = Some(hash);
    }
    Ok(())
}

/// The event stored in a record, as it was sent: the hashed event with its
/// content (payload, personal attributes; docs/DESIGN.md section 3b) joined
/// back from the served opening, which is checked against the record's
/// commitment first.
pub fn stored_event(record: &StoredRecord) -> anyhow::Result<Event> {
    let decoded = tally_client::record::decode(&record.record)
        .with_context(|| format!("seq {}", record.seq))?;
    let mut event = decoded
        .body
        .event
        .with_context(|| format!("seq {}: record without an event", record.seq))?;
    let commitment = decoded.body.content_commitment;
    if record.content.is_empty() {
        return Ok(event);
    }
    let opened = tally_attest::content::commitment_of_opening(&record.content)?;
    ensure!(
        commitment == opened,
        "seq {}: the served content does not open the record's commitment",
        record.seq
    );
    let (_, content) = tally_attest::content::split_opening(&record.content)?;
    let content = <tally_client::proto::Content as prost::Message>::decode(content)?;
    event.payload = content.payload;
    event.attributes.extend(content.attributes);
    event.typed_attributes.extend(content.typed_attributes);
    Ok(event)
}

/// Hex of an ack's entry hash, as the CLI prints it.
pub fn hex_hash(ack: &Ack) -> String {
    hex::encode(ack.entry_hash)
}

/// Connects a client that pipelines appends of `batch` events (ids from
/// `first`) and never reads a reply, and waits until the daemon has pushed it
/// back: for half a second neither its writes nor the log made progress.
/// Returns the writing task (abort it to drop the connection) and the number
/// of requests it wrote.
pub async fn never_reading_client(
    daemon: &Daemon,
    first: u64,
    batch: u64,
) -> anyhow::Result<(tokio::task::JoinHandle<anyhow::Result<()>>, u64)> {
    let mut conn = raw::RawConn::greeted(&daemon.socket()).await?;
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let writer = tokio::spawn(async move {
        for request in 0.. {
            let ids = events(first + request * batch, batch);
            conn.send(&raw::append(request + 2, ids)).await?;
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    let mut observer = daemon.client().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (u64::MAX, u64::MAX);
    let mut quiet = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = (sent.load(Ordering::Relaxed), observer.status().await?.size);
        quiet = if now == last { quiet + 1 } else { 0 };
        if quiet == 2 {
            return Ok((writer, now.0));
        }
        last = now;
        if Instant::now() > deadline {
            writer.abort();
            bail!("a client that never reads was not pushed back within 30 s");
        }
    }
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes.
pub async fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

/// Appends each batch of event ids (see [`event`]) with up to `window`
/// requests in flight on one connection, calling `on_acks` with each batch
/// and its acks as they arrive. Checks that every reply has one ack per event
/// with consecutive seqs. Stops at the first error (e.g. the daemon died or
/// shut down); when sending fails, first collects the acks of the requests
/// already sent, so no ack the daemon delivered is missed.
pub async fn append_pipelined(
    client: &mut Client,
    batches: impl IntoIterator<Item = Range<u64>>,
    window: usize,
    mut on_acks: impl FnMut(Range<u64>, &[Ack]),
) -> Result<(), ClientError> {
    let mut in_flight: VecDeque<(u64, Range<u64>)> = VecDeque::new();
    let mut batches = batches.into_iter();
    loop {
        if in_flight.len() < window.max(1) {
            if let Some(ids) = batches.next() {
                match client.send_append(ids.clone().map(event).collect()).await {
                    Ok(id) => in_flight.push_back((id, ids)),
                    Err(err) => {
                        while let Some((id, ids)) = in_flight.pop_front() {
                            on_acks(ids.clone(), &recv_acks(client, id, ids).await?);
                        }
                        return Err(err);
                    }
                }
                continue;
            }
        }
        let Some((id, ids)) = in_flight.pop_front() else {
            return Ok(());
        };
        on_acks(ids.clone(), &recv_acks(client, id, ids).await?);
    }
}

async fn recv_acks(client: &mut Client, id: u64, ids: Range<u64>) -> Result<Vec<Ack>, ClientError> {
    let acks = client.recv_append(id).await?;
    let consecutive = acks.windows(2).all(|pair| pair[1].seq == pair[0].seq + 1);
    if acks.len() as u64 != ids.end - ids.start || !consecutive {
        return Err(ClientError::Protocol(format!(
            "{} acks for events {ids:?} (consecutive: {consecutive})",
            acks.len()
        )));
    }
    Ok(acks)
}
