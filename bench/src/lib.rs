//! tally-bench: starts a real tallyd on a temporary data directory and socket,
//! drives it through the real client library, and measures the same work with
//! bare baselines (heed, write+fsync, SHA-256) in the same run, so every figure
//! comes with a ratio that survives a noisy machine.
//!
//! One module per scenario (`scenario::*`) and per baseline (`baseline::*`);
//! [`run`] runs the selected ones and returns [`report::Results`], which
//! judges the targets and writes the JSON file (`table` prints it as text).
//! This is a library only so the smoke test (`tests/quick.rs`) can run the
//! scenarios in-process; it is a program's internals, so errors are
//! `anyhow`, as in a binary.

use std::path::PathBuf;
use std::time::Duration;

pub mod baseline;
pub mod daemon;
pub mod disk_probe;
pub mod ecdsa_table;
pub mod format;
pub mod load;
pub mod procfs;
pub mod report;
pub mod scenario;
pub mod swtpm;
pub mod synth;
mod table;
pub mod target;

use baseline::fsync::FsyncBaseline;
use baseline::heed_loop::HeedBaseline;
use baseline::socket::SocketBaseline;
use baseline::Timed;
use report::Results;

/// Which scenarios to run. The baselines a scenario compares against run
/// with it.
#[derive(Debug, Clone, Copy)]
pub struct Scenarios {
    pub throughput: bool,
    pub latency: bool,
    pub lone: bool,
    pub verify: bool,
    pub memory: bool,
    /// Needs [`Options::anchoring`] (a TPM); skipped with a reason otherwise.
    pub anchoring: bool,
    /// `tallyd check` vs bare multi-core SHA-256 (and an older tallyd).
    pub check: bool,
    /// Ingest rate per slice as the log grows.
    pub growth: bool,
    pub many_clients: bool,
    pub followers: bool,
    /// `tally erase` by subject and by range over a log, against a filtered read.
    pub erase: bool,
}

impl Scenarios {
    pub const ALL: Scenarios = Scenarios {
        throughput: true,
        latency: true,
        lone: true,
        verify: true,
        memory: true,
        anchoring: true,
        check: true,
        growth: true,
        many_clients: true,
        followers: true,
        erase: true,
    };
    pub const NAMES: &'static str =
        "throughput,latency,lone,verify,memory,anchoring,check,growth,many-clients,followers,erase";

    /// Parses a comma-separated list of scenario names.
    pub fn parse(list: &str) -> anyhow::Result<Scenarios> {
        let mut out = Scenarios {
            throughput: false,
            latency: false,
            lone: false,
            verify: false,
            memory: false,
            anchoring: false,
            check: false,
            growth: false,
            many_clients: false,
            followers: false,
            erase: false,
        };
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "throughput" => out.throughput = true,
                "latency" => out.latency = true,
                "lone" => out.lone = true,
                "verify" => out.verify = true,
                "memory" => out.memory = true,
                "anchoring" => out.anchoring = true,
                "check" => out.check = true,
                "growth" => out.growth = true,
                "many-clients" => out.many_clients = true,
                "followers" => out.followers = true,
                "erase" => out.erase = true,
                other => anyhow::bail!("unknown scenario {other:?} (known: {})", Self::NAMES),
            }
        }
        Ok(out)
    }
}

/// Throughput: C clients, pipelined, fixed-size payloads, fixed duration.
#[derive(Debug, Clone)]
pub struct ThroughputOptions {
    pub clients: usize,
    pub payload: usize,
    /// Events per append request.
    pub batch: usize,
    /// Append requests in flight per client.
    pub window: usize,
    pub duration: Duration,
}

/// Open-loop latency at fixed offered rates.
#[derive(Debug, Clone)]
pub struct LatencyOptions {
    /// Offered events per second, one run each.
    pub rates: Vec<u64>,
    pub duration: Duration,
    /// Sends are spread round-robin over this many connections.
    pub connections: usize,
    /// One request is scheduled every tick, carrying rate x tick events.
    pub tick: Duration,
    pub payload: usize,
}

/// Lone client: one event per request, waits for each ack.
#[derive(Debug, Clone)]
pub struct LoneOptions {
    pub duration: Duration,
    pub payload: usize,
    /// Slices, each followed by a slice of every baseline. The lone client
    /// and the flush it is compared with both follow the disk's mood from
    /// second to second (0.76-0.91 over back-to-back 5-slice runs): finer
    /// alternation keeps the ratio about tallyd.
    pub rounds: usize,
}

/// Verification: export N events, verify the bundle in-process.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub events: u64,
    pub payload: usize,
}

/// Memory under overload: clients offer far more than tallyd commits.
#[derive(Debug, Clone)]
pub struct MemoryOptions {
    pub clients: usize,
    pub window: usize,
    pub batch: usize,
    pub payload: usize,
    pub duration: Duration,
    /// tallyd's `queue_bytes`, written to its config file for this scenario.
    pub queue_bytes: usize,
}

/// Anchoring on vs off (needs a TPM).
#[derive(Debug, Clone)]
pub struct AnchoringOptions {
    pub tcti: String,
    pub interval_secs: u64,
    /// Alternating off/on runs; medians are compared.
    pub rounds: usize,
    pub duration: Duration,
    /// Anchors whose round-trip latency is measured (0: none).
    pub latency_anchors: usize,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Options {
    pub tallyd: PathBuf,
    /// Temporary directories (tallyd's data and the baselines' files) are made
    /// here, so daemon and baselines write to the same file system.
    pub work_dir: PathBuf,
    pub quick: bool,
    pub scenarios: Scenarios,
    pub throughput: ThroughputOptions,
    pub latency: LatencyOptions,
    pub lone: LoneOptions,
    pub verify: VerifyOptions,
    pub memory: MemoryOptions,
    pub check: scenario::check::CheckOptions,
    pub growth: scenario::growth::GrowthOptions,
    pub many_clients: scenario::many_clients::ManyClientsOptions,
    /// How long each timed baseline loop runs in total.
    pub baseline_duration: Duration,
    /// Throughput and the lone client run in this many slices, with their
    /// baselines' slices between them, so scenario and baseline see the same
    /// machine noise.
    pub rounds: usize,
    /// `None`: the anchoring scenario is skipped (no TPM given).
    pub anchoring: Option<AnchoringOptions>,
    pub followers: scenario::followers::FollowersOptions,
    pub erase: scenario::erase::EraseOptions,
}

/// Default payload size: an event of about 256 bytes (PRODUCT.md).
pub const PAYLOAD_BYTES: usize = 256;

impl Options {
    /// The full run: every scenario, about 1.5 minutes (with anchoring).
    pub fn full(tallyd: PathBuf) -> Options {
        Options {
            tallyd,
            work_dir: std::env::temp_dir(),
            quick: false,
            scenarios: Scenarios::ALL,
            throughput: ThroughputOptions {
                clients: 10,
                payload: PAYLOAD_BYTES,
                batch: 256,
                window: 8,
                duration: Duration::from_secs(10),
            },
            latency: LatencyOptions {
                rates: vec![50_000, 200_000],
                duration: Duration::from_secs(5),
                connections: 4,
                tick: Duration::from_millis(1),
                payload: PAYLOAD_BYTES,
            },
            lone: LoneOptions {
                duration: Duration::from_secs(10),
                payload: PAYLOAD_BYTES,
                rounds: 20,
            },
            verify: VerifyOptions {
                events: 1_000_000,
                payload: PAYLOAD_BYTES,
            },
            memory: MemoryOptions {
                clients: 20,
                window: 64,
                batch: 16,
                payload: 64 << 10,
                duration: Duration::from_secs(5),
                queue_bytes: 64 << 20,
            },
            check: scenario::check::CheckOptions {
                events: 2_000_000,
                payload: PAYLOAD_BYTES,
                store_dir: None,
                old_tallyd: None,
                runs: 3,
            },
            growth: scenario::growth::GrowthOptions {
                events: 2_000_000,
                slice: 200_000,
                clients: 10,
                payload: PAYLOAD_BYTES,
                status_samples: 1000,
            },
            many_clients: scenario::many_clients::ManyClientsOptions {
                connections: vec![100, 1000],
                slice: Duration::from_secs(3),
                payload: PAYLOAD_BYTES,
                rounds: 2,
                ab_tallyd: None,
            },
            baseline_duration: Duration::from_secs(3),
            rounds: 5,
            anchoring: None,
            followers: scenario::followers::FollowersOptions {
                counts: vec![0, 1, 10, 100],
                paced: vec![(100_000, 100), (300_000, 10)],
                duration: Duration::from_secs(4),
                writers: 10,
                batch: 256,
                window: 8,
                payload: PAYLOAD_BYTES,
                grace: Duration::from_secs(3),
                compare: None,
            },
            erase: scenario::erase::EraseOptions {
                events: 10_000_000,
                payload: PAYLOAD_BYTES,
                range: 100_000,
            },
        }
    }

    /// `--quick`: every scenario in well under 30 s (short runs, small sizes).
    pub fn quick(tallyd: PathBuf) -> Options {
        let full = Options::full(tallyd);
        Options {
            quick: true,
            throughput: ThroughputOptions {
                duration: Duration::from_secs(2),
                ..full.throughput
            },
            latency: LatencyOptions {
                duration: Duration::from_millis(1500),
                ..full.latency
            },
            lone: LoneOptions {
                duration: Duration::from_secs(1),
                rounds: 2,
                ..full.lone
            },
            verify: VerifyOptions {
                events: 100_000,
                ..full.verify
            },
            memory: MemoryOptions {
                duration: Duration::from_millis(1500),
                ..full.memory
            },
            check: scenario::check::CheckOptions {
                events: 200_000,
                runs: 1,
                ..full.check
            },
            growth: scenario::growth::GrowthOptions {
                events: 400_000,
                slice: 100_000,
                ..full.growth
            },
            many_clients: scenario::many_clients::ManyClientsOptions {
                slice: Duration::from_millis(700),
                rounds: 1,
                ..full.many_clients
            },
            baseline_duration: Duration::from_millis(800),
            rounds: 2,
            followers: scenario::followers::FollowersOptions {
                duration: Duration::from_secs(1),
                grace: Duration::from_secs(2),
                ..full.followers
            },
            erase: scenario::erase::EraseOptions {
                events: 200_000,
                range: 2_000,
                ..full.erase
            },
            ..full
        }
    }
}

/// Lets the file system finish with the previous scenario before the next
/// one starts: its temporary directories (gigabytes after a throughput run)
/// are deleted, and with `-o discard` the next journal commit trims them,
/// which stalled the following scenario's fsyncs for tens of milliseconds
/// (p99 ack latency at 200k/s went from ~4 ms alone to 51 ms right after
/// the throughput scenario). So: `sync`, then wait until small flushes are
/// fast again ([`disk_probe::wait_quiet`]), and say how long that took.
fn settle(work_dir: &std::path::Path) -> anyhow::Result<()> {
    nix::unistd::sync();
    let waited = disk_probe::wait_quiet(work_dir, Duration::from_secs(10))?;
    eprintln!(
        "tally-bench: disk quiet after {:.1} s",
        waited.as_secs_f64()
    );
    Ok(())
}

/// Runs the selected scenarios and their baselines, each baseline in slices
/// interleaved with its scenario's (shaped by what tallyd was seen to do:
/// its batch size and record size).
pub fn run(options: &Options) -> anyhow::Result<Results> {
    let mut results = Results::new(options);
    let selected = options.scenarios;
    let rounds = options.rounds.max(1);
    let baseline_slice = options.baseline_duration / rounds as u32;
    let work_dir = &options.work_dir;
    if selected.throughput {
        eprintln!("tally-bench: throughput, with bare heed and write+fdatasync at its batch size");
        let mut runner = scenario::throughput::Runner::start(options, &options.throughput, None)?;
        let (mut heed, mut fsync) = (None, None);
        let mut by_slice = Vec::new();
        runner.warm_up(options.throughput.duration / (2 * rounds as u32))?;
        for _ in 0..rounds {
            let rate = runner.slice(options.throughput.duration / rounds as u32)?;
            let shape = runner.observed();
            let heed_slice = baseline::heed_loop::measure(work_dir, shape, baseline_slice)?;
            by_slice.push(rate * heed_slice.seconds / heed_slice.events.max(1) as f64);
            Timed::accumulate(&mut heed, heed_slice)?;
            Timed::accumulate(
                &mut fsync,
                baseline::fsync::measure(work_dir, shape, baseline_slice)?,
            )?;
        }
        results.throughput = Some(runner.finish()?);
        results.baselines.heed = heed.as_ref().map(HeedBaseline::from);
        results.ingest_over_heed_by_slice = by_slice;
        results.baselines.fsync_batch = fsync.as_ref().map(FsyncBaseline::from);
    }
    if selected.latency {
        settle(work_dir)?;
        for &rate in &options.latency.rates {
            eprintln!("tally-bench: latency at {rate} events/s offered");
            results
                .latency
                .push(scenario::latency::run(options, &options.latency, rate)?);
        }
    }
    if selected.lone {
        settle(work_dir)?;
        eprintln!(
            "tally-bench: lone client, with write+fdatasync, an in-place write and bare heed of one record"
        );
        let mut runner = scenario::lone::Runner::start(options, &options.lone)?;
        let rounds = options.lone.rounds.max(1);
        let baseline_slice = options.baseline_duration / rounds as u32;
        let (mut fsync, mut in_place, mut heed, mut socket) = (None, None, None, None);
        let request_bytes = load::append_request_bytes(options.lone.payload);
        for _ in 0..rounds {
            runner.slice(options.lone.duration / rounds as u32)?;
            let shape = baseline::Shape {
                record_bytes: runner.record_bytes()?,
                batch: 1,
            };
            Timed::accumulate(
                &mut fsync,
                baseline::fsync::measure(work_dir, shape, baseline_slice)?,
            )?;
            Timed::accumulate(
                &mut in_place,
                baseline::fsync::measure_in_place(work_dir, shape, baseline_slice)?,
            )?;
            Timed::accumulate(
                &mut heed,
                baseline::heed_loop::measure(work_dir, shape, baseline_slice)?,
            )?;
            Timed::accumulate(
                &mut socket,
                baseline::socket::measure(request_bytes, baseline_slice)?,
            )?;
        }
        results.lone = Some(runner.finish()?);
        results.baselines.socket = socket
            .as_ref()
            .map(|timed| SocketBaseline::from(timed, request_bytes));
        results.baselines.fsync_single = fsync.as_ref().map(FsyncBaseline::from);
        results.baselines.in_place_single = in_place.as_ref().map(FsyncBaseline::from);
        results.baselines.heed_single = heed.as_ref().map(HeedBaseline::from);
    }
    if selected.verify {
        settle(work_dir)?;
        eprintln!(
            "tally-bench: verify ({} events), with bare SHA-256 over the same records",
            options.verify.events
        );
        let (verify, sha) = scenario::verify::run(options, &options.verify)?;
        results.verify = Some(verify);
        results.baselines.sha256 = Some(sha);
    }
    if selected.memory {
        settle(work_dir)?;
        eprintln!("tally-bench: memory under overload");
        results.memory = Some(scenario::memory::run(options, &options.memory)?);
    }
    if selected.many_clients {
        settle(work_dir)?;
        eprintln!("tally-bench: many one-event clients, with 10 pipelined clients");
        results.many_clients = Some(scenario::many_clients::run(options, &options.many_clients)?);
    }
    if selected.anchoring {
        settle(work_dir)?;
        match &options.anchoring {
            Some(anchoring) => {
                eprintln!("tally-bench: anchoring on vs off");
                results.anchoring = Some(scenario::anchoring::run(options, anchoring)?);
            }
            None => {
                results.anchoring_skipped =
                    Some("no TPM: pass --tcti TCTI or --swtpm to measure anchoring".into());
            }
        }
    }
    if selected.check {
        settle(work_dir)?;
        eprintln!(
            "tally-bench: tallyd check ({} events), with bare SHA-256 on every core over the same records",
            options.check.events
        );
        results.check = Some(scenario::check::run(options, &options.check)?);
    }
    if selected.growth {
        settle(work_dir)?;
        eprintln!(
            "tally-bench: growth ({} events, rate per {} events)",
            options.growth.events, options.growth.slice
        );
        results.growth = Some(scenario::growth::run(options, &options.growth)?);
    }
    if selected.followers {
        settle(work_dir)?;
        eprintln!("tally-bench: followers at full speed and paced, against no follower");
        results.followers = scenario::followers::run(options, &options.followers)?;
    }
    if selected.erase {
        settle(work_dir)?;
        eprintln!(
            "tally-bench: erase ({} events): by subject and by range, against a filtered read",
            options.erase.events
        );
        results.erase = Some(scenario::erase::run(options, &options.erase)?);
    }
    results.finish();
    Ok(results)
}
