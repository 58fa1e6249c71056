//! Lone client: one connection, one event per request, waiting for each ack
//! before sending the next. Every request is its own commit (nothing else to
//! batch with), so this is the per-commit cost as a client sees it. Measured
//! in slices so the one-record baselines can run between them.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use hdrhistogram::Histogram;
use serde::Serialize;
use tally_client::Client;

use crate::daemon::{CpuMeter, CpuUse, Daemon, Setup};
use crate::load::{self, CLIENT_NAME};
use crate::{LoneOptions, Options};

#[derive(Debug, Clone, Serialize)]
pub struct Lone {
    pub slices: usize,
    pub seconds: f64,
    pub events: u64,
    pub events_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Mean stored record size, for the one-record baselines.
    pub record_bytes: f64,
    /// LMDB commits per event (1.0: one commit per ack, as expected).
    pub commits_per_event: f64,
    pub cpu: CpuUse,
}

/// A daemon with one client appending one event at a time.
#[derive(Debug)]
pub struct Runner {
    payload: usize,
    runtime: tokio::runtime::Runtime,
    daemon: Daemon,
    cpu: CpuMeter,
    rtt: Histogram<u64>,
    slices: usize,
    seconds: f64,
    events: u64,
    commits: u64,
    _temp: tempfile::TempDir,
}

impl Runner {
    pub fn start(options: &Options, shape: &LoneOptions) -> anyhow::Result<Runner> {
        let temp = super::temp_dir(&options.work_dir, "lone")?;
        let daemon = Daemon::start(&options.tallyd, temp.path(), &Setup::default())?;
        Ok(Runner {
            payload: shape.payload,
            // A lone client is one task waiting on one socket: a current-thread
            // runtime, as such a program would use. On a multi-thread one,
            // every reply is read by a worker thread and handed to the thread
            // blocked in `block_on`: a wake-up that costs the client, not
            // tallyd, 0.03-0.1 of the ratio here (docs/BENCHMARKS.md).
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            daemon,
            cpu: CpuMeter::default(),
            rtt: Histogram::new_with_bounds(1, 600_000_000, 3)
                .map_err(|err| anyhow!("histogram: {err:?}"))?,
            slices: 0,
            seconds: 0.0,
            events: 0,
            commits: 0,
            _temp: temp,
        })
    }

    /// Appends one event at a time for `duration`.
    pub fn slice(&mut self, duration: Duration) -> anyhow::Result<()> {
        let event = load::events(1, self.payload);
        let txn_before = self.daemon.last_txn_id()?;
        self.cpu.resume(&self.daemon)?;
        let started = Instant::now();
        let until = started + duration;
        let (socket, rtt) = (self.daemon.socket(), &mut self.rtt);
        let events = self.runtime.block_on(async {
            let mut client = Client::connect(socket, CLIENT_NAME).await?;
            let mut events = 0u64;
            while Instant::now() < until {
                let sent = Instant::now();
                client.append(event.clone()).await?;
                rtt.saturating_record((sent.elapsed().as_micros() as u64).max(1));
                events += 1;
            }
            anyhow::Ok(events)
        })?;
        self.seconds += started.elapsed().as_secs_f64();
        self.cpu.pause(&self.daemon)?;
        self.events += events;
        self.commits += self.daemon.last_txn_id()?.saturating_sub(txn_before);
        self.slices += 1;
        Ok(())
    }

    /// Mean size of the records stored so far.
    pub fn record_bytes(&self) -> anyhow::Result<f64> {
        self.runtime
            .block_on(load::mean_record_bytes(self.daemon.socket()))
    }

    pub fn finish(mut self) -> anyhow::Result<Lone> {
        let cpu = self.cpu.stop(&self.daemon)?;
        let ms = |quantile: f64| self.rtt.value_at_quantile(quantile) as f64 / 1e3;
        Ok(Lone {
            slices: self.slices,
            seconds: self.seconds,
            events: self.events,
            events_per_sec: self.events as f64 / self.seconds,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            record_bytes: self.record_bytes()?,
            commits_per_event: self.commits.max(1) as f64 / self.events.max(1) as f64,
            cpu,
        })
    }
}
