//! The hooks of the TPM's socket: which socket is the TPM's (`connect`),
//! and the commands sent on it.

use std::ffi::c_void;

use libc::{c_int, msghdr, size_t, ssize_t};

use super::{buffers, command_code, missing};
use crate::real;
use crate::recorder::{errno, recorder, set_errno, Tracked};

#[no_mangle]
pub unsafe extern "C" fn connect(
    fd: c_int,
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
) -> c_int {
    let Some(rec) = recorder() else {
        return call!(real::connect(), -1, fd, addr, len);
    };
    // SAFETY: the caller's `len` bytes at `addr`.
    if !unsafe { rec.is_tpm(addr, len) } {
        return call!(real::connect(), -1, fd, addr, len);
    }
    let mut fds = rec.lock();
    let got = call!(real::connect(), -1, fd, addr, len);
    if got == 0 || errno() == libc::EINPROGRESS {
        fds.insert(fd, Tracked::Tpm);
    }
    got
}

/// Records a send on the TPM's socket.
fn sent(fd: c_int, bufs: &[(*const u8, usize)], op: impl FnOnce() -> ssize_t) -> ssize_t {
    let Some(rec) = recorder() else {
        return op();
    };
    let fds = rec.lock();
    if !matches!(fds.get(&fd), Some(Tracked::Tpm)) {
        drop(fds);
        return op();
    }
    let wrote = op();
    if wrote > 0 {
        let saved = errno();
        rec.line("tpm", &format!("{wrote} {}", command_code(bufs)));
        set_errno(saved);
    }
    wrote
}

#[no_mangle]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t {
    sent(fd, &[(buf.cast(), len)], || {
        call!(real::send(), -1, fd, buf, len, flags)
    })
}

#[no_mangle]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    addr: *const libc::sockaddr,
    addr_len: libc::socklen_t,
) -> ssize_t {
    sent(fd, &[(buf.cast(), len)], || {
        call!(real::sendto(), -1, fd, buf, len, flags, addr, addr_len)
    })
}

#[no_mangle]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    let bufs = if msg.is_null() {
        Vec::new()
    } else {
        // SAFETY: the caller's message header.
        let msg = unsafe { &*msg };
        unsafe { buffers(msg.msg_iov, msg.msg_iovlen as c_int) }
    };
    sent(fd, &bufs, || call!(real::sendmsg(), -1, fd, msg, flags))
}
