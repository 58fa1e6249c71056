//! tally-bench: starts a real tallyd on a temporary data directory and socket
//! and measures it through the real client library.
//!
//! Scenario implemented so far: `throughput` (C concurrent clients, pipelined
//! appends of fixed-size payloads, for a fixed duration; durable events/s).
//! Latency, verification, anchoring and same-run baselines come with the
//! benchmarks issue.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use tally_client::proto::Event;
use tally_client::Client;

#[derive(Debug, Parser)]
#[command(about = "Measure tallyd's durable ingest throughput")]
struct Args {
    /// Concurrent clients.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Events per append request.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Append requests in flight per client.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The tallyd binary (default: next to this program).
    #[arg(long)]
    tallyd: Option<PathBuf>,
    /// Data directory (default: a temporary directory under /tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// A TPM to anchor in (e.g. from `swtpm-ci/swtpm.sh start DIR`). Given,
    /// the run is repeated with anchoring on, and the ratio on/off printed.
    #[arg(long)]
    tcti: Option<String>,
    /// Anchoring interval for the anchoring-on run (seconds).
    #[arg(long, default_value_t = 1)]
    anchor_interval_secs: u64,
    /// With --tcti: alternate off/on runs this many times and compare medians
    /// (a noisy machine affects both alike).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// With --tcti: also measure N anchors (`tally anchor` round trips, each
    /// after one new event) and print p50/p99.
    #[arg(long, default_value_t = 0)]
    anchor_latency: usize,
}

struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_daemon(
    tallyd: &Path,
    dir: &Path,
    tpm: Option<(&str, u64)>,
) -> anyhow::Result<(Daemon, PathBuf)> {
    let socket = dir.join("tally.sock");
    let mut command = Command::new(tallyd);
    command
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--socket")
        .arg(&socket)
        .arg("--log")
        .arg("warn");
    match tpm {
        Some((tcti, interval)) => command
            .arg("--tcti")
            .arg(tcti)
            .arg("--anchor-interval-secs")
            .arg(interval.to_string()),
        None => command.arg("--no-tpm"),
    };
    let child = command
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", tallyd.display()))?;
    let daemon = Daemon { child };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if Instant::now() > deadline {
            bail!("tallyd did not open {} within 10 s", socket.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((daemon, socket))
}

/// What each client sends.
#[derive(Debug, Clone, Copy)]
struct Load {
    payload: usize,
    batch: usize,
    window: usize,
}

async fn client_loop(socket: PathBuf, args: Load, until: Instant) -> anyhow::Result<u64> {
    let mut client = Client::connect(&socket, "tally-bench").await?;
    let events: Vec<Event> = (0..args.batch)
        .map(|i| Event {
            kind: "bench".into(),
            actor: "tally-bench".into(),
            subject: format!("event-{i}"),
            payload: vec![b'x'; args.payload],
            ..Default::default()
        })
        .collect();
    let mut in_flight = std::collections::VecDeque::new();
    let mut acked = 0u64;
    while Instant::now() < until {
        while in_flight.len() < args.window {
            in_flight.push_back(client.send_append(events.clone()).await?);
        }
        if let Some(id) = in_flight.pop_front() {
            acked += client.recv_append(id).await?.len() as u64;
        }
    }
    while let Some(id) = in_flight.pop_front() {
        acked += client.recv_append(id).await?.len() as u64;
    }
    Ok(acked)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tallyd = match &args.tallyd {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("tallyd"),
    };
    let Some(tcti) = &args.tcti else {
        throughput(&args, &tallyd, None)?;
        return Ok(());
    };
    if args.anchor_latency > 0 {
        anchor_latency(&tallyd, tcti, args.anchor_latency)?;
    }
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds.max(1) {
        off.push(throughput(&args, &tallyd, None)?);
        on.push(throughput(
            &args,
            &tallyd,
            Some((tcti, args.anchor_interval_secs)),
        )?);
    }
    let (off, on) = (median(&mut off), median(&mut on));
    println!(
        "anchoring on/off: {:.3} (medians of {} rounds: {on:.0} vs {off:.0} events/s, anchoring every {} s; target >= 0.95)",
        on / off,
        args.rounds.max(1),
        args.anchor_interval_secs
    );
    Ok(())
}

/// Round-trip latency of `count` anchors (increment + NV_Certify + Quote +
/// LMDB commit, as the client sees it), each after one new event.
fn anchor_latency(tallyd: &Path, tcti: &str, count: usize) -> anyhow::Result<()> {
    let temp = tempfile::Builder::new().prefix("tally-bench").tempdir()?;
    let (_daemon, socket) = start_daemon(tallyd, temp.path(), Some((tcti, 3600)))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut millis: Vec<f64> = runtime.block_on(async {
        let mut client = Client::connect(&socket, "tally-bench").await?;
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let event = Event {
                kind: "bench".into(),
                subject: format!("anchor-{i}"),
                ..Default::default()
            };
            client.append(vec![event]).await?;
            let started = Instant::now();
            client.anchor().await?;
            out.push(started.elapsed().as_secs_f64() * 1e3);
        }
        anyhow::Ok(out)
    })?;
    millis.sort_by(f64::total_cmp);
    let at = |q: f64| millis[((millis.len() - 1) as f64 * q).round() as usize];
    println!(
        "anchor latency over {count} anchors: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        at(0.5),
        at(0.99),
        at(1.0)
    );
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// One throughput run against a fresh daemon; returns durable events/s.
fn throughput(args: &Args, tallyd: &Path, tpm: Option<(&str, u64)>) -> anyhow::Result<f64> {
    let temp = tempfile::Builder::new().prefix("tally-bench").tempdir()?;
    let dir = match &args.dir {
        Some(dir) => dir.join(if tpm.is_some() {
            "anchoring-on"
        } else {
            "anchoring-off"
        }),
        None => temp.path().to_owned(),
    };
    std::fs::create_dir_all(&dir)?;
    let (_daemon, socket) = start_daemon(tallyd, &dir, tpm)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let load = Load {
        payload: args.payload,
        batch: args.batch,
        window: args.window,
    };
    let acked: u64 = runtime.block_on(async {
        let tasks: Vec<_> = (0..args.clients)
            .map(|_| tokio::spawn(client_loop(socket.clone(), load, until)))
            .collect();
        let mut acked = 0;
        for task in tasks {
            acked += task.await??;
        }
        anyhow::Ok(acked)
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let rate = acked as f64 / elapsed;
    let summary = serde_json::json!({
        "scenario": "throughput",
        "anchoring": tpm.is_some(),
        "clients": args.clients,
        "payload_bytes": args.payload,
        "batch": args.batch,
        "window": args.window,
        "seconds": elapsed,
        "events_acked": acked,
        "events_per_sec": rate,
        "payload_mb_per_sec": rate * args.payload as f64 / 1e6,
    });
    println!(
        "throughput (anchoring {}): {acked} events durable in {elapsed:.1} s = {rate:.0} events/s ({:.1} MB/s of payload), {} clients x {} events/request x {} in flight",
        if tpm.is_some() { "on" } else { "off" },
        rate * args.payload as f64 / 1e6,
        args.clients,
        args.batch,
        args.window
    );
    println!("{summary}");
    Ok(rate)
}
