//! Aiming a SIGKILL at an LMDB commit (or at the I/O on another file of the
//! store, such as the content key file): the daemon's threads are polled
//! (`/proc/PID/task/*/syscall`, which names each thread's current system call
//! and its first argument) until one is writing or flushing `data.mdb`, and
//! the daemon is killed at once. On the journal path LMDB commits only in
//! the apply, a few milliseconds every 100 ms, which random instants rarely
//! hit. x86_64 only (the system call numbers); elsewhere nothing is found and
//! the kill falls back to the random instant.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const WRITE: i64 = 1;
    pub const WRITEV: i64 = 20;
    pub const PWRITE64: i64 = 18;
    pub const PWRITEV: i64 = 296;
    pub const FSYNC: i64 = 74;
    pub const FDATASYNC: i64 = 75;
}
#[cfg(not(target_arch = "x86_64"))]
mod nr {
    pub const WRITE: i64 = -2;
    pub const WRITEV: i64 = -2;
    pub const PWRITE64: i64 = -2;
    pub const PWRITEV: i64 = -2;
    pub const FSYNC: i64 = -2;
    pub const FDATASYNC: i64 = -2;
}

/// Polls `pid`'s threads for up to `timeout`; when one is in a write or
/// flush of `data.mdb`, SIGKILLs the process and says which. `None`: no
/// commit was seen (nothing is killed).
pub fn kill_in_lmdb_commit(pid: u32, timeout: Duration) -> Option<&'static str> {
    Some(match kill_in_io_on(pid, timeout, "store/data.mdb")? {
        Io::Flush => "during an LMDB commit (flushing data.mdb)",
        Io::Write => "during an LMDB commit (writing data.mdb)",
    })
}

/// What a killed thread was doing to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    Write,
    Flush,
}

/// Polls `pid`'s threads for up to `timeout`; when one is in a write or
/// flush of the file whose path ends with `file`, SIGKILLs the process and
/// says which. `None`: none was seen (nothing is killed).
pub fn kill_in_io_on(pid: u32, timeout: Duration, file: &str) -> Option<Io> {
    let deadline = Instant::now() + timeout;
    // fd -> whether it is the file (stable for the process).
    let mut file_fds: HashMap<u64, bool> = HashMap::new();
    while Instant::now() < deadline {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        for task in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("syscall")) else {
                continue;
            };
            let mut fields = text.split_whitespace();
            let what = match fields.next().and_then(|nr| nr.parse::<i64>().ok()) {
                Some(nr::FSYNC | nr::FDATASYNC) => Io::Flush,
                Some(nr::WRITE | nr::WRITEV | nr::PWRITE64 | nr::PWRITEV) => Io::Write,
                _ => continue,
            };
            let Some(fd) = fields
                .next()
                .and_then(|arg| u64::from_str_radix(arg.trim_start_matches("0x"), 16).ok())
            else {
                continue;
            };
            let is_file = *file_fds.entry(fd).or_insert_with(|| {
                std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                    .is_ok_and(|target| target.ends_with(file))
            });
            if is_file {
                let pid = Pid::from_raw(i32::try_from(pid).ok()?);
                signal::kill(pid, Signal::SIGKILL).ok()?;
                return Some(what);
            }
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    None
}
