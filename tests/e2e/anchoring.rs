//! TPM anchoring end to end: the real tallyd on a real swtpm per test
//! (never a mock), the real `tally` CLI as the responder's verifier (holding
//! the log's identity, as `tallyd identity` prints it), and tpm2-tools as an
//! independent cross-check.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use prost::Message;
use tally_attest::anchor::AnchorRecord;
use tally_attest::bundle::BundleHeader;
use tally_tests::anchored::{
    self, anchor, append, copy_dir, ok, sections, write_sections, ANCHOR, HEADER, RECORD,
};
use tally_tests::swtpm::Swtpm;
use tally_tests::{Daemon, DaemonOpts, Run};

fn tally(daemon: &Daemon, args: &[&str]) -> Run {
    daemon.tally(args).unwrap()
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

fn export(daemon: &Daemon, name: &str) -> String {
    let out = path(daemon.dir(), name);
    ok(tally(daemon, &["export", "--out", &out]), "tally export");
    out
}

fn attest(daemon: &Daemon, nonce: &str, name: &str) -> String {
    let out = path(daemon.dir(), name);
    ok(
        tally(daemon, &["attest", "--nonce", nonce, "--out", &out]),
        "tally attest",
    );
    out
}

fn ak(daemon: &Daemon) -> String {
    daemon.data_dir().join("tpm/ak.pem").display().to_string()
}

/// The verifier's copy of the log's identity, taken as it is at provisioning
/// (`tallyd identity`), outside the data directory.
fn identity(daemon: &Daemon) -> String {
    let out = path(daemon.dir(), "identity.json");
    if !Path::new(&out).exists() {
        let json = ok(daemon.tallyd(&["identity"]).unwrap(), "tallyd identity");
        std::fs::write(&out, json).unwrap();
    }
    out
}

fn verify(daemon: &Daemon, bundle: &str, extra: &[&str]) -> Run {
    let identity = identity(daemon);
    let mut args = vec!["verify", bundle, "--identity", identity.as_str()];
    args.extend_from_slice(extra);
    tally(daemon, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_is_refused_at_start_and_named_by_the_verifier() {
    //! Restoring an old copy of the data directory: tallyd refuses to start
    //! and says how many anchors are missing; the old export checked against
    //! a fresh attestation is "not current"; a fresh export is current.
    let Some(tpm) = Swtpm::start() else { return };
    let mut daemon = anchored::daemon(&tpm, "");
    append(&daemon, 0, 200).await;
    assert_eq!(anchor(&daemon), 2, "the genesis anchor took 1");
    let old_bundle = export(&daemon, "old.bundle");
    assert!(daemon.terminate().unwrap().success());
    let old_copy = daemon.dir().join("data-old");
    copy_dir(&daemon.data_dir(), &old_copy);

    daemon.restart().unwrap();
    append(&daemon, 200, 100).await;
    assert_eq!(anchor(&daemon), 3);
    append(&daemon, 300, 100).await;
    assert_eq!(anchor(&daemon), 4);
    assert!(daemon.terminate().unwrap().success());
    let new_copy = daemon.dir().join("data-new");
    std::fs::rename(daemon.data_dir(), &new_copy).unwrap();
    std::fs::rename(&old_copy, daemon.data_dir()).unwrap();

    let refused = daemon.restart().unwrap_err().to_string();
    assert!(
        refused.contains("exit status: 3"),
        "a refused start exits 3: {refused}"
    );
    assert!(refused.contains("rollback detected"), "{refused}");
    assert!(refused.contains("2 anchor(s) are missing"), "{refused}");

    // Back to the real data directory: the responder takes a fresh attestation.
    std::fs::remove_dir_all(daemon.data_dir()).unwrap();
    std::fs::rename(&new_copy, daemon.data_dir()).unwrap();
    daemon.restart().unwrap();
    let attestation = attest(&daemon, "00112233445566778899", "fresh.att");
    let stale = verify(
        &daemon,
        &old_bundle,
        &[
            "--attestation",
            &attestation,
            "--nonce",
            "00112233445566778899",
        ],
    );
    assert_eq!(stale.code, 1, "{stale:?}");
    assert!(
        stale
            .stdout
            .contains("not current: 2 anchored counter values are missing"),
        "{}",
        stale.stdout
    );

    let fresh_bundle = export(&daemon, "fresh.bundle");
    let attestation = attest(&daemon, "cafe", "fresh2.att");
    let ok = verify(
        &daemon,
        &fresh_bundle,
        &["--attestation", &attestation, "--nonce", "cafe"],
    );
    assert_eq!(ok.code, 0, "{}", ok.stdout);
    assert!(
        ok.stdout.contains("current:            OK"),
        "{}",
        ok.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_and_a_removed_anchor_are_named() {
    //! Cutting the tail of an export (records, then records and anchors with
    //! a forged header) and removing an anchor from the middle.
    let Some(tpm) = Swtpm::start() else { return };
    let daemon = anchored::daemon(&tpm, "");
    for round in 0..4 {
        append(&daemon, round * 50, 50).await;
        anchor(&daemon);
    }
    let bundle = export(&daemon, "full.bundle");
    let nonce = "0badc0de";
    let attestation = attest(&daemon, nonce, "fresh.att");
    let fresh = ["--attestation", attestation.as_str(), "--nonce", nonce];
    let all = sections(&bundle);
    // The genesis anchor and four more.
    assert_eq!(all.iter().filter(|(kind, _)| *kind == ANCHOR).count(), 5);
    assert_eq!(all.iter().filter(|(kind, _)| *kind == RECORD).count(), 200);
    let ok = verify(&daemon, &bundle, &fresh);
    assert_eq!(ok.code, 0, "{}", ok.stdout);

    // Records 150.. cut, header left alone: the chain names the truncation.
    let cut = path(daemon.dir(), "cut.bundle");
    // A record goes with the content section after it (section 0x05).
    let content = tally_attest::bundle::SectionKind::Content as u8;
    let mut kept: Vec<_> = all
        .iter()
        .filter(|(kind, _)| *kind != RECORD && *kind != content)
        .cloned()
        .collect();
    let end = kept.pop().unwrap();
    let mut records = 0;
    kept.extend(
        all.iter()
            .filter(|(kind, _)| {
                records += usize::from(*kind == RECORD);
                (*kind == RECORD || *kind == content) && records <= 150
            })
            .cloned(),
    );
    kept.push(end);
    write_sections(&cut, &kept);
    let run = verify(&daemon, &cut, &fresh);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout
            .contains("log truncated: 200 records declared, only 150 present"),
        "{}",
        run.stdout
    );

    // The attacker also drops the last anchor and rewrites the header to match:
    // only the TPM's current counter exposes it.
    let mut header = BundleHeader::decode(all[0].1.as_slice()).unwrap();
    // The fourth anchor (genesis, then three): the fifth is dropped.
    let third = AnchorRecord::decode(
        all.iter()
            .filter(|(kind, _)| *kind == ANCHOR)
            .nth(3)
            .unwrap()
            .1
            .as_slice(),
    )
    .unwrap();
    let checkpoint = tally_attest::anchor::Checkpoint::parse(&third.checkpoint).unwrap();
    header.size = checkpoint.size;
    let last_kept = all
        .iter()
        .filter(|(kind, _)| *kind == RECORD)
        .nth(checkpoint.size as usize - 1)
        .unwrap();
    header.head_hash = tally_attest::entry_hash(&last_kept.1).to_vec();
    let forged = path(daemon.dir(), "forged.bundle");
    let mut sections_out = vec![(HEADER, header.encode_to_vec())];
    sections_out.extend(
        all.iter()
            .filter(|(kind, _)| *kind == ANCHOR)
            .take(4)
            .cloned(),
    );
    sections_out.extend(
        all.iter()
            .filter(|(kind, _)| *kind == RECORD)
            .take(checkpoint.size as usize)
            .cloned(),
    );
    sections_out.push(all.last().unwrap().clone());
    write_sections(&forged, &sections_out);
    let run = verify(&daemon, &forged, &fresh);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout.contains("chain intact:       OK"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("not current: 1 anchored counter values are missing"),
        "{}",
        run.stdout
    );

    // An anchor removed from the middle: a counter gap, named.
    let gap = path(daemon.dir(), "gap.bundle");
    let mut anchor_index = 0;
    let without_second: Vec<_> = all
        .iter()
        .filter(|(kind, _)| {
            if *kind != ANCHOR {
                return true;
            }
            anchor_index += 1;
            anchor_index != 3 // counter 3 (the genesis is 1)
        })
        .cloned()
        .collect();
    write_sections(&gap, &without_second);
    let run = verify(&daemon, &gap, &[]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains(
            "counter gap: anchor 2 is followed by anchor 4 (1 counter values without an anchor)"
        ),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_evidence_is_rejected_each_with_its_own_error() {
    //! Another TPM's keys, a replayed attestation for another nonce, and a
    //! checkpoint that is not the one the TPM signed.
    let Some(tpm) = Swtpm::start() else { return };
    let Some(other_tpm) = Swtpm::start() else {
        return;
    };
    let daemon = anchored::daemon(&tpm, "");
    append(&daemon, 0, 20).await;
    anchor(&daemon);
    let bundle = export(&daemon, "b.bundle");

    // The other TPM's keys, as `tallyd provision` exports them, in place of
    // this log's in the identity (a verifier who pinned the wrong TPM).
    let other_dir = daemon.dir().join("other");
    let provision = tally_tests::tallyd(&[
        OsStr::new("--data-dir"),
        other_dir.as_os_str(),
        OsStr::new("--tcti"),
        OsStr::new(&other_tpm.tcti()),
        OsStr::new("provision"),
    ])
    .unwrap();
    assert_eq!(provision.code, 0, "{provision:?}");
    let mut wrong: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(identity(&daemon)).unwrap()).unwrap();
    for (field, file) in [("ak", "ak.pem"), ("owner_key", "owner-key.pem")] {
        wrong[field] = std::fs::read_to_string(other_dir.join("tpm").join(file))
            .unwrap()
            .into();
    }
    let wrong_identity = path(daemon.dir(), "wrong-identity.json");
    std::fs::write(&wrong_identity, wrong.to_string()).unwrap();
    let run = tally(&daemon, &["verify", &bundle, "--identity", &wrong_identity]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("anchors valid:      FAILED"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("signature"), "{}", run.stdout);

    // An attestation made for one nonce, presented for another.
    let attestation = attest(&daemon, "1111", "a.att");
    let run = verify(
        &daemon,
        &bundle,
        &["--attestation", &attestation, "--nonce", "2222"],
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stdout
            .contains("attestation was made for another nonce"),
        "{}",
        run.stdout
    );

    // The second anchor's checkpoint changed (claims one more record), its
    // signature line kept: the log key's signature (and the TPM's qualifying
    // data) no longer cover it.
    let mut all = sections(&bundle);
    let (_, anchor_bytes) = all
        .iter_mut()
        .filter(|(kind, _)| *kind == ANCHOR)
        .nth(1)
        .unwrap();
    let mut record = AnchorRecord::decode(anchor_bytes.as_slice()).unwrap();
    let checkpoint = tally_attest::anchor::Checkpoint::parse(&record.checkpoint).unwrap();
    let note = String::from_utf8(record.checkpoint.clone()).unwrap();
    let edited = note.replacen(
        &format!("\n{}\n", checkpoint.size),
        &format!("\n{}\n", checkpoint.size + 1),
        1,
    );
    assert_ne!(edited, note);
    record.checkpoint = edited.into_bytes();
    *anchor_bytes = record.encode_to_vec();
    let tampered = path(daemon.dir(), "tampered.bundle");
    write_sections(&tampered, &all);
    let run = verify(&daemon, &tampered, &[]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout.contains("anchors valid:      FAILED"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("checkpoint signature"),
        "{}",
        run.stdout
    );
}

/// The TPM counter's value (tallyd must be stopped: swtpm serves one
/// connection at a time).
fn nvread(tpm: &Swtpm) -> u64 {
    let out = tpm.tool("tpm2_nvread", &["0x01c17a11", "-C", "o"]);
    assert!(out.status.success(), "{out:?}");
    u64::from_be_bytes(out.stdout[..8].try_into().unwrap())
}

fn status(daemon: &Daemon) -> serde_json::Value {
    serde_json::from_str(&ok(tally(daemon, &["status", "--json"]), "status")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_each_step_of_anchoring_recovers_without_a_false_alarm() {
    //! TALLYD_CRASH_POINT aborts tallyd after the evidence (nothing committed:
    //! the open value is used by the next anchor), after the anchor commit
    //! (its value not closed: the start closes it) and after the increment.
    //! Each restart starts cleanly, anchors at once what the store holds past
    //! its newest anchor, keeps every acked event, and the log verifies as
    //! current with no counter gap.
    for point in ["after-evidence", "after-anchor-commit", "after-increment"] {
        let Some(tpm) = Swtpm::start() else { return };
        let mut daemon = anchored::daemon(&tpm, "");
        append(&daemon, 0, 100).await;
        // Genesis at 1 (provisioning leaves the counter at 1), closed: 2 is open.
        assert_eq!(anchor(&daemon), 2, "{point}");
        // Nothing new since the anchor: the clean shutdown adds no anchor.
        assert!(daemon.terminate().unwrap().success());
        assert_eq!(
            nvread(&tpm),
            3,
            "{point}: the newest anchor's value is closed"
        );
        daemon.set_env(&[("TALLYD_CRASH_POINT", point)]);
        daemon.restart().unwrap();
        append(&daemon, 100, 100).await;
        let crashed = tally(&daemon, &["anchor"]);
        assert_ne!(
            crashed.code, 0,
            "{point}: the anchor request should die with the daemon"
        );
        assert!(
            tally_tests::wait_until(Duration::from_secs(10), || !daemon.is_running()).await,
            "{point}: tallyd did not abort"
        );
        // What the crash left in the TPM: certify never increments; only the
        // step after the commit does.
        let expected_counter = if point == "after-increment" { 4 } else { 3 };
        assert_eq!(nvread(&tpm), expected_counter, "{point}");
        daemon.set_env(&[]);
        daemon
            .restart()
            .unwrap_or_else(|err| panic!("{point}: false alarm at restart: {err}"));
        // The start anchors the 100 events the crashed anchor was for (after
        // the evidence: at the unused value 3), or finds them anchored at 3.
        let status = status(&daemon);
        assert_eq!(status["size"], 200, "{point}");
        assert_eq!(status["last_anchor_counter"], 3, "{point}: {status}");
        assert_eq!(status["last_anchor_size"], 200, "{point}: {status}");
        assert_eq!(status["unanchored_events"], 0, "{point}: {status}");
        assert_eq!(
            status["oldest_unanchored_age_millis"], 0,
            "{point}: {status}"
        );
        append(&daemon, 200, 10).await;
        assert_eq!(anchor(&daemon), 4, "{point}");
        let bundle = export(&daemon, "b.bundle");
        let attestation = attest(&daemon, "5eed", "a.att");
        let run = verify(
            &daemon,
            &bundle,
            &["--attestation", &attestation, "--nonce", "5eed"],
        );
        assert_eq!(run.code, 0, "{point}: {}", run.stdout);
        assert!(run.stdout.contains("no gap"), "{point}: {}", run.stdout);
        assert!(daemon.terminate().unwrap().success());
        assert_eq!(nvread(&tpm), 5, "{point}: closed at shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_continue_while_the_tpm_is_unavailable() {
    //! swtpm paused (SIGSTOP) with anchoring every second: appends keep being
    //! acked, status reports the failure and the backlog, anchoring resumes
    //! when the TPM answers again, nothing is lost.
    let Some(tpm) = Swtpm::start() else { return };
    let mut daemon = Daemon::start(DaemonOpts {
        tpm: format!(
            "enabled = true\ntcti = \"{}\"\nanchor_interval_secs = 1\ntimeout_secs = 1",
            tpm.tcti()
        ),
        ..DaemonOpts::default()
    })
    .unwrap();
    append(&daemon, 0, 100).await;
    tpm.pause();
    let started = std::time::Instant::now();
    let mut next = 100;
    while started.elapsed() < Duration::from_secs(3) {
        append(&daemon, next, 100).await;
        next += 100;
    }
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "appends stalled while the TPM was paused"
    );
    let status: serde_json::Value =
        serde_json::from_str(&ok(tally(&daemon, &["status", "--json"]), "status")).unwrap();
    assert!(
        status["unanchored_events"].as_u64().unwrap() > 0,
        "{status}"
    );
    assert!(
        status["last_anchor_error"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{status}"
    );
    tpm.resume();
    let caught_up = tally_tests::wait_until(Duration::from_secs(20), || {
        let status: serde_json::Value =
            serde_json::from_str(&tally(&daemon, &["status", "--json"]).stdout).unwrap_or_default();
        status["unanchored_events"] == 0 && status["size"] == next
    })
    .await;
    assert!(
        caught_up,
        "anchoring did not resume after the TPM came back"
    );
    let bundle = export(&daemon, "b.bundle");
    let attestation = attest(&daemon, "abcd", "a.att");
    let run = verify(
        &daemon,
        &bundle,
        &["--attestation", &attestation, "--nonce", "abcd"],
    );
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!("OK ({next} records")),
        "{}",
        run.stdout
    );
    daemon.terminate().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm2_tools_accept_our_quotes_and_read_our_counter() {
    //! Interop: tpm2_checkquote accepts every exported anchor quote with the
    //! exported AK; tpm2_nvread reads the counter one past the newest anchor
    //! tallyd reports (its value is closed).
    let Some(tpm) = Swtpm::start() else { return };
    let mut daemon = anchored::daemon(&tpm, "");
    for round in 0..3 {
        append(&daemon, round * 10, 10).await;
        anchor(&daemon);
    }
    let status: serde_json::Value =
        serde_json::from_str(&ok(tally(&daemon, &["status", "--json"]), "status")).unwrap();
    let reported = status["last_anchor_counter"].as_u64().unwrap();
    let bundle = export(&daemon, "b.bundle");
    // swtpm serves one connection at a time: stop tallyd to let tpm2-tools in.
    assert!(daemon.terminate().unwrap().success());

    let out_dir = daemon.dir().join("quotes");
    let commands = ok(
        tally(
            &daemon,
            &[
                "quote-files",
                &bundle,
                "--ak",
                &ak(&daemon),
                "--out-dir",
                &out_dir.display().to_string(),
            ],
        ),
        "tally quote-files",
    );
    let lines: Vec<&str> = commands.lines().collect();
    assert_eq!(lines.len(), 4, "the genesis anchor and three: {commands}");
    for line in lines {
        let args: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(args[0], "tpm2_checkquote");
        let out = tpm.tool("tpm2_checkquote", &args[1..]);
        assert!(
            out.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A wrong qualifying data is refused by the same tool.
        let mut wrong: Vec<String> = args[1..].iter().map(|arg| arg.to_string()).collect();
        let last = wrong.len() - 1;
        wrong[last] = "00".repeat(32);
        let wrong: Vec<&str> = wrong.iter().map(String::as_str).collect();
        // Refused for the nonce (tpm2-tools 5.4 prints this), not for some other reason.
        let refused = tpm.tool("tpm2_checkquote", &wrong);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{line}");
        assert!(
            stderr.contains("Error validating nonce from quote"),
            "{line}: {stderr}"
        );
    }
    let nvread = tpm.tool("tpm2_nvread", &["0x01c17a11", "-C", "o"]);
    assert!(
        nvread.status.success(),
        "{}",
        String::from_utf8_lossy(&nvread.stderr)
    );
    let value = u64::from_be_bytes(nvread.stdout[..8].try_into().unwrap());
    assert_eq!(value, reported + 1, "the newest anchor's value is closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unclean_tpm_reset_is_reported_as_a_gap_never_as_continuity() {
    //! The orderly counter jumps forward after an unclean TPM reset (swtpm
    //! SIGKILLed and restarted): the next anchor lands after the jump, and the
    //! verifier names a gap across a TPM reset.
    let Some(mut tpm) = Swtpm::start() else {
        return;
    };
    let daemon = anchored::daemon(&tpm, "");
    append(&daemon, 0, 10).await;
    let before = anchor(&daemon);
    tpm.kill();
    tpm.restart();
    append(&daemon, 10, 10).await;
    // The worker reconnects on the next request; the first may see the broken connection.
    let mut after = None;
    for _ in 0..5 {
        let run = tally(&daemon, &["anchor"]);
        if run.code == 0 {
            after = run
                .stdout
                .split("TPM counter ")
                .nth(1)
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse::<u64>().ok());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = after.expect("anchoring did not recover after the TPM reset");
    assert!(
        after > before + 1,
        "the orderly counter should have jumped: {before} -> {after}"
    );
    let bundle = export(&daemon, "b.bundle");
    let run = verify(&daemon, &bundle, &[]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout.contains("counter gap across a TPM reset"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_missing_tpm_is_a_clear_error_at_start() {
    //! No TPM at the configured TCTI: tallyd exits non-zero naming the TCTI
    //! and the way out, and serves nothing.
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("swtpm:path={}", dir.path().join("no-such.sock").display());
    let run = tally_tests::tallyd(&[
        OsStr::new("--data-dir"),
        dir.path().join("data").as_os_str(),
        OsStr::new("--socket"),
        dir.path().join("tally.sock").as_os_str(),
        OsStr::new("--tcti"),
        OsStr::new(&missing),
    ])
    .unwrap();
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("no TPM at"), "{}", run.stderr);
    assert!(run.stderr.contains("--no-tpm"), "{}", run.stderr);
    assert!(
        !dir.path().join("tally.sock").exists(),
        "a socket was bound"
    );
}
