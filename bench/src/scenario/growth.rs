//! Growth: does ingest stay flat as the log grows? 10 pipelined clients
//! append `events` events to one tallyd (the throughput scenario's load),
//! and the durable rate is printed per slice of `slice` events (the time
//! between the acks that cross each slice boundary), then the daemon is
//! restarted on the full log (start-up time) and `status` is timed.
//!
//! The long form (`--growth-long`: 100M events, slices of 10M) needs about
//! 45 GB of free disk for 256-byte payloads (~400 bytes per event in
//! data.mdb, plus the ack journal); the default is a short smoke run.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tally_client::Client;

use crate::daemon::{Daemon, Setup};
use crate::format::{count, mib};
use crate::load::{self, Load, CLIENT_NAME};
use crate::scenario::verify::median;
use crate::Options;

#[derive(Debug, Clone)]
pub struct GrowthOptions {
    pub events: u64,
    /// Events per reported slice.
    pub slice: u64,
    pub clients: usize,
    pub payload: usize,
    /// Timed status requests at the end.
    pub status_samples: usize,
}

impl GrowthOptions {
    /// The documented long form: 100M events in slices of 10M.
    pub const LONG_EVENTS: u64 = 100_000_000;
    pub const LONG_SLICE: u64 = 10_000_000;
}

#[derive(Debug, Clone, Serialize)]
pub struct Slice {
    /// The log's size at the slice's end.
    pub size: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Growth {
    pub events: u64,
    pub clients: usize,
    pub slices: Vec<Slice>,
    pub total_seconds: f64,
    pub events_per_sec: f64,
    /// The last slice's rate over the first's (1.0: flat; the first
    /// slice also holds the clients' connection and the map's first growths).
    pub last_over_first: f64,
    /// The slowest slice's rate over the median slice's.
    pub slowest_over_median: f64,
    /// data.mdb's size at the end.
    pub store_bytes: u64,
    /// A restart on the full log: spawn to the socket accepting.
    pub start_up_ms: f64,
    pub status_p50_us: f64,
    pub status_max_us: f64,
}

const LOAD: Load = Load {
    payload: crate::PAYLOAD_BYTES,
    batch: 256,
    window: 8,
};

pub fn run(options: &Options, shape: &GrowthOptions) -> anyhow::Result<Growth> {
    let temp = super::temp_dir(&options.work_dir, "growth")?;
    let daemon = Daemon::start(&options.tallyd, temp.path(), &Setup::default())?;
    let runtime = load::runtime()?;
    let acked = Arc::new(AtomicU64::new(0));
    let load = Load {
        payload: shape.payload,
        ..LOAD
    };
    let clients = shape.clients.max(1) as u64;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|index| {
            let share = shape.events / clients + u64::from(index < shape.events % clients);
            runtime.spawn(append(
                daemon.socket().to_owned(),
                share,
                load,
                acked.clone(),
            ))
        })
        .collect();
    // Slice boundaries, seen by polling the acked count every millisecond.
    let slice = shape.slice.max(1);
    let mut slices = Vec::new();
    let (mut boundary, mut last) = (slice.min(shape.events), started);
    while boundary > 0 && !tasks.iter().all(|task| task.is_finished()) {
        let now = Instant::now();
        let done = acked.load(Ordering::Relaxed);
        while done >= boundary && boundary > 0 {
            let seconds = (now - last).as_secs_f64().max(1e-9);
            let events = boundary - slices.last().map_or(0, |s: &Slice| s.size);
            slices.push(Slice {
                size: boundary,
                seconds,
                events_per_sec: events as f64 / seconds,
            });
            last = now;
            boundary = if boundary >= shape.events {
                0
            } else {
                (boundary + slice).min(shape.events)
            };
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for task in tasks {
        runtime.block_on(task).context("client task failed")??;
    }
    let total_seconds = started.elapsed().as_secs_f64();
    if boundary > 0 {
        // The last boundary was crossed between the final poll and the end.
        let seconds = (Instant::now() - last).as_secs_f64().max(1e-9);
        let events = shape.events - slices.last().map_or(0, |s| s.size);
        slices.push(Slice {
            size: shape.events,
            seconds,
            events_per_sec: events as f64 / seconds,
        });
    }
    drop(daemon);
    let store_bytes = std::fs::metadata(temp.path().join("data/store/data.mdb"))?.len();
    let started_up = Instant::now();
    let daemon = Daemon::start(&options.tallyd, temp.path(), &Setup::default())?;
    let start_up_ms = started_up.elapsed().as_secs_f64() * 1e3;
    let status = runtime.block_on(status_times(daemon.socket(), shape))?;
    drop(daemon);
    let rates: Vec<f64> = slices.iter().map(|s| s.events_per_sec).collect();
    let first = rates.first().copied().unwrap_or(f64::NAN);
    let last = rates.last().copied().unwrap_or(f64::NAN);
    let slowest = rates.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(Growth {
        events: shape.events,
        clients: shape.clients,
        last_over_first: last / first,
        slowest_over_median: slowest / median(&rates),
        slices,
        total_seconds,
        events_per_sec: shape.events as f64 / total_seconds,
        store_bytes,
        start_up_ms,
        status_p50_us: median(&status),
        status_max_us: status.iter().copied().fold(0.0, f64::max),
    })
}

/// One client's share: `total` events, `load.window` requests in flight,
/// each ack added to `acked` as it comes.
async fn append(
    socket: std::path::PathBuf,
    total: u64,
    load: Load,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut client = Client::connect(&socket, CLIENT_NAME).await?;
    let full = load::events(load.batch, load.payload);
    let mut sent = 0u64;
    let mut in_flight = VecDeque::new();
    while sent < total || !in_flight.is_empty() {
        while sent < total && in_flight.len() < load.window {
            let count = (total - sent).min(load.batch as u64) as usize;
            in_flight.push_back(client.send_append(full[..count].to_vec()).await?);
            sent += count as u64;
        }
        if let Some(id) = in_flight.pop_front() {
            let acks = client.recv_append(id).await?;
            acked.fetch_add(acks.len() as u64, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// `status` round trips on the full log, in microseconds; the log's size
/// must be the events ingested.
async fn status_times(socket: &Path, shape: &GrowthOptions) -> anyhow::Result<Vec<f64>> {
    let mut client = Client::connect(socket, CLIENT_NAME).await?;
    let mut times = Vec::with_capacity(shape.status_samples);
    for _ in 0..shape.status_samples.max(1) {
        let started = Instant::now();
        let status = client.status().await?;
        times.push(started.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(
            status.size == shape.events,
            "the log holds {} events",
            status.size
        );
    }
    Ok(times)
}

impl Growth {
    /// The scenario's lines of the figures table.
    pub fn rows(&self) -> Vec<[String; 3]> {
        let name = format!("growth ({} clients)", self.clients);
        let mut rows = Vec::new();
        for slice in &self.slices {
            rows.push([
                name.clone(),
                format!("events/s up to {}", count(slice.size as f64)),
                format!("{} ({:.2} s)", count(slice.events_per_sec), slice.seconds),
            ]);
        }
        rows.push([
            name.clone(),
            "whole run; last slice / first; slowest / median".into(),
            format!(
                "{} events/s in {:.1} s; {:.3}; {:.3}",
                count(self.events_per_sec),
                self.total_seconds,
                self.last_over_first,
                self.slowest_over_median
            ),
        ]);
        rows.push([
            name.clone(),
            "data.mdb at the end".into(),
            format!("{:.0} MiB", mib(self.store_bytes)),
        ]);
        rows.push([
            name.clone(),
            "restart on the full log; status p50 (max)".into(),
            format!(
                "{:.1} ms; {:.1} us ({:.1} us)",
                self.start_up_ms, self.status_p50_us, self.status_max_us
            ),
        ]);
        rows
    }
}
