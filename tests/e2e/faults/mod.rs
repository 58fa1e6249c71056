//! Faults with clear outcomes: each fault an operator can meet (a full disk,
//! a hung or vanished TPM, a damaged `data.mdb`, a restored or reset TPM
//! state) is produced for real and the test asserts exactly what the
//! operator sees (wire error code and message, status fields, log lines,
//! exit code) and that no acknowledged event is lost. docs/OPERATIONS.md,
//! section 6a, says the same for the operator.

mod check_chunks;
mod corrupt;
mod disk;
mod operator;
mod tpm;

use tally_tests::anchored::ok;
use tally_tests::{Daemon, Run};

/// Restarts the daemon, which must refuse to start with exit 3; returns the
/// error, which holds its message.
fn refused(daemon: &mut Daemon) -> String {
    let err = daemon
        .restart()
        .expect_err("tallyd must refuse to start")
        .to_string();
    assert!(
        err.contains("exited during start-up (exit status: 3)"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// `tally status --json`, which must succeed.
fn status(daemon: &Daemon) -> serde_json::Value {
    serde_json::from_str(&ok(daemon.tally(&["status", "--json"]).unwrap(), "status")).unwrap()
}

/// A file in the daemon's test directory.
fn path(daemon: &Daemon, name: &str) -> String {
    daemon.dir().join(name).display().to_string()
}

/// The log's identity, as `tallyd identity` prints it, kept as `identity.json`.
fn save_identity(daemon: &Daemon) {
    let json = ok(daemon.tallyd(&["identity"]).unwrap(), "tallyd identity");
    std::fs::write(path(daemon, "identity.json"), json).unwrap();
}

/// Export, fresh attestation, verify against the identity saved by
/// [`save_identity`]; `extra` verify flags (e.g. `--accept-gap`).
fn verify(daemon: &Daemon, extra: &[&str]) -> Run {
    let (bundle, att, id) = (
        path(daemon, "b.bundle"),
        path(daemon, "f.att"),
        path(daemon, "identity.json"),
    );
    ok(
        daemon.tally(&["export", "--out", &bundle]).unwrap(),
        "export",
    );
    ok(
        daemon
            .tally(&["attest", "--nonce", "c0ffee", "--out", &att])
            .unwrap(),
        "attest",
    );
    let mut args = vec![
        "verify",
        &bundle,
        "--identity",
        &id,
        "--attestation",
        &att,
        "--nonce",
        "c0ffee",
    ];
    args.extend_from_slice(extra);
    daemon.tally(&args).unwrap()
}
