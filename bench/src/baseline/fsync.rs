//! Baseline (b): a bare write + fdatasync loop appending a batch's bytes to a
//! file per commit: the floor under any per-commit durable ack on this disk.
//! With a batch of one record it is the rate a lone client could reach if
//! each ack cost exactly one small write and one flush.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
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

/// The in-place file: 4 MiB, written once, then overwritten a block at a
/// time from the start again.
const IN_PLACE_BYTES: usize = 4 << 20;
const BLOCK: usize = 4096;

/// Baseline (b''): the ack journal's own write, bare. One 4 KiB block per
/// commit, holding one record, overwritten in place in a file written once
/// beforehand, through `O_DIRECT | O_DSYNC` (`O_DSYNC` alone where the file
/// system has no `O_DIRECT`): no allocation and no file size to commit, one
/// system call. The floor under any design that acks after one small
/// durable write; stricter than (b'), which appends.
pub fn measure_in_place(
    work_dir: &std::path::Path,
    shape: Shape,
    duration: Duration,
) -> anyhow::Result<Timed> {
    let temp = crate::scenario::temp_dir(work_dir, "in-place")?;
    let path = temp.path().join("journal");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    file.write_all(&vec![0; IN_PLACE_BYTES])?;
    file.sync_all()?;
    let open = |flags| {
        OpenOptions::new()
            .write(true)
            .custom_flags(flags)
            .open(&path)
    };
    let file =
        open(nix::libc::O_DSYNC | nix::libc::O_DIRECT).or_else(|_| open(nix::libc::O_DSYNC))?;
    // A block-aligned block inside a larger buffer, holding the record.
    let (record, _) = super::records(shape);
    let mut buffer = vec![0u8; 2 * BLOCK];
    let start = buffer.as_ptr().align_offset(BLOCK);
    let block = &mut buffer[start..start + BLOCK];
    let len = record.len().min(BLOCK);
    block[..len].copy_from_slice(&record[..len]);
    let block = &*block;
    super::timed(duration, shape, BLOCK, |commit| {
        let offset = (commit as usize * BLOCK) % IN_PLACE_BYTES;
        file.write_all_at(block, offset as u64)?;
        Ok(true)
    })
}
