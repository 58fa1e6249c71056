//! `libtally_iorec.so`: an LD_PRELOAD recorder of every file-system operation
//! a process makes on one directory, the input of the crash-state explorer
//! (`tally_tests::crash_states`, docs/DESIGN.md section 11), as ALICE
//! (OSDI 2014) records an application's system calls.
//!
//! With `TALLY_IOREC_DIR` (the directory to watch) and `TALLY_IOREC_LOG` (the
//! op log to write, outside that directory) set, each hook below calls the
//! real libc function (found with `dlsym(RTLD_NEXT, ...)`) and, once it has
//! returned successfully on a path or descriptor under the directory, appends
//! one record to the log. One mutex is held across the operation and its log
//! append, so the log's order is the order in which the operations completed;
//! each record carries the CLOCK_MONOTONIC time at which it completed, which a
//! client on the same machine can compare with the time it received an ack.
//! Without the two variables every hook is a plain pass-through.
//!
//! With `TALLY_IOREC_TPM` set to a Unix socket path (swtpm's), writes on
//! sockets connected to it are recorded too (`tpm` records with the TPM
//! command code), so the explorer can order TPM commands against the store's
//! flushes.
//!
//! What it cannot see, and the explorer relies on the code not doing (checked
//! with `strace -f` on tallyd, docs/DESIGN.md section 11): raw `syscall(2)`
//! calls and io_uring, glibc-internal calls (stdio), and changes through a
//! shared writable mapping, which it records as `mmapw` for the explorer to
//! refuse (LMDB's `lock.mdb` reader table is the one it accepts). Operations it
//! does not model (`copy_file_range`, `sendfile`, `O_TMPFILE`, a rename across
//! the directory's edge) are recorded as `unsupported`, which the explorer
//! also refuses.
//!
//! The log is text headers, one line per operation, the bytes of a write
//! after its header (the grammar is in `tally_tests::crash_states::oplog`).
//!
//! Nothing here may panic (a panic cannot cross the C ABI): no unwrap, no
//! indexing; a poisoned mutex is taken over; errors of the recorder itself are
//! ignored (a missing record makes the explorer's model fail loudly later,
//! never silently: the op log ends with the records it has).

// Every exported function has exactly the safety contract of the libc
// function of the same name, which it calls.
#![allow(clippy::missing_safety_doc)]

mod hooks;
mod real;
mod recorder;
