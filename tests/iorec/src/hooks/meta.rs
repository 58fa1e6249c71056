//! The hooks of operations without data: sizes, flushes, names, mappings.

use std::ffi::c_void;

use libc::{c_char, c_int, c_uint, mode_t, off64_t, off_t, size_t, ssize_t};

use super::missing;
use crate::real;
use crate::recorder::{errno, recorder, set_errno, show, Tracked};

/// Runs `op` on the tracked file `fd` and records `kind fields path` when it
/// returns `ok`.
fn on_fd<T: Copy>(
    fd: c_int,
    kind: &str,
    fields: &str,
    ok: impl Fn(T) -> bool,
    op: impl FnOnce() -> T,
) -> T {
    let Some(rec) = recorder() else {
        return op();
    };
    let fds = rec.lock();
    let Some(Tracked::File { path, .. }) = fds.get(&fd).cloned() else {
        drop(fds);
        return op();
    };
    let got = op();
    if ok(got) {
        let saved = errno();
        let sep = if fields.is_empty() { "" } else { " " };
        rec.line(kind, &format!("{fields}{sep}{}", show(&path)));
        set_errno(saved);
    }
    got
}

fn zero(rc: c_int) -> bool {
    rc == 0
}

/// Runs `op` on `path` (relative to `dirfd`) and records `kind path` when it
/// succeeds and `path` is under the watched directory.
unsafe fn on_path(
    dirfd: c_int,
    path: *const c_char,
    kind: &str,
    fields: &str,
    op: impl FnOnce() -> c_int,
) -> c_int {
    let Some(rec) = recorder() else {
        return op();
    };
    // SAFETY: the caller's NUL-terminated path.
    let Some(rel) = (unsafe { rec.inside(dirfd, path) }) else {
        return op();
    };
    let _fds = rec.lock();
    let got = op();
    if got == 0 {
        let saved = errno();
        let sep = if fields.is_empty() { "" } else { " " };
        rec.line(kind, &format!("{fields}{sep}{}", show(&rel)));
        set_errno(saved);
    }
    got
}

#[no_mangle]
pub unsafe extern "C" fn ftruncate(fd: c_int, len: off_t) -> c_int {
    on_fd(fd, "trunc", &len.to_string(), zero, || {
        call!(real::ftruncate(), -1, fd, len)
    })
}

#[no_mangle]
pub unsafe extern "C" fn ftruncate64(fd: c_int, len: off64_t) -> c_int {
    on_fd(fd, "trunc", &len.to_string(), zero, || {
        call!(real::ftruncate64(), -1, fd, len)
    })
}

#[no_mangle]
pub unsafe extern "C" fn truncate(path: *const c_char, len: off_t) -> c_int {
    unsafe {
        on_path(libc::AT_FDCWD, path, "trunc", &len.to_string(), || {
            call!(real::truncate(), -1, path, len)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn truncate64(path: *const c_char, len: off64_t) -> c_int {
    unsafe {
        on_path(libc::AT_FDCWD, path, "trunc", &len.to_string(), || {
            call!(real::truncate64(), -1, path, len)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn fallocate(fd: c_int, mode: c_int, offset: off_t, len: off_t) -> c_int {
    let fields = format!("{mode} {offset} {len}");
    on_fd(fd, "falloc", &fields, zero, || {
        call!(real::fallocate(), -1, fd, mode, offset, len)
    })
}

#[no_mangle]
pub unsafe extern "C" fn fallocate64(
    fd: c_int,
    mode: c_int,
    offset: off64_t,
    len: off64_t,
) -> c_int {
    let fields = format!("{mode} {offset} {len}");
    on_fd(fd, "falloc", &fields, zero, || {
        call!(real::fallocate64(), -1, fd, mode, offset, len)
    })
}

// posix_fallocate returns the error number instead of setting errno.
#[no_mangle]
pub unsafe extern "C" fn posix_fallocate(fd: c_int, offset: off_t, len: off_t) -> c_int {
    let fields = format!("0 {offset} {len}");
    on_fd(fd, "falloc", &fields, zero, || {
        call!(real::posix_fallocate(), libc::ENOSYS, fd, offset, len)
    })
}

#[no_mangle]
pub unsafe extern "C" fn posix_fallocate64(fd: c_int, offset: off64_t, len: off64_t) -> c_int {
    let fields = format!("0 {offset} {len}");
    on_fd(fd, "falloc", &fields, zero, || {
        call!(real::posix_fallocate64(), libc::ENOSYS, fd, offset, len)
    })
}

#[no_mangle]
pub unsafe extern "C" fn fsync(fd: c_int) -> c_int {
    on_fd(fd, "fsync", "", zero, || call!(real::fsync(), -1, fd))
}

#[no_mangle]
pub unsafe extern "C" fn fdatasync(fd: c_int) -> c_int {
    on_fd(fd, "fdatasync", "", zero, || {
        call!(real::fdatasync(), -1, fd)
    })
}

#[no_mangle]
pub unsafe extern "C" fn sync_file_range(
    fd: c_int,
    offset: off64_t,
    len: off64_t,
    flags: c_uint,
) -> c_int {
    let fields = format!("{offset} {len} {flags}");
    on_fd(fd, "sfr", &fields, zero, || {
        call!(real::sync_file_range(), -1, fd, offset, len, flags)
    })
}

#[no_mangle]
pub unsafe extern "C" fn syncfs(fd: c_int) -> c_int {
    on_fd(fd, "syncfs", "", zero, || call!(real::syncfs(), -1, fd))
}

#[no_mangle]
pub unsafe extern "C" fn sync() {
    let Some(rec) = recorder() else {
        if let Some(real) = real::sync() {
            // SAFETY: sync takes no arguments.
            unsafe { real() };
        }
        return;
    };
    let _fds = rec.lock();
    if let Some(real) = real::sync() {
        // SAFETY: as above.
        unsafe { real() };
        rec.line("sync", "-");
    }
}

// ---------------------------------------------------------------- names

/// Runs the rename `op` and records it: `rename from to` when both names are
/// under the watched directory, `unsupported` when only one is.
unsafe fn renamed(
    from_dir: c_int,
    from: *const c_char,
    to_dir: c_int,
    to: *const c_char,
    flags: c_uint,
    op: impl FnOnce() -> c_int,
) -> c_int {
    let Some(rec) = recorder() else {
        return op();
    };
    // SAFETY: the caller's NUL-terminated paths.
    let (old, new) = unsafe { (rec.inside(from_dir, from), rec.inside(to_dir, to)) };
    if old.is_none() && new.is_none() {
        return op();
    }
    let _fds = rec.lock();
    let got = op();
    if got == 0 {
        let saved = errno();
        match (old, new) {
            (Some(old), Some(new)) if flags & libc::RENAME_EXCHANGE == 0 => {
                rec.line("rename", &format!("{} {}", show(&old), show(&new)));
            }
            (old, new) => {
                let name = old.or(new).unwrap_or_default();
                rec.line(
                    "unsupported",
                    &format!("rename-across-or-exchange {}", show(&name)),
                );
            }
        }
        set_errno(saved);
    }
    got
}

#[no_mangle]
pub unsafe extern "C" fn rename(from: *const c_char, to: *const c_char) -> c_int {
    unsafe {
        renamed(libc::AT_FDCWD, from, libc::AT_FDCWD, to, 0, || {
            call!(real::rename(), -1, from, to)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn renameat(
    from_dir: c_int,
    from: *const c_char,
    to_dir: c_int,
    to: *const c_char,
) -> c_int {
    unsafe {
        renamed(from_dir, from, to_dir, to, 0, || {
            call!(real::renameat(), -1, from_dir, from, to_dir, to)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn renameat2(
    from_dir: c_int,
    from: *const c_char,
    to_dir: c_int,
    to: *const c_char,
    flags: c_uint,
) -> c_int {
    unsafe {
        renamed(from_dir, from, to_dir, to, flags, || {
            call!(real::renameat2(), -1, from_dir, from, to_dir, to, flags)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn unlink(path: *const c_char) -> c_int {
    unsafe {
        on_path(libc::AT_FDCWD, path, "unlink", "", || {
            call!(real::unlink(), -1, path)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn unlinkat(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    let kind = if flags & libc::AT_REMOVEDIR != 0 {
        "rmdir"
    } else {
        "unlink"
    };
    unsafe {
        on_path(dirfd, path, kind, "", || {
            call!(real::unlinkat(), -1, dirfd, path, flags)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn rmdir(path: *const c_char) -> c_int {
    unsafe {
        on_path(libc::AT_FDCWD, path, "rmdir", "", || {
            call!(real::rmdir(), -1, path)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn mkdir(path: *const c_char, mode: mode_t) -> c_int {
    unsafe {
        on_path(libc::AT_FDCWD, path, "mkdir", "", || {
            call!(real::mkdir(), -1, path, mode)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn mkdirat(dirfd: c_int, path: *const c_char, mode: mode_t) -> c_int {
    unsafe {
        on_path(dirfd, path, "mkdir", "", || {
            call!(real::mkdirat(), -1, dirfd, path, mode)
        })
    }
}

// ------------------------------------------- what the model does not cover

/// A shared writable mapping of a tracked file: its writes would be
/// invisible here, so it is recorded for the explorer to judge.
fn mapped(fd: c_int, prot: c_int, flags: c_int, op: impl FnOnce() -> *mut c_void) -> *mut c_void {
    if flags & libc::MAP_SHARED == 0 || prot & libc::PROT_WRITE == 0 {
        return op();
    }
    on_fd(
        fd,
        "mmapw",
        "",
        |got: *mut c_void| got != libc::MAP_FAILED,
        op,
    )
}

#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: off_t,
) -> *mut c_void {
    mapped(fd, prot, flags, || {
        call!(
            real::mmap(),
            libc::MAP_FAILED,
            addr,
            len,
            prot,
            flags,
            fd,
            offset
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: off64_t,
) -> *mut c_void {
    mapped(fd, prot, flags, || {
        call!(
            real::mmap64(),
            libc::MAP_FAILED,
            addr,
            len,
            prot,
            flags,
            fd,
            offset
        )
    })
}

fn positive(got: ssize_t) -> bool {
    got >= 0
}

#[no_mangle]
pub unsafe extern "C" fn copy_file_range(
    fd_in: c_int,
    off_in: *mut off64_t,
    fd_out: c_int,
    off_out: *mut off64_t,
    len: size_t,
    flags: c_uint,
) -> ssize_t {
    on_fd(fd_out, "unsupported", "copy_file_range", positive, || {
        call!(
            real::copy_file_range(),
            -1,
            fd_in,
            off_in,
            fd_out,
            off_out,
            len,
            flags
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn sendfile(
    fd_out: c_int,
    fd_in: c_int,
    offset: *mut off_t,
    len: size_t,
) -> ssize_t {
    on_fd(fd_out, "unsupported", "sendfile", positive, || {
        call!(real::sendfile(), -1, fd_out, fd_in, offset, len)
    })
}

#[no_mangle]
pub unsafe extern "C" fn sendfile64(
    fd_out: c_int,
    fd_in: c_int,
    offset: *mut off64_t,
    len: size_t,
) -> ssize_t {
    on_fd(fd_out, "unsupported", "sendfile", positive, || {
        call!(real::sendfile64(), -1, fd_out, fd_in, offset, len)
    })
}
