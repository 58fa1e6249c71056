//! Followers: N unfiltered followers (0, 1, 10, 100) on one tokio runtime,
//! each reading as fast as it can from the head of a fresh log, while 10
//! writers append at full speed (pipelined as in `throughput.rs`) or at a
//! paced rate (scheduled requests as in `latency.rs`). Each row prints the
//! ingest achieved, its ratio to the same mode with no follower, follower
//! lag and whether every follower received everything that was acked.
//!
//! Lag is the instant a record reaches a follower (the client library hands
//! it over) minus the instant its writer received the record's ack, taken
//! for one record in [`LAG_SAMPLE_EVERY`] and clamped at 0 (a follower can
//! see a record before its writer reads the ack). With `--compare TALLYD`
//! every row also runs against that binary, alternating, so the A/B shares
//! the machine's load.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use hdrhistogram::Histogram;
use serde::Serialize;
use tally_client::Client;

use crate::daemon::{CpuMeter, CpuUse, Daemon, Setup};
use crate::load::{self, CLIENT_NAME};
use crate::Options;

/// Options of the followers scenario.
#[derive(Debug, Clone)]
pub struct FollowersOptions {
    /// Follower counts at full speed (each row compared with the 0 row).
    pub counts: Vec<usize>,
    /// Paced rows: (offered events/s, followers); a 0-follower row at the
    /// same rate runs with each.
    pub paced: Vec<(u64, usize)>,
    pub duration: Duration,
    pub writers: usize,
    pub batch: usize,
    pub window: usize,
    pub payload: usize,
    /// How long followers may take, after the writers stop, to receive
    /// everything acked.
    pub grace: Duration,
    /// A second tallyd run row by row beside `--tallyd` (an A/B).
    pub compare: Option<PathBuf>,
}

/// One record in this many is timed for lag.
const LAG_SAMPLE_EVERY: u64 = 64;

/// Requests a paced writer keeps in flight at most.
const MAX_IN_FLIGHT: usize = 192;

/// A paced writer's tick (one request per writer per `TICK * writers`).
const TICK: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, Serialize)]
pub struct FollowersRow {
    /// Which tallyd ("tallyd" or "compare").
    pub binary: String,
    pub followers: usize,
    /// `None`: full speed.
    pub offered_per_sec: Option<u64>,
    pub seconds: f64,
    pub acked: u64,
    pub ingest_per_sec: f64,
    /// Over the row of the same binary and mode with no follower.
    pub ingest_ratio_to_none: Option<f64>,
    /// Followers that received every acked record by the end of the grace.
    pub kept_up: usize,
    /// The fewest records any follower received.
    pub min_received: u64,
    /// The fewest records any follower received before the writers stopped
    /// (the rest came in the grace): a lag of about the writing's length
    /// with every record received in the end means the follower got little
    /// while ingest ran.
    pub min_received_while_writing: u64,
    pub lag_p50_ms: Option<f64>,
    pub lag_p99_ms: Option<f64>,
    pub lag_max_ms: Option<f64>,
    pub cpu: CpuUse,
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).map_err(|err| anyhow!("histogram: {err:?}"))
}

/// Every ack a writer received: (first seq, count, when).
type AckLog = Vec<(u64, u64, Instant)>;

#[derive(Debug, Clone, Copy)]
enum Pace {
    Full,
    /// One request of `events` every `period`, first at `first`.
    Paced {
        first: Instant,
        period: Duration,
        events: usize,
    },
}

async fn write(
    socket: PathBuf,
    options: FollowersOptions,
    pace: Pace,
    until: Instant,
) -> anyhow::Result<AckLog> {
    let mut client = Client::connect(&socket, CLIENT_NAME).await?;
    let (batch, window) = match pace {
        Pace::Full => (options.batch, options.window),
        Pace::Paced { events, .. } => (events, MAX_IN_FLIGHT),
    };
    let events = load::events(batch, options.payload);
    let mut log = AckLog::new();
    let mut in_flight = VecDeque::new();
    let mut sent = 0u32;
    loop {
        let due = match pace {
            Pace::Full => Instant::now(),
            Pace::Paced { first, period, .. } => first + period * sent,
        };
        let more = due < until;
        if !more && in_flight.is_empty() {
            return Ok(log);
        }
        if more && in_flight.len() < window {
            if due > Instant::now() && !in_flight.is_empty() {
                // Take an ack while waiting for the next send, if one comes.
                if let Ok(acks) =
                    tokio::time::timeout_at(due.into(), client.recv_append(in_flight[0])).await
                {
                    let acks = acks?;
                    in_flight.pop_front();
                    if let Some(first) = acks.first() {
                        log.push((first.seq, acks.len() as u64, Instant::now()));
                    }
                    continue;
                }
            }
            tokio::time::sleep_until(due.into()).await;
            in_flight.push_back(client.send_append(events.clone()).await?);
            sent += 1;
            continue;
        }
        if let Some(id) = in_flight.pop_front() {
            let acks = client.recv_append(id).await?;
            if let Some(first) = acks.first() {
                log.push((first.seq, acks.len() as u64, Instant::now()));
            }
        }
    }
}

/// What a follower received: records in all, records before the writers
/// stopped (to within one sampling interval), and the sampled arrivals.
type Followed = (u64, u64, Vec<(u64, Instant)>);

/// A follower from seq 0 until `deadline` or `target` records (set when the
/// writers stop, at `until`).
async fn follow(
    socket: PathBuf,
    target: Arc<std::sync::atomic::AtomicU64>,
    until: Instant,
    deadline: Instant,
) -> anyhow::Result<Followed> {
    use std::sync::atomic::Ordering;
    let client = Client::connect(&socket, CLIENT_NAME).await?;
    let mut follow = client.follow(0).await?;
    let mut received = 0u64;
    let mut samples = Vec::new();
    while received < target.load(Ordering::Acquire) {
        let Ok(record) = tokio::time::timeout_at(deadline.into(), follow.next()).await else {
            break;
        };
        let record = record?;
        anyhow::ensure!(
            record.seq == received,
            "follower got seq {} for {received}",
            record.seq
        );
        if record.seq % LAG_SAMPLE_EVERY == 0 {
            samples.push((record.seq, Instant::now()));
        }
        received += 1;
    }
    // From the samples (one record in LAG_SAMPLE_EVERY, from seq 0): the
    // last one that arrived before the writers stopped.
    let while_writing = samples
        .iter()
        .take_while(|(_, arrived)| *arrived < until)
        .last()
        .map_or(0, |(seq, _)| seq + 1);
    Ok((received, while_writing, samples))
}

/// The ack instant of `seq`.
fn ack_time(acks: &[(u64, u64, Instant)], seq: u64) -> Option<Instant> {
    let at = acks.partition_point(|&(first, _, _)| first <= seq);
    let &(first, count, when) = acks.get(at.checked_sub(1)?)?;
    (seq < first + count).then_some(when)
}

fn run_row(
    tallyd: &Path,
    binary: &str,
    work_dir: &Path,
    options: &FollowersOptions,
    followers: usize,
    offered: Option<u64>,
) -> anyhow::Result<FollowersRow> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let temp = super::temp_dir(work_dir, "followers")?;
    let daemon = Daemon::start(tallyd, temp.path(), &Setup::default())?;
    let runtime = load::runtime()?;
    let socket = daemon.socket().to_owned();
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let writers = options.writers.max(1);
    let mut cpu = CpuMeter::start(&daemon)?;
    let (acks, followed, seconds) = runtime.block_on(async {
        let start = Instant::now() + Duration::from_millis(300);
        let until = start + options.duration;
        let deadline = until + options.grace;
        let mut tasks = Vec::new();
        for _ in 0..followers {
            tasks.push(tokio::spawn(follow(
                socket.clone(),
                target.clone(),
                until,
                deadline,
            )));
        }
        // Followers connect (and wait at the empty head) before writing starts.
        tokio::time::sleep_until(start.into()).await;
        let mut writing = Vec::new();
        for k in 0..writers {
            let pace = match offered {
                None => Pace::Full,
                Some(rate) => Pace::Paced {
                    first: start + TICK * k as u32,
                    period: TICK * writers as u32,
                    events: ((rate as f64 * TICK.as_secs_f64()).round() as usize).max(1),
                },
            };
            writing.push(tokio::spawn(write(
                socket.clone(),
                options.clone(),
                pace,
                until,
            )));
        }
        let mut acks = AckLog::new();
        for task in writing {
            acks.extend(task.await.context("writer task")??);
        }
        let seconds = start.elapsed().as_secs_f64();
        let acked: u64 = acks.iter().map(|&(_, count, _)| count).sum();
        target.store(acked, Ordering::Release);
        let mut followed = Vec::new();
        for task in tasks {
            followed.push(task.await.context("follower task")??);
        }
        anyhow::Ok((acks, followed, seconds))
    })?;
    let cpu = cpu.stop(&daemon)?;
    let mut acks = acks;
    acks.sort_by_key(|&(first, _, _)| first);
    let acked: u64 = acks.iter().map(|&(_, count, _)| count).sum();
    let mut lag = histogram()?;
    for (_, _, samples) in &followed {
        for &(seq, arrived) in samples {
            if let Some(acked_at) = ack_time(&acks, seq) {
                let micros = arrived.saturating_duration_since(acked_at).as_micros() as u64;
                lag.saturating_record(micros.max(1));
            }
        }
    }
    let ms =
        |quantile: f64| (!lag.is_empty()).then(|| lag.value_at_quantile(quantile) as f64 / 1e3);
    Ok(FollowersRow {
        binary: binary.into(),
        followers,
        offered_per_sec: offered,
        seconds,
        acked,
        ingest_per_sec: acked as f64 / seconds,
        ingest_ratio_to_none: None,
        kept_up: followed
            .iter()
            .filter(|(received, _, _)| *received == acked)
            .count(),
        min_received: followed
            .iter()
            .map(|(received, _, _)| *received)
            .min()
            .unwrap_or(acked),
        min_received_while_writing: followed
            .iter()
            .map(|(_, while_writing, _)| *while_writing)
            .min()
            .unwrap_or(acked),
        lag_p50_ms: ms(0.5),
        lag_p99_ms: ms(0.99),
        lag_max_ms: (!lag.is_empty()).then(|| lag.max() as f64 / 1e3),
        cpu,
    })
}

/// Every row, against `--tallyd` and (alternating) the compared binary.
pub fn run(options: &Options, shape: &FollowersOptions) -> anyhow::Result<Vec<FollowersRow>> {
    let mut binaries = vec![("tallyd", options.tallyd.clone())];
    if let Some(compare) = &shape.compare {
        binaries.push(("compare", compare.clone()));
    }
    let mut plan: Vec<(usize, Option<u64>)> = shape.counts.iter().map(|&n| (n, None)).collect();
    for &(rate, followers) in &shape.paced {
        plan.push((0, Some(rate)));
        plan.push((followers, Some(rate)));
    }
    let mut rows: Vec<FollowersRow> = Vec::new();
    for &(followers, offered) in &plan {
        for (name, tallyd) in &binaries {
            eprintln!(
                "tally-bench: followers: {followers} at {} ({name})",
                offered.map_or("full speed".into(), |rate| format!("{rate}/s"))
            );
            let mut row = run_row(tallyd, name, &options.work_dir, shape, followers, offered)?;
            row.ingest_ratio_to_none = rows
                .iter()
                .find(|none| {
                    none.followers == 0
                        && none.binary == row.binary
                        && none.offered_per_sec == offered
                })
                .map(|none| row.ingest_per_sec / none.ingest_per_sec);
            rows.push(row);
        }
    }
    Ok(rows)
}
