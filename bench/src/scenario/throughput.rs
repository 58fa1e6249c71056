//! Throughput: C clients, each pipelining append requests of a fixed number
//! of fixed-size events, for a fixed duration. Every counted event was acked,
//! so it is durable (ack after fsync). The duration can be cut into slices
//! with the baselines run between them (see `crate::run`).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::baseline::Shape;
use crate::daemon::{CpuMeter, CpuUse, Daemon, Setup};
use crate::load::{self, Load};
use crate::{Options, ThroughputOptions};

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub anchoring: bool,
    pub clients: usize,
    pub payload_bytes: usize,
    pub batch: usize,
    pub window: usize,
    pub slices: usize,
    pub seconds: f64,
    pub events: u64,
    pub events_per_sec: f64,
    pub payload_mb_per_sec: f64,
    /// Mean stored record size (header + encoded body), the baselines' unit.
    pub record_bytes: f64,
    pub record_mb_per_sec: f64,
    /// LMDB write transactions committed during the run (one per batch).
    pub commits: u64,
    pub commits_per_sec: f64,
    /// The group-commit batch size tallyd actually reached.
    pub events_per_commit: f64,
    pub cpu: CpuUse,
    /// With anchoring: anchors stored by the end of the run, and the last
    /// anchoring error tallyd reported (empty: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchors: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor_error: Option<String>,
}

/// A daemon under throughput load, measured slice by slice.
#[derive(Debug)]
pub struct Runner {
    shape: ThroughputOptions,
    anchoring: bool,
    runtime: tokio::runtime::Runtime,
    daemon: Daemon,
    cpu: CpuMeter,
    slices: usize,
    seconds: f64,
    events: u64,
    commits: u64,
    record_bytes: f64,
    // Last: the daemon's directory outlives the daemon.
    _temp: tempfile::TempDir,
}

impl Runner {
    /// Starts a fresh daemon (anchoring in `tpm` when given).
    pub fn start(
        options: &Options,
        shape: &ThroughputOptions,
        tpm: Option<(&str, u64)>,
    ) -> anyhow::Result<Runner> {
        let temp = super::temp_dir(&options.work_dir, "throughput")?;
        let setup = Setup {
            tpm: tpm.map(|(tcti, interval)| (tcti.to_owned(), interval)),
            config: None,
        };
        let daemon = Daemon::start(&options.tallyd, temp.path(), &setup)?;
        Ok(Runner {
            shape: shape.clone(),
            anchoring: tpm.is_some(),
            runtime: load::runtime()?,
            daemon,
            cpu: CpuMeter::default(),
            slices: 0,
            seconds: 0.0,
            events: 0,
            commits: 0,
            record_bytes: 0.0,
            _temp: temp,
        })
    }

    /// Runs the load for `duration` without counting it: the daemon's first
    /// second (a fresh process, an empty store, cold buffers) is slower than
    /// the rest and is not what the scenario measures.
    pub fn warm_up(&mut self, duration: Duration) -> anyhow::Result<()> {
        let load = Load {
            payload: self.shape.payload,
            batch: self.shape.batch,
            window: self.shape.window,
        };
        load::run_pipelined(
            &self.runtime,
            self.daemon.socket(),
            self.shape.clients,
            load,
            Instant::now() + duration,
        )?;
        Ok(())
    }

    /// Runs the load for `duration`; returns the slice's acked events/s.
    pub fn slice(&mut self, duration: Duration) -> anyhow::Result<f64> {
        let load = Load {
            payload: self.shape.payload,
            batch: self.shape.batch,
            window: self.shape.window,
        };
        let txn_before = self.daemon.last_txn_id()?;
        self.cpu.resume(&self.daemon)?;
        let started = Instant::now();
        let events = load::run_pipelined(
            &self.runtime,
            self.daemon.socket(),
            self.shape.clients,
            load,
            started + duration,
        )?;
        let seconds = started.elapsed().as_secs_f64();
        self.events += events;
        self.seconds += seconds;
        self.cpu.pause(&self.daemon)?;
        self.commits += self.daemon.last_txn_id()?.saturating_sub(txn_before);
        self.slices += 1;
        self.record_bytes = self
            .runtime
            .block_on(load::mean_record_bytes(self.daemon.socket()))?;
        Ok(events as f64 / seconds)
    }

    /// Record size and batch size observed so far, for the baselines.
    pub fn observed(&self) -> Shape {
        Shape {
            record_bytes: self.record_bytes,
            batch: (self.events as f64 / self.commits.max(1) as f64)
                .round()
                .max(1.0) as usize,
        }
    }

    pub fn finish(mut self) -> anyhow::Result<Throughput> {
        let cpu = self.cpu.stop(&self.daemon)?;
        let (anchors, anchor_error) = if self.anchoring {
            let (anchors, error) = self.runtime.block_on(anchor_count(self.daemon.socket()))?;
            (Some(anchors), Some(error))
        } else {
            (None, None)
        };
        let commits = self.commits.max(1);
        let rate = self.events as f64 / self.seconds;
        Ok(Throughput {
            anchoring: self.anchoring,
            clients: self.shape.clients,
            payload_bytes: self.shape.payload,
            batch: self.shape.batch,
            window: self.shape.window,
            slices: self.slices,
            seconds: self.seconds,
            events: self.events,
            events_per_sec: rate,
            payload_mb_per_sec: rate * self.shape.payload as f64 / 1e6,
            record_bytes: self.record_bytes,
            record_mb_per_sec: rate * self.record_bytes / 1e6,
            commits,
            commits_per_sec: commits as f64 / self.seconds,
            events_per_commit: self.events as f64 / commits as f64,
            cpu,
            anchors,
            anchor_error,
        })
    }
}

/// One uninterrupted run against a fresh daemon.
pub fn run(
    options: &Options,
    shape: &ThroughputOptions,
    tpm: Option<(&str, u64)>,
) -> anyhow::Result<Throughput> {
    let mut runner = Runner::start(options, shape, tpm)?;
    runner.warm_up(shape.duration / 10)?;
    runner.slice(shape.duration)?;
    runner.finish()
}

/// Anchors stored so far (up to one page), and the last anchoring error.
async fn anchor_count(socket: &std::path::Path) -> anyhow::Result<(u64, String)> {
    let mut client = tally_client::Client::connect(socket, load::CLIENT_NAME).await?;
    let anchors = client.read_anchors(0, 0).await?.len() as u64;
    let error = client.status().await?.last_anchor_error;
    Ok((anchors, error))
}
