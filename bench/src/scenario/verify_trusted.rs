//! Verification that does not grow with history (`tally-bench
//! verify-trusted`): a real tallyd anchoring in a private swtpm, N events
//! ingested and anchored, then the genuine `tally` CLI:
//!
//! 1. `tally verify --live --attest --identity ID --save-trusted T`: the
//!    whole log straight from the daemon (no bundle file), every record
//!    hashed, every anchor checked and a fresh attestation; it saves the
//!    newest anchor as trusted;
//! 2. M more events, anchored;
//! 3. `tally verify --live --attest --identity ID --trusted T`: only the records
//!    after the trusted anchor are read and hashed, plus the proof that they
//!    extend the trusted tree.
//!
//! Printed: both times, the trusted run's time against the full run's time
//! scaled to M records (the time proportional to the new records), and the
//! peak `RssFile` / `RssAnon` of tallyd and of `tally` during each (polled
//! from `/proc/PID/status` every 50 ms).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use serde::Serialize;

use crate::daemon::{Daemon, Setup};
use crate::load::{self, Load};
use crate::swtpm::Swtpm;

#[derive(Debug)]
pub struct VerifyTrustedOptions {
    pub tallyd: PathBuf,
    pub tally: PathBuf,
    pub dir: PathBuf,
    /// Events before the trusted anchor.
    pub events: u64,
    /// Events after it.
    pub new_events: u64,
    pub payload: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyTrusted {
    pub events: u64,
    pub new_events: u64,
    pub ingest_events_per_sec: f64,
    pub full: Run,
    pub trusted: Run,
    /// `trusted.seconds / (full.seconds * new_events / events)`: 1.0 is a
    /// time exactly proportional to the new records.
    pub trusted_over_proportional: f64,
}

/// One timed `tally verify` and the peak memory of both processes.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub records_replayed: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    pub tallyd_peak: Memory,
    pub tally_peak: Memory,
}

/// Peak resident memory, MiB.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    pub rss_file_mib: f64,
    pub rss_anon_mib: f64,
}

const INGEST: Load = Load {
    payload: crate::PAYLOAD_BYTES,
    batch: 256,
    window: 8,
};

pub fn run(options: &VerifyTrustedOptions) -> anyhow::Result<VerifyTrusted> {
    std::fs::create_dir_all(&options.dir)?;
    let swtpm = Swtpm::start(&options.dir)?;
    let temp = super::temp_dir(&options.dir, "verify-trusted")?;
    let dir = temp.path();
    let setup = Setup {
        tpm: Some((swtpm.tcti().to_owned(), 3600)),
        config: None,
    };
    let daemon = Daemon::start(&options.tallyd, dir, &setup)?;
    let runtime = load::runtime()?;
    let load = Load {
        payload: options.payload,
        ..INGEST
    };
    let started = Instant::now();
    runtime.block_on(load::ingest(daemon.socket(), options.events, 4, load))?;
    let ingest_events_per_sec = options.events as f64 / started.elapsed().as_secs_f64();
    let tally = |args: &[&str]| -> anyhow::Result<(i32, String)> {
        let output = Command::new(&options.tally)
            .arg("--socket")
            .arg(daemon.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", options.tally.display()))?;
        Ok((
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ))
    };
    let (code, out) = tally(&["anchor"])?;
    ensure!(code == 0, "tally anchor: {out}");

    let identity = dir.join("identity.json");
    let output = Command::new(&options.tallyd)
        .arg("--config")
        .arg(dir.join("tallyd.toml"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--tcti")
        .arg(swtpm.tcti())
        .arg("--log")
        .arg("warn")
        .arg("identity")
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        output.status.success(),
        "tallyd identity: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(&identity, &output.stdout)?;
    let identity = path_str(&identity)?;
    let trusted = dir.join("trusted.anchor");
    let trusted = path_str(&trusted)?;

    let full = timed_verify(
        &options.tally,
        &daemon,
        &["--identity", &identity, "--save-trusted", &trusted],
        0,
        options.events,
    )?;
    runtime.block_on(load::ingest(daemon.socket(), options.new_events, 4, load))?;
    let (code, out) = tally(&["anchor"])?;
    ensure!(code == 0, "tally anchor: {out}");
    let trusted = timed_verify(
        &options.tally,
        &daemon,
        &["--identity", &identity, "--trusted", &trusted],
        options.events,
        options.events + options.new_events,
    )?;
    let proportional = full.seconds * options.new_events as f64 / options.events as f64;
    drop(daemon);
    drop(swtpm);
    Ok(VerifyTrusted {
        events: options.events,
        new_events: options.new_events,
        ingest_events_per_sec,
        trusted_over_proportional: trusted.seconds / proportional,
        full,
        trusted,
    })
}

fn path_str(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Runs `tally verify --live --attest ARGS --json` against the daemon, polling both
/// processes' memory; checks the verdict holds no damage, that the replay
/// started at `from_seq` and that the log has `size` records.
fn timed_verify(
    tally: &Path,
    daemon: &Daemon,
    args: &[&str],
    from_seq: u64,
    size: u64,
) -> anyhow::Result<Run> {
    let started = Instant::now();
    let child = Command::new(tally)
        .arg("--socket")
        .arg(daemon.socket())
        .arg("verify")
        .arg("--live")
        .arg("--attest")
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", tally.display()))?;
    let done = Arc::new(AtomicBool::new(false));
    let tallyd_poll = poll_peak(daemon.pid(), done.clone());
    let tally_poll = poll_peak(child.id(), done.clone());
    let output = wait(child)?;
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let tallyd_peak = tallyd_poll.join().unwrap_or_default();
    let tally_peak = tally_poll.join().unwrap_or_default();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let doc: serde_json::Value = serde_json::from_str(stdout.trim()).with_context(|| {
        format!(
            "tally verify printed no JSON: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    // With a fresh attestation (`--attest`) every check must pass.
    let code = output.status.code().unwrap_or(-1);
    if code != 0 || !doc["first_bad_seq"].is_null() {
        bail!("tally verify {args:?} did not PASS (exit {code}): {doc}");
    }
    for check in doc["checks"].as_array().into_iter().flatten() {
        if check["status"] != "pass" {
            bail!("tally verify {args:?}: check {check} is not a pass");
        }
    }
    ensure!(
        doc["size"].as_u64() == Some(size),
        "tally verify saw size {}, expected {size}",
        doc["size"]
    );
    let chain = doc["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|check| check["name"] == "chain"))
        .context("verify --json has no chain check")?;
    let replayed_from = chain["from_seq"].as_u64().unwrap_or(0);
    ensure!(
        replayed_from == from_seq,
        "the replay started at seq {replayed_from}, expected {from_seq}"
    );
    let records_replayed = size - from_seq;
    Ok(Run {
        records_replayed,
        seconds,
        events_per_sec: records_replayed as f64 / seconds,
        tallyd_peak,
        tally_peak,
    })
}

fn wait(child: Child) -> anyhow::Result<std::process::Output> {
    Ok(child.wait_with_output()?)
}

/// Polls `/proc/PID/status` every 50 ms until `done`; the peak of each of
/// `RssFile` and `RssAnon`.
fn poll_peak(pid: u32, done: Arc<AtomicBool>) -> std::thread::JoinHandle<Memory> {
    std::thread::spawn(move || {
        let mut peak = Memory::default();
        while !done.load(Ordering::Relaxed) {
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                let mib = |field: &str| {
                    status
                        .lines()
                        .find_map(|line| line.strip_prefix(field))
                        .and_then(|rest| rest.split_whitespace().next())
                        .and_then(|kib| kib.parse::<f64>().ok())
                        .map_or(0.0, |kib| kib / 1024.0)
                };
                peak.rss_file_mib = peak.rss_file_mib.max(mib("RssFile:"));
                peak.rss_anon_mib = peak.rss_anon_mib.max(mib("RssAnon:"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        peak
    })
}

impl VerifyTrusted {
    /// The figures as a table, with the proportionality target.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let row = |out: &mut String, name: &str, run: &Run| {
            out.push_str(&format!(
                "{name:<34} {:>12} {:>9.2} s {:>12.0} /s   tallyd RssFile {:>7.0} MiB (anon {:>5.0}), tally RssFile {:>5.0} MiB (anon {:>5.0})\n",
                run.records_replayed,
                run.seconds,
                run.events_per_sec,
                run.tallyd_peak.rss_file_mib,
                run.tallyd_peak.rss_anon_mib,
                run.tally_peak.rss_file_mib,
                run.tally_peak.rss_anon_mib,
            ));
        };
        out.push_str(&format!(
            "tally-bench verify-trusted: {} events, then {} new (ingest {:.0} events/s)\n\n",
            self.events, self.new_events, self.ingest_events_per_sec
        ));
        out.push_str(&format!(
            "{:<34} {:>12} {:>11} {:>14}\n",
            "tally verify --live", "replayed", "time", "records/s"
        ));
        row(&mut out, "whole log (--save-trusted)", &self.full);
        row(
            &mut out,
            "from the trusted anchor (--trusted)",
            &self.trusted,
        );
        out.push_str(&format!(
            "\ntrusted time / (whole-log time x {} / {}) = {:.2} (1.0: proportional to the new records)\n",
            self.new_events, self.events, self.trusted_over_proportional
        ));
        let peak = [&self.full, &self.trusted]
            .iter()
            .map(|run| {
                run.tallyd_peak
                    .rss_file_mib
                    .max(run.tally_peak.rss_file_mib)
            })
            .fold(0.0, f64::max);
        out.push_str(&format!(
            "RssFile during verify under 1 GiB: {} (peak {peak:.0} MiB)\n",
            if peak < 1024.0 { "yes" } else { "NO" }
        ));
        out
    }
}
