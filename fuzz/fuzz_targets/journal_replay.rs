//! The ack journal's frame parser, region scan and replay
//! (`Journal::recover`) on journals written by the real `Journal::append`
//! and then damaged, against a model of the acked records; or on raw bytes.
//! See `tally_fuzz::journal` for the script and what must hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // tmpfs: every iteration writes a 16 MiB journal and an LMDB store.
    let dir = tempfile::Builder::new()
        .prefix("tally-fuzz-journal-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("a temporary directory");
    tally_fuzz::journal::run(data, dir.path());
});
