//! `tallyd check` over a store of N events: its events/s, MB/s, wall and CPU
//! time and peak file-backed RSS (`RssFile`, polled from /proc), against a
//! bare multi-core SHA-256 pass over the same records' bytes (sha2 on every
//! core, records in memory, no LMDB) measured in the same run, and (A/B)
//! against an older tallyd's `check` on the same store when one is given.
//!
//! The store is ingested through a real tallyd (4 pipelined clients), into
//! `store_dir` when given (kept, and reused by a later run that asks for the
//! same number of events) or a temporary directory. The first check warms
//! the page cache and is not counted; then the new check, the old check and
//! the SHA-256 pass alternate `runs` times and the medians are reported.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::baseline::sha256::Records;
use crate::daemon::{Daemon, Setup};
use crate::format::{count, mib};
use crate::load::{self, Load, CLIENT_NAME};
use crate::scenario::verify::median;
use crate::Options;
use tally_client::Client;

#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub events: u64,
    pub payload: usize,
    /// Keep the store here (DIR/data is tallyd's data directory) and reuse
    /// it when it already holds `events` events; `None`: a temporary one.
    pub store_dir: Option<PathBuf>,
    /// An older tallyd whose `check` runs on the same store (A/B).
    pub old_tallyd: Option<PathBuf>,
    /// Timed runs of each, alternating (medians reported).
    pub runs: usize,
}

/// One `tallyd check` (the median of the timed runs).
#[derive(Debug, Clone, Serialize)]
pub struct CheckRun {
    pub tallyd: PathBuf,
    pub seconds: f64,
    /// User + system CPU seconds of the check process.
    pub cpu_seconds: f64,
    pub events_per_sec: f64,
    pub mb_per_sec: f64,
    /// The largest `RssFile` seen (polled every 5 ms), over all runs.
    pub peak_rss_file_bytes: u64,
    /// The first (untimed) run's wall time: the page cache warming.
    pub first_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub events: u64,
    /// Sum of the record sizes (what is hashed).
    pub record_bytes: u64,
    /// data.mdb's size.
    pub store_bytes: u64,
    /// Seconds spent ingesting this run (0 when the store was reused).
    pub ingest_seconds: f64,
    pub runs: usize,
    pub check: CheckRun,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_check: Option<CheckRun>,
    /// Bare SHA-256 of every record on every core: the log's first
    /// `sha_records` records (all of them up to 4M).
    pub sha_threads: usize,
    pub sha_records: u64,
    pub sha_seconds: f64,
    pub sha_events_per_sec: f64,
    pub sha_mb_per_sec: f64,
    /// check events/s over bare SHA-256's (target >= 0.8).
    pub check_over_sha: f64,
    /// The old check's wall time over the new one's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speedup_over_old: Option<f64>,
}

/// The target: check at least this fraction of bare SHA-256.
pub const CHECK_OVER_SHA: f64 = 0.8;

const INGEST: Load = Load {
    payload: crate::PAYLOAD_BYTES,
    batch: 1024,
    window: 8,
};

/// The record count a kept store was built with, beside it.
const EVENTS_FILE: &str = "check-events";

pub fn run(options: &Options, shape: &CheckOptions) -> anyhow::Result<Check> {
    let temp;
    let dir = match &shape.store_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = super::temp_dir(&options.work_dir, "check")?;
            temp.path().to_owned()
        }
    };
    let data = dir.join("data");
    let kept = std::fs::read_to_string(dir.join(EVENTS_FILE))
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    anyhow::ensure!(
        kept.is_some() || !data.exists(),
        "{} holds a data directory but no {EVENTS_FILE} file: not a store this scenario built",
        dir.display()
    );
    let daemon = Daemon::start(&options.tallyd, &dir, &Setup::default())?;
    let runtime = load::runtime()?;
    let mut ingest_seconds = 0.0;
    if kept != Some(shape.events) {
        anyhow::ensure!(
            kept.is_none(),
            "{} holds a store of another size ({kept:?} events): remove it or pick another --check-store",
            dir.display()
        );
        let load = Load {
            payload: shape.payload,
            ..INGEST
        };
        let started = Instant::now();
        runtime.block_on(load::ingest(daemon.socket(), shape.events, 4, load))?;
        ingest_seconds = started.elapsed().as_secs_f64();
        std::fs::write(dir.join(EVENTS_FILE), format!("{}\n", shape.events))?;
    }
    let records = runtime.block_on(read_records(daemon.socket(), shape.events))?;
    // The check needs the data directory to itself (and the CPU).
    drop(daemon);
    let sampled = records.ends.len() as u64;
    let sampled_bytes = records.bytes.len() as u64;
    let store_bytes = std::fs::metadata(data.join("store").join("data.mdb"))?.len();
    // The whole log's record bytes, from the sample's mean (exact when
    // the whole log is sampled).
    let record_bytes = (sampled_bytes as f64 * shape.events as f64 / sampled.max(1) as f64) as u64;

    let mut new = Runs::first(&options.tallyd, &data, shape.events)?;
    let mut old = match &shape.old_tallyd {
        Some(tallyd) => Some(Runs::first(tallyd, &data, shape.events)?),
        None => None,
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut sha = Vec::new();
    for _ in 0..shape.runs.max(1) {
        new.once(&data, shape.events)?;
        if let Some(old) = &mut old {
            old.once(&data, shape.events)?;
        }
        sha.push(hash_all(&records, threads));
    }
    let check = new.summary(shape.events, record_bytes);
    let old_check = old.map(|old| old.summary(shape.events, record_bytes));
    let sha_seconds = median(&sha);
    let sha_events_per_sec = sampled as f64 / sha_seconds;
    Ok(Check {
        events: shape.events,
        record_bytes,
        store_bytes,
        ingest_seconds,
        runs: shape.runs.max(1),
        check_over_sha: check.events_per_sec / sha_events_per_sec,
        speedup_over_old: old_check.as_ref().map(|old| old.seconds / check.seconds),
        check,
        old_check,
        sha_threads: threads,
        sha_seconds,
        sha_events_per_sec,
        sha_records: sampled,
        sha_mb_per_sec: sampled_bytes as f64 / sha_seconds / 1e6,
    })
}

/// One tallyd's timed check runs.
struct Runs {
    tallyd: PathBuf,
    first: f64,
    wall: Vec<f64>,
    cpu: Vec<f64>,
    peak_rss_file: u64,
}

impl Runs {
    /// The untimed first run (it warms the page cache).
    fn first(tallyd: &Path, data: &Path, events: u64) -> anyhow::Result<Runs> {
        let (first, _, peak) = check_once(tallyd, data, events)?;
        Ok(Runs {
            tallyd: tallyd.to_owned(),
            first,
            wall: Vec::new(),
            cpu: Vec::new(),
            peak_rss_file: peak,
        })
    }

    fn once(&mut self, data: &Path, events: u64) -> anyhow::Result<()> {
        let (wall, cpu, peak) = check_once(&self.tallyd, data, events)?;
        self.wall.push(wall);
        self.cpu.push(cpu);
        self.peak_rss_file = self.peak_rss_file.max(peak);
        Ok(())
    }

    fn summary(self, events: u64, record_bytes: u64) -> CheckRun {
        let seconds = median(&self.wall);
        CheckRun {
            tallyd: self.tallyd,
            seconds,
            cpu_seconds: median(&self.cpu),
            events_per_sec: events as f64 / seconds,
            mb_per_sec: record_bytes as f64 / seconds / 1e6,
            peak_rss_file_bytes: self.peak_rss_file,
            first_seconds: self.first,
        }
    }
}

/// Runs `tallyd check` once: (wall seconds, CPU seconds, peak RssFile).
/// Its output must say it checked `events` records.
fn check_once(tallyd: &Path, data: &Path, events: u64) -> anyhow::Result<(f64, f64, u64)> {
    use nix::sys::resource::{getrusage, UsageWho};
    let cpu = || -> anyhow::Result<f64> {
        let usage = getrusage(UsageWho::RUSAGE_CHILDREN)?;
        let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        Ok(seconds(usage.user_time()) + seconds(usage.system_time()))
    };
    let cpu_before = cpu()?;
    let started = Instant::now();
    let child = Command::new(tallyd)
        .arg("--data-dir")
        .arg(data)
        .arg("--no-tpm")
        .arg("--log")
        .arg("warn")
        .arg("check")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", tallyd.display()))?;
    let pid = child.id();
    let mut peak = 0;
    // The output is read only at the end: a few lines, far below a pipe's
    // buffer, so the child never blocks on it.
    let mut child = child;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Ok(rss) = crate::procfs::status_bytes(pid, "RssFile") {
            peak = peak.max(rss);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wall = started.elapsed().as_secs_f64();
    let output = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        status.success() && stdout.starts_with(&format!("ok: {events} records")),
        "{} check failed ({status}): {stdout}{}",
        tallyd.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((wall, cpu()? - cpu_before, peak))
}

/// The records the SHA-256 baseline hashes: the log's first
/// [`BASELINE_RECORDS`] at most (the rate per record is what is compared,
/// and a big store's records would not fit in memory), read through the
/// daemon.
async fn read_records(socket: &Path, size: u64) -> anyhow::Result<Records> {
    let mut client = Client::connect(socket, CLIENT_NAME).await?;
    let mut records = Records::default();
    let want = size.min(BASELINE_RECORDS);
    while (records.ends.len() as u64) < want {
        let from = records.ends.len() as u64;
        let page = client.read(from, 4096).await?;
        anyhow::ensure!(!page.is_empty(), "the log ended at {from} of {size}");
        for record in page.iter().take((want - from) as usize) {
            records.bytes.extend_from_slice(&record.record);
            records.ends.push(records.bytes.len());
        }
    }
    Ok(records)
}

/// At most this many records are held in memory for the baseline.
const BASELINE_RECORDS: u64 = 4_000_000;

/// Bare SHA-256 of every record (RFC 6962 leaf prefix, as the entry hash),
/// split into `threads` equal runs of records: seconds.
fn hash_all(records: &Records, threads: usize) -> f64 {
    let started = Instant::now();
    let per = records.ends.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        for (part, ends) in records.ends.chunks(per).enumerate() {
            let start = if part == 0 {
                0
            } else {
                records.ends[part * per - 1]
            };
            scope.spawn(move || {
                let mut fold = 0u8;
                let mut from = start;
                for &end in ends {
                    let mut hasher = Sha256::new();
                    hasher.update([0x00]);
                    hasher.update(&records.bytes[from..end]);
                    fold ^= hasher.finalize()[0];
                    from = end;
                }
                std::hint::black_box(fold)
            });
        }
    });
    started.elapsed().as_secs_f64().max(1e-9)
}

impl Check {
    /// The scenario's lines of the figures table.
    pub fn rows(&self) -> Vec<[String; 3]> {
        let mut rows = vec![row(
            "events (record bytes)",
            format!(
                "{} ({:.0} MiB; data.mdb {:.0} MiB)",
                count(self.events as f64),
                mib(self.record_bytes),
                mib(self.store_bytes)
            ),
        )];
        let mut one = |name: &str, run: &CheckRun| {
            rows.push(row(
                name,
                format!(
                    "{} events/s, {:.0} MB/s, wall {:.2} s, CPU {:.2} s, peak RssFile {:.0} MiB (first run {:.2} s)",
                    count(run.events_per_sec),
                    run.mb_per_sec,
                    run.seconds,
                    run.cpu_seconds,
                    mib(run.peak_rss_file_bytes),
                    run.first_seconds
                ),
            ));
        };
        one("tallyd check", &self.check);
        if let Some(old) = &self.old_check {
            one("old tallyd check (A/B)", old);
        }
        rows.push(row(
            "bare SHA-256 (baseline)",
            format!(
                "{} records/s, {:.0} MB/s on {} threads",
                count(self.sha_events_per_sec),
                self.sha_mb_per_sec,
                self.sha_threads
            ),
        ));
        rows.push(row(
            "check / bare SHA-256",
            format!("{:.3} (target >= {CHECK_OVER_SHA})", self.check_over_sha),
        ));
        if let Some(speedup) = self.speedup_over_old {
            rows.push(row("old check wall / new", format!("{speedup:.2}x")));
        }
        rows
    }
}

fn row(figure: &str, value: String) -> [String; 3] {
    ["check".to_owned(), figure.to_owned(), value]
}
