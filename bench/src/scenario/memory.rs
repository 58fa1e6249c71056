//! Memory under overload: many clients each keep a deep window of large
//! append requests in flight, offering far more bytes than tallyd can commit
//! in the time. tallyd must push back (a byte budget on queued appends, then
//! the sockets) instead of queueing without bound: its peak RSS (VmHWM) must
//! stay within what its configuration allows, and must not keep growing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::daemon::{CpuMeter, CpuUse, Daemon, Setup};
use crate::load::{self, Load};
use crate::{MemoryOptions, Options};

/// tallyd's batch byte limit for this scenario (also its default).
const BATCH_MAX_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub clients: usize,
    pub window: usize,
    pub batch: usize,
    pub payload_bytes: usize,
    pub seconds: f64,
    /// tallyd's configured `queue_bytes` and `batch_max_bytes`.
    pub queue_bytes: u64,
    pub batch_max_bytes: u64,
    /// Approximate size of one append request.
    pub request_bytes: u64,
    /// What the clients try to have in flight: clients x window x request.
    pub offered_in_flight_bytes: u64,
    pub idle_rss_bytes: u64,
    /// VmHWM at the end of the overload.
    pub peak_rss_bytes: u64,
    /// Peak RSS in the middle and the last third of the run (the first
    /// third is the ramp-up).
    pub middle_third_peak_rss_bytes: u64,
    pub last_third_peak_rss_bytes: u64,
    /// RSS every ~250 ms: (seconds since the overload began, bytes).
    pub rss_series: Vec<(f64, u64)>,
    /// What the design allows above idle: the queue budget (decoded appends
    /// waiting for or in the writer), one batch being built plus LMDB's dirty
    /// pages for it, and per connection a read buffer of up to two frames
    /// plus one decoded request waiting for budget; plus a quarter for the
    /// allocator (glibc keeps freed memory in per-thread arenas, so memory
    /// freed by one thread does not always serve another's next request).
    pub allowance_bytes: u64,
    /// Whether the run was long enough (>= 3 s) to judge growth: a shorter
    /// one is mostly ramp-up.
    pub growth_checked: bool,
    /// Peak above idle within the allowance, and (when checked) no growth:
    /// the last third's peak within 10% of the middle third's.
    pub bounded: bool,
    pub committed_events: u64,
    pub committed_mb_per_sec: f64,
    pub cpu: CpuUse,
}

pub fn run(options: &Options, shape: &MemoryOptions) -> anyhow::Result<Memory> {
    let temp = super::temp_dir(&options.work_dir, "memory")?;
    let setup = Setup {
        tpm: None,
        config: Some(format!(
            "queue_bytes = {}\nbatch_max_bytes = {BATCH_MAX_BYTES}\n",
            shape.queue_bytes
        )),
    };
    let daemon = Daemon::start(&options.tallyd, temp.path(), &setup)?;
    let runtime = load::runtime()?;
    let idle_rss_bytes = daemon.rss()?;
    let load = Load {
        payload: shape.payload,
        batch: shape.batch,
        window: shape.window,
    };
    // Event fields besides the payload, and protobuf framing: small.
    let request_bytes = (shape.batch * (shape.payload + 48)) as u64;

    let stop = Arc::new(AtomicBool::new(false));
    let pid = daemon.pid();
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(rss) = crate::procfs::status_bytes(pid, "VmRSS") {
                    samples.push((started.elapsed(), rss));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        })
    };
    let mut cpu = CpuMeter::start(&daemon)?;
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let committed = runtime.block_on(async {
        // The clients never stop on their own (the deadline is far away);
        // they are aborted, with requests still in flight, after the duration.
        let never = started + Duration::from_secs(3600);
        let tasks: Vec<_> = (0..shape.clients)
            .map(|_| {
                let task = load::pipelined(daemon.socket().to_owned(), load, never, acked.clone());
                tokio::spawn(task)
            })
            .collect();
        tokio::time::sleep(shape.duration).await;
        // What tallyd committed, asked before the clients go (their queued
        // appends would still be committed after).
        let mut client = tally_client::Client::connect(daemon.socket(), load::CLIENT_NAME).await?;
        let committed = client.status().await?.size;
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            if let Ok(Err(err)) = task.await {
                anyhow::bail!("an overload client failed: {err:#}");
            }
        }
        anyhow::Ok(committed)
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let peak_rss_bytes = daemon.peak_rss()?;
    let cpu = cpu.stop(&daemon)?;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the RSS sampler panicked"))?;
    let third = seconds / 3.0;
    let peak_in = |from: f64, to: f64| {
        samples
            .iter()
            .filter(|(at, _)| (from..to).contains(&at.as_secs_f64()))
            .map(|&(_, rss)| rss)
            .max()
            .unwrap_or(idle_rss_bytes)
    };
    let middle = peak_in(third, 2.0 * third);
    let last = peak_in(2.0 * third, f64::INFINITY);
    let rss_series = samples
        .iter()
        .skip(12)
        .step_by(12)
        .map(|(at, rss)| ((at.as_secs_f64() * 1000.0).round() / 1000.0, *rss))
        .collect();
    // Two batches' record buffers (one open, one committing) and LMDB's
    // dirty pages for the one committing.
    let design =
        shape.queue_bytes as u64 + 3 * BATCH_MAX_BYTES + 3 * shape.clients as u64 * request_bytes;
    let allowance_bytes = design + design / 4;
    let growth_checked = seconds >= 3.0;
    let committed_events = committed.max(1);
    Ok(Memory {
        clients: shape.clients,
        window: shape.window,
        batch: shape.batch,
        payload_bytes: shape.payload,
        seconds,
        queue_bytes: shape.queue_bytes as u64,
        batch_max_bytes: BATCH_MAX_BYTES,
        request_bytes,
        offered_in_flight_bytes: shape.clients as u64 * shape.window as u64 * request_bytes,
        idle_rss_bytes,
        peak_rss_bytes,
        middle_third_peak_rss_bytes: middle,
        last_third_peak_rss_bytes: last,
        rss_series,
        allowance_bytes,
        growth_checked,
        bounded: peak_rss_bytes.saturating_sub(idle_rss_bytes) <= allowance_bytes
            && (!growth_checked || last as f64 <= middle as f64 * 1.1),
        committed_events,
        committed_mb_per_sec: committed_events as f64 * shape.payload as f64 / seconds / 1e6,
        cpu,
    })
}
