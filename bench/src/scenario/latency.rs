//! Ack latency under open-loop load: requests are scheduled at fixed
//! instants (one every `tick`, rate x tick events each, round-robin over a
//! few connections) whatever the daemon does, and each ack's latency is
//! counted from its request's *scheduled* send time. A daemon (or a client)
//! that falls behind therefore shows up in the latency instead of silently
//! lowering the offered load (the coordinated-omission trap).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use hdrhistogram::Histogram;
use serde::Serialize;
use tally_client::proto::Event;
use tally_client::{Ack, Client, ClientError};

use crate::daemon::{CpuMeter, CpuUse, Daemon, Setup};
use crate::disk_probe::DiskProbe;
use crate::load::{self, CLIENT_NAME};
use crate::{LatencyOptions, Options};

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub offered_per_sec: f64,
    /// Events scheduled in the measured window and acked, over the time from
    /// the window's start to the last of those acks.
    pub achieved_per_sec: f64,
    pub events_per_request: usize,
    pub connections: usize,
    pub tick_micros: u64,
    /// The measured window (a warm-up before it is sent but not counted).
    pub seconds: f64,
    pub requests: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// How late this program sent requests relative to their schedule (its
    /// own timer and CPU lag, included in the latencies above).
    pub send_lag_p99_ms: f64,
    /// The slowest 4 KiB write + fdatasync of a probe beside the daemon
    /// during the run ([`crate::disk_probe`]): a latency tail that matches
    /// it is the disk's.
    pub disk_probe_max_ms: f64,
    pub cpu: CpuUse,
}

/// Requests a connection keeps in flight at most (tallyd allows 256): past
/// it the sender waits for acks, and the wait is counted as latency.
const MAX_IN_FLIGHT: usize = 192;

/// One connection's share of the schedule.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    first: Instant,
    period: Duration,
    /// Requests due before this are sent but not counted (warm-up).
    measure_from: Instant,
    /// No request is due at or after this.
    end: Instant,
}

struct Stats {
    latency: Histogram<u64>,
    lag: Histogram<u64>,
    events: u64,
    requests: u64,
    last_ack: Instant,
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    // Microseconds, from 1 us to 10 minutes, 3 significant figures.
    Histogram::new_with_bounds(1, 600_000_000, 3).map_err(|err| anyhow!("histogram: {err:?}"))
}

fn micros(duration: Duration) -> u64 {
    (duration.as_micros() as u64).max(1)
}

enum Next {
    Send,
    Acked(Result<Vec<Ack>, ClientError>),
}

async fn paced(
    socket: PathBuf,
    events: Arc<Vec<Event>>,
    schedule: Schedule,
) -> anyhow::Result<Stats> {
    let mut client = Client::connect(&socket, CLIENT_NAME).await?;
    let mut stats = Stats {
        latency: histogram()?,
        lag: histogram()?,
        events: 0,
        requests: 0,
        last_ack: schedule.measure_from,
    };
    // (request id, scheduled send time)
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut sent = 0u32;
    loop {
        let due = schedule.first + schedule.period * sent;
        let more = due < schedule.end;
        if !more && in_flight.is_empty() {
            return Ok(stats);
        }
        let front = in_flight.front().map(|&(id, _)| id);
        let next = tokio::select! {
            _ = tokio::time::sleep_until(due.into()), if more && in_flight.len() < MAX_IN_FLIGHT => Next::Send,
            acks = client.recv_append(front.unwrap_or(0)), if front.is_some() => Next::Acked(acks),
        };
        match next {
            Next::Send => {
                if due >= schedule.measure_from {
                    stats.lag.saturating_record(micros(due.elapsed()));
                }
                let id = client.send_append(events.as_ref().clone()).await?;
                in_flight.push_back((id, due));
                sent += 1;
            }
            Next::Acked(acks) => {
                let acks = acks?;
                let (_, scheduled) = in_flight.pop_front().context("ack without a request")?;
                if scheduled >= schedule.measure_from {
                    let now = Instant::now();
                    stats.latency.saturating_record(micros(now - scheduled));
                    stats.events += acks.len() as u64;
                    stats.requests += 1;
                    stats.last_ack = now;
                }
            }
        }
    }
}

/// One open-loop run at `rate` offered events/s against a fresh daemon.
pub fn run(options: &Options, shape: &LatencyOptions, rate: u64) -> anyhow::Result<Latency> {
    let temp = super::temp_dir(&options.work_dir, "latency")?;
    let daemon = Daemon::start(&options.tallyd, temp.path(), &Setup::default())?;
    let runtime = load::runtime()?;
    let tick = shape.tick.max(Duration::from_micros(100));
    let per_request = ((rate as f64 * tick.as_secs_f64()).round() as usize).max(1);
    let connections = shape.connections.max(1);
    let events = Arc::new(load::events(per_request, shape.payload));
    let warmup = (shape.duration / 5).min(Duration::from_millis(500));
    // Leave time to connect before the first request is due.
    let first = Instant::now() + Duration::from_millis(200);
    let measure_from = first + warmup;
    let end = measure_from + shape.duration;
    let mut cpu = CpuMeter::start(&daemon)?;
    let probe = DiskProbe::start(temp.path())?;
    let stats: Vec<Stats> = runtime.block_on(async {
        let tasks: Vec<_> = (0..connections)
            .map(|k| {
                let schedule = Schedule {
                    first: first + tick * k as u32,
                    period: tick * connections as u32,
                    measure_from,
                    end,
                };
                let task = paced(daemon.socket().to_owned(), events.clone(), schedule);
                tokio::spawn(tokio::time::timeout(
                    shape.duration + warmup + Duration::from_secs(60),
                    task,
                ))
            })
            .collect();
        let mut out = Vec::new();
        for task in tasks {
            out.push(
                task.await?
                    .context("latency run did not finish in time")??,
            );
        }
        anyhow::Ok(out)
    })?;
    let cpu = cpu.stop(&daemon)?;
    let disk_probe_max_ms = probe.stop()?;
    let mut latency = histogram()?;
    let mut lag = histogram()?;
    let (mut events, mut requests) = (0u64, 0u64);
    let mut last_ack = measure_from;
    for connection in &stats {
        latency
            .add(&connection.latency)
            .map_err(|e| anyhow!("{e:?}"))?;
        lag.add(&connection.lag).map_err(|e| anyhow!("{e:?}"))?;
        events += connection.events;
        requests += connection.requests;
        last_ack = last_ack.max(connection.last_ack);
    }
    anyhow::ensure!(requests > 0, "no request was acked in the measured window");
    let window = (last_ack - measure_from).max(shape.duration);
    let ms = |quantile: f64| latency.value_at_quantile(quantile) as f64 / 1e3;
    Ok(Latency {
        offered_per_sec: per_request as f64 / tick.as_secs_f64(),
        achieved_per_sec: events as f64 / window.as_secs_f64(),
        events_per_request: per_request,
        connections,
        tick_micros: micros(tick),
        seconds: shape.duration.as_secs_f64(),
        requests,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: latency.max() as f64 / 1e3,
        send_lag_p99_ms: lag.value_at_quantile(0.99) as f64 / 1e3,
        disk_probe_max_ms,
        cpu,
    })
}
