//! Killing a starting daemon: spawned on the data directory and SIGKILLed
//! while it replays the ack journal three times in four (its
//! `/proc/PID/maps` polled from the spawn on: the journal is mapped exactly
//! while it is scanned and replayed, and the kill comes at a random poll
//! within that window), at a random delay up to the last start's ready
//! otherwise. Where it landed is read from the process just before the kill
//! (its maps and descriptors) and from its log.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::ensure;
use rand::rngs::StdRng;
use rand::Rng;
use tally_tests::{binary, Daemon};

/// Logged once the store is open and the ack journal replayed: by the replay
/// itself after its commit, else the first line after it. The last start's
/// time to the first of them is where the kills aim.
const OPENED: [&str; 3] = [
    "replayed acknowledged records from the ack journal",
    "TPM anchoring is OFF",
    "TPM provisioned",
];

/// How long the last complete start took: to its ready, and to the store
/// opened (as its log shows).
#[derive(Debug, Clone, Copy)]
pub struct StartTimes {
    pub ready: Duration,
    pub opened: Option<Duration>,
}

impl StartTimes {
    /// From a start spawned at `spawned` that became ready after `ready`.
    pub fn measured(spawned: SystemTime, ready: Duration, log: &str) -> StartTimes {
        let opened = logged_at(log, &OPENED).and_then(|at| at.duration_since(spawned).ok());
        StartTimes { ready, opened }
    }
}

/// Spawns the daemon on its data directory and SIGKILLs it, in the journal
/// replay three times in four, else after a random delay; returns the stage
/// its maps and log show it had reached.
pub fn kill_starting(
    daemon: &Daemon,
    rng: &mut StdRng,
    times: StartTimes,
    log: &Path,
) -> anyhow::Result<&'static str> {
    let most = Duration::from_micros(u64::try_from(times.ready.as_micros())?.max(1000));
    let when = if rng.gen_bool(0.75) {
        // A replay starts no later than the last start's ready, give or take
        // a loaded machine: poll until four times that.
        When::InReplay { deadline: most * 4 }
    } else {
        When::After(rng.gen_range(Duration::ZERO..=most))
    };
    let (seen, text) = spawn_and_kill(daemon, when, rng, log)?;
    Ok(if ready(&text) {
        "at start-up, after ready"
    } else if seen.journal_mapped {
        IN_REPLAY
    } else if seen.journal_open {
        "at start-up, after the journal replay, before ready"
    } else if seen.store_open {
        "at start-up, the store open, before the journal replay"
    } else {
        "at start-up, before the store was opened"
    })
}

/// Spawns the daemon on a data directory it has never started on and
/// SIGKILLs it a random delay later (up to when the last start was ready;
/// half the time after it was provisioned): during provisioning and the
/// genesis anchor (the owner record, the anchor and identity, the first
/// increment). Returns how far its log shows it got.
pub fn kill_first_start(
    daemon: &Daemon,
    rng: &mut StdRng,
    last: StartTimes,
    log: &Path,
) -> anyhow::Result<&'static str> {
    let least = match last.opened {
        Some(provisioned) if rng.gen_bool(0.5) => provisioned.min(last.ready),
        _ => Duration::ZERO,
    };
    let most = u64::try_from(last.ready.as_micros())?.max(1000);
    let least = u64::try_from(least.as_micros())?.min(most);
    let delay = Duration::from_micros(rng.gen_range(least..=most));
    let (_, text) = spawn_and_kill(daemon, When::After(delay), rng, log)?;
    Ok(if ready(&text) {
        "at the first start, after ready"
    } else if text.contains("genesis anchor made") {
        "at the first start, after the genesis anchor"
    } else if text.contains("TPM provisioned") {
        "at the first start, provisioned, before the genesis anchor was made"
    } else {
        "at the first start, before the TPM was provisioned"
    })
}

/// When a starting daemon is killed.
enum When {
    /// This long after the spawn.
    After(Duration),
    /// At a random poll of its maps while the ack journal is mapped (each
    /// such poll kills with probability one half), or at `deadline` after
    /// the spawn if it never is.
    InReplay { deadline: Duration },
}

/// Spawns the daemon on its data directory and SIGKILLs it `when` says;
/// returns what it had open just before, and its log.
fn spawn_and_kill(
    daemon: &Daemon,
    when: When,
    rng: &mut StdRng,
    log: &Path,
) -> anyhow::Result<(Seen, String)> {
    let mut child = Command::new(binary("tallyd")?)
        .args(daemon.base_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log)?)
        .spawn()?;
    let seen = match when {
        When::After(delay) => {
            std::thread::sleep(delay);
            Seen::of(child.id())
        }
        When::InReplay { deadline } => {
            let spawned = Instant::now();
            loop {
                let seen = Seen::of(child.id());
                let mapped = seen.journal_mapped;
                if (mapped && rng.gen_bool(0.5)) || spawned.elapsed() > deadline {
                    break seen;
                }
                if !mapped {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
    };
    child.kill()?;
    let status = child.wait()?;
    let text = std::fs::read_to_string(log)?;
    ensure!(
        status.code().is_none(),
        "a starting daemon exited by itself ({status}) before the kill:\n{text}"
    );
    Ok((seen, text))
}

/// Whether the log says the daemon was ready (accepting connections).
fn ready(log: &str) -> bool {
    log.lines()
        .any(|line| line.contains("tallyd/") && line.contains(" ready "))
}

/// What a process had open just before its kill.
struct Seen {
    /// The ack journal mapped: the daemon's `Journal::recover` scans and replays it.
    journal_mapped: bool,
    /// The ack journal open but not mapped: replayed, reopened for writing.
    journal_open: bool,
    /// LMDB's `data.mdb` mapped or open.
    store_open: bool,
}

impl Seen {
    fn of(pid: u32) -> Seen {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .map(|target| target.display().to_string())
            .collect();
        let journal_mapped = maps.contains(JOURNAL_FILE);
        Seen {
            journal_mapped,
            journal_open: !journal_mapped && fds.iter().any(|fd| fd.ends_with(JOURNAL_FILE)),
            store_open: maps.contains("/store/data.mdb")
                || fds.iter().any(|fd| fd.ends_with("/store/data.mdb")),
        }
    }
}

/// Where a kill landed while the ack journal was mapped: its scan and replay.
pub const IN_REPLAY: &str = "at start-up, during the journal replay (the journal mapped)";

/// The ack journal, in the data directory (docs/DESIGN.md, section 4).
const JOURNAL_FILE: &str = "/store/ack-journal";

/// When the first log line holding one of `markers` was logged (tracing's
/// UTC timestamp, e.g. `2026-12-01T14:40:50.742423Z`).
fn logged_at(log: &str, markers: &[&str]) -> Option<SystemTime> {
    let line = log
        .lines()
        .find(|line| markers.iter().any(|marker| line.contains(marker)))?;
    let (date, time) = line
        .split_whitespace()
        .next()?
        .strip_suffix('Z')?
        .split_once('T')?;
    let mut ymd = date.split('-').map(|part| part.parse::<i64>().ok());
    let (year, month, day) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let mut hms = time.split(':');
    let hours: u64 = hms.next()?.parse().ok()?;
    let minutes: u64 = hms.next()?.parse().ok()?;
    let (seconds, fraction) = hms.next()?.split_once('.')?;
    let seconds: u64 = seconds.parse().ok()?;
    let nanos: u32 = format!("{fraction:0<9}").get(..9)?.parse().ok()?;
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    let whole = days * 86_400 + hours * 3_600 + minutes * 60 + seconds;
    Some(UNIX_EPOCH + Duration::new(whole, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[test]
fn a_log_timestamp_is_read_as_utc() {
    let log = "2026-12-01T14:40:50.742423Z  INFO tally_daemon: TPM anchoring is OFF: ...";
    let at = logged_at(log, &OPENED).unwrap();
    // date -u -d 2026-12-01T14:40:50Z +%s
    let expected = UNIX_EPOCH + Duration::from_secs(1_796_136_050) + Duration::from_micros(742_423);
    assert_eq!(at, expected);
    assert_eq!(logged_at(log, &["not logged"]), None);
}
