//! A disk-stall probe: while a scenario runs, a thread rewrites 4 KiB in a
//! file beside the daemon's data and fdatasyncs it every 10 ms, and keeps the
//! slowest. On a shared VM disk a flush sometimes takes tens of milliseconds
//! whatever the daemon does (a journal commit, trimming freed blocks); when
//! an ack latency tail coincides with a slow probe, the disk is the cause.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Time between probe writes.
const PERIOD: Duration = Duration::from_millis(10);

/// A running probe; [`DiskProbe::stop`] returns the slowest flush.
#[derive(Debug)]
pub struct DiskProbe {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<std::io::Result<Duration>>,
}

impl DiskProbe {
    pub fn start(dir: &Path) -> anyhow::Result<DiskProbe> {
        let path = dir.join("disk-probe");
        let file = probe_file(&path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("bench-disk-probe".into())
            .spawn(move || {
                let mut slowest = Duration::ZERO;
                while !flag.load(Ordering::Relaxed) {
                    slowest = slowest.max(timed_flush(&file)?);
                    thread::sleep(PERIOD);
                }
                std::fs::remove_file(&path)?;
                Ok(slowest)
            })?;
        Ok(DiskProbe { stop, thread })
    }

    /// Stops the probe; the slowest write + fdatasync it saw, in ms.
    pub fn stop(self) -> anyhow::Result<f64> {
        self.stop.store(true, Ordering::Relaxed);
        let slowest = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the disk probe panicked"))??;
        Ok(slowest.as_secs_f64() * 1e3)
    }
}

/// Waits until the disk is quiet: ten 4 KiB write + fdatasync in a row, 50
/// ms apart, each under 2 ms (the idle figure here is ~0.1 ms), or `max`.
/// Returns how long it waited. Run between scenarios, after `sync`, so that
/// one scenario's gigabytes, deleted and trimmed (`-o discard`), are not
/// flushed during the next. (In the runs so far the disk was quiet at the
/// first try; the stalls that still break a run come during a scenario.)
pub fn wait_quiet(dir: &Path, max: Duration) -> anyhow::Result<Duration> {
    const QUIET_FLUSH: Duration = Duration::from_millis(2);
    const QUIET_IN_A_ROW: usize = 10;
    let started = Instant::now();
    let path = dir.join("disk-quiet-probe");
    let file = probe_file(&path)?;
    let mut quiet = 0;
    while quiet < QUIET_IN_A_ROW && started.elapsed() < max {
        thread::sleep(Duration::from_millis(50));
        quiet = if timed_flush(&file)? < QUIET_FLUSH {
            quiet + 1
        } else {
            0
        };
    }
    std::fs::remove_file(&path)?;
    Ok(started.elapsed())
}

/// A 4 KiB file at `path`, written and synced once, for [`timed_flush`].
fn probe_file(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)?;
    file.write_all_at(&[0u8; 4096], 0)?;
    file.sync_all()?;
    Ok(file)
}

/// Rewrites the probe file's block and flushes it; how long that took.
fn timed_flush(file: &File) -> std::io::Result<Duration> {
    let started = Instant::now();
    file.write_all_at(&[1u8; 4096], 0)?;
    file.sync_data()?;
    Ok(started.elapsed())
}
