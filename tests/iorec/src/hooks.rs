//! The hooks: libc's file-system entry points, each calling the real one and
//! recording it when it touched the watched directory (or the TPM's socket).
//!
//! `open`, `openat` and `fcntl` are variadic in C; Rust cannot define a
//! variadic function, so these take their optional argument as a named one.
//! On the System V ABIs of x86-64 and AArch64 Linux a variadic integer
//! argument travels in the same register as a named one, and the argument is
//! passed on to the real function only as its caller gave it (the real one
//! reads it only when the flags say it was given).

use std::ffi::c_void;

use libc::{c_char, c_int, c_uint, c_ulong, iovec, mode_t, off64_t, off_t, size_t, ssize_t};

use crate::real;
use crate::recorder::{errno, recorder, set_errno, show, Tracked};

/// Sets `errno` to ENOSYS and returns `fail`: libc has no such function.
fn missing<T>(fail: T) -> T {
    set_errno(libc::ENOSYS);
    fail
}

/// Calls `$real` (an `Option` of the real function) with the arguments, or
/// fails with ENOSYS.
macro_rules! call {
    ($real:expr, $fail:expr, $($arg:expr),*) => {
        match $real {
            Some(real) => {
                // SAFETY: the hook's caller gave these arguments under the
                // real function's contract. (Some callers are in unsafe
                // blocks already.)
                #[allow(unused_unsafe)]
                let got = unsafe { real($($arg),*) };
                got
            }
            None => missing($fail),
        }
    };
}

// ---------------------------------------------------------------- opening

/// Runs the open `op` of `path` (relative to `dirfd`) and tracks the new
/// descriptor when the path is under the watched directory.
unsafe fn opened(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    op: impl FnOnce() -> c_int,
) -> c_int {
    let Some(rec) = recorder() else {
        return op();
    };
    // SAFETY: `path` is the caller's NUL-terminated path.
    let Some(rel) = (unsafe { rec.inside(dirfd, path) }) else {
        return op();
    };
    let mut fds = rec.lock();
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `path` as above; `stat` is writable.
    let existed = unsafe { libc::fstatat(dirfd, path, stat.as_mut_ptr(), 0) } == 0;
    let fd = op();
    if fd < 0 {
        return fd;
    }
    let saved = errno();
    let writes = flags & libc::O_ACCMODE != libc::O_RDONLY;
    fds.insert(
        fd,
        Tracked::File {
            path: rel.clone(),
            sync: flags & libc::O_DSYNC == libc::O_DSYNC,
            append: flags & libc::O_APPEND != 0,
        },
    );
    if flags & libc::O_TMPFILE == libc::O_TMPFILE {
        rec.line("unsupported", &format!("O_TMPFILE {}", show(&rel)));
    }
    let created = !existed;
    let truncated = existed && writes && flags & libc::O_TRUNC != 0;
    rec.line(
        "open",
        &format!(
            "{flags:#x} {} {} {}",
            u8::from(created),
            u8::from(truncated),
            show(&rel)
        ),
    );
    set_errno(saved);
    fd
}

#[no_mangle]
pub unsafe extern "C" fn open(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    unsafe {
        opened(libc::AT_FDCWD, path, flags, || {
            call!(real::open(), -1, path, flags, mode)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn open64(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    unsafe {
        opened(libc::AT_FDCWD, path, flags, || {
            call!(real::open64(), -1, path, flags, mode)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn __open_2(path: *const c_char, flags: c_int) -> c_int {
    unsafe {
        opened(libc::AT_FDCWD, path, flags, || {
            call!(real::__open_2(), -1, path, flags)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn __open64_2(path: *const c_char, flags: c_int) -> c_int {
    unsafe {
        opened(libc::AT_FDCWD, path, flags, || {
            call!(real::__open64_2(), -1, path, flags)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn openat(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: c_uint,
) -> c_int {
    unsafe {
        opened(dirfd, path, flags, || {
            call!(real::openat(), -1, dirfd, path, flags, mode)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn openat64(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: c_uint,
) -> c_int {
    unsafe {
        opened(dirfd, path, flags, || {
            call!(real::openat64(), -1, dirfd, path, flags, mode)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    unsafe {
        opened(dirfd, path, flags, || {
            call!(real::__openat_2(), -1, dirfd, path, flags)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    unsafe {
        opened(dirfd, path, flags, || {
            call!(real::__openat64_2(), -1, dirfd, path, flags)
        })
    }
}

const CREAT: c_int = libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC;

#[no_mangle]
pub unsafe extern "C" fn creat(path: *const c_char, mode: mode_t) -> c_int {
    unsafe {
        opened(libc::AT_FDCWD, path, CREAT, || {
            call!(real::creat(), -1, path, mode)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn creat64(path: *const c_char, mode: mode_t) -> c_int {
    unsafe {
        opened(libc::AT_FDCWD, path, CREAT, || {
            call!(real::creat64(), -1, path, mode)
        })
    }
}

// ------------------------------------------------- descriptors: close, dup

#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    let Some(rec) = recorder() else {
        return call!(real::close(), -1, fd);
    };
    let mut fds = rec.lock();
    // Linux releases the descriptor even when close fails.
    fds.remove(&fd);
    call!(real::close(), -1, fd)
}

/// Runs the dup `op` of `old` (onto `new`, if given) and carries the tracking over.
fn duped(old: c_int, new: Option<c_int>, op: impl FnOnce() -> c_int) -> c_int {
    let Some(rec) = recorder() else {
        return op();
    };
    let mut fds = rec.lock();
    let got = op();
    if got >= 0 && Some(old) != new {
        match fds.get(&old).cloned() {
            Some(tracked) => {
                fds.insert(got, tracked);
            }
            None => {
                fds.remove(&got);
            }
        }
    }
    got
}

#[no_mangle]
pub unsafe extern "C" fn dup(old: c_int) -> c_int {
    duped(old, None, || call!(real::dup(), -1, old))
}

#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    duped(old, Some(new), || call!(real::dup2(), -1, old, new))
}

#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    duped(old, Some(new), || call!(real::dup3(), -1, old, new, flags))
}

#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
        return duped(fd, None, || call!(real::fcntl(), -1, fd, cmd, arg));
    }
    call!(real::fcntl(), -1, fd, cmd, arg)
}

#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
        return duped(fd, None, || call!(real::fcntl64(), -1, fd, cmd, arg));
    }
    call!(real::fcntl64(), -1, fd, cmd, arg)
}

// ---------------------------------------------------------------- writing

/// Where a write goes.
#[derive(Clone, Copy)]
enum At {
    /// The descriptor's offset (`write`, `writev`).
    Current,
    Offset(i64),
}

/// Runs the write `op` of `bufs` on `fd` and records the bytes it wrote.
/// `dsync`: this write alone was asked to be durable (`RWF_DSYNC`).
unsafe fn wrote(
    fd: c_int,
    at: At,
    dsync: bool,
    bufs: &[(*const u8, usize)],
    op: impl FnOnce() -> ssize_t,
) -> ssize_t {
    let Some(rec) = recorder() else {
        return op();
    };
    let fds = rec.lock();
    let Some(tracked) = fds.get(&fd).cloned() else {
        drop(fds);
        return op();
    };
    let (path, sync, append) = match tracked {
        Tracked::Tpm => {
            let wrote = op();
            if wrote > 0 {
                let saved = errno();
                rec.line("tpm", &format!("{wrote} {}", command_code(bufs)));
                set_errno(saved);
            }
            return wrote;
        }
        Tracked::File { path, sync, append } => (path, sync, append),
    };
    // SAFETY: plain queries of an open descriptor.
    let offset = if append {
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } == 0 {
            // SAFETY: fstat succeeded, so it filled `stat`.
            unsafe { stat.assume_init() }.st_size
        } else {
            -1
        }
    } else {
        match at {
            At::Current => unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) },
            At::Offset(offset) => offset,
        }
    };
    let wrote = op();
    if wrote <= 0 {
        return wrote;
    }
    let saved = errno();
    let mut left = wrote as usize;
    let mut data: Vec<&[u8]> = Vec::with_capacity(bufs.len());
    for &(ptr, len) in bufs {
        if left == 0 {
            break;
        }
        let take = len.min(left);
        // SAFETY: the caller's buffer holds `len` readable bytes.
        data.push(unsafe { std::slice::from_raw_parts(ptr, take) });
        left -= take;
    }
    let header = format!(
        "write {} {offset} {wrote} {} {}\n",
        crate::recorder::now_ns(),
        u8::from(sync || dsync),
        show(&path)
    );
    rec.emit(header.as_bytes(), &data);
    set_errno(saved);
    wrote
}

/// The TPM command code of a command's first write (tag, size, code), hex;
/// `-` when the write does not start a command.
pub(crate) fn command_code(bufs: &[(*const u8, usize)]) -> String {
    let Some(&(ptr, len)) = bufs.first() else {
        return "-".into();
    };
    if len < 10 || ptr.is_null() {
        return "-".into();
    }
    // SAFETY: the caller's buffer holds `len` >= 10 readable bytes.
    let head = unsafe { std::slice::from_raw_parts(ptr, 10) };
    match head {
        [0x80, 0x01 | 0x02, _, _, _, _, a, b, c, d] => {
            format!("{:08x}", u32::from_be_bytes([*a, *b, *c, *d]))
        }
        _ => "-".into(),
    }
}

/// The buffers of an iovec array.
///
/// # Safety
/// `iov` points to `count` iovecs (or `count` <= 0).
unsafe fn buffers(iov: *const iovec, count: c_int) -> Vec<(*const u8, usize)> {
    if iov.is_null() || count <= 0 {
        return Vec::new();
    }
    // SAFETY: the caller's contract.
    let iov = unsafe { std::slice::from_raw_parts(iov, count as usize) };
    iov.iter()
        .map(|v| (v.iov_base as *const u8, v.iov_len))
        .collect()
}

fn flags_dsync(flags: c_int) -> bool {
    flags & (libc::RWF_DSYNC | libc::RWF_SYNC) != 0
}

#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, len: size_t) -> ssize_t {
    unsafe {
        wrote(fd, At::Current, false, &[(buf.cast(), len)], || {
            call!(real::write(), -1, fd, buf, len)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn pwrite(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    offset: off_t,
) -> ssize_t {
    unsafe {
        wrote(fd, At::Offset(offset), false, &[(buf.cast(), len)], || {
            call!(real::pwrite(), -1, fd, buf, len, offset)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn pwrite64(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    offset: off64_t,
) -> ssize_t {
    unsafe {
        wrote(fd, At::Offset(offset), false, &[(buf.cast(), len)], || {
            call!(real::pwrite64(), -1, fd, buf, len, offset)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, count: c_int) -> ssize_t {
    let bufs = unsafe { buffers(iov, count) };
    unsafe {
        wrote(fd, At::Current, false, &bufs, || {
            call!(real::writev(), -1, fd, iov, count)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn pwritev(
    fd: c_int,
    iov: *const iovec,
    count: c_int,
    offset: off_t,
) -> ssize_t {
    let bufs = unsafe { buffers(iov, count) };
    unsafe {
        wrote(fd, At::Offset(offset), false, &bufs, || {
            call!(real::pwritev(), -1, fd, iov, count, offset)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn pwritev64(
    fd: c_int,
    iov: *const iovec,
    count: c_int,
    offset: off64_t,
) -> ssize_t {
    let bufs = unsafe { buffers(iov, count) };
    unsafe {
        wrote(fd, At::Offset(offset), false, &bufs, || {
            call!(real::pwritev64(), -1, fd, iov, count, offset)
        })
    }
}

/// `pwritev2`: an offset of -1 means the descriptor's offset.
fn at_v2(offset: i64) -> At {
    if offset == -1 {
        At::Current
    } else {
        At::Offset(offset)
    }
}

#[no_mangle]
pub unsafe extern "C" fn pwritev2(
    fd: c_int,
    iov: *const iovec,
    count: c_int,
    offset: off_t,
    flags: c_int,
) -> ssize_t {
    let bufs = unsafe { buffers(iov, count) };
    unsafe {
        wrote(fd, at_v2(offset), flags_dsync(flags), &bufs, || {
            call!(real::pwritev2(), -1, fd, iov, count, offset, flags)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn pwritev64v2(
    fd: c_int,
    iov: *const iovec,
    count: c_int,
    offset: off64_t,
    flags: c_int,
) -> ssize_t {
    let bufs = unsafe { buffers(iov, count) };
    unsafe {
        wrote(fd, at_v2(offset), flags_dsync(flags), &bufs, || {
            call!(real::pwritev64v2(), -1, fd, iov, count, offset, flags)
        })
    }
}

mod meta;
mod socket;
