//! The scenarios: each starts a real tallyd (see [`crate::daemon`]) on a
//! temporary directory and measures one thing through the client library.

pub mod anchoring;
pub mod check;
pub mod erase;
pub mod followers;
pub mod growth;
pub mod latency;
pub mod lone;
pub mod many_clients;
pub mod memory;
pub mod throughput;
pub mod time_seek;
pub mod verify;
pub mod verify_anchors;
pub mod verify_trusted;

use std::path::Path;

/// A temporary directory for one scenario's daemon, on the work directory's
/// file system (the baselines write to the same one).
pub fn temp_dir(work_dir: &Path, name: &str) -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("tally-bench-{name}-"))
        .tempdir_in(work_dir)?)
}
