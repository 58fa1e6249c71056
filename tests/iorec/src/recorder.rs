//! The recorder: what is watched, the descriptors open under it, the log.

use std::collections::HashMap;
use std::ffi::{c_void, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Mutex, MutexGuard, OnceLock};

use libc::{c_char, c_int};

use crate::real;

/// What a tracked descriptor refers to.
#[derive(Debug, Clone)]
pub(crate) enum Tracked {
    /// A file or directory under the watched directory.
    File {
        /// Relative to the watched directory (`.` for itself).
        path: Vec<u8>,
        /// Opened `O_DSYNC` or `O_SYNC`: each write is durable on return.
        sync: bool,
        /// Opened `O_APPEND`: each write goes to the end of the file.
        append: bool,
    },
    /// A socket connected to the TPM's (`TALLY_IOREC_TPM`).
    Tpm,
}

#[derive(Debug)]
pub(crate) struct Recorder {
    /// The watched directory, canonical, without a trailing slash.
    dir: Vec<u8>,
    /// The TPM's socket path, if TPM commands are recorded.
    tpm: Option<Vec<u8>>,
    /// The op log (opened outside the watched directory).
    log: c_int,
    /// Descriptors open under the directory (or on the TPM). The mutex is
    /// also held across each recorded operation and its log record.
    fds: Mutex<HashMap<c_int, Tracked>>,
}

static RECORDER: OnceLock<Option<Recorder>> = OnceLock::new();

/// The recorder, or `None` when the environment does not ask for one.
pub(crate) fn recorder() -> Option<&'static Recorder> {
    RECORDER.get_or_init(Recorder::from_env).as_ref()
}

/// The calling thread's `errno`.
pub(crate) fn errno() -> c_int {
    // SAFETY: glibc's errno location is valid for the calling thread.
    unsafe { *libc::__errno_location() }
}

pub(crate) fn set_errno(value: c_int) {
    // SAFETY: as for `errno`.
    unsafe { *libc::__errno_location() = value }
}

/// CLOCK_MONOTONIC in nanoseconds (what `Instant` reads on Linux).
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// `realpath(3)` of `path`, if it exists.
fn canonical(path: &[u8]) -> Option<Vec<u8>> {
    let mut path = path.to_vec();
    path.push(0);
    let mut out = [0 as c_char; libc::PATH_MAX as usize + 1];
    // SAFETY: `path` is NUL-terminated and `out` holds PATH_MAX + 1 bytes.
    let got = unsafe { libc::realpath(path.as_ptr().cast(), out.as_mut_ptr()) };
    if got.is_null() {
        return None;
    }
    // SAFETY: realpath wrote a NUL-terminated string into `out`.
    Some(unsafe { CStr::from_ptr(out.as_ptr()) }.to_bytes().to_vec())
}

/// `path` with `.`, `..` and repeated slashes resolved lexically.
fn normalise(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|&byte| byte == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    let mut out = Vec::with_capacity(path.len() + 1);
    for part in parts {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

/// The target of `/proc/self/fd/<fd>` (what `fd` was opened as).
fn fd_path(fd: c_int) -> Option<Vec<u8>> {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .ok()
        .map(|path| path.as_os_str().as_bytes().to_vec())
}

impl Recorder {
    fn from_env() -> Option<Recorder> {
        let dir = std::env::var_os("TALLY_IOREC_DIR")?;
        let log = std::env::var_os("TALLY_IOREC_LOG")?;
        let dir = canonical(dir.as_bytes())?;
        let mut log_path = log.as_bytes().to_vec();
        log_path.push(0);
        let open = real::open()?;
        // SAFETY: a NUL-terminated path; the mode argument is passed because
        // of O_CREAT.
        let log = unsafe {
            open(
                log_path.as_ptr().cast(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if log < 0 {
            return None;
        }
        let tpm = std::env::var_os("TALLY_IOREC_TPM").map(|path| path.as_bytes().to_vec());
        let recorder = Recorder {
            dir,
            tpm,
            log,
            fds: Mutex::new(HashMap::new()),
        };
        recorder.emit(
            format!("start {} {}\n", now_ns(), std::process::id()).as_bytes(),
            &[],
        );
        Some(recorder)
    }

    /// The descriptor table, held across an operation and its record.
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<c_int, Tracked>> {
        self.fds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `abs`, relative to the watched directory, if it is under it.
    fn relative(&self, abs: &[u8]) -> Option<Vec<u8>> {
        let rest = abs.strip_prefix(self.dir.as_slice())?;
        match rest {
            [] | [b'/'] => Some(b".".to_vec()),
            [b'/', rest @ ..] => Some(rest.to_vec()),
            _ => None,
        }
    }

    /// Where `path` (relative to `dirfd`) is, relative to the watched
    /// directory, if it is under it. The parent directory is canonicalised
    /// when it exists (symbolic links in it are followed); the last component
    /// is taken as it is, as the operations on it do (none follows a link
    /// there in tallyd).
    ///
    /// # Safety
    /// `path` is null or a NUL-terminated string.
    pub(crate) unsafe fn inside(&self, dirfd: c_int, path: *const c_char) -> Option<Vec<u8>> {
        if path.is_null() {
            return None;
        }
        // SAFETY: the caller's contract.
        let path = unsafe { CStr::from_ptr(path) }.to_bytes();
        let joined = if path.first() == Some(&b'/') {
            path.to_vec()
        } else {
            let mut base = if dirfd == libc::AT_FDCWD {
                std::env::current_dir()
                    .ok()?
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            } else {
                fd_path(dirfd)?
            };
            base.push(b'/');
            base.extend_from_slice(path);
            base
        };
        let lexical = normalise(&joined);
        let split = lexical.iter().rposition(|&byte| byte == b'/')?;
        let (parent, name) = lexical.split_at(split);
        let resolved = match canonical(if parent.is_empty() { b"/" } else { parent }) {
            Some(mut parent) => {
                parent.extend_from_slice(name);
                normalise(&parent)
            }
            None => lexical.clone(),
        };
        self.relative(&resolved)
    }

    /// True when `addr` is the TPM's Unix socket.
    ///
    /// # Safety
    /// `addr` is null or points to `len` readable bytes.
    pub(crate) unsafe fn is_tpm(&self, addr: *const libc::sockaddr, len: libc::socklen_t) -> bool {
        let Some(tpm) = self.tpm.as_deref() else {
            return false;
        };
        if addr.is_null() || (len as usize) < std::mem::size_of::<libc::sa_family_t>() {
            return false;
        }
        // SAFETY: the caller's contract; sockaddr_un is the largest we read,
        // and only `len` bytes of it.
        let family = unsafe { (*addr).sa_family };
        if c_int::from(family) != libc::AF_UNIX {
            return false;
        }
        let offset = std::mem::size_of::<libc::sa_family_t>();
        let bytes = unsafe { std::slice::from_raw_parts(addr.cast::<u8>(), len as usize) };
        let path = bytes.get(offset..).unwrap_or_default();
        let path = path.split(|&byte| byte == 0).next().unwrap_or_default();
        path == tpm
    }

    /// Appends `header` then each of `data` to the log (the caller holds the
    /// lock, or is starting up).
    pub(crate) fn emit(&self, header: &[u8], data: &[&[u8]]) {
        let Some(write) = real::write() else {
            return;
        };
        let saved = errno();
        for chunk in std::iter::once(header).chain(data.iter().copied()) {
            let mut rest = chunk;
            while !rest.is_empty() {
                // SAFETY: `rest` is a valid buffer of its length.
                let wrote = unsafe { write(self.log, rest.as_ptr().cast::<c_void>(), rest.len()) };
                if wrote <= 0 {
                    if wrote < 0 && errno() == libc::EINTR {
                        continue;
                    }
                    set_errno(saved);
                    return;
                }
                rest = rest.get(wrote as usize..).unwrap_or_default();
            }
        }
        set_errno(saved);
    }

    /// Emits one text record: `<kind> <now> <fields>\n`.
    pub(crate) fn line(&self, kind: &str, fields: &str) {
        self.emit(format!("{kind} {} {fields}\n", now_ns()).as_bytes(), &[]);
    }
}

/// A relative path as text for the log (tallyd's paths are ASCII; any other
/// byte makes the path `?` and the explorer refuses it).
pub(crate) fn show(path: &[u8]) -> String {
    let text = OsStr::from_bytes(path).to_string_lossy();
    if text
        .bytes()
        .all(|byte| byte.is_ascii_graphic() && byte != b'?')
    {
        text.into_owned()
    } else {
        "?".into()
    }
}
