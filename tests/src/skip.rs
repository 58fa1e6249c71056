//! Skips that reach the suite's summary. libtest captures a passing test's
//! output, so a printed "SKIP" line alone never reaches the CI log, and the
//! test is counted as passed. [`skip`] prints the line (seen with
//! `--nocapture`) and appends `test<TAB>part<TAB>reason` to the file named by
//! `TALLY_SKIP_LOG`, which `swtpm-ci/test.sh` prints and counts as skipped.
//!
//! With `CI=true`, a skip of something CI installs or has ([`Needs::Ci`]:
//! swtpm, systemd's tools, root) fails the test instead: in CI such a skip
//! means the set-up is broken, not that the machine cannot do it.

// A skip that must not happen fails its test: by panicking, as assertions do.
#![allow(clippy::panic)]

use std::io::Write;

/// What the skipped test (or part of it) needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Something CI installs or has (a package, root): a skip fails under `CI=true`.
    Ci,
    /// Something CI's machine may lack and cannot install (a vsock loopback
    /// transport in the kernel), or a timing the machine did not give: counted,
    /// never failed.
    ThisMachine,
}

/// How much of the test is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The test returns right after this call.
    Whole,
    /// The test skips the named part and goes on, or has run the rest already.
    Only(&'static str),
}

/// Records a skip (see the module doc). Panics under `CI=true` for [`Needs::Ci`].
pub fn skip(needs: Needs, part: Part, reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("(unnamed test thread)")
        .to_owned();
    let part = match part {
        Part::Whole => "whole test",
        Part::Only(part) => part,
    };
    println!("SKIP ({part}): {reason}");
    if needs == Needs::Ci && std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("CI=true, and CI provides what this needs, yet it is missing ({part}): {reason}");
    }
    if let Some(path) = std::env::var_os("TALLY_SKIP_LOG") {
        let reason = reason.replace(['\t', '\n'], " ");
        // One short append per skip: concurrent tests' lines do not interleave.
        let line = format!("{test}\t{part}\t{reason}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(err) = written {
            panic!(
                "cannot record the skip in {}: {err}",
                path.to_string_lossy()
            );
        }
    }
}
