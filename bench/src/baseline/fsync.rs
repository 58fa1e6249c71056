//! Baseline (b): a bare write + fdatasync loop appending a batch's bytes to a
//! file per commit: the floor under any per-commit durable ack on this disk.
//! With a batch of one record it is the rate a lone client could reach if
//! each ack cost exactly one small write and one flush.

use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

use serde::Serialize;

use super::{Shape, Timed};

#[derive(Debug, Clone, Serialize)]
pub struct FsyncBaseline {
    pub batch: usize,
    pub bytes_per_commit: f64,
    pub seconds: f64,
    pub commits: u64,
    pub commits_per_sec: f64,
    /// Latency of one write + fdatasync, p50 and p99.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// `commits_per_sec` x `batch`.
    pub events_per_sec: f64,
}

impl FsyncBaseline {
    pub fn from(timed: &Timed) -> FsyncBaseline {
        FsyncBaseline {
            batch: timed.shape.batch,
            bytes_per_commit: timed.bytes as f64 / timed.commits.max(1) as f64,
            seconds: timed.seconds,
            commits: timed.commits,
            commits_per_sec: timed.commits as f64 / timed.seconds,
            p50_ms: timed.ms(0.5),
            p99_ms: timed.ms(0.99),
            events_per_sec: timed.events as f64 / timed.seconds,
        }
    }
}

/// Stop appending past this many bytes (the rate is measured by then).
const MAX_FILE_BYTES: u64 = 1 << 30;

/// One slice: a fresh file in a temporary directory under `work_dir`.
pub fn measure(
    work_dir: &std::path::Path,
    shape: Shape,
    duration: Duration,
) -> anyhow::Result<Timed> {
    let temp = crate::scenario::temp_dir(work_dir, "fsync")?;
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(temp.path().join("log"))?;
    let (bytes, _) = super::records(shape);
    let mut written = 0u64;
    super::timed(duration, shape, bytes.len(), |_| {
        file.write_all(&bytes)?;
        file.sync_data()?;
        written += bytes.len() as u64;
        Ok(written < MAX_FILE_BYTES)
    })
}
