//! The one kill loop, parameterised by path: per round, appenders run, the
//! daemon is killed the path's way (chosen from the seeded generator), the
//! daemon itself restarts (its own journal replay and start-up, no `tallyd
//! check` first), and the ledger is checked; at the end every ack from seq
//! 0, the exported chain (and, when anchoring, the anchors against the log's
//! identity), and `tallyd check` offline.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{ensure, Context as _};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use tally_tests::{binary, Daemon, DaemonOpts};

use super::aim::kill_in_lmdb_commit;
use super::anchored::Anchored;
use super::ledger::{check_all, check_restarted, Checked, Ledger};
use super::load::Load;
use super::startup::{kill_first_start, kill_starting, StartTimes, IN_REPLAY};

/// How a round ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    /// SIGKILL at a random instant of the load, or (half the time) at the
    /// first LMDB commit after it (`aim.rs`).
    Load,
    /// SIGTERM at a random instant of the load, SIGKILL a random delay later
    /// (half the time at the drain's first LMDB commit), while the drain runs
    /// (or after it ended, which is counted apart).
    Drain,
    /// `tally anchor`, then SIGKILL a random delay later (while the anchor
    /// runs, or after it ended, counted apart).
    Anchor,
    /// SIGKILL during the load, then starts of the daemon killed at a random
    /// delay after spawning (aimed at the journal replay; up to three, until
    /// one lands there; the stage reached is counted).
    Startup,
}

/// One commit path under test.
#[derive(Debug, Clone)]
pub struct KillPath {
    pub name: &'static str,
    pub opts: DaemonOpts,
    /// Events per request of each appender.
    pub batches: Vec<u64>,
    /// The kinds of kill the rounds take in turn (each kind once per
    /// `kills.len()` rounds, in a random order).
    pub kills: Vec<Kill>,
    pub rounds: usize,
    /// With a TPM: first starts (provisioning, genesis) killed before the
    /// rounds, each on a new data directory.
    pub genesis_kills: usize,
    /// Turn the ack journal off for every other restart (and on again), as
    /// an operator may after a crash: `opts.config` must not set it.
    pub toggle_journal: bool,
}

/// What a run of a path did.
#[derive(Debug, Default)]
pub struct Report {
    /// SIGKILLs, by where they landed (a drain that ended before its kill
    /// is counted too, as a clean stop, not a kill).
    pub kills: BTreeMap<&'static str, u64>,
    pub acked: usize,
    pub size: u64,
    /// The smallest record stored, with its content, in bytes.
    pub min_record_bytes: u64,
    /// Records stored whose ack the kill cut off (allowed: never acked).
    pub unacked_stored: u64,
    /// Every stderr log of the daemon's runs, for the path's own checks.
    pub logs: String,
    /// Restarts with the journal turned off that committed events from it.
    pub replayed_with_journal_off: u64,
}

/// What a start logs when it committed acked events from the ack journal.
pub const REPLAYED: &str = "committed them from the ack journal";

/// Counted in [`Report::kills`], but not a kill.
pub const CLEAN_STOP: &str = "none: the drain ended first (a clean stop)";

impl Report {
    pub fn total_kills(&self) -> u64 {
        self.kills
            .iter()
            .filter(|(landed, _)| **landed != CLEAN_STOP)
            .map(|(_, count)| count)
            .sum()
    }
}

/// Runs `path` for its rounds; `anchored` when the daemon anchors in a TPM.
pub async fn run(
    path: &KillPath,
    rng: &mut StdRng,
    anchored: Option<&Anchored>,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let spawned = SystemTime::now();
    let mut daemon = Daemon::start(path.opts.clone())?;
    let mut start_times = StartTimes::measured(spawned, started.elapsed(), &daemon.stderr());
    // How long a drain takes, as the last clean one did: SIGKILLs aim within it.
    let mut drain_window = Duration::from_millis(40);
    // How long `tally anchor` takes, as the last one that returned did.
    let mut anchor_window = Duration::from_millis(80);
    let mut report = Report::default();
    if let Some(anchored) = anchored.filter(|_| path.genesis_kills > 0) {
        // The first start again, killed: a new log on the same TPM each time
        // (aimed within the last start, itself a first start most times).
        for kill in 0..path.genesis_kills {
            if daemon.is_running() {
                ensure!(daemon.terminate()?.success(), "the stop was not clean");
            }
            std::fs::remove_dir_all(daemon.data_dir())?;
            anchored.free_owner_record()?;
            let log = daemon.dir().join(format!("genesis-kill-{kill}.stderr"));
            let stage = kill_first_start(&daemon, rng, start_times, &log)?;
            *report.kills.entry(stage).or_default() += 1;
            // The daemon itself must take over whatever the kill left.
            let (restarting, spawned) = (Instant::now(), SystemTime::now());
            daemon
                .restart()
                .with_context(|| format!("the restart after a kill {stage} was refused"))?;
            start_times = StartTimes::measured(spawned, restarting.elapsed(), &daemon.stderr());
        }
    }
    let log_id = daemon.client().await?.server_hello().log_id.clone();
    let identity = match anchored {
        Some(anchored) => Some(anchored.identity(&daemon)?),
        None => None,
    };
    let ledger = Arc::new(Ledger::default());
    let mut checked = Checked::default();
    let mut startup_kills = 0;
    let mut journal_on = true;

    let mut order = Vec::new();
    for round in 0..path.rounds {
        if order.is_empty() {
            order = path.kills.clone();
            order.shuffle(rng);
        }
        let kill = order.pop().context("a path with no kind of kill")?;
        let acked_before = ledger.count();
        let load = Load::start(&daemon, &ledger, &path.batches).await?;
        let delay = Duration::from_millis(rng.gen_range(50..=400));
        tokio::time::sleep(delay).await;
        let landed = match kill {
            Kill::Load | Kill::Startup => {
                // Half the time at the next LMDB commit, if one comes within 1 s.
                let aimed = match (rng.gen_bool(0.5), daemon.pid()) {
                    (true, Some(pid)) => {
                        tokio::task::spawn_blocking(move || {
                            kill_in_lmdb_commit(pid, Duration::from_secs(1))
                        })
                        .await?
                    }
                    _ => None,
                };
                daemon.kill()?;
                aimed.unwrap_or("during the load")
            }
            Kill::Drain => drain_then_kill(&mut daemon, rng, &mut drain_window).await?,
            Kill::Anchor => anchor_then_kill(&mut daemon, rng, &mut anchor_window).await?,
        };
        *report.kills.entry(landed).or_default() += 1;
        load.ended()
            .await
            .with_context(|| format!("round {round} ({landed})"))?;
        if kill == Kill::Startup {
            // Until one lands in the journal replay, at most three.
            for _ in 0..3 {
                startup_kills += 1;
                let log = daemon
                    .dir()
                    .join(format!("startup-kill-{startup_kills}.stderr"));
                let stage = kill_starting(&daemon, rng, start_times, &log)?;
                *report.kills.entry(stage).or_default() += 1;
                if stage == IN_REPLAY {
                    break;
                }
            }
        }

        if path.toggle_journal {
            journal_on = !journal_on;
            let config = if journal_on {
                ""
            } else {
                "ack_journal_max_bytes = 0"
            };
            let text = format!("{}\n{config}\n[tpm]\n{}\n", path.opts.config, path.opts.tpm);
            std::fs::write(daemon.config_path(), text)?;
        }
        // The daemon's own start-up must take the store as the kill left it.
        let (restarting, spawned) = (Instant::now(), SystemTime::now());
        daemon.restart().with_context(|| {
            format!("round {round}: the restart after a kill {landed} was refused")
        })?;
        start_times = StartTimes::measured(spawned, restarting.elapsed(), &daemon.stderr());
        if path.toggle_journal && !journal_on && daemon.stderr().contains(REPLAYED) {
            report.replayed_with_journal_off += 1;
        }
        let found = check_restarted(&daemon, &ledger, &mut checked, &log_id)
            .await
            .with_context(|| format!("round {round}: after a kill {landed}"))?;
        report.unacked_stored += found.unacked_stored;
        let anchors = match (anchored, &identity) {
            (Some(anchored), Some(identity)) => {
                let anchors = anchored
                    .verify(&daemon, identity, rng, &checked)
                    .with_context(|| format!("round {round}: anchors after a kill {landed}"))?;
                format!(", {anchors} anchors verify")
            }
            _ => String::new(),
        };
        println!(
            "{} round {round}: killed {landed}, {delay:?} into the load; {} acked in the round, \
             {} acks checked, log size {}, {} stored unacked; restarted in {:?} (store opened after {:?}){anchors}",
            path.name,
            ledger.count() - acked_before,
            found.acks_checked,
            found.size,
            found.unacked_stored,
            start_times.ready,
            start_times.opened,
        );
    }

    let (size, head, smallest) = check_all(&daemon, &ledger).await?;
    let verified = daemon.export_and_verify()?;
    ensure!(
        verified.size == size && verified.head_hash == hex::encode(head),
        "the export verifies as {verified:?}, the log has {size} records"
    );
    let status = daemon.terminate()?;
    ensure!(status.success(), "the last stop was not clean: {status}");
    let check = daemon.tallyd(&["check"])?;
    ensure!(check.code == 0, "tallyd check failed: {check:?}");
    ensure!(
        check
            .stdout
            .starts_with(&format!("ok: {size} records, head {}", hex::encode(head))),
        "tallyd check disagrees with the daemon ({size} records, head {}): {}",
        hex::encode(head),
        check.stdout
    );
    report.acked = ledger.count();
    report.size = size;
    report.min_record_bytes = smallest;
    report.logs = daemon_logs(&daemon);
    println!(
        "{}: {} kills {:?}; {} acked, 0 lost; {} records ({} stored unacked); {:?}",
        path.name,
        report.total_kills(),
        report.kills,
        report.acked,
        report.size,
        report.unacked_stored,
        started.elapsed()
    );
    Ok(report)
}

/// SIGTERM, then SIGKILL after a random delay within `window` (half the
/// time at the drain's first LMDB commit, if one comes within it) unless the
/// drain ended first (then `window` becomes how long that drain took).
async fn drain_then_kill(
    daemon: &mut Daemon,
    rng: &mut StdRng,
    window: &mut Duration,
) -> anyhow::Result<&'static str> {
    let id = daemon.pid().context("not running")?;
    let pid = Pid::from_raw(i32::try_from(id)?);
    let most = u64::try_from(window.as_micros())?.max(1000);
    let delay = Duration::from_micros(rng.gen_range(0..=most));
    let aim = rng.gen_bool(0.5);
    let terminated = Instant::now();
    signal::kill(pid, Signal::SIGTERM)?;
    if aim {
        let most = *window;
        let hit = tokio::task::spawn_blocking(move || kill_in_lmdb_commit(id, most)).await?;
        if hit.is_some() {
            daemon.kill()?;
            return Ok("during the drain, at an LMDB commit");
        }
    }
    while daemon.is_running() && terminated.elapsed() < delay {
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    if daemon.is_running() {
        daemon.kill()?;
        Ok("during the drain")
    } else {
        *window = terminated.elapsed();
        println!("a drain ended {window:?} after SIGTERM, before its SIGKILL");
        ensure!(
            daemon.stderr().contains("stopped"),
            "the daemon exited after SIGTERM without an orderly stop:\n{}",
            daemon.stderr()
        );
        Ok(CLEAN_STOP)
    }
}

/// `tally anchor` in the background, then SIGKILL after a random delay
/// within `window`, unless it returned first (then `window` becomes how long
/// that anchor took, so that later kills land within one).
async fn anchor_then_kill(
    daemon: &mut Daemon,
    rng: &mut StdRng,
    window: &mut Duration,
) -> anyhow::Result<&'static str> {
    let most = u64::try_from(window.as_micros())?.max(1000);
    let delay = Duration::from_micros(rng.gen_range(0..=most));
    let asked = Instant::now();
    let mut anchor = Command::new(binary("tally")?)
        .arg("anchor")
        .env("TALLY_SOCKET", daemon.socket())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut returned = None;
    while returned.is_none() && asked.elapsed() < delay {
        tokio::time::sleep(Duration::from_micros(500)).await;
        returned = anchor.try_wait()?;
    }
    daemon.kill()?;
    let finished = anchor.wait()?;
    Ok(match returned {
        Some(status) if status.success() => {
            *window = asked.elapsed();
            "after `tally anchor` returned"
        }
        _ if finished.success() => "after `tally anchor` returned",
        _ => "while `tally anchor` ran",
    })
}

/// Every stderr log the daemon's runs wrote (`*.stderr` in its directory).
fn daemon_logs(daemon: &Daemon) -> String {
    let mut logs = String::new();
    let runs = std::fs::read_dir(daemon.dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "stderr"));
    for path in runs {
        logs.push_str(&std::fs::read_to_string(path).unwrap_or_default());
    }
    logs
}
