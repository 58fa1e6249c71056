//! `tally verify --live`: the daemon's log streamed into the same verifier
//! a bundle goes through, with no bundle file; and `--trusted` over the
//! daemon, which reads only what is new. Real tallyd, real swtpm; the
//! store is edited with the daemon stopped, as root would, and the daemon
//! started again on it.

use heed::types::Bytes;
use heed::RwTxn;
use serde_json::Value;
use tally_attest::identity::LogIdentity;
use tally_tests::anchored::{anchor, append, ok};
use tally_tests::store_edit::{self, Dbs};
use tally_tests::swtpm::Swtpm;
use tally_tests::{Daemon, Run};

fn daemon(tpm: &Swtpm) -> Daemon {
    tally_tests::anchored::daemon(tpm, "")
}

fn file(daemon: &Daemon, name: &str) -> String {
    daemon.dir().join(name).display().to_string()
}

fn identity(daemon: &Daemon) -> String {
    let json = ok(daemon.tallyd(&["identity"]).unwrap(), "tallyd identity");
    LogIdentity::from_json(&json).expect("tallyd identity prints a valid identity");
    let path = file(daemon, "identity.json");
    std::fs::write(&path, json).unwrap();
    path
}

/// `tally verify ARGS --json`: the run and its document.
fn verify_json(daemon: &Daemon, args: &[&str]) -> (Run, Value) {
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    all.push("--json");
    let run = daemon.tally(&all).unwrap();
    let doc: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|err| panic!("verify --json printed no JSON ({err}): {run:?}"));
    (run, doc)
}

fn check<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|check| check["name"] == name))
        .unwrap_or_else(|| panic!("no {name} check in {doc}"))
}

/// What must be equal between a bundle's and the daemon's verification.
fn verdicts(doc: &Value) -> Value {
    let statuses: Vec<Value> = doc["checks"]
        .as_array()
        .map(|checks| {
            checks
                .iter()
                .map(|check| serde_json::json!([check["name"], check["status"]]))
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({
        "verdict": doc["verdict"], "exit_code": doc["exit_code"], "size": doc["size"],
        "head_hash": doc["head_hash"], "anchor_count": doc["anchor_count"],
        "protected_records": doc["protected_records"], "unprotected_tail": doc["unprotected_tail"],
        "first_bad_seq": doc["first_bad_seq"], "checks": statuses,
    })
}

/// Runs `edit` on the stopped daemon's store, then starts it again.
fn edit_store<T>(
    daemon: &mut Daemon,
    edit: impl FnOnce(&mut RwTxn<'_>, &Dbs) -> anyhow::Result<T>,
) -> T {
    assert!(daemon.terminate().unwrap().success());
    let out = store_edit::edit(&daemon.data_dir(), edit).unwrap();
    daemon.restart().expect("tallyd starts on the edited store");
    out
}

fn record(txn: &RwTxn<'_>, dbs: &Dbs, seq: u64) -> Vec<u8> {
    dbs.records
        .get(txn, &seq)
        .unwrap()
        .unwrap_or_else(|| panic!("no record {seq}"))
        .to_vec()
}

fn put(txn: &mut RwTxn<'_>, dbs: &Dbs, seq: u64, bytes: &[u8]) {
    dbs.records.put(txn, &seq, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_verification_equals_bundle_verification() {
    //! The daemon path must be the bundle path: same verdicts, counts,
    //! coverage and head on the same log, with and without the identity,
    //! and a fresh attestation taken in the same run makes it current.
    let Some(tpm) = Swtpm::start() else { return };
    let daemon = daemon(&tpm);
    let id = identity(&daemon);
    append(&daemon, 0, 120).await;
    anchor(&daemon);
    append(&daemon, 120, 30).await;
    anchor(&daemon);
    append(&daemon, 150, 7).await;
    let bundle = file(&daemon, "b.bundle");
    ok(
        daemon.tally(&["export", "--out", &bundle]).unwrap(),
        "export",
    );

    for trust in [vec!["--identity", id.as_str()], vec![]] {
        let mut args = vec![bundle.as_str()];
        args.extend(&trust);
        let (from_file, file_doc) = verify_json(&daemon, &args);
        let mut args = vec!["--live"];
        args.extend(&trust);
        let (live, live_doc) = verify_json(&daemon, &args);
        assert_eq!(
            from_file.code, live.code,
            "{}\n{}",
            from_file.stdout, live.stdout
        );
        assert_eq!(verdicts(&file_doc), verdicts(&live_doc));
        assert_eq!(live_doc["size"], 157);
        assert_eq!(file_doc["source"]["kind"], "bundle");
        assert_eq!(live_doc["source"]["kind"], "daemon");
        assert_eq!(live_doc["source"]["from_seq"], 0);
    }
    let (_, doc) = verify_json(&daemon, &["--live", "--identity", &id]);
    assert_eq!(doc["anchor_count"], 3, "genesis and two anchors: {doc}");
    assert_eq!(doc["protected_records"], 120, "{doc}");

    // A fresh attestation in the same run: current, and PASS.
    let run = daemon
        .tally(&["verify", "--live", "--attest", "--identity", &id])
        .unwrap();
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stdout.contains("current:            OK"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("source:             the daemon at"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("verdict:            PASS"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_verification_names_an_edited_or_dropped_record_and_a_dropped_anchor() {
    //! Root edits the stopped daemon's store and starts it again: the
    //! stream must FAIL naming the seq, as a bundle of the same bytes would.
    let Some(tpm) = Swtpm::start() else { return };
    let mut daemon = daemon(&tpm);
    let id = identity(&daemon);
    append(&daemon, 0, 100).await;
    anchor(&daemon);
    append(&daemon, 100, 50).await;
    anchor(&daemon);
    append(&daemon, 150, 50).await;
    anchor(&daemon);
    let (run, _) = verify_json(&daemon, &["--live", "--identity", &id]);
    assert_eq!(
        run.code, 3,
        "honest, but not current without --attest: {}",
        run.stdout
    );

    // A payload byte of seq 30.
    let original = edit_store(&mut daemon, |txn, dbs| {
        let original = record(txn, dbs, 30);
        let mut edited = original.clone();
        *edited.last_mut().unwrap() ^= 1;
        put(txn, dbs, 30, &edited);
        Ok(original)
    });
    let (run, doc) = verify_json(&daemon, &["--live", "--identity", &id]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(check(&doc, "chain")["kind"], "record_modified", "{doc}");
    assert_eq!(doc["first_bad_seq"], 30, "{doc}");

    // Seq 40 deleted (seq 30 restored).
    edit_store(&mut daemon, |txn, dbs| {
        put(txn, dbs, 30, &original);
        dbs.records.delete(txn, &40).unwrap();
        Ok(())
    });
    let (run, doc) = verify_json(&daemon, &["--live", "--identity", &id]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(doc["first_bad_seq"], 40, "{doc}");
    assert_eq!(check(&doc, "chain")["kind"], "missing", "{doc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_verification_fails_a_dropped_anchor() {
    //! An anchor deleted from the store is a counter gap in the stream.
    let Some(tpm) = Swtpm::start() else { return };
    let mut daemon = daemon(&tpm);
    let id = identity(&daemon);
    let mut counters = Vec::new();
    for round in 0..3 {
        append(&daemon, round * 40, 40).await;
        counters.push(anchor(&daemon));
    }
    edit_store(&mut daemon, |txn, dbs| {
        let anchors: &heed::Database<heed::types::U64<heed::byteorder::BigEndian>, Bytes> =
            &dbs.anchors;
        assert!(
            anchors.delete(txn, &counters[1]).unwrap(),
            "anchor {} stored",
            counters[1]
        );
        Ok(())
    });
    let (run, doc) = verify_json(&daemon, &["--live", "--identity", &id]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(check(&doc, "counter")["status"], "fail", "{doc}");
    assert!(
        run.stdout.contains(&counters[1].to_string()),
        "names the gap: {}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_live_reads_only_what_is_new_and_fails_a_rewrite() {
    //! `--trusted` over the daemon replays only the records after the
    //! trusted anchor; records after it that do not extend the trusted tree
    //! (rewritten before or after it, even re-chained) must FAIL.
    let Some(tpm) = Swtpm::start() else { return };
    let mut daemon = daemon(&tpm);
    let id = identity(&daemon);
    append(&daemon, 0, 100).await;
    anchor(&daemon);
    let trusted = file(&daemon, "trusted.anchor");
    let run = daemon
        .tally(&[
            "verify",
            "--live",
            "--attest",
            "--identity",
            &id,
            "--save-trusted",
            &trusted,
        ])
        .unwrap();
    assert_eq!(run.code, 0, "{}", run.stdout);
    append(&daemon, 100, 50).await;
    anchor(&daemon);
    append(&daemon, 150, 5).await;

    let (run, doc) = verify_json(
        &daemon,
        &["--live", "--identity", &id, "--trusted", &trusted],
    );
    assert_eq!(run.code, 3, "PASS but for currentness: {}", run.stdout);
    assert_eq!(doc["source"]["from_seq"], 100, "{doc}");
    assert_eq!(check(&doc, "chain")["from_seq"], 100, "{doc}");
    assert_eq!(check(&doc, "chain")["status"], "pass", "{doc}");
    assert_eq!(check(&doc, "anchors")["status"], "pass", "{doc}");
    assert_eq!(doc["size"], 155);
    let run = daemon
        .tally(&[
            "verify",
            "--live",
            "--attest",
            "--identity",
            &id,
            "--trusted",
            &trusted,
        ])
        .unwrap();
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stdout.contains("seqs 100..154 replayed"),
        "{}",
        run.stdout
    );

    // Root re-chains the records from seq 120 after editing it: the links
    // hold, the newer anchor's root does not.
    let originals = edit_store(&mut daemon, |txn, dbs| {
        let originals: Vec<Vec<u8>> = (0..155).map(|seq| record(txn, dbs, seq)).collect();
        let mut prev = tally_attest::entry_hash(&originals[119]);
        for seq in 120..155u64 {
            let mut bytes = originals[seq as usize].clone();
            if seq == 120 {
                *bytes.last_mut().unwrap() ^= 1;
            }
            // prev_hash sits right after the version byte and the seq.
            bytes[9..41].copy_from_slice(&prev);
            prev = tally_attest::entry_hash(&bytes);
            put(txn, dbs, seq, &bytes);
        }
        // The head names the last record's hash; root rewrites it too.
        let head = dbs.meta.get(txn, "head").unwrap().unwrap().to_vec();
        let mut new_head = head.clone();
        new_head[8..].copy_from_slice(&prev);
        dbs.meta.put(txn, "head", &new_head).unwrap();
        Ok((originals, head))
    });
    let (originals, head) = originals;
    let (run, doc) = verify_json(
        &daemon,
        &["--live", "--identity", &id, "--trusted", &trusted],
    );
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(
        check(&doc, "anchors")["kind"],
        "checkpoint_mismatch",
        "{doc}"
    );

    // Root edits seq 99, the trusted tree's last leaf (later records
    // restored): the start does not extend the trusted tree.
    edit_store(&mut daemon, |txn, dbs| {
        for (seq, bytes) in originals.iter().enumerate() {
            put(txn, dbs, seq as u64, bytes);
        }
        dbs.meta.put(txn, "head", &head).unwrap();
        let mut bytes = originals[99].clone();
        *bytes.last_mut().unwrap() ^= 1;
        put(txn, dbs, 99, &bytes);
        Ok(())
    });
    let (run, doc) = verify_json(
        &daemon,
        &["--live", "--identity", &id, "--trusted", &trusted],
    );
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(check(&doc, "anchors")["kind"], "start_unproven", "{doc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_anchor_of_another_log_is_refused() {
    //! A checkpoint trusted for one log is no starting point for another.
    let Some(tpm) = Swtpm::start() else { return };
    let Some(other_tpm) = Swtpm::start() else {
        return;
    };
    let first = daemon(&tpm);
    let id = identity(&first);
    let other = daemon(&other_tpm);
    append(&other, 0, 20).await;
    anchor(&other);
    let other_id = identity(&other);
    let foreign = file(&other, "foreign.anchor");
    let run = other
        .tally(&[
            "verify",
            "--live",
            "--attest",
            "--identity",
            &other_id,
            "--save-trusted",
            &foreign,
        ])
        .unwrap();
    assert_eq!(run.code, 0, "{}", run.stdout);
    append(&first, 0, 20).await;
    anchor(&first);
    let run = first
        .tally(&["verify", "--live", "--identity", &id, "--trusted", &foreign])
        .unwrap();
    assert_eq!(run.code, 2, "refused before verifying: {run:?}");
    assert!(run.stderr.contains("trusted anchor"), "{run:?}");
}
