//! Verification: ingest N events, export them through the client library
//! (`tally_client::export::export`, as `tally export` does), then time
//! `tally_attest::verify_bundle` on the file in this process. The first run
//! warms the page cache and is not counted; then verify runs alternate with
//! the bare SHA-256 baseline over the same records (so both see the same
//! machine noise) and the medians are reported. Before the daemon stops,
//! the same log is also verified straight from it (`tally verify --live`'s
//! path: `tally_client::export::live` into `verify_sections`), once, so the
//! live figure compares with export + verify of the bundle.

use std::fs::File;
use std::io::BufReader;
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;
use tally_attest::bundle::BundleReader;
use tally_attest::VerifyOptions as AttestOptions;
use tally_client::Client;

use crate::baseline::sha256::{self, Records, ShaBaseline};
use crate::daemon::{Daemon, Setup};
use crate::load::{self, Load, CLIENT_NAME};
use crate::{Options, VerifyOptions};

#[derive(Debug, Clone, Serialize)]
pub struct Verify {
    pub events: u64,
    pub bundle_bytes: u64,
    /// Sum of the record sizes (what is hashed).
    pub record_bytes: u64,
    pub ingest_seconds: f64,
    pub export_seconds: f64,
    pub export_events_per_sec: f64,
    /// One verification streamed from the daemon (no bundle file), with
    /// the page cache warm from the export.
    pub live_seconds: f64,
    pub live_events_per_sec: f64,
    /// The first (cold) run, not counted.
    pub first_verify_seconds: f64,
    /// Warm runs, alternating with the SHA-256 baseline.
    pub runs: usize,
    /// The median warm run.
    pub seconds: f64,
    pub events_per_sec: f64,
    pub mb_per_sec: f64,
}

/// Pipelining used to fill the log before exporting it.
const INGEST: Load = Load {
    payload: crate::PAYLOAD_BYTES,
    batch: 256,
    window: 8,
};

/// Warm verify runs (and SHA-256 passes), alternating.
const RUNS: usize = 5;

pub fn run(options: &Options, shape: &VerifyOptions) -> anyhow::Result<(Verify, ShaBaseline)> {
    let temp = super::temp_dir(&options.work_dir, "verify")?;
    let daemon = Daemon::start(&options.tallyd, temp.path(), &Setup::default())?;
    let runtime = load::runtime()?;
    let bundle = temp.path().join("export.tally");
    let load = Load {
        payload: shape.payload,
        ..INGEST
    };
    let started = Instant::now();
    runtime.block_on(load::ingest(daemon.socket(), shape.events, 4, load))?;
    let ingest_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let summary = runtime.block_on(async {
        let mut client = Client::connect(daemon.socket(), CLIENT_NAME).await?;
        anyhow::Ok(tally_client::export::export(&mut client, &bundle, |_, _| {}).await?)
    })?;
    let export_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        summary.size == shape.events,
        "exported {} events, expected {}",
        summary.size,
        shape.events
    );
    let live_seconds = verify_live(&runtime, daemon.socket(), shape.events)?;
    // The daemon is not needed any more: free its CPU for the timed part.
    drop(daemon);

    let verify_once = || -> anyhow::Result<f64> {
        let input = BufReader::with_capacity(1 << 20, File::open(&bundle)?);
        let started = Instant::now();
        let report = tally_attest::verify_bundle(input, AttestOptions::default(), |_, _| {})?;
        let seconds = started.elapsed().as_secs_f64();
        let chain = report
            .chain
            .map_err(|damage| anyhow::anyhow!("verify found damage: {damage}"))?;
        anyhow::ensure!(
            chain.size == shape.events,
            "verified {} records",
            chain.size
        );
        Ok(seconds)
    };
    let first_verify_seconds = verify_once()?;
    let records = read_records(&bundle)?;
    let (mut verify_runs, mut sha_runs) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        verify_runs.push(verify_once()?);
        sha_runs.push(sha256::measure(&records));
    }
    let seconds = median(&verify_runs);
    let sha = ShaBaseline::from(&records, median(&sha_runs), RUNS);
    let record_bytes = records.bytes.len() as u64;
    Ok((
        Verify {
            events: shape.events,
            bundle_bytes: std::fs::metadata(&bundle)?.len(),
            record_bytes,
            ingest_seconds,
            export_seconds,
            export_events_per_sec: shape.events as f64 / export_seconds,
            live_seconds,
            live_events_per_sec: shape.events as f64 / live_seconds,
            first_verify_seconds,
            runs: RUNS,
            seconds,
            events_per_sec: shape.events as f64 / seconds,
            mb_per_sec: record_bytes as f64 / seconds / 1e6,
        },
        sha,
    ))
}

/// Verifies the daemon's log as `tally verify --live` does: the stream on
/// the runtime, the verifier on this thread. Returns the seconds taken.
fn verify_live(
    runtime: &tokio::runtime::Runtime,
    socket: &std::path::Path,
    events: u64,
) -> anyhow::Result<f64> {
    use tally_client::export::live::{stream_live, LiveFrom, LiveSections, CHANNEL_PAGES};
    let (tx, rx) = std::sync::mpsc::sync_channel(CHANNEL_PAGES);
    let socket = socket.to_owned();
    let started = Instant::now();
    let producer = runtime.spawn(async move {
        let mut client = Client::connect(&socket, CLIENT_NAME).await?;
        stream_live(&mut client, LiveFrom::default(), tx).await;
        anyhow::Ok(())
    });
    let (mut sections, _) = LiveSections::open(rx)?;
    let report =
        tally_attest::verify::verify_sections(&mut sections, AttestOptions::default(), |_, _| {})?;
    let seconds = started.elapsed().as_secs_f64();
    drop(sections);
    runtime.block_on(producer)??;
    let chain = report
        .chain
        .map_err(|damage| anyhow::anyhow!("live verify found damage: {damage}"))?;
    anyhow::ensure!(chain.size == events, "live verified {} records", chain.size);
    Ok(seconds)
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The bundle's records, end to end in memory (for the SHA-256 baseline).
pub(crate) fn read_records(bundle: &std::path::Path) -> anyhow::Result<Records> {
    let input = BufReader::with_capacity(1 << 20, File::open(bundle)?);
    let mut reader = BundleReader::new(input).context("cannot read the bundle")?;
    let mut records = Records::default();
    let mut buf = Vec::new();
    while reader.next_record(&mut buf)? {
        records.bytes.extend_from_slice(&buf);
        records.ends.push(records.bytes.len());
    }
    Ok(records)
}
