//! Baseline (a): a bare heed loop appending the records tallyd would write,
//! in batches of the size tallyd committed, one write transaction (one
//! commit, LMDB's default durable sync) per batch. Same LMDB flags and map
//! size as tallyd's store; each transaction also rewrites the 40-byte `head`
//! meta value (size || entry hash), as tallyd's does. tallyd's transaction
//! also writes its stored Merkle nodes and the tree's frontier, which this
//! baseline does not.

use std::time::Duration;

use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64};
use heed::{CommitOrAbort, Database, EnvOpenOptions, PutFlags};
use serde::Serialize;

use super::{Shape, Timed};

/// tallyd's initial map size (daemon/src/config.rs, DEFAULT_MAP_INITIAL_BYTES).
pub const MAP_BYTES: usize = 1 << 30;

#[derive(Debug, Clone, Serialize)]
pub struct HeedBaseline {
    pub batch: usize,
    pub record_bytes: f64,
    pub seconds: f64,
    pub commits: u64,
    pub commits_per_sec: f64,
    /// Latency of one commit, p50 and p99.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub events_per_sec: f64,
    pub mb_per_sec: f64,
}

impl HeedBaseline {
    pub fn from(timed: &Timed) -> HeedBaseline {
        HeedBaseline {
            batch: timed.shape.batch,
            record_bytes: timed.shape.record_bytes,
            seconds: timed.seconds,
            commits: timed.commits,
            commits_per_sec: timed.commits as f64 / timed.seconds,
            p50_ms: timed.ms(0.5),
            p99_ms: timed.ms(0.99),
            events_per_sec: timed.events as f64 / timed.seconds,
            mb_per_sec: timed.bytes as f64 / timed.seconds / 1e6,
        }
    }
}

type SeqDb = Database<'static, U64<BigEndian>, Bytes>;
type MetaDb = Database<'static, Str, Bytes>;

/// One slice: a fresh environment in a temporary directory under `work_dir`.
pub fn measure(
    work_dir: &std::path::Path,
    shape: Shape,
    duration: Duration,
) -> anyhow::Result<Timed> {
    let temp = crate::scenario::temp_dir(work_dir, "heed")?;
    let mut env_options = EnvOpenOptions::new().read_txn_without_tls();
    env_options.map_size(MAP_BYTES).max_dbs(4).max_readers(1024);
    // SAFETY: a fresh directory, opened once in this process, modified only
    // through LMDB.
    let env = unsafe { env_options.open(temp.path()) }?;
    let created = env.create_databases_and_commit(env.write_txn()?, |opener, wtxn| {
        let records = opener.create_database(wtxn, Some("records"))?;
        let meta = opener.create_database(wtxn, Some("meta"))?;
        Ok::<_, heed::Error>(CommitOrAbort::<_, std::convert::Infallible>::Commit((
            records, meta,
        )))
    })?;
    let (records, meta): (SeqDb, MetaDb) = match created {
        CommitOrAbort::Commit(databases) => databases,
        CommitOrAbort::Abort(never) => match never {},
    };
    let (bytes, ends) = super::records(shape);
    // Stop well before the map is full (tallyd would grow it; growing is not
    // what is measured here).
    let max_commits = (MAP_BYTES / 2 / bytes.len().max(1)).max(1) as u64;
    let mut seq = 0u64;
    super::timed(duration, shape, bytes.len(), |commit| {
        let mut wtxn = env.write_txn()?;
        // Keys encoded on the stack, as tallyd's store does (heed's U64
        // codec allocates each one).
        let records = records.remap_key_type::<Bytes>();
        let mut start = 0;
        for &end in &ends {
            records.put_with_flags(
                &mut wtxn,
                PutFlags::APPEND,
                &seq.to_be_bytes(),
                &bytes[start..end],
            )?;
            seq += 1;
            start = end;
        }
        let mut head = [0u8; 40];
        head[..8].copy_from_slice(&seq.to_be_bytes());
        meta.put(&mut wtxn, "head", &head)?;
        wtxn.commit()?;
        Ok(commit + 1 < max_commits)
    })
}
