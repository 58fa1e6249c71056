//! Anchoring v2 against root on the host. Each attack that got a PASS from
//! anchoring v1 is carried out the way root would (tpm2-tools and raw TPM
//! commands on the same swtpm, edits of the LMDB store beside the genuine
//! tallyd, restored copies), and must be refused by tallyd or named by a
//! verifier that holds the log's identity. The honest cases (a crash at
//! every anchor step, clean restarts, growth after an export, a reviewed
//! power-loss gap) must still PASS.

use std::path::Path;

use prost::Message;
use tally_attest::anchor::{
    anchor_hash, anchor_qualifying_data, decode_anchor, AnchorLine, Checkpoint, EvidenceRecord,
};
use tally_attest::bundle::BundleHeader;
use tally_attest::evidence::verify::verify_evidence;
use tally_attest::identity::LogIdentity;
use tally_attest::tpm::worker::{TpmConfig, TpmHandle};
use tally_tests::anchored::{
    anchor, append, copy_dir, ok, opts, sections, write_sections, ANCHOR, HEADER, RECORD,
};
use tally_tests::swtpm::Swtpm;
use tally_tests::{store_edit, Daemon, Run};

fn daemon(tpm: &Swtpm) -> Daemon {
    tally_tests::anchored::daemon(tpm, "")
}

const COUNTER: &str = "0x01c17a11";
const OWNER_RECORD: &str = "0x01c17a12";

fn file(daemon: &Daemon, name: &str) -> String {
    daemon.dir().join(name).display().to_string()
}

/// The identity as a verifier takes it at provisioning (`tallyd identity`).
fn identity(daemon: &Daemon, name: &str) -> String {
    let json = ok(daemon.tallyd(&["identity"]).unwrap(), "tallyd identity");
    LogIdentity::from_json(&json).expect("tallyd identity prints a valid identity");
    let path = file(daemon, name);
    std::fs::write(&path, json).unwrap();
    path
}

fn export(daemon: &Daemon, name: &str) -> String {
    let out = file(daemon, name);
    ok(daemon.tally(&["export", "--out", &out]).unwrap(), "export");
    out
}

fn attest(daemon: &Daemon, nonce: &str, since: Option<&str>, name: &str) -> String {
    let out = file(daemon, name);
    let mut args = vec!["attest", "--nonce", nonce, "--out", &out];
    if let Some(since) = since {
        args.extend(["--since", since]);
    }
    ok(daemon.tally(&args).unwrap(), "attest");
    out
}

fn verify(daemon: &Daemon, bundle: &str, identity: &str, extra: &[&str]) -> Run {
    let mut args = vec!["verify", bundle, "--identity", identity];
    args.extend_from_slice(extra);
    daemon.tally(&args).unwrap()
}

/// Asserts the verdict's exit code and that the output names `expected`.
fn expect(run: &Run, code: i32, expected: &str) {
    assert_eq!(run.code, code, "expected exit {code}: {}", run.stdout);
    assert!(
        run.stdout.contains(expected),
        "expected {expected:?} in:\n{}",
        run.stdout
    );
}

/// The counter's value as tpm2-tools reads it (the daemon must be stopped:
/// swtpm serves one connection at a time).
fn nvread(tpm: &Swtpm, index: &str) -> u64 {
    let out = tpm.tool("tpm2_nvread", &[index, "-C", "o"]);
    assert!(out.status.success(), "tpm2_nvread {index}: {out:?}");
    u64::from_be_bytes(out.stdout[..8].try_into().unwrap())
}

/// A raw TPM connection of root's (the same commands tpm2-tools sends).
fn root_tpm(tpm: &Swtpm) -> TpmHandle {
    TpmHandle::spawn(TpmConfig {
        tcti: Some(tpm.tcti()),
        ..TpmConfig::default()
    })
    .unwrap()
}

fn refused(daemon: &mut Daemon) -> String {
    let err = daemon
        .restart()
        .expect_err("tallyd must refuse to start")
        .to_string();
    assert!(err.contains("exit status: 3"), "a refusal exits 3: {err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anchored_value_is_closed_and_root_cannot_certify_it_again() {
    //! v1 left the newest counter value open (increment, then certify), so
    //! root could certify it again over an older head. Now the counter is one
    //! past every anchor once it is made, and whatever root certifies (even
    //! through the genuine tallyd after restoring an older copy with v1's
    //! `anchor_intent` key) lands on a later value: the verifier names it.
    let Some(tpm) = Swtpm::start() else { return };
    let mut daemon = daemon(&tpm);
    let id = identity(&daemon, "identity.json");
    append(&daemon, 0, 100).await;
    let first = anchor(&daemon);
    let before = file(&daemon, "data-before");
    assert!(daemon.terminate().unwrap().success());
    copy_dir(&daemon.data_dir(), Path::new(&before));
    daemon.restart().unwrap();
    append(&daemon, 100, 100).await;
    let second = anchor(&daemon);
    assert_eq!(second, first + 1);
    let honest = export(&daemon, "honest.bundle");
    assert!(daemon.terminate().unwrap().success());
    // Clean shutdown makes no anchor when nothing is new: the counter is one
    // past the newest anchor, so its value is closed.
    assert_eq!(
        nvread(&tpm, COUNTER),
        second + 1,
        "the newest value is closed"
    );

    // Root certifies the counter over a checkpoint of the older head: the TPM
    // certifies only its current value, which is past every anchor.
    let root = root_tpm(&tpm);
    let evidence = root.certify([7; 32]).await.unwrap();
    assert_eq!(evidence.counter, second + 1);
    drop(root);

    // Through tallyd: the copy taken after the first anchor, with v1's
    // intent key written, is refused, not "completed".
    let live = file(&daemon, "data-live");
    std::fs::rename(daemon.data_dir(), &live).unwrap();
    std::fs::rename(&before, daemon.data_dir()).unwrap();
    store_edit::put_meta(&daemon.data_dir(), "anchor_intent", &second.to_be_bytes()).unwrap();
    let err = refused(&mut daemon);
    assert!(err.contains("rollback"), "{err}");

    // The older copy's bundle is not current against a fresh attestation.
    std::fs::remove_dir_all(daemon.data_dir()).unwrap();
    std::fs::rename(&live, daemon.data_dir()).unwrap();
    daemon.restart().unwrap();
    let nonce = "a1b2c3d4";
    let fresh = attest(&daemon, nonce, None, "fresh.att");
    let run = verify(
        &daemon,
        &honest,
        &id,
        &["--attestation", &fresh, "--nonce", nonce],
    );
    expect(&run, 0, "verdict:            PASS");
    let mut cut = sections(&honest);
    // The older head: drop the second anchor and the records after the first.
    let first_anchor = cut.iter().filter(|(k, _)| *k == ANCHOR).count() - 1;
    let mut seen = 0;
    cut.retain(|(kind, _)| {
        if *kind == ANCHOR {
            seen += 1;
            seen <= first_anchor
        } else {
            true
        }
    });
    let older = file(&daemon, "older.bundle");
    rewrite_to_size(&mut cut, 100);
    write_sections(&older, &cut);
    let run = verify(
        &daemon,
        &older,
        &id,
        &["--attestation", &fresh, "--nonce", nonce],
    );
    expect(&run, 1, "not current");
}

/// Keeps the first `size` records and rewrites the header to match them.
fn rewrite_to_size(sections: &mut Vec<(u8, Vec<u8>)>, size: usize) {
    let mut header = BundleHeader::decode(sections[0].1.as_slice()).unwrap();
    let records: Vec<Vec<u8>> = sections
        .iter()
        .filter(|(kind, _)| *kind == RECORD)
        .take(size)
        .map(|(_, bytes)| bytes.clone())
        .collect();
    header.size = records.len() as u64;
    header.head_hash = records
        .last()
        .map_or([0; 32], |record| tally_attest::entry_hash(record))
        .to_vec();
    let anchors: Vec<(u8, Vec<u8>)> = sections
        .iter()
        .filter(|(kind, _)| *kind == ANCHOR)
        .cloned()
        .collect();
    let end = sections.last().unwrap().clone();
    *sections = vec![(HEADER, header.encode_to_vec())];
    sections.extend(anchors);
    sections.extend(records.into_iter().map(|record| (RECORD, record)));
    sections.push(end);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_rebuilt_from_seq_0_under_the_genuine_id_is_refused_and_fails_origin() {
    //! v1 bound a data dir holding only the old sealed log key and the
    //! genuine log id, with fabricated records, to the TPM's counter. Now
    //! tallyd refuses it (the TPM's owner record says this log's genesis was
    //! earlier), and if root also deletes the owner record, the new genesis
    //! is not the one the verifier pinned.
    let Some(tpm) = Swtpm::start() else { return };
    let mut daemon = daemon(&tpm);
    let id = identity(&daemon, "identity.json");
    append(&daemon, 0, 50).await;
    anchor(&daemon);
    assert!(daemon.terminate().unwrap().success());

    store_edit::empty_the_log(&daemon.data_dir()).unwrap();
    let err = refused(&mut daemon);
    assert!(err.contains("deleted"), "{err}");

    let undefine = tpm.tool("tpm2_nvundefine", &[OWNER_RECORD, "-C", "o"]);
    assert!(undefine.status.success(), "{undefine:?}");
    daemon.restart().unwrap();
    append(&daemon, 1000, 50).await; // the fabricated events
    anchor(&daemon);
    let bundle = export(&daemon, "fabricated.bundle");
    let nonce = "0f0f";
    let fresh = attest(&daemon, nonce, None, "fresh.att");
    let run = verify(
        &daemon,
        &bundle,
        &id,
        &["--attestation", &fresh, "--nonce", nonce],
    );
    expect(&run, 1, "is not the pinned one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_copy_with_its_anchors_deleted_is_refused_and_a_stripped_bundle_fails() {
    //! v1 started a restored copy whose anchors (and meta keys) were deleted
    //! without --accept-rollback, and PASSed a bundle with every anchor
    //! stripped and a record edited and re-chained.
    let Some(tpm) = Swtpm::start() else { return };
    let mut daemon = daemon(&tpm);
    let id = identity(&daemon, "identity.json");
    append(&daemon, 0, 60).await;
    anchor(&daemon);
    append(&daemon, 60, 60).await;
    anchor(&daemon);
    let bundle = export(&daemon, "b.bundle");
    assert!(daemon.terminate().unwrap().success());
    let keys = store_edit::meta_keys(&daemon.data_dir()).unwrap();
    assert!(
        !keys
            .iter()
            .any(|k| k == "anchor_intent" || k == "tpm_counter_base"),
        "v1's meta keys are gone: {keys:?}"
    );
    let deleted = store_edit::delete_all_anchors(&daemon.data_dir()).unwrap();
    assert_eq!(deleted, 3, "genesis + two anchors");
    let err = refused(&mut daemon);
    assert!(err.contains("anchors"), "{err}");

    // Every anchor stripped from the bundle, one record edited, the chain
    // and the header recomputed: consistent, and anchor-less.
    let mut stripped: Vec<(u8, Vec<u8>)> = sections(&bundle)
        .into_iter()
        .filter(|(kind, _)| *kind != ANCHOR)
        .collect();
    rechain_with_edit(&mut stripped, 10);
    let forged = file(&daemon, "stripped.bundle");
    write_sections(&forged, &stripped);
    let run = verify(&daemon, &forged, &id, &[]);
    expect(&run, 1, "the bundle has no anchors");
    assert!(
        run.stdout.contains("chain intact:       OK"),
        "{}",
        run.stdout
    );
}

/// Flips a payload byte of record `seq` and recomputes every later link and
/// the header: a consistent rewrite of the chain.
fn rechain_with_edit(sections: &mut [(u8, Vec<u8>)], seq: usize) {
    use tally_attest::HEADER_LEN;
    let mut prev = tally_attest::GENESIS_PREV;
    let mut index = 0;
    for (kind, bytes) in sections.iter_mut() {
        if *kind != RECORD {
            continue;
        }
        if index == seq {
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
        }
        // prev_hash sits right after the version byte and the seq.
        bytes[9..41].copy_from_slice(&prev);
        assert!(bytes.len() > HEADER_LEN);
        prev = tally_attest::entry_hash(bytes);
        index += 1;
    }
    let mut header = BundleHeader::decode(sections[0].1.as_slice()).unwrap();
    header.head_hash = prev.to_vec();
    sections[0].1 = header.encode_to_vec();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm2_clear_is_refused_by_tallyd_and_evident_to_the_verifier() {
    //! `tpm2_clear -c l` with the empty lockout auth deletes the counter;
    //! redefined with the same attributes it restarts low, and the AK
    //! survives. The owner key does not: tallyd refuses to continue, and
    //! evidence made after the Clear does not verify against the identity.
    let Some(tpm) = Swtpm::start() else { return };
    let mut daemon = daemon(&tpm);
    let id_path = identity(&daemon, "identity.json");
    let id = LogIdentity::from_json(&std::fs::read_to_string(&id_path).unwrap()).unwrap();
    for round in 0..3 {
        append(&daemon, round * 10, 10).await;
        anchor(&daemon);
    }
    let bundle = export(&daemon, "b.bundle");
    assert!(daemon.terminate().unwrap().success());
    let before = nvread(&tpm, COUNTER);

    let clear = tpm.tool("tpm2_clear", &["-c", "l"]);
    assert!(clear.status.success(), "tpm2_clear: {clear:?}");
    let define = tpm.tool(
        "tpm2_nvdefine",
        &[
            COUNTER,
            "-C",
            "o",
            "-s",
            "8",
            "-a",
            "ownerread|ownerwrite|nt=counter|orderly",
        ],
    );
    assert!(define.status.success(), "tpm2_nvdefine: {define:?}");
    let increment = tpm.tool("tpm2_nvincrement", &[COUNTER, "-C", "o"]);
    assert!(increment.status.success(), "{increment:?}");
    let after = nvread(&tpm, COUNTER);
    assert!(
        after < before,
        "the Clear rolled the counter back: {before} -> {after}"
    );

    let err = refused(&mut daemon);
    assert!(err.contains("TPM2_Clear"), "{err}");

    // Root's evidence after the Clear, over the last anchor's checkpoint: the
    // AK still signs, the owner key that certifies the counter is another.
    let last = sections(&bundle)
        .into_iter()
        .rev()
        .find(|(kind, _)| *kind == ANCHOR)
        .unwrap()
        .1;
    let record = decode_anchor(&last).unwrap();
    let qd = anchor_qualifying_data(&record.checkpoint);
    let root = root_tpm(&tpm);
    let evidence = root.certify(qd).await.unwrap();
    let err = verify_evidence(&id.policy.keys, &evidence, &qd, id.policy.counter_index)
        .expect_err("evidence after a Clear must not verify against the identity");
    assert_eq!(
        err,
        tally_attest::evidence::EvidenceError::SignatureInvalid,
        "the owner key's signature is the one that fails"
    );
    // Spliced into the bundle as the next anchor, it is named.
    let mut forged_record = record.clone();
    let mut checkpoint = Checkpoint::parse(&record.checkpoint).unwrap();
    checkpoint.anchor = Some(AnchorLine {
        counter: evidence.counter,
        prev: Some(anchor_hash(&last)),
    });
    let text = checkpoint.to_text();
    let qd = anchor_qualifying_data(text.as_bytes());
    let evidence = root.certify(qd).await.unwrap();
    forged_record.checkpoint = text.into_bytes();
    forged_record.evidence = Some(EvidenceRecord::from_evidence(&evidence));
    drop(root);
    let mut all = sections(&bundle);
    let at = all.iter().rposition(|(kind, _)| *kind == ANCHOR).unwrap() + 1;
    all.insert(at, (ANCHOR, forged_record.encode_to_vec()));
    let forged = file(&daemon, "after-clear.bundle");
    write_sections(&forged, &all);
    let run = verify(&daemon, &forged, &id_path, &[]);
    expect(&run, 1, "anchors valid:      FAILED");
}

#[test]
fn the_verifier_says_where_its_trust_must_come_from() {
    //! A verifier fed the host's own ak.pem can be handed a software key with
    //! forged evidence: `tally verify --help` says to pin the identity taken
    //! at provisioning, and keys given one by one never make a PASS.
    let out = std::process::Command::new(tally_tests::binary("tally").unwrap())
        .args(["verify", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout).replace('\n', " ");
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        help.contains("Do not read it from the host you are checking"),
        "{help}"
    );
    assert!(help.contains("PARTIAL at best"), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_without_a_genesis_are_partial_and_a_proof_from_another_log_is_named() {
    //! `--ak/--owner-key/--log-key` alone: PARTIAL (exit 3), never PASS. A
    //! proof from another log on the same TPM (its own counter) verifies
    //! under the keys but fails against the identity as another log.
    let Some(tpm) = Swtpm::start() else { return };
    let mut first = daemon(&tpm);
    let id = identity(&first, "identity.json");
    append(&first, 0, 30).await;
    anchor(&first);
    let bundle = export(&first, "b.bundle");
    let nonce = "beef";
    let fresh = attest(&first, nonce, None, "fresh.att");
    let tpm_dir = first.data_dir().join("tpm");
    let keys = [
        "--ak".to_owned(),
        tpm_dir.join("ak.pem").display().to_string(),
        "--owner-key".to_owned(),
        tpm_dir.join("owner-key.pem").display().to_string(),
        "--log-key".to_owned(),
        tpm_dir.join("log-key.pub").display().to_string(),
    ];
    let mut args: Vec<&str> = vec!["verify", &bundle];
    args.extend(keys.iter().map(String::as_str));
    args.extend(["--attestation", &fresh, "--nonce", nonce]);
    let run = first.tally(&args).unwrap();
    expect(&run, 3, "PARTIAL");
    assert!(run.stdout.contains("no genesis"), "{}", run.stdout);
    assert!(first.terminate().unwrap().success());

    let mut other_opts = opts(&tpm, "");
    other_opts.tpm.push_str("counter_index = 0x01c17b11\n");
    let other = Daemon::start(other_opts).unwrap();
    append(&other, 0, 30).await;
    anchor(&other);
    let proof = file(&other, "other.proof");
    ok(
        other
            .tally(&["prove", "inclusion", "--seq", "3", "--out", &proof])
            .unwrap(),
        "prove",
    );
    let run = other
        .tally(&["verify-proof", &proof, "--identity", &id])
        .unwrap();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains("counter index")
            || run.stdout.contains("another log")
            || run.stdout.contains("not "),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_log_on_the_same_counter_is_refused_naming_the_owner() {
    //! A test instance beside production on the same TPM bound silently to
    //! the same counter, and production then refused to start.
    let Some(tpm) = Swtpm::start() else { return };
    let mut production = daemon(&tpm);
    let log_id = serde_json::from_str::<serde_json::Value>(&ok(
        production.tally(&["status", "--json"]).unwrap(),
        "status",
    ))
    .unwrap()["log_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(production.terminate().unwrap().success());
    let err = Daemon::start(opts(&tpm, ""))
        .expect_err("a second log on the same counter must be refused")
        .to_string();
    assert!(err.contains("exit status: 3"), "{err}");
    assert!(err.contains(&log_id), "the refusal names the owner: {err}");
    assert!(err.contains("counter_index"), "and says what to do: {err}");
    production.restart().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_anchor_step_still_passes() {
    //! Debug builds abort at a named point of the anchor commit order; after
    //! a restart the log anchors again and verifies as PASS and current.
    let Some(tpm) = Swtpm::start() else { return };
    for point in [
        "after-pending",
        "after-evidence",
        "after-anchor-commit",
        "after-increment",
    ] {
        let mut daemon = daemon(&tpm);
        let id = identity(&daemon, &format!("identity-{point}.json"));
        append(&daemon, 0, 40).await;
        daemon.set_env(&[("TALLYD_CRASH_POINT", point)]);
        assert!(daemon.terminate().unwrap().success());
        daemon.restart().unwrap();
        append(&daemon, 40, 40).await;
        let crashed = daemon.tally(&["anchor"]).unwrap();
        assert_ne!(crashed.code, 0, "{point}: the daemon should have aborted");
        let _ = daemon.kill();
        daemon.set_env(&[]);
        daemon.restart().unwrap();
        append(&daemon, 80, 10).await;
        anchor(&daemon);
        let bundle = export(&daemon, &format!("{point}.bundle"));
        let fresh = attest(&daemon, "5eed", None, &format!("{point}.att"));
        let run = verify(
            &daemon,
            &bundle,
            &id,
            &["--attestation", &fresh, "--nonce", "5eed"],
        );
        expect(&run, 0, "verdict:            PASS");
        assert!(daemon.terminate().unwrap().success());
        // Each round is a new log on the same TPM: free the counter.
        std::fs::remove_dir_all(daemon.data_dir()).unwrap();
        let undefine = tpm.tool("tpm2_nvundefine", &[OWNER_RECORD, "-C", "o"]);
        assert!(undefine.status.success(), "{undefine:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_grew_after_its_export_verifies_as_current() {
    //! v1: export, then attest while the log is live, with an anchor in
    //! between: "not current ... rolled back" for an honest log. Now the
    //! attestation carries the anchors made since, with a consistency proof.
    let Some(tpm) = Swtpm::start() else { return };
    let daemon = daemon(&tpm);
    let id = identity(&daemon, "identity.json");
    append(&daemon, 0, 50).await;
    anchor(&daemon);
    let bundle = export(&daemon, "b.bundle");
    append(&daemon, 50, 70).await;
    anchor(&daemon);
    append(&daemon, 120, 10).await;
    anchor(&daemon);
    let nonce = "0123abcd";
    let plain = attest(&daemon, nonce, None, "plain.att");
    let run = verify(
        &daemon,
        &bundle,
        &id,
        &["--attestation", &plain, "--nonce", nonce],
    );
    expect(&run, 1, "not current");
    let since = attest(&daemon, nonce, Some(&bundle), "since.att");
    let run = verify(
        &daemon,
        &bundle,
        &id,
        &["--attestation", &since, "--nonce", nonce],
    );
    expect(&run, 0, "the log grew by 80 records since this export");
    assert!(
        run.stdout.contains("verdict:            PASS"),
        "{}",
        run.stdout
    );

    // `export --attest` writes both at once.
    let both = file(&daemon, "both.bundle");
    ok(
        daemon
            .tally(&["export", "--out", &both, "--attest", "--nonce", nonce])
            .unwrap(),
        "export --attest",
    );
    let att = format!("{both}.att");
    let run = verify(
        &daemon,
        &both,
        &id,
        &["--attestation", &att, "--nonce", nonce],
    );
    expect(&run, 0, "verdict:            PASS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_anchors_what_was_acked_from_the_journal() {
    //! v1: a clean shutdown right after small appends made no final anchor
    //! (the drain did not apply the ack journal first).
    let Some(tpm) = Swtpm::start() else { return };
    let mut daemon = daemon(&tpm);
    let id = identity(&daemon, "identity.json");
    append(&daemon, 0, 3).await; // small: acked from the ack journal
    assert!(daemon.terminate().unwrap().success());
    daemon.restart().unwrap();
    let status: serde_json::Value =
        serde_json::from_str(&ok(daemon.tally(&["status", "--json"]).unwrap(), "status")).unwrap();
    assert_eq!(status["size"], 3);
    assert_eq!(status["unanchored_events"], 0, "{status}");
    assert_eq!(status["last_anchor_size"], 3, "{status}");
    let bundle = export(&daemon, "b.bundle");
    let fresh = attest(&daemon, "77", None, "f.att");
    let run = verify(
        &daemon,
        &bundle,
        &id,
        &["--attestation", &fresh, "--nonce", "77"],
    );
    expect(
        &run,
        0,
        "seqs 0..2 (3 records) covered by closed anchors; unprotected tail: none",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewed_power_loss_gap_passes_once_acknowledged() {
    //! An unclean TPM reset makes the orderly counter jump: a gap, FAIL,
    //! until a person acknowledges exactly that gap; then "PASS with 1
    //! acknowledged gap", and the acknowledgement accepts no other gap.
    let Some(mut tpm) = Swtpm::start() else {
        return;
    };
    let mut daemon = daemon(&tpm);
    let id = identity(&daemon, "identity.json");
    append(&daemon, 0, 10).await;
    let before = anchor(&daemon);
    assert!(daemon.terminate().unwrap().success());
    tpm.kill(); // power loss: no TPM2_Shutdown
    tpm.restart();
    let err = refused(&mut daemon);
    assert!(err.contains("--accept-rollback"), "{err}");
    daemon.set_args(&["run", "--accept-rollback"]);
    daemon.restart().unwrap();
    daemon.set_args(&[]);
    append(&daemon, 10, 10).await;
    anchor(&daemon);
    let bundle = export(&daemon, "b.bundle");
    let fresh = attest(&daemon, "aa", None, "f.att");
    let fresh_args = ["--attestation", fresh.as_str(), "--nonce", "aa"];
    let run = verify(&daemon, &bundle, &id, &fresh_args);
    expect(&run, 1, "counter gap");

    let ack = file(&daemon, "gap.json");
    ok(
        daemon
            .tally(&[
                "gap-ack",
                &bundle,
                "--identity",
                &id,
                "--after",
                &before.to_string(),
                "--reviewed-by",
                "oncall",
                "--reason",
                "power cut in rack 4",
                "--out",
                &ack,
            ])
            .unwrap(),
        "gap-ack",
    );
    let mut with_ack = fresh_args.to_vec();
    with_ack.extend(["--accept-gap", ack.as_str()]);
    let run = verify(&daemon, &bundle, &id, &with_ack);
    expect(&run, 0, "PASS with 1 acknowledged gap (counter");
    assert!(run.stdout.contains("power cut in rack 4"), "{}", run.stdout);
}

#[test]
fn the_documented_hardening_makes_tpm2_clear_fail() {
    //! docs/OPERATIONS.md "Hardening": set a lockout auth kept off the host,
    //! then TPM2_ClearControl(disable): TPM2_Clear fails with the empty
    //! lockout auth, and even with the secret, until platform auth re-enables it.
    let Some(tpm) = Swtpm::start() else { return };
    let ran = |bin: &str, args: &[&str]| {
        let out = tpm.tool(bin, args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(ran("tpm2_changeauth", &["-c", "lockout", "kept-off-host"]).0);
    assert!(
        ran(
            "tpm2_clearcontrol",
            &["-C", "l", "-P", "kept-off-host", "s"]
        )
        .0
    );
    let caps = tpm.tool("tpm2_getcap", &["properties-variable"]);
    let caps = String::from_utf8_lossy(&caps.stdout).into_owned();
    assert!(
        caps.lines()
            .any(|line| line.contains("disableClear") && line.trim_end().ends_with('1')),
        "{caps}"
    );
    // With the secret first: one wrong attempt locks the lockout hierarchy
    // out (dictionary attack protection) and would hide the "disabled".
    let (cleared, err) = ran("tpm2_clear", &["-c", "l", "kept-off-host"]);
    assert!(!cleared, "TPM2_Clear must stay disabled");
    assert!(err.contains("disabled"), "{err}");
    let (cleared, err) = ran("tpm2_clear", &["-c", "l"]);
    assert!(!cleared, "TPM2_Clear with the empty lockout auth must fail");
    assert!(err.contains("authorization"), "{err}");
}
