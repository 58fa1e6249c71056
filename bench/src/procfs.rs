//! What /proc says about a process (memory, CPU time per thread) and about
//! the machine (CPU model, file system), for the figures and their context.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

/// A `kB` field of /proc/PID/status (e.g. `VmHWM`, `VmRSS`), in bytes.
pub fn status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let prefix = format!("{field}:");
    let line = text
        .lines()
        .find(|line| line.starts_with(&prefix))
        .with_context(|| format!("{path} has no {field}"))?;
    let kib: u64 = line[prefix.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("{path}: cannot parse {line:?}"))?;
    Ok(kib * 1024)
}

fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|ticks| *ticks > 0)
        .map_or(100.0, |ticks| ticks as f64)
}

/// (comm, user + system CPU seconds) from a /proc stat file.
fn stat_cpu(path: &str) -> anyhow::Result<(String, f64)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    // `pid (comm) state ...`: comm may hold spaces and parentheses.
    let open = text.find('(').context("no comm in stat")?;
    let close = text.rfind(')').context("no comm in stat")?;
    let comm = text[open + 1..close].to_owned();
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // Fields 14 and 15 of stat(5) (utime, stime); the first after ')' is field 3.
    let ticks = |index: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(index)
            .context("short stat line")?
            .parse::<u64>()
            .context("bad stat field")? as f64)
    };
    Ok((comm, (ticks(11)? + ticks(12)?) / ticks_per_second()))
}

/// CPU seconds of this process.
pub fn own_cpu_seconds() -> anyhow::Result<f64> {
    Ok(stat_cpu("/proc/self/stat")?.1)
}

/// Scheduler time of a thread group, per thread name (threads of the same
/// name are added up): seconds on a CPU, and seconds runnable but waiting for
/// one (CPU contention), from /proc/PID/task/TID/schedstat.
pub fn thread_sched(pid: u32) -> anyhow::Result<BTreeMap<String, SchedTime>> {
    let mut out: BTreeMap<String, SchedTime> = BTreeMap::new();
    let dir = format!("/proc/{pid}/task");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
        let task = format!("{dir}/{}", entry?.file_name().to_string_lossy());
        // A thread may end between listing and reading: skip it.
        let (Ok(comm), Ok(schedstat)) = (
            std::fs::read_to_string(format!("{task}/comm")),
            std::fs::read_to_string(format!("{task}/schedstat")),
        ) else {
            continue;
        };
        let mut fields = schedstat.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(run)), Some(Ok(wait))) = (fields.next(), fields.next()) else {
            continue;
        };
        let slot = out.entry(comm.trim().to_owned()).or_default();
        slot.on_cpu += run as f64 / 1e9;
        slot.waiting_for_cpu += wait as f64 / 1e9;
    }
    Ok(out)
}

/// Seconds (or, over an interval, cores) a thread spent on and waiting for a CPU.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SchedTime {
    pub on_cpu: f64,
    pub waiting_for_cpu: f64,
}

/// Adds the scheduler time between two [`thread_sched`] snapshots to `total`.
pub fn add_sched_delta(
    total: &mut BTreeMap<String, SchedTime>,
    before: &BTreeMap<String, SchedTime>,
    after: &BTreeMap<String, SchedTime>,
) {
    for (comm, now) in after {
        let then = before.get(comm).copied().unwrap_or_default();
        let slot = total.entry(comm.clone()).or_default();
        slot.on_cpu += (now.on_cpu - then.on_cpu).max(0.0);
        slot.waiting_for_cpu += (now.waiting_for_cpu - then.waiting_for_cpu).max(0.0);
    }
}

/// Scheduler seconds per thread name as fractions of `wall_seconds` (1.0 =
/// one core busy, or one thread always waiting). Threads below 0.5% are
/// left out; a figure below 0.1% is shown as 0.1%.
pub fn shares(
    total: &BTreeMap<String, SchedTime>,
    wall_seconds: f64,
) -> BTreeMap<String, SchedTime> {
    let wall = wall_seconds.max(1e-9);
    total
        .iter()
        .map(|(comm, time)| {
            let share = SchedTime {
                on_cpu: (time.on_cpu / wall).max(0.001),
                waiting_for_cpu: (time.waiting_for_cpu / wall).max(0.001),
            };
            (comm.clone(), share)
        })
        .filter(|(_, share)| share.on_cpu >= 0.005)
        .collect()
}

/// The machine a run was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    /// File system type and device of the directory the data is written to.
    pub filesystem: String,
    pub work_dir: String,
    pub kernel: String,
    /// 1-minute load average when the run started (another job on the machine
    /// shows up here).
    pub load_average_at_start: f64,
}

impl Machine {
    pub fn probe(work_dir: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split(':').nth(1))
            .map_or_else(|| "unknown".into(), |model| model.trim().to_owned());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
                let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib / (1024.0 * 1024.0))
            })
            .unwrap_or(0.0);
        let load_average_at_start = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_gib,
            filesystem: filesystem_of(work_dir),
            work_dir: work_dir.display().to_string(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".into(), |text| text.trim().to_owned()),
            load_average_at_start,
        }
    }
}

/// "ext4 on /dev/vda (mounted at /)": the mount holding `dir`.
fn filesystem_of(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (device, mount, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            dir.starts_with(mount)
                .then_some((mount.len(), device, mount, fstype))
        })
        .max_by_key(|(len, ..)| *len)
        .map_or_else(
            || "unknown".into(),
            |(_, device, mount, fstype)| format!("{fstype} on {device} (mounted at {mount})"),
        )
}
