//! What the anchoring tests share: a daemon anchoring in a swtpm only when
//! asked, its CLI steps, and a bundle's sections for editing as root would.
//! Test support: a failed step fails the test, as in the tests themselves.
#![allow(clippy::expect_used, clippy::panic)]

use std::path::Path;

use tally_attest::bundle::MAGIC;

use crate::swtpm::Swtpm;
use crate::{append_pipelined, Daemon, DaemonOpts, Run};

/// Bundle section kinds (docs/DESIGN.md section 7), as bytes.
pub const HEADER: u8 = tally_attest::bundle::SectionKind::Header as u8;
pub const RECORD: u8 = tally_attest::bundle::SectionKind::Record as u8;
pub const ANCHOR: u8 = tally_attest::bundle::SectionKind::Anchor as u8;

/// Options for a daemon anchoring in `tpm` only when asked (`tally anchor`),
/// so that tests decide when anchors happen; `extra_tpm` adds `[tpm]` lines.
pub fn opts(tpm: &Swtpm, extra_tpm: &str) -> DaemonOpts {
    DaemonOpts {
        tpm: format!(
            "enabled = true\ntcti = \"{}\"\nanchor_interval_secs = 3600\n{extra_tpm}",
            tpm.tcti()
        ),
        ..DaemonOpts::default()
    }
}

/// A started daemon with [`opts`].
pub fn daemon(tpm: &Swtpm, extra_tpm: &str) -> Daemon {
    Daemon::start(opts(tpm, extra_tpm)).expect("tallyd starts on the swtpm")
}

/// The run's stdout, after asserting it exited 0.
pub fn ok(run: Run, what: &str) -> String {
    assert_eq!(run.code, 0, "{what} failed: {run:?}");
    run.stdout
}

/// Appends events `first..first + count` (the harness's standard events).
pub async fn append(daemon: &Daemon, first: u64, count: u64) {
    let mut client = daemon.client().await.expect("connect");
    let batches = (first..first + count)
        .step_by(50)
        .map(|start| start..(start + 50).min(first + count));
    append_pipelined(&mut client, batches, 4, |_, _| {})
        .await
        .expect("append");
}

/// `tally anchor`; returns the counter value anchored.
pub fn anchor(daemon: &Daemon) -> u64 {
    let out = ok(
        daemon.tally(&["anchor"]).expect("run tally"),
        "tally anchor",
    );
    // "anchored: TPM counter N, log size S, Merkle root R"
    out.split("TPM counter ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected tally anchor output: {out}"))
}

/// `cp -a from to`.
pub fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// The sections of a bundle file: (kind, bytes).
pub fn sections(bundle: &str) -> Vec<(u8, Vec<u8>)> {
    let bytes = std::fs::read(bundle).expect("read the bundle");
    assert_eq!(&bytes[..MAGIC.len()], MAGIC);
    let mut out = Vec::new();
    let mut at = MAGIC.len();
    while at < bytes.len() {
        let kind = bytes[at];
        let len = u32::from_be_bytes([bytes[at + 1], bytes[at + 2], bytes[at + 3], bytes[at + 4]])
            as usize;
        out.push((kind, bytes[at + 5..at + 5 + len].to_vec()));
        at += 5 + len;
    }
    out
}

/// Writes `sections` as a bundle file.
pub fn write_sections(bundle: &str, sections: &[(u8, Vec<u8>)]) {
    let mut bytes = MAGIC.to_vec();
    for (kind, body) in sections {
        bytes.push(*kind);
        bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
        bytes.extend_from_slice(body);
    }
    std::fs::write(bundle, bytes).expect("write the bundle");
}
