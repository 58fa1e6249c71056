//! tally-bench: measures a real tallyd against same-run baselines and prints
//! a table of figures, ratios and PRODUCT.md's targets (plus a JSON file).
//!
//! ```text
//! cargo build --release -p tally-bench -p tally-daemon -p tally-client
//! target/release/tally-bench --swtpm    # everything, about 1.5 minutes
//! target/release/tally-bench --quick    # everything in under 30 s
//! (without --swtpm or --tcti the anchoring scenario is skipped)
//! target/release/tally-bench verify-anchors --records 10000000 --anchors 1000000 --dir DIR
//! target/release/tally-bench time-seek --records 10000000 --dir DIR
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tally_bench::{AnchoringOptions, Options, Scenarios};

#[derive(Debug, Parser)]
#[command(about = "Measure tallyd against same-run baselines (docs/BENCHMARKS.md)")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Every scenario with short runs and small sizes (under 30 s).
    #[arg(long)]
    quick: bool,
    /// Only these scenarios (comma-separated): throughput, latency, lone,
    /// verify, memory, anchoring, check, growth, many-clients, followers,
    /// erase.
    #[arg(long)]
    only: Option<String>,
    /// Where to write every figure as JSON [default: target/tally-bench.json].
    #[arg(long)]
    json: Option<PathBuf>,
    /// The tallyd binary [default: next to this program].
    #[arg(long)]
    tallyd: Option<PathBuf>,
    /// Directory for the temporary data directories and baseline files
    /// [default: the system temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Throughput: concurrent clients.
    #[arg(long)]
    clients: Option<usize>,
    /// Payload bytes per event.
    #[arg(long)]
    payload: Option<usize>,
    /// Throughput: events per append request.
    #[arg(long)]
    batch: Option<usize>,
    /// Throughput: append requests in flight per client.
    #[arg(long)]
    window: Option<usize>,
    /// Throughput: seconds to run.
    #[arg(long)]
    seconds: Option<f64>,
    /// Latency: offered rates in events/s, comma-separated.
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<u64>>,
    /// Verify: events to export and verify.
    #[arg(long)]
    verify_events: Option<u64>,
    /// Check: events in the checked store.
    #[arg(long)]
    check_events: Option<u64>,
    /// Erase: events in the log erased from [default: 10M; quick 200k].
    #[arg(long)]
    erase_events: Option<u64>,
    /// Check: keep the store in DIR (DIR/data) and reuse it when it holds
    /// --check-events events [default: a temporary directory].
    #[arg(long)]
    check_store: Option<PathBuf>,
    /// Check: an older tallyd whose `check` runs on the same store (A/B).
    #[arg(long)]
    check_old_tallyd: Option<PathBuf>,
    /// Growth: events to ingest [default: 2,000,000; 100,000,000 with
    /// --growth-long].
    #[arg(long)]
    growth_events: Option<u64>,
    /// Growth: events per reported slice [default: 200,000; 10,000,000
    /// with --growth-long].
    #[arg(long)]
    growth_slice: Option<u64>,
    /// Growth: the long form, 100M events in slices of 10M (about 45 GB of
    /// disk under --dir; docs/BENCHMARKS.md).
    #[arg(long)]
    growth_long: bool,
    /// many-clients: also measure this tallyd (e.g. the previous commit's),
    /// alternating with --tallyd round by round.
    #[arg(long)]
    ab_tallyd: Option<PathBuf>,
    /// many-clients: connection counts, comma-separated [default: 100,1000].
    #[arg(long, value_delimiter = ',')]
    connections: Option<Vec<usize>>,
    /// A TPM to anchor in, e.g. from `swtpm-ci/swtpm.sh start DIR`.
    #[arg(long, conflicts_with = "swtpm")]
    tcti: Option<String>,
    /// Start a private swtpm (swtpm-ci/swtpm.sh) for the anchoring scenario.
    #[arg(long)]
    swtpm: bool,
    /// Anchoring interval of the anchoring-on runs (seconds).
    #[arg(long, default_value_t = 1)]
    anchor_interval_secs: u64,
    /// Alternating anchoring off/on runs (medians compared)
    /// [default: 3, 1 with --quick]; many-clients: rounds per binary
    /// [default: 2, 1 with --quick].
    #[arg(long)]
    rounds: Option<usize>,
    /// Anchors whose round trip is measured [default: 50, 5 with --quick].
    #[arg(long)]
    anchor_latency: Option<usize>,
    /// Followers: also run every row against this tallyd, alternating (A/B).
    #[arg(long)]
    compare: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Verify a synthetic bundle of N records and M anchors (evidence signed
    /// by software P-256 keys the identity pins) against the same records
    /// without anchors and bare SHA-256 (no tallyd, no TPM).
    VerifyAnchors(VerifyAnchorsArgs),
    /// Time a `since` read's search for its start in a big log (kept in
    /// --dir and reused) against a plain read at a seq.
    TimeSeek(TimeSeekArgs),
    /// Verify a real tallyd's log straight from it (`tally verify --live`)
    /// with a private swtpm's anchors: the whole log of N events, then from
    /// the trusted anchor after M more (time proportional to the new
    /// records), with tallyd's and tally's peak RssFile.
    VerifyTrusted(VerifyTrustedArgs),
}

#[derive(Debug, clap::Args)]
struct VerifyTrustedArgs {
    /// Events before the trusted anchor.
    #[arg(long, default_value_t = 50_000_000)]
    events: u64,
    /// Events after it, verified from it.
    #[arg(long, default_value_t = 1_000_000)]
    new_events: u64,
    /// Payload bytes per event.
    #[arg(long, default_value_t = tally_bench::PAYLOAD_BYTES)]
    payload: usize,
    /// Directory for the data directory and the swtpm (about 500 bytes per event).
    #[arg(long)]
    dir: PathBuf,
    /// The tallyd binary [default: next to this program].
    #[arg(long)]
    tallyd: Option<PathBuf>,
    /// The tally binary [default: next to this program].
    #[arg(long)]
    tally: Option<PathBuf>,
    /// Where to write every figure as JSON [default: DIR/verify-trusted.json].
    #[arg(long)]
    json: Option<PathBuf>,
}

fn verify_trusted(args: VerifyTrustedArgs) -> anyhow::Result<()> {
    use tally_bench::scenario::verify_trusted::{run, VerifyTrustedOptions};
    let next_to_me = |name: &str| std::env::current_exe().map(|exe| exe.with_file_name(name));
    let results = run(&VerifyTrustedOptions {
        tallyd: args.tallyd.map_or_else(|| next_to_me("tallyd"), Ok)?,
        tally: args.tally.map_or_else(|| next_to_me("tally"), Ok)?,
        dir: args.dir.clone(),
        events: args.events.max(1),
        new_events: args.new_events.max(1),
        payload: args.payload,
    })?;
    print!("{}", results.table());
    let json = args
        .json
        .unwrap_or_else(|| args.dir.join("verify-trusted.json"));
    std::fs::write(&json, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("cannot write {}", json.display()))?;
    println!("\nevery figure: {}", json.display());
    Ok(())
}

#[derive(Debug, clap::Args)]
struct TimeSeekArgs {
    /// Events in the log (ingested once through tallyd, then reused).
    #[arg(long, default_value_t = 10_000_000)]
    records: u64,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 16)]
    payload: usize,
    /// Where the log's data directory is kept.
    #[arg(long)]
    dir: PathBuf,
    /// Timed seeks (each with a timed plain read).
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    /// The tallyd binary [default: next to this program].
    #[arg(long)]
    tallyd: Option<PathBuf>,
}

fn time_seek(args: TimeSeekArgs) -> anyhow::Result<()> {
    use tally_bench::scenario::time_seek::{run, TimeSeekOptions};
    let tallyd = match &args.tallyd {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("tallyd"),
    };
    let results = run(&TimeSeekOptions {
        tallyd,
        dir: args.dir.clone(),
        records: args.records,
        payload: args.payload,
        samples: args.samples.max(1),
    })?;
    print!("{}", results.table());
    let json = args.dir.join("time-seek.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("cannot write {}", json.display()))?;
    println!("\nevery figure: {}", json.display());
    Ok(())
}

#[derive(Debug, clap::Args)]
struct VerifyAnchorsArgs {
    /// Records in the bundle.
    #[arg(long, default_value_t = 10_000_000)]
    records: u64,
    /// Anchors (the genesis at size 0 included), spread evenly.
    #[arg(long, default_value_t = 1_000_000)]
    anchors: u64,
    /// Payload bytes per event.
    #[arg(long, default_value_t = tally_bench::PAYLOAD_BYTES)]
    payload: usize,
    /// Where the generated bundles are kept (and reused if present).
    #[arg(long)]
    dir: PathBuf,
    /// Timed runs of each configuration, alternating.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Iterations of each single-call microbenchmark.
    #[arg(long, default_value_t = 2000)]
    micro_iterations: usize,
    /// Where to write every figure as JSON [default: DIR/verify-anchors.json].
    #[arg(long)]
    json: Option<PathBuf>,
}

fn verify_anchors(args: VerifyAnchorsArgs) -> anyhow::Result<()> {
    use tally_bench::scenario::verify_anchors::{run, VerifyAnchorsOptions};
    let results = run(&VerifyAnchorsOptions {
        dir: args.dir.clone(),
        shape: tally_bench::synth::Shape {
            records: args.records,
            anchors: args.anchors,
            payload: args.payload,
        },
        runs: args.runs.max(1),
        micro_iterations: args.micro_iterations.max(1),
    })?;
    print!("{}", results.table());
    let json = args
        .json
        .unwrap_or_else(|| args.dir.join("verify-anchors.json"));
    std::fs::write(&json, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("cannot write {}", json.display()))?;
    println!("\nevery figure: {}", json.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Some(Command::VerifyAnchors(verify)) => return verify_anchors(verify),
        Some(Command::TimeSeek(seek)) => return time_seek(seek),
        Some(Command::VerifyTrusted(verify)) => return verify_trusted(verify),
        None => {}
    }
    let tallyd = match &args.tallyd {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("tallyd"),
    };
    anyhow::ensure!(
        tallyd.is_file(),
        "{} not found: cargo build --release -p tally-daemon (or pass --tallyd)",
        tallyd.display()
    );
    let mut options = if args.quick {
        Options::quick(tallyd)
    } else {
        Options::full(tallyd)
    };
    if let Some(dir) = &args.dir {
        std::fs::create_dir_all(dir)?;
        options.work_dir = dir.clone();
    }
    if let Some(only) = &args.only {
        options.scenarios = Scenarios::parse(only)?;
    }
    let t = &mut options.throughput;
    t.clients = args.clients.unwrap_or(t.clients);
    t.batch = args.batch.unwrap_or(t.batch);
    t.window = args.window.unwrap_or(t.window);
    if let Some(seconds) = args.seconds {
        t.duration = Duration::from_secs_f64(seconds);
    }
    if let Some(payload) = args.payload {
        t.payload = payload;
        options.latency.payload = payload;
        options.lone.payload = payload;
        options.verify.payload = payload;
        options.check.payload = payload;
        options.growth.payload = payload;
    }
    if let Some(rates) = &args.rates {
        options.latency.rates = rates.clone();
    }
    options.verify.events = args.verify_events.unwrap_or(options.verify.events);
    options.erase.events = args.erase_events.unwrap_or(options.erase.events);
    let check = &mut options.check;
    check.events = args.check_events.unwrap_or(check.events);
    check.store_dir = args.check_store.clone();
    check.old_tallyd = args.check_old_tallyd.clone();
    let growth = &mut options.growth;
    if args.growth_long {
        growth.events = tally_bench::scenario::growth::GrowthOptions::LONG_EVENTS;
        growth.slice = tally_bench::scenario::growth::GrowthOptions::LONG_SLICE;
    }
    growth.events = args.growth_events.unwrap_or(growth.events);
    growth.slice = args.growth_slice.unwrap_or(growth.slice);
    let many = &mut options.many_clients;
    many.ab_tallyd = args.ab_tallyd.clone();
    if let Some(connections) = &args.connections {
        many.connections = connections.clone();
    }
    if let Some(rounds) = args.rounds {
        many.rounds = rounds;
    }
    if let Some(payload) = args.payload {
        many.payload = payload;
    }
    options.followers.compare = args.compare.clone();

    let swtpm = if args.swtpm && options.scenarios.anchoring {
        eprintln!("tally-bench: starting swtpm");
        Some(tally_bench::swtpm::Swtpm::start(&options.work_dir)?)
    } else {
        None
    };
    let tcti = swtpm
        .as_ref()
        .map(|tpm| tpm.tcti().to_owned())
        .or(args.tcti.clone());
    options.anchoring = tcti.map(|tcti| AnchoringOptions {
        tcti,
        interval_secs: args.anchor_interval_secs,
        rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 3 }),
        duration: if args.quick {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(5)
        },
        latency_anchors: args
            .anchor_latency
            .unwrap_or(if args.quick { 5 } else { 50 }),
    });

    let results = tally_bench::run(&options)?;
    drop(swtpm);
    print!("{}", results.table());
    let json = match args.json {
        Some(path) => path,
        None => default_json_path()?,
    };
    results
        .write_json(&json)
        .with_context(|| format!("cannot write {}", json.display()))?;
    println!("\nevery figure: {}", json.display());
    Ok(())
}

/// `target/tally-bench.json` beside the build's profile directory
/// (target/release/tally-bench -> target/tally-bench.json).
fn default_json_path() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe
        .parent()
        .and_then(|profile| profile.parent())
        .map_or_else(
            || PathBuf::from("target/tally-bench.json"),
            |target| target.join("tally-bench.json"),
        ))
}
