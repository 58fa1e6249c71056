//! Time seek: how long a `since` read takes to find where it starts in a
//! big log (issue 14: under 10 ms in a 10M-event log), against a plain read
//! of one record at a known seq in the same run (the round trip and the
//! page read without the seek).
//!
//! The log is ingested through a real tallyd once and kept in `dir` (a
//! later run reuses it, topping it up to `records`). Each sample picks a
//! random time between the first and last record's receive times and asks
//! for one record from it (`ReadRequest { filter: since, max_records: 1 }`);
//! the baseline asks for one record at a random seq. The two alternate, so
//! both see the same machine. Each seek's answer is checked: its record is
//! at or after the time, and the record before it (read outside the timing)
//! is not.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use rand::Rng;
use serde::Serialize;
use tally_client::proto::{Filter, ReadRequest};
use tally_client::Client;

use crate::daemon::{Daemon, Setup};
use crate::load::{self, Load, CLIENT_NAME};

#[derive(Debug, Clone)]
pub struct TimeSeekOptions {
    pub tallyd: PathBuf,
    /// Where the log is kept between runs.
    pub dir: PathBuf,
    pub records: u64,
    /// Payload bytes per event (small: the log is large).
    pub payload: usize,
    /// Timed seeks (and as many baseline reads).
    pub samples: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimeSeek {
    pub records: u64,
    /// Seconds spent topping the log up this run (0 when reused).
    pub ingest_seconds: f64,
    pub samples: usize,
    pub seek_median_ms: f64,
    pub seek_p99_ms: f64,
    pub seek_max_ms: f64,
    pub plain_median_ms: f64,
    pub plain_max_ms: f64,
}

impl TimeSeek {
    pub fn table(&self) -> String {
        format!(
            "time seek, {} records ({} samples; ingest this run {:.1} s)\n\
             \x20 since read, first record: median {:.3} ms, p99 {:.3} ms, max {:.3} ms (target < 10 ms)\n\
             \x20 plain read at a seq:      median {:.3} ms, max {:.3} ms (baseline)\n",
            self.records,
            self.samples,
            self.ingest_seconds,
            self.seek_median_ms,
            self.seek_p99_ms,
            self.seek_max_ms,
            self.plain_median_ms,
            self.plain_max_ms,
        )
    }
}

const INGEST: Load = Load {
    payload: 0,
    batch: 4096,
    window: 4,
};

pub fn run(options: &TimeSeekOptions) -> anyhow::Result<TimeSeek> {
    let daemon = Daemon::start(&options.tallyd, &options.dir, &Setup::default())?;
    let runtime = load::runtime()?;
    runtime.block_on(async {
        let mut client = Client::connect(daemon.socket(), CLIENT_NAME).await?;
        let size = client.status().await?.size;
        let started = Instant::now();
        if size < options.records {
            let load = Load {
                payload: options.payload,
                ..INGEST
            };
            load::ingest(daemon.socket(), options.records - size, 2, load).await?;
        }
        let ingest_seconds = if size < options.records {
            started.elapsed().as_secs_f64()
        } else {
            0.0
        };
        let size = client.status().await?.size;
        let first = time_at(&mut client, 0).await?;
        let last = time_at(&mut client, size - 1).await?;
        ensure!(last > first, "the log's times do not advance");
        let mut rng = rand::thread_rng();
        let (mut seeks, mut plains) = (Vec::new(), Vec::new());
        for _ in 0..options.samples {
            let since = rng.gen_range(first..=last);
            let began = Instant::now();
            let page = client
                .read_where(ReadRequest {
                    max_records: 1,
                    filter: Some(Filter {
                        since_unix_nanos: Some(since),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await?;
            seeks.push(began.elapsed());
            let record = page.records.first().context("a since read found nothing")?;
            let time = tally_client::record::decode(&record.record)?
                .body
                .receive_time_unix_nanos;
            ensure!(time >= since, "seq {} is before the since", record.seq);
            if record.seq > 0 {
                ensure!(
                    time_at(&mut client, record.seq - 1).await? < since,
                    "the seek for {since} skipped seq {}",
                    record.seq - 1
                );
            }
            let seq = rng.gen_range(0..size);
            let began = Instant::now();
            let page = client.read(seq, 1).await?;
            plains.push(began.elapsed());
            ensure!(
                page.first().map(|r| r.seq) == Some(seq),
                "plain read at {seq}"
            );
        }
        seeks.sort();
        plains.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let at = |v: &[Duration], q: f64| ms(v[((v.len() - 1) as f64 * q) as usize]);
        Ok(TimeSeek {
            records: size,
            ingest_seconds,
            samples: seeks.len(),
            seek_median_ms: at(&seeks, 0.5),
            seek_p99_ms: at(&seeks, 0.99),
            seek_max_ms: at(&seeks, 1.0),
            plain_median_ms: at(&plains, 0.5),
            plain_max_ms: at(&plains, 1.0),
        })
    })
}

async fn time_at(client: &mut Client, seq: u64) -> anyhow::Result<i64> {
    let page = client.read(seq, 1).await?;
    let record = page
        .first()
        .with_context(|| format!("no record at {seq}"))?;
    Ok(tally_client::record::decode(&record.record)?
        .body
        .receive_time_unix_nanos)
}
