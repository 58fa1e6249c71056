//! The data directory and its exclusive lock.
//!
//! Layout: `<data_dir>/tallyd.lock` (held with `flock` for the daemon's
//! lifetime, so a second daemon on the same directory is refused) and
//! `<data_dir>/store/` (the LMDB environment).

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An exclusive lock on a data directory, released when dropped (or when the
/// process dies, however it dies).
#[derive(Debug)]
pub struct DataDirLock {
    /// Kept open: closing the file releases the lock.
    _file: File,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    #[error("cannot create data directory {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open lock file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data directory {dir} is in use by another tallyd (lock held on {lock}{holder})")]
    InUse {
        dir: PathBuf,
        lock: PathBuf,
        holder: String,
    },
}

impl DataDirLock {
    /// Creates `dir` if needed (mode 0700) and takes its lock, without waiting.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, DataDirError> {
        create(dir)?;
        let path = dir.join("tallyd.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| DataDirError::Open {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&path)
                    .ok()
                    .map(|pid| pid.trim().to_owned())
                    .filter(|pid| !pid.is_empty())
                    .map(|pid| format!(", pid {pid}"))
                    .unwrap_or_default();
                return Err(DataDirError::InUse {
                    dir: dir.to_owned(),
                    lock: path,
                    holder,
                });
            }
            Err(TryLockError::Error(source)) => return Err(DataDirError::Open { path, source }),
        }
        // Informational: who holds the lock. The lock itself is the flock.
        let _ = file.set_len(0);
        let _ = writeln!(file, "{}", std::process::id());
        Ok(DataDirLock { _file: file, path })
    }

    /// Path of the lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates the data directory (and any missing parents) with mode 0700 if it
/// does not exist; an existing directory keeps its mode (an operator may have
/// chosen another). Every path that may be first to touch the data directory
/// (`tallyd provision`, a start) comes through here, so it is never left at
/// the umask's 0755.
pub fn create(dir: &Path) -> Result<(), DataDirError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| DataDirError::Create {
            path: dir.to_owned(),
            source,
        })
}

/// Where the LMDB environment lives inside a data directory.
pub fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("store")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        match DataDirLock::acquire(dir.path()) {
            Err(DataDirError::InUse { holder, .. }) => {
                assert_eq!(holder, format!(", pid {}", std::process::id()))
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }

    /// Regression: `tallyd provision` run first left the data directory 0755.
    #[test]
    fn a_new_data_directory_and_its_parents_are_0700() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("var/lib/tally");
        create(&data).unwrap();
        for path in [data.as_path(), dir.path().join("var").as_path()] {
            let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", path.display());
        }
    }
}
