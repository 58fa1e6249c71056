//! A real tallyd on a temporary directory: started, probed (memory, CPU,
//! commit count), killed on drop.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::procfs::{self, SchedTime};

/// How to start tallyd beyond its data directory and socket.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// Anchor in this TPM (TCTI, anchoring interval in seconds); `None`:
    /// `--no-tpm`.
    pub tpm: Option<(String, u64)>,
    /// A config file's text (e.g. `queue_bytes = ...`), passed with --config.
    pub config: Option<String>,
}

/// A running tallyd; stopped when dropped: SIGTERM (so it releases what it
/// holds in the TPM: swtpm has no resource manager, and objects a killed
/// daemon left loaded would exhaust its few slots), then SIGKILL after
/// [`STOP_TIMEOUT`] (LMDB survives that by design).
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    socket: PathBuf,
    store: PathBuf,
    stderr: PathBuf,
    /// The daemon's LMDB environment opened read-only, for its commit count.
    lmdb: Option<heed::Env>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Close the read-only environment before the writer goes.
        self.lmdb = None;
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The TPM counter index of the next anchoring daemon (its owner record
/// takes the index after it).
static NEXT_COUNTER_INDEX: std::sync::atomic::AtomicU32 =
    std::sync::atomic::AtomicU32::new(tally_attest::identity::DEFAULT_COUNTER_INDEX);

/// How long a stopping tallyd may take to drain before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl Daemon {
    /// Starts `tallyd` with its data and socket under `dir` and waits until
    /// the socket accepts connections.
    pub fn start(tallyd: &Path, dir: &Path, setup: &Setup) -> anyhow::Result<Daemon> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("tally.sock");
        let data = dir.join("data");
        let stderr = dir.join("tallyd.stderr");
        let mut command = Command::new(tallyd);
        let mut config = setup.config.clone().unwrap_or_default();
        if setup.tpm.is_some() {
            // Every daemon here is a new log, and one TPM counter belongs
            // to one log (its owner record): each gets a counter of its own.
            let index = NEXT_COUNTER_INDEX.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
            config.push_str(&format!("\n[tpm]\ncounter_index = {index:#010x}\n"));
        }
        if !config.is_empty() {
            let path = dir.join("tallyd.toml");
            std::fs::write(&path, config)?;
            command.arg("--config").arg(path);
        }
        command
            .arg("--data-dir")
            .arg(&data)
            .arg("--socket")
            .arg(&socket)
            .arg("--log")
            .arg("warn");
        match &setup.tpm {
            Some((tcti, interval)) => command
                .arg("--tcti")
                .arg(tcti)
                .arg("--anchor-interval-secs")
                .arg(interval.to_string()),
            None => command.arg("--no-tpm"),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("cannot start {}", tallyd.display()))?;
        let mut daemon = Daemon {
            child,
            socket,
            store: data.join("store"),
            stderr,
            lmdb: None,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while std::os::unix::net::UnixStream::connect(&daemon.socket).is_err() {
            if let Some(status) = daemon.child.try_wait()? {
                bail!(
                    "tallyd exited during start-up ({status}); stderr:\n{}",
                    daemon.stderr_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "tallyd did not open {} within {START_TIMEOUT:?}; stderr:\n{}",
                    daemon.socket.display(),
                    daemon.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(daemon)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What tallyd printed to stderr (warnings and errors only).
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The id of the last committed LMDB write transaction. Every batch the
    /// sequencer commits is one transaction, so the difference between two
    /// readings is the number of commits (plus a few small anchoring
    /// transactions when anchoring is on).
    pub fn last_txn_id(&mut self) -> anyhow::Result<u64> {
        if self.lmdb.is_none() {
            let mut options = heed::EnvOpenOptions::new();
            // SAFETY: READ_ONLY is one of LMDB's safe flags: this process
            // never writes to the environment, and tallyd (another process)
            // stays its only writer, which LMDB supports through its lock file.
            unsafe { options.flags(heed::EnvFlags::READ_ONLY) };
            // SAFETY: the environment is opened once per daemon in this
            // process (heed refuses a second open of the same path), and
            // nothing but LMDB modifies its files.
            let env = unsafe { options.open(&self.store) }
                .with_context(|| format!("cannot open {} read-only", self.store.display()))?;
            self.lmdb = Some(env);
        }
        let env = self.lmdb.as_ref().context("LMDB environment not open")?;
        Ok(env.info().last_txn_id as u64)
    }

    /// Peak resident set size (VmHWM), in bytes.
    pub fn peak_rss(&self) -> anyhow::Result<u64> {
        procfs::status_bytes(self.pid(), "VmHWM")
    }

    /// Current resident set size (VmRSS), in bytes.
    pub fn rss(&self) -> anyhow::Result<u64> {
        procfs::status_bytes(self.pid(), "VmRSS")
    }

    /// Scheduler time so far of each of tallyd's threads, by name.
    pub fn thread_sched(&self) -> anyhow::Result<BTreeMap<String, SchedTime>> {
        procfs::thread_sched(self.pid())
    }
}

/// CPU use of tallyd and of this program over measured intervals (one, or
/// several slices with other work between them).
#[derive(Debug, Default)]
pub struct CpuMeter {
    wall: f64,
    daemon: BTreeMap<String, SchedTime>,
    own: f64,
    /// The open slice: when it began, and the snapshots then.
    open: Option<(Instant, BTreeMap<String, SchedTime>, f64)>,
}

/// Cores used during an interval: tallyd in total and per thread name (with
/// the time its threads were runnable but waiting for a CPU: contention from
/// this program or other jobs), and the benchmark's own clients. On 2 cores,
/// a sum near 2 means the machine (not the disk) was the limit; a sequencer
/// well below 1.0 on CPU and low waiting is blocked on I/O.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CpuUse {
    pub tallyd_cores: f64,
    pub tallyd_threads: BTreeMap<String, SchedTime>,
    pub bench_cores: f64,
}

impl CpuMeter {
    /// A meter with one slice open.
    pub fn start(daemon: &Daemon) -> anyhow::Result<CpuMeter> {
        let mut meter = CpuMeter::default();
        meter.resume(daemon)?;
        Ok(meter)
    }

    /// Opens a slice.
    pub fn resume(&mut self, daemon: &Daemon) -> anyhow::Result<()> {
        self.open = Some((
            Instant::now(),
            daemon.thread_sched()?,
            procfs::own_cpu_seconds()?,
        ));
        Ok(())
    }

    /// Closes the open slice, if any.
    pub fn pause(&mut self, daemon: &Daemon) -> anyhow::Result<()> {
        if let Some((started, threads, own)) = self.open.take() {
            self.wall += started.elapsed().as_secs_f64();
            procfs::add_sched_delta(&mut self.daemon, &threads, &daemon.thread_sched()?);
            self.own += procfs::own_cpu_seconds()? - own;
        }
        Ok(())
    }

    /// Closes the open slice and returns the use over every slice.
    pub fn stop(&mut self, daemon: &Daemon) -> anyhow::Result<CpuUse> {
        self.pause(daemon)?;
        let threads = procfs::shares(&self.daemon, self.wall);
        // Floors at the clock tick's resolution, so an idle figure is never 0.
        Ok(CpuUse {
            tallyd_cores: threads
                .values()
                .map(|share| share.on_cpu)
                .sum::<f64>()
                .max(0.005),
            tallyd_threads: threads,
            bench_cores: (self.own / self.wall.max(1e-9)).max(0.005),
        })
    }
}
