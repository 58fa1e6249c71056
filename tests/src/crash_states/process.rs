//! Starting `tallyd` on a given data directory and waiting for `READY=1` or
//! its exit, with a deadline.

use std::fs::File;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// A `tallyd` process; SIGKILLed when dropped.
#[derive(Debug)]
pub struct Tallyd {
    pub child: Child,
    pub socket: PathBuf,
    pub stderr: PathBuf,
}

/// How a start ended.
#[derive(Debug)]
pub enum Started {
    Ready(Tallyd),
    /// It exited before `READY=1`: its status and stderr.
    Exited(ExitStatus, String),
    /// Neither within the deadline (it was killed).
    Hung(String),
}

/// Starts `tallyd --data-dir data --socket <dir>/tally.sock --config config
/// run` (plus `args`) with `env`, its stderr in `<dir>/tallyd.stderr`.
pub fn start(
    dir: &Path,
    data: &Path,
    config: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    deadline: Duration,
) -> anyhow::Result<Started> {
    let socket = dir.join("tally.sock");
    let stderr = dir.join("tallyd.stderr");
    let notify_path = dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path).context("cannot bind the readiness socket")?;
    notify.set_read_timeout(Some(Duration::from_millis(10)))?;
    let child = Command::new(crate::binary("tallyd")?)
        .arg("--data-dir")
        .arg(data)
        .arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg(config)
        .args(["--log", "warn"])
        .args(args)
        .env("NOTIFY_SOCKET", &notify_path)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&stderr)?)
        .spawn()
        .context("cannot spawn tallyd")?;
    let mut tallyd = Tallyd {
        child,
        socket,
        stderr,
    };
    let until = Instant::now() + deadline;
    let mut message = [0u8; 512];
    loop {
        if let Ok(len) = notify.recv(&mut message) {
            if String::from_utf8_lossy(&message[..len])
                .lines()
                .any(|line| line == "READY=1")
            {
                return Ok(Started::Ready(tallyd));
            }
        }
        if let Some(status) = tallyd.child.try_wait()? {
            let stderr = std::fs::read_to_string(&tallyd.stderr).unwrap_or_default();
            return Ok(Started::Exited(status, stderr));
        }
        if Instant::now() > until {
            let stderr = std::fs::read_to_string(&tallyd.stderr).unwrap_or_default();
            return Ok(Started::Hung(stderr));
        }
    }
}

impl Tallyd {
    /// SIGTERM and wait for the drain; its exit status.
    pub fn terminate(mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < until,
                "tallyd did not stop within {deadline:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Tallyd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of the recorder's stamps.
pub fn monotonic_ns() -> u64 {
    let mut ts = nix::libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}
