//! Baseline (c): bare SHA-256 (sha2) over the records the verify scenario
//! checked, one hash per record with a one-byte domain prefix, as the entry
//! hash is computed (every record must be hashed on its own: that is what
//! verification must do). Records are in memory; the median of several
//! passes, interleaved with the verify runs, is reported.

use std::hint::black_box;
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Records laid end to end: the bytes and each record's end offset.
#[derive(Debug, Default)]
pub struct Records {
    pub bytes: Vec<u8>,
    pub ends: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShaBaseline {
    pub records: u64,
    pub bytes: u64,
    /// Timed passes (interleaved with the verify runs); the median is reported.
    pub passes: usize,
    pub seconds: f64,
    pub events_per_sec: f64,
    pub mb_per_sec: f64,
}

/// The entry hash's domain prefix: RFC 6962's leaf prefix 0x00. (An earlier
/// format used a 15-byte prefix; a record of ~340 bytes takes 6 SHA-256
/// blocks with either, so the cost is the same.)
const PREFIX: &[u8] = &[0x00];

fn hash_all(records: &Records) -> u8 {
    let mut fold = 0u8;
    let mut start = 0;
    for &end in &records.ends {
        let mut hasher = Sha256::new();
        hasher.update(PREFIX);
        hasher.update(&records.bytes[start..end]);
        let digest = hasher.finalize();
        fold ^= digest[0];
        start = end;
    }
    fold
}

/// One timed pass over every record, in seconds.
pub fn measure(records: &Records) -> f64 {
    let started = Instant::now();
    black_box(hash_all(black_box(records)));
    started.elapsed().as_secs_f64().max(1e-9)
}

impl ShaBaseline {
    /// From the seconds of one (typical) pass.
    pub fn from(records: &Records, seconds: f64, passes: usize) -> ShaBaseline {
        let count = records.ends.len() as u64;
        let bytes = records.bytes.len() as u64;
        ShaBaseline {
            records: count,
            bytes,
            passes,
            seconds,
            events_per_sec: count as f64 / seconds,
            mb_per_sec: bytes as f64 / seconds / 1e6,
        }
    }
}
