//! The real libc functions, found once with `dlsym(RTLD_NEXT, name)`.

use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, Ordering};

use libc::{c_char, c_int, c_uint, iovec, mode_t, msghdr, off64_t, off_t, size_t, ssize_t};

/// Resolves `name` (NUL-terminated) once; null if libc has no such symbol.
fn resolve(slot: &AtomicPtr<c_void>, name: &[u8]) -> *mut c_void {
    let found = slot.load(Ordering::Acquire);
    if !found.is_null() {
        return found;
    }
    // SAFETY: `name` is NUL-terminated (every caller passes a literal ending
    // in \0); RTLD_NEXT finds the next definition after this library's.
    let found = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast()) };
    slot.store(found, Ordering::Release);
    found
}

macro_rules! real {
    ($($name:ident: $ty:ty;)*) => {
        $(
            /// The next definition of this function (libc's), if any.
            pub(crate) fn $name() -> Option<$ty> {
                static SLOT: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
                let found = resolve(&SLOT, concat!(stringify!($name), "\0").as_bytes());
                if found.is_null() {
                    None
                } else {
                    // SAFETY: libc's symbol of this name has this signature.
                    Some(unsafe { std::mem::transmute::<*mut c_void, $ty>(found) })
                }
            }
        )*
    };
}

real! {
    open: unsafe extern "C" fn(*const c_char, c_int, ...) -> c_int;
    open64: unsafe extern "C" fn(*const c_char, c_int, ...) -> c_int;
    __open_2: unsafe extern "C" fn(*const c_char, c_int) -> c_int;
    __open64_2: unsafe extern "C" fn(*const c_char, c_int) -> c_int;
    openat: unsafe extern "C" fn(c_int, *const c_char, c_int, ...) -> c_int;
    openat64: unsafe extern "C" fn(c_int, *const c_char, c_int, ...) -> c_int;
    __openat_2: unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int;
    __openat64_2: unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int;
    creat: unsafe extern "C" fn(*const c_char, mode_t) -> c_int;
    creat64: unsafe extern "C" fn(*const c_char, mode_t) -> c_int;
    close: unsafe extern "C" fn(c_int) -> c_int;
    dup: unsafe extern "C" fn(c_int) -> c_int;
    dup2: unsafe extern "C" fn(c_int, c_int) -> c_int;
    dup3: unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;
    fcntl: unsafe extern "C" fn(c_int, c_int, ...) -> c_int;
    fcntl64: unsafe extern "C" fn(c_int, c_int, ...) -> c_int;
    write: unsafe extern "C" fn(c_int, *const c_void, size_t) -> ssize_t;
    pwrite: unsafe extern "C" fn(c_int, *const c_void, size_t, off_t) -> ssize_t;
    pwrite64: unsafe extern "C" fn(c_int, *const c_void, size_t, off64_t) -> ssize_t;
    writev: unsafe extern "C" fn(c_int, *const iovec, c_int) -> ssize_t;
    pwritev: unsafe extern "C" fn(c_int, *const iovec, c_int, off_t) -> ssize_t;
    pwritev64: unsafe extern "C" fn(c_int, *const iovec, c_int, off64_t) -> ssize_t;
    pwritev2: unsafe extern "C" fn(c_int, *const iovec, c_int, off_t, c_int) -> ssize_t;
    pwritev64v2: unsafe extern "C" fn(c_int, *const iovec, c_int, off64_t, c_int) -> ssize_t;
    send: unsafe extern "C" fn(c_int, *const c_void, size_t, c_int) -> ssize_t;
    sendto: unsafe extern "C" fn(c_int, *const c_void, size_t, c_int, *const libc::sockaddr, libc::socklen_t) -> ssize_t;
    sendmsg: unsafe extern "C" fn(c_int, *const msghdr, c_int) -> ssize_t;
    connect: unsafe extern "C" fn(c_int, *const libc::sockaddr, libc::socklen_t) -> c_int;
    ftruncate: unsafe extern "C" fn(c_int, off_t) -> c_int;
    ftruncate64: unsafe extern "C" fn(c_int, off64_t) -> c_int;
    truncate: unsafe extern "C" fn(*const c_char, off_t) -> c_int;
    truncate64: unsafe extern "C" fn(*const c_char, off64_t) -> c_int;
    fallocate: unsafe extern "C" fn(c_int, c_int, off_t, off_t) -> c_int;
    fallocate64: unsafe extern "C" fn(c_int, c_int, off64_t, off64_t) -> c_int;
    posix_fallocate: unsafe extern "C" fn(c_int, off_t, off_t) -> c_int;
    posix_fallocate64: unsafe extern "C" fn(c_int, off64_t, off64_t) -> c_int;
    fsync: unsafe extern "C" fn(c_int) -> c_int;
    fdatasync: unsafe extern "C" fn(c_int) -> c_int;
    sync_file_range: unsafe extern "C" fn(c_int, off64_t, off64_t, c_uint) -> c_int;
    syncfs: unsafe extern "C" fn(c_int) -> c_int;
    sync: unsafe extern "C" fn();
    rename: unsafe extern "C" fn(*const c_char, *const c_char) -> c_int;
    renameat: unsafe extern "C" fn(c_int, *const c_char, c_int, *const c_char) -> c_int;
    renameat2: unsafe extern "C" fn(c_int, *const c_char, c_int, *const c_char, c_uint) -> c_int;
    unlink: unsafe extern "C" fn(*const c_char) -> c_int;
    unlinkat: unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int;
    mkdir: unsafe extern "C" fn(*const c_char, mode_t) -> c_int;
    mkdirat: unsafe extern "C" fn(c_int, *const c_char, mode_t) -> c_int;
    rmdir: unsafe extern "C" fn(*const c_char) -> c_int;
    mmap: unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, off_t) -> *mut c_void;
    mmap64: unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, off64_t) -> *mut c_void;
    copy_file_range: unsafe extern "C" fn(c_int, *mut off64_t, c_int, *mut off64_t, size_t, c_uint) -> ssize_t;
    sendfile: unsafe extern "C" fn(c_int, c_int, *mut off_t, size_t) -> ssize_t;
    sendfile64: unsafe extern "C" fn(c_int, c_int, *mut off64_t, size_t) -> ssize_t;
}
