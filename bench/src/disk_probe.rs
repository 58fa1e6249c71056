//! A disk-stall probe: while a scenario runs, a thread rewrites 4 KiB in a
//! file beside the daemon's data and fdatasyncs it every 10 ms, and keeps the
//! slowest. On a shared VM disk a flush sometimes takes tens of milliseconds
//! whatever the daemon does (a journal commit, trimming freed blocks); when
//! an ack latency tail coincides with a slow probe, the disk is the cause.

use std::fs::OpenOptions;
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
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)?;
        file.write_all_at(&[0u8; 4096], 0)?;
        file.sync_all()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("bench-disk-probe".into())
            .spawn(move || {
                let block = [1u8; 4096];
                let mut slowest = Duration::ZERO;
                while !flag.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    file.write_all_at(&block, 0)?;
                    file.sync_data()?;
                    slowest = slowest.max(started.elapsed());
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
