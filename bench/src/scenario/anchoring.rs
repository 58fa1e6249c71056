//! Anchoring on vs off: the throughput scenario against a daemon anchoring
//! in a TPM every `interval` seconds, alternated with runs without a TPM
//! (a noisy machine affects both alike), medians compared. Plus the round
//! trip of an anchor as a client sees it (`tally anchor`: increment +
//! NV_Certify + Quote + LMDB commit).

use std::time::Instant;

use anyhow::anyhow;
use hdrhistogram::Histogram;
use serde::Serialize;
use tally_client::Client;

use crate::daemon::{Daemon, Setup};
use crate::load::{self, CLIENT_NAME};
use crate::scenario::throughput;
use crate::{AnchoringOptions, Options, ThroughputOptions};

#[derive(Debug, Clone, Serialize)]
pub struct Anchoring {
    pub interval_secs: u64,
    pub rounds: usize,
    pub seconds_per_run: f64,
    pub off_runs: Vec<f64>,
    pub on_runs: Vec<f64>,
    /// Medians of the runs, events/s.
    pub off_events_per_sec: f64,
    pub on_events_per_sec: f64,
    pub on_over_off: f64,
    /// Anchors stored during each anchoring-on run.
    pub anchors_per_run: Vec<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor_latency: Option<AnchorLatency>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AnchorLatency {
    pub anchors: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub fn run(options: &Options, anchoring: &AnchoringOptions) -> anyhow::Result<Anchoring> {
    let anchor_latency = match anchoring.latency_anchors {
        0 => None,
        count => Some(anchor_latency(options, &anchoring.tcti, count)?),
    };
    let shape = ThroughputOptions {
        duration: anchoring.duration,
        ..options.throughput.clone()
    };
    let rounds = anchoring.rounds.max(1);
    let (mut off, mut on, mut anchors) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        off.push(throughput::run(options, &shape, None)?.events_per_sec);
        let with = throughput::run(
            options,
            &shape,
            Some((&anchoring.tcti, anchoring.interval_secs)),
        )?;
        if let Some(error) = with.anchor_error.as_deref().filter(|e| !e.is_empty()) {
            anyhow::bail!("anchoring failed during the run: {error}");
        }
        on.push(with.events_per_sec);
        anchors.push(with.anchors.unwrap_or(0));
    }
    let (off_median, on_median) = (median(&off), median(&on));
    Ok(Anchoring {
        interval_secs: anchoring.interval_secs,
        rounds,
        seconds_per_run: anchoring.duration.as_secs_f64(),
        off_runs: off,
        on_runs: on,
        off_events_per_sec: off_median,
        on_events_per_sec: on_median,
        on_over_off: on_median / off_median,
        anchors_per_run: anchors,
        anchor_latency,
    })
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// Round-trip latency of `count` anchors, each after one new event (the
/// daemon's own cadence is set to an hour so only these anchors happen).
fn anchor_latency(options: &Options, tcti: &str, count: usize) -> anyhow::Result<AnchorLatency> {
    let temp = super::temp_dir(&options.work_dir, "anchor")?;
    let setup = Setup {
        tpm: Some((tcti.to_owned(), 3600)),
        config: None,
    };
    let daemon = Daemon::start(&options.tallyd, temp.path(), &setup)?;
    let runtime = load::runtime()?;
    let millis = runtime.block_on(async {
        let mut client = Client::connect(daemon.socket(), CLIENT_NAME).await?;
        let mut millis = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
            .map_err(|err| anyhow!("histogram: {err:?}"))?;
        let event = load::events(1, 64);
        for _ in 0..count {
            client.append(event.clone()).await?;
            let started = Instant::now();
            client.anchor().await?;
            millis.saturating_record((started.elapsed().as_micros() as u64).max(1));
        }
        anyhow::Ok(millis)
    })?;
    let ms = |value: u64| value as f64 / 1e3;
    Ok(AnchorLatency {
        anchors: count,
        p50_ms: ms(millis.value_at_quantile(0.5)),
        p99_ms: ms(millis.value_at_quantile(0.99)),
        max_ms: ms(millis.max()),
    })
}
