//! Free space on the file system that holds the store: the one test of "a
//! write failed because the disk is full", and the low-space warning.
//!
//! A full disk does not always say `ENOSPC`. LMDB writes a commit's dirty
//! pages with one `pwritev`; when the file system has room for only part of
//! them the call returns a short count and LMDB turns that into `EIO`
//! ("short write, filesystem full?" in `mdb_page_flush`). That is what a
//! user saw as "Input/output error (os error 5)". So an `EIO` from a write
//! is taken as a full disk when the file system has less than
//! [`SHORT_WRITE_SLACK`] plus four times the batch's bytes available (a
//! short write leaves it at about zero); any other `EIO` stays an I/O error.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// An `EIO` from a write with less than this (plus four times the batch) free
/// on the file system is a short write for lack of space.
pub const SHORT_WRITE_SLACK: u64 = 1 << 20;

/// A write that failed for lack of disk space or quota. Its text is what an
/// appender reads with `STORAGE_FULL`.
#[derive(Debug, thiserror::Error)]
#[error(
    "the file system holding {} is full: {free_bytes} bytes free ({}); appends resume once \
     space is freed, without a restart",
    .dir.display(),
    cause_text(.source)
)]
pub struct OutOfSpace {
    /// The directory whose write failed (the store's).
    pub dir: PathBuf,
    /// What the file system had available to tallyd right after the failure.
    pub free_bytes: u64,
    /// The write's own error: `ENOSPC`, `EDQUOT`, or `EIO` for a short write.
    pub source: std::io::Error,
}

impl OutOfSpace {
    /// `err`, from a write of about `incoming` bytes under `dir`, as a full
    /// disk, or back unchanged when it is not one.
    pub fn classify(
        dir: &Path,
        err: std::io::Error,
        incoming: usize,
    ) -> Result<OutOfSpace, std::io::Error> {
        let code = err.raw_os_error();
        let no_space = is_out_of_space(&err);
        let free_bytes = free_bytes(dir).unwrap_or(u64::MAX);
        let margin = SHORT_WRITE_SLACK.saturating_add((incoming as u64).saturating_mul(4));
        let short_write = code == Some(nix::libc::EIO) && free_bytes < margin;
        if no_space || short_write {
            Ok(OutOfSpace {
                dir: dir.to_owned(),
                free_bytes: if free_bytes == u64::MAX {
                    0
                } else {
                    free_bytes
                },
                source: err,
            })
        } else {
            Err(err)
        }
    }
}

/// True when a write failed with `ENOSPC` or `EDQUOT`: the errno part of
/// [`OutOfSpace::classify`], and the whole test for an LMDB error that did
/// not go through it (commits, meta writes and the journal do; that also
/// takes LMDB's short-write `EIO`).
pub fn is_out_of_space(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(code) if code == nix::libc::ENOSPC || code == nix::libc::EDQUOT
    )
}

/// What the failed write said: LMDB's `EIO` for a short write is named as one.
fn cause_text(source: &std::io::Error) -> String {
    if source.raw_os_error() == Some(nix::libc::EIO) {
        "a short write: LMDB reports it as EIO".into()
    } else {
        source.to_string()
    }
}

/// Bytes available to tallyd (not root's reserve) on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(stat.blocks_available().saturating_mul(stat.fragment_size()))
}

/// The file system's free space against the `disk_warn_below_bytes`
/// threshold; logs once when it falls below, once when it recovers.
#[derive(Debug)]
pub struct DiskSpace {
    dir: PathBuf,
    /// Warn below this many free bytes (0: never).
    warn_below: u64,
    /// The last check found it below the threshold.
    low: AtomicBool,
}

/// One look at the free space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceReport {
    pub free_bytes: u64,
    /// Set when the free space is below the threshold: what `status` shows.
    pub warning: Option<String>,
}

impl DiskSpace {
    pub fn new(dir: PathBuf, warn_below: u64) -> DiskSpace {
        DiskSpace {
            dir,
            warn_below,
            low: AtomicBool::new(false),
        }
    }

    /// The configured threshold.
    pub fn warn_below(&self) -> u64 {
        self.warn_below
    }

    /// Looks at the free space now; logs a warning when it has just fallen
    /// below the threshold (and a note when it is back above).
    pub fn check(&self) -> SpaceReport {
        let free = free_bytes(&self.dir);
        let free_bytes = free.as_ref().copied().unwrap_or(0);
        let low = self.warn_below > 0 && free_bytes < self.warn_below;
        let warning = match &free {
            Err(err) => Some(format!(
                "cannot read the free space of {}: {err}",
                self.dir.display()
            )),
            Ok(_) if low => Some(format!(
                "low disk space: {free_bytes} bytes free on the file system holding {}, below \
                 disk_warn_below_bytes = {}; appends get STORAGE_FULL once it is full",
                self.dir.display(),
                self.warn_below
            )),
            Ok(_) => None,
        };
        let was_low = self.low.swap(low, Ordering::Relaxed);
        match (&warning, was_low, low) {
            (Some(text), false, true) => tracing::warn!(free_bytes, "{text}"),
            (None, true, false) => tracing::info!(
                free_bytes,
                dir = %self.dir.display(),
                "disk space is back above disk_warn_below_bytes"
            ),
            _ => {}
        }
        SpaceReport {
            free_bytes,
            warning,
        }
    }
}

/// How often the daemon looks at the free space between status requests.
pub const SPACE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Looks at the free space every [`SPACE_CHECK_INTERVAL`] until `shutdown`,
/// so the low-space warning is logged even when nobody asks for status.
pub async fn watch_space(
    space: std::sync::Arc<DiskSpace>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut ticks = tokio::time::interval(SPACE_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let space = space.clone();
                // statvfs is a system call on a possibly slow file system.
                if tokio::task::spawn_blocking(move || space.check()).await.is_err() {
                    return;
                }
            }
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_is_full_and_other_errors_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let full = OutOfSpace::classify(
            dir.path(),
            std::io::Error::from_raw_os_error(nix::libc::ENOSPC),
            0,
        )
        .unwrap();
        let text = full.to_string();
        assert_eq!(
            text,
            format!(
                "the file system holding {} is full: {} bytes free (No space left on device (os \
                 error 28)); appends resume once space is freed, without a restart",
                dir.path().display(),
                full.free_bytes
            )
        );
        let denied = std::io::Error::from_raw_os_error(nix::libc::EACCES);
        assert_eq!(
            OutOfSpace::classify(dir.path(), denied, 0)
                .unwrap_err()
                .raw_os_error(),
            Some(nix::libc::EACCES)
        );
    }

    #[test]
    fn eio_is_full_only_when_the_file_system_has_no_room() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(
            free > 8 * SHORT_WRITE_SLACK,
            "the test needs a file system with room"
        );
        let eio = || std::io::Error::from_raw_os_error(nix::libc::EIO);
        // A file system with room: a real I/O error.
        assert!(OutOfSpace::classify(dir.path(), eio(), 0).is_err());
        // A batch bigger than a quarter of what is free: a short write.
        let big = usize::try_from(free / 4 + 1).unwrap();
        let short = OutOfSpace::classify(dir.path(), eio(), big).unwrap();
        assert!(
            short
                .to_string()
                .contains(" bytes free (a short write: LMDB reports it as EIO)"),
            "{short}"
        );
    }

    #[test]
    fn the_warning_follows_the_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let never = DiskSpace::new(dir.path().to_owned(), 0).check();
        assert_eq!(never.warning, None);
        let always = DiskSpace::new(dir.path().to_owned(), u64::MAX).check();
        let warning = always.warning.unwrap();
        assert!(warning.starts_with("low disk space: "), "{warning}");
        assert!(
            warning.contains(&format!("disk_warn_below_bytes = {}", u64::MAX)),
            "{warning}"
        );
    }
}
