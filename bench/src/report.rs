//! Every figure of a run, the targets of PRODUCT.md judged against them, and
//! the JSON file. The text table printed on stdout is `table.rs`'s.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use tally_client::clock::now_unix_secs;

use crate::baseline::fsync::FsyncBaseline;
use crate::baseline::heed_loop::HeedBaseline;
use crate::baseline::sha256::ShaBaseline;
use crate::baseline::socket;
use crate::format::{count, mib};
use crate::procfs::Machine;
use crate::scenario::anchoring::Anchoring;
use crate::scenario::latency::Latency;
use crate::scenario::lone::Lone;
use crate::scenario::memory::Memory;
use crate::scenario::throughput::Throughput;
use crate::scenario::verify::Verify;
use crate::Options;

/// The baselines measured in the same run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Baselines {
    /// (a) bare heed, tallyd's batch size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heed: Option<HeedBaseline>,
    /// (a') bare heed, one record per commit (what LMDB costs a lone client).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heed_single: Option<HeedBaseline>,
    /// (b) write + fdatasync of tallyd's batch bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync_batch: Option<FsyncBaseline>,
    /// (b') write + fdatasync of one record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync_single: Option<FsyncBaseline>,
    /// (b'') one 4 KiB block written in place, O_DIRECT | O_DSYNC (the ack
    /// journal's write).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_place_single: Option<FsyncBaseline>,
    /// (d) round trips over a Unix socket pair, a one-event append's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<socket::SocketBaseline>,
    /// (c) SHA-256 over the verified records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<ShaBaseline>,
}

pub use crate::target::Target;

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub quick: bool,
    pub machine: Machine,
    pub started_unix_secs: u64,
    pub total_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput: Option<Throughput>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub latency: Vec<Latency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lone: Option<Lone>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchoring: Option<Anchoring>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub many_clients: Option<crate::scenario::many_clients::ManyClients>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchoring_skipped: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<crate::scenario::check::Check>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth: Option<crate::scenario::growth::Growth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erase: Option<crate::scenario::erase::Erase>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub followers: Vec<crate::scenario::followers::FollowersRow>,
    pub baselines: Baselines,
    /// Throughput over bare heed, slice by slice (each tallyd slice over the
    /// heed slice right after it): the spread shows how noisy the machine was.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ingest_over_heed_by_slice: Vec<f64>,
    pub targets: Vec<Target>,
    #[serde(skip)]
    started: Instant,
}

/// PRODUCT.md's thresholds.
pub const INGEST_EVENTS_PER_SEC: f64 = 300_000.0;
pub const INGEST_OVER_HEED: f64 = 0.6;
pub const LATENCY_RATE: f64 = 200_000.0;
pub const LATENCY_P99_MS: f64 = 5.0;
pub const LONE_OVER_FSYNC: f64 = 0.8;
pub const VERIFY_OVER_SHA: f64 = 0.8;
pub const VERIFY_EVENTS_PER_SEC: f64 = 2_000_000.0;
pub const ANCHORING_ON_OVER_OFF: f64 = 0.95;

fn at_least(value: f64, threshold: f64) -> (bool, f64) {
    (value >= threshold, value / threshold)
}

impl Results {
    pub fn new(options: &Options) -> Results {
        Results {
            quick: options.quick,
            machine: Machine::probe(&options.work_dir),
            started_unix_secs: now_unix_secs(),
            total_seconds: 0.0,
            throughput: None,
            latency: Vec::new(),
            lone: None,
            verify: None,
            memory: None,
            anchoring: None,
            many_clients: None,
            anchoring_skipped: None,
            check: None,
            growth: None,
            erase: None,
            followers: Vec::new(),
            ingest_over_heed_by_slice: Vec::new(),
            baselines: Baselines::default(),
            targets: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Judges the targets; call once every scenario ran.
    pub fn finish(&mut self) {
        self.total_seconds = self.started.elapsed().as_secs_f64();
        let mut targets = Vec::new();
        if let Some(tp) = &self.throughput {
            let (met, margin) = at_least(tp.events_per_sec, INGEST_EVENTS_PER_SEC);
            targets.push(Target {
                name: "durable ingest",
                value: tp.events_per_sec,
                unit: "events/s",
                baseline: None,
                ratio: None,
                required: ">= 300,000 events/s".into(),
                met,
                margin,
            });
            if let Some(heed) = &self.baselines.heed {
                let ratio = tp.events_per_sec / heed.events_per_sec;
                let (met, margin) = at_least(ratio, INGEST_OVER_HEED);
                targets.push(Target {
                    name: "durable ingest vs bare heed",
                    value: tp.events_per_sec,
                    unit: "events/s",
                    baseline: Some(format!(
                        "bare heed {} events/s (batch {})",
                        count(heed.events_per_sec),
                        heed.batch
                    )),
                    ratio: Some(ratio),
                    required: format!(">= {INGEST_OVER_HEED} of bare heed"),
                    met,
                    margin,
                });
            }
        }
        let at_rate = self.latency.iter().min_by(|a, b| {
            (a.offered_per_sec - LATENCY_RATE)
                .abs()
                .total_cmp(&(b.offered_per_sec - LATENCY_RATE).abs())
        });
        if let Some(latency) = at_rate {
            // The p99 only counts if the daemon kept up with the offered rate.
            let kept_up = latency.achieved_per_sec >= 0.95 * latency.offered_per_sec;
            // The floor under any ack: one LMDB commit of one record.
            let floor = self.baselines.heed_single.as_ref();
            targets.push(Target {
                name: "ack latency p99",
                value: latency.p99_ms,
                unit: "ms",
                baseline: floor.map(|heed| {
                    format!(
                        "bare heed commit (1 record) p99 {:.2} ms, p50 {:.2} ms",
                        heed.p99_ms, heed.p50_ms
                    )
                }),
                ratio: None,
                required: format!(
                    "<= {LATENCY_P99_MS} ms at {} offered events/s (achieved {})",
                    count(latency.offered_per_sec),
                    count(latency.achieved_per_sec)
                ),
                met: latency.p99_ms <= LATENCY_P99_MS && kept_up,
                margin: LATENCY_P99_MS / latency.p99_ms,
            });
        }
        if let (Some(lone), Some(fsync)) = (&self.lone, &self.baselines.fsync_single) {
            let ratio = lone.events_per_sec / fsync.events_per_sec;
            let (met, margin) = at_least(ratio, LONE_OVER_FSYNC);
            targets.push(Target {
                name: "lone client vs bare fsync",
                value: lone.events_per_sec,
                unit: "events/s",
                baseline: Some(format!(
                    "write+fdatasync {} /s",
                    count(fsync.events_per_sec)
                )),
                ratio: Some(ratio),
                required: format!(">= {LONE_OVER_FSYNC} of bare fsync"),
                met,
                margin,
            });
        }
        if let Some(verify) = &self.verify {
            if let Some(sha) = &self.baselines.sha256 {
                let ratio = verify.events_per_sec / sha.events_per_sec;
                let (met, margin) = at_least(ratio, VERIFY_OVER_SHA);
                targets.push(Target {
                    name: "verify vs bare SHA-256",
                    value: verify.events_per_sec,
                    unit: "events/s",
                    baseline: Some(format!("sha2 {} records/s", count(sha.events_per_sec))),
                    ratio: Some(ratio),
                    required: format!(">= {VERIFY_OVER_SHA} of bare SHA-256"),
                    met,
                    margin,
                });
            }
            let (met, margin) = at_least(verify.events_per_sec, VERIFY_EVENTS_PER_SEC);
            targets.push(Target {
                name: "verify rate (one core)",
                value: verify.events_per_sec,
                unit: "events/s",
                baseline: None,
                ratio: None,
                required: ">= 2,000,000 events/s per core".into(),
                met,
                margin,
            });
        }
        if let Some(anchoring) = &self.anchoring {
            let (met, margin) = at_least(anchoring.on_over_off, ANCHORING_ON_OVER_OFF);
            targets.push(Target {
                name: "anchoring on vs off",
                value: anchoring.on_events_per_sec,
                unit: "events/s",
                baseline: Some(format!(
                    "anchoring off {} events/s",
                    count(anchoring.off_events_per_sec)
                )),
                ratio: Some(anchoring.on_over_off),
                required: format!(">= {ANCHORING_ON_OVER_OFF} of off"),
                met,
                margin,
            });
        }
        if let Some(memory) = &self.memory {
            let limit = memory.idle_rss_bytes + memory.allowance_bytes;
            targets.push(Target {
                name: "peak RSS under overload",
                value: mib(memory.peak_rss_bytes),
                unit: "MiB",
                baseline: None,
                ratio: None,
                required: format!(
                    "bounded: <= idle + allowance = {:.0} MiB{} (queue_bytes {:.0} MiB, {:.0} MiB offered)",
                    mib(limit),
                    if memory.growth_checked { ", no growth" } else { "" },
                    mib(memory.queue_bytes),
                    mib(memory.offered_in_flight_bytes)
                ),
                met: memory.bounded,
                margin: limit as f64 / memory.peak_rss_bytes as f64,
            });
        }
        if let Some(check) = &self.check {
            let threshold = crate::scenario::check::CHECK_OVER_SHA;
            let (met, margin) = at_least(check.check_over_sha, threshold);
            targets.push(Target {
                name: "tallyd check vs bare SHA-256 (all cores)",
                value: check.check.events_per_sec,
                unit: "events/s",
                baseline: Some(format!(
                    "sha2 on {} threads {} records/s",
                    check.sha_threads,
                    count(check.sha_events_per_sec)
                )),
                ratio: Some(check.check_over_sha),
                required: format!(">= {threshold} of bare SHA-256"),
                met,
                margin,
            });
        }
        if let Some(many) = &self.many_clients {
            crate::scenario::many_clients::targets(many, &mut targets);
        }
        self.targets = targets;
    }

    /// Writes the JSON file (creating its directory).
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(self)? + "\n")?;
        Ok(())
    }
}
