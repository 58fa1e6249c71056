//! Client-side load, through the real client library: the events sent, a
//! pipelined append loop, and a bulk ingest.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tally_client::proto::Event;
use tally_client::Client;

/// Name the benchmark gives itself in hello.
pub const CLIENT_NAME: &str = "tally-bench";

/// A multi-threaded tokio runtime (one worker per core).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// `count` events with `payload` bytes each, shaped like a small audit event
/// (kind, actor, subject, payload).
pub fn events(count: usize, payload: usize) -> Vec<Event> {
    (0..count)
        .map(|i| Event {
            kind: "bench".into(),
            actor: CLIENT_NAME.into(),
            subject: format!("event-{i}"),
            payload: vec![b'x'; payload],
            ..Default::default()
        })
        .collect()
}

/// What each pipelining client sends.
/// Bytes on the wire (length prefix included) of an append of one event
/// from [`events`].
pub fn append_request_bytes(payload: usize) -> usize {
    use prost::Message;
    use tally_client::proto::{request, AppendRequest, Request};
    let request = Request {
        id: 1,
        body: Some(request::Body::Append(AppendRequest {
            events: events(1, payload),
        })),
    };
    4 + request.encoded_len()
}

#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub payload: usize,
    /// Events per append request.
    pub batch: usize,
    /// Requests in flight.
    pub window: usize,
}

/// Appends `load.batch` events per request, keeping `load.window` requests in
/// flight, until `until`; then takes the acks still owed (every counted event
/// is durable). Adds acked events to `acked` as they come.
pub async fn pipelined(
    socket: PathBuf,
    load: Load,
    until: Instant,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut client = Client::connect(&socket, CLIENT_NAME).await?;
    let events = events(load.batch, load.payload);
    let mut in_flight = VecDeque::with_capacity(load.window);
    while Instant::now() < until {
        while in_flight.len() < load.window {
            in_flight.push_back(client.send_append(events.clone()).await?);
        }
        if let Some(id) = in_flight.pop_front() {
            let acks = client.recv_append(id).await?;
            acked.fetch_add(acks.len() as u64, Ordering::Relaxed);
        }
    }
    while let Some(id) = in_flight.pop_front() {
        let acks = client.recv_append(id).await?;
        acked.fetch_add(acks.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Appends exactly `total` events over `clients` pipelining connections.
pub async fn ingest(socket: &Path, total: u64, clients: usize, load: Load) -> anyhow::Result<()> {
    let clients = clients.max(1) as u64;
    let mut tasks = Vec::new();
    for index in 0..clients {
        let share = total / clients + u64::from(index < total % clients);
        let socket = socket.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&socket, CLIENT_NAME).await?;
            let full = events(load.batch, load.payload);
            let mut sent = 0u64;
            let mut in_flight = VecDeque::new();
            while sent < share || !in_flight.is_empty() {
                while sent < share && in_flight.len() < load.window {
                    let count = (share - sent).min(load.batch as u64) as usize;
                    in_flight.push_back(client.send_append(full[..count].to_vec()).await?);
                    sent += count as u64;
                }
                if let Some(id) = in_flight.pop_front() {
                    client.recv_append(id).await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Mean size of the last (up to) 256 stored records, in bytes: what tallyd
/// actually writes per event (header + encoded body), for the baselines.
pub async fn mean_record_bytes(socket: &Path) -> anyhow::Result<f64> {
    let mut client = Client::connect(socket, CLIENT_NAME).await?;
    let size = client.status().await?.size;
    let from = size.saturating_sub(256);
    let records = client.read(from, 256).await?;
    anyhow::ensure!(!records.is_empty(), "the log is empty");
    let bytes: usize = records.iter().map(|record| record.record.len()).sum();
    Ok(bytes as f64 / records.len() as f64)
}

/// Starts `clients` pipelined loops until `until` and returns the events acked.
pub fn run_pipelined(
    runtime: &tokio::runtime::Runtime,
    socket: &Path,
    clients: usize,
    load: Load,
    until: Instant,
) -> anyhow::Result<u64> {
    let acked = Arc::new(AtomicU64::new(0));
    runtime.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|_| tokio::spawn(pipelined(socket.to_owned(), load, until, acked.clone())))
            .collect();
        for task in tasks {
            task.await.context("client task failed")??;
        }
        anyhow::Ok(())
    })?;
    Ok(acked.load(Ordering::Relaxed))
}
