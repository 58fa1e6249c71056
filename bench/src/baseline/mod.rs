//! Same-run baselines: the same bytes, the same batching, without tallyd.
//!
//! * [`heed_loop`]: a bare LMDB append loop, one commit per batch (ingest's
//!   ceiling on this disk with this store);
//! * [`fsync`]: a bare write + fdatasync loop (the per-commit floor of any
//!   durable ack);
//! * [`sha256`]: bare SHA-256 over the same records, one hash per record
//!   (verification's ceiling);
//! * [`socket`]: round trips over a Unix socket pair (with [`fsync`], the
//!   ceiling of a lone client of any daemon behind a socket).
//!
//! The timed baselines run in slices interleaved with the scenario they are
//! compared with (see `crate::run`), so both see the same machine noise;
//! [`Timed`] adds the slices up.

pub mod fsync;
pub mod heed_loop;
pub mod sha256;
pub mod socket;

use std::time::{Duration, Instant};

use anyhow::anyhow;
use hdrhistogram::Histogram;
use rand::RngCore;
use tally_attest::{entry_hash, RecordHeader, GENESIS_PREV, HEADER_LEN};

/// What a baseline writes: records of the size tallyd stored, in batches of
/// the size tallyd committed.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub record_bytes: f64,
    pub batch: usize,
}

/// One batch of chained records built like the daemon builds them (header,
/// then a body, here random bytes of the observed body size): the
/// concatenated bytes and each record's end offset.
pub fn records(shape: Shape) -> (Vec<u8>, Vec<usize>) {
    let size = (shape.record_bytes.round() as usize).max(HEADER_LEN + 1);
    let mut rng = rand::thread_rng();
    let mut body = vec![0u8; size - HEADER_LEN];
    let mut bytes = Vec::with_capacity(size * shape.batch);
    let mut ends = Vec::with_capacity(shape.batch);
    let mut prev_hash = GENESIS_PREV;
    for seq in 0..shape.batch as u64 {
        let start = bytes.len();
        RecordHeader { seq, prev_hash }.encode_into(&mut bytes);
        rng.fill_bytes(&mut body);
        bytes.extend_from_slice(&body);
        prev_hash = entry_hash(&bytes[start..]);
        ends.push(bytes.len());
    }
    (bytes, ends)
}

/// What timed loops did, added up over slices: commits (iterations), events
/// and bytes they carried, seconds, and each commit's latency (microseconds).
#[derive(Debug, Clone)]
pub struct Timed {
    pub commits: u64,
    pub events: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub latency: Histogram<u64>,
    /// The shape of the last slice.
    pub shape: Shape,
}

impl Timed {
    /// A latency quantile in milliseconds.
    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1e3
    }

    /// Adds another slice.
    pub fn merge(&mut self, other: Timed) -> anyhow::Result<()> {
        self.commits += other.commits;
        self.events += other.events;
        self.bytes += other.bytes;
        self.seconds += other.seconds;
        self.shape = other.shape;
        self.latency
            .add(&other.latency)
            .map_err(|err| anyhow!("histogram: {err:?}"))
    }

    /// Adds `other` to `total`, or makes it the total.
    pub fn accumulate(total: &mut Option<Timed>, other: Timed) -> anyhow::Result<()> {
        match total {
            Some(total) => total.merge(other),
            None => {
                *total = Some(other);
                Ok(())
            }
        }
    }
}

/// Runs `step` (one commit of `shape.batch` records, `batch_bytes` bytes)
/// until `duration` passed or it returns false, timing each call.
pub fn timed(
    duration: Duration,
    shape: Shape,
    batch_bytes: usize,
    mut step: impl FnMut(u64) -> anyhow::Result<bool>,
) -> anyhow::Result<Timed> {
    let mut latency = Histogram::new_with_bounds(1, 600_000_000, 3)
        .map_err(|err| anyhow!("histogram: {err:?}"))?;
    let started = Instant::now();
    let mut commits = 0u64;
    while started.elapsed() < duration {
        let began = Instant::now();
        let more = step(commits)?;
        latency.saturating_record((began.elapsed().as_micros() as u64).max(1));
        commits += 1;
        if !more {
            break;
        }
    }
    Ok(Timed {
        commits,
        events: commits * shape.batch as u64,
        bytes: commits * batch_bytes as u64,
        seconds: started.elapsed().as_secs_f64(),
        latency,
        shape,
    })
}
