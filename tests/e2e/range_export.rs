//! Range exports (`tally export --from/--to/--since/--until`) that verify on
//! their own: only the selected records, the anchor they are proven against
//! and the Merkle hashes around them, checked by `tally verify` against the
//! log's identity without the rest of the log. Real daemon, real swtpm; the
//! attacks are root's (edit the bundle's bytes, drop or replace a record,
//! swap a proof hash, bring another log's anchor).

use std::path::Path;
use std::process::{Command, Stdio};

use prost::Message;
use tally_attest::anchor::decode_anchor;
use tally_attest::bundle::BundleHeader;
use tally_attest::identity::LogIdentity;
use tally_attest::range::{verify_range_bundle, RangeAnchorVerdict, RangeHeader, MAGIC};
use tally_attest::verify::Verdict;
use tally_tests::anchored::{anchor, append, ok, ANCHOR, HEADER, RECORD};
use tally_tests::skip::{skip, Needs, Part};
use tally_tests::swtpm::Swtpm;
use tally_tests::{binary, Daemon, Run};

/// Section kind of the range proof.
const PROOF: u8 = tally_attest::bundle::SectionKind::Proof as u8;
const CONTENT: u8 = tally_attest::bundle::SectionKind::Content as u8;

fn file(daemon: &Daemon, name: &str) -> String {
    daemon.dir().join(name).display().to_string()
}

fn identity(daemon: &Daemon) -> String {
    let json = ok(daemon.tallyd(&["identity"]).unwrap(), "tallyd identity");
    let path = file(daemon, "identity.json");
    std::fs::write(&path, json).unwrap();
    path
}

/// `tally export --out NAME ARGS...`; returns the path.
fn export(daemon: &Daemon, name: &str, args: &[&str]) -> String {
    let out = file(daemon, name);
    let mut all = vec!["export", "--out", &out];
    all.extend_from_slice(args);
    ok(daemon.tally(&all).unwrap(), "range export");
    out
}

fn verify(daemon: &Daemon, bundle: &str, id: Option<&str>) -> Run {
    let mut args = vec!["verify", bundle];
    if let Some(id) = id {
        args.extend(["--identity", id]);
    }
    daemon.tally(&args).unwrap()
}

/// The sections of a range bundle file: (kind, bytes).
fn sections(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    assert_eq!(&bytes[..MAGIC.len()], MAGIC);
    let mut out = Vec::new();
    let mut at = MAGIC.len();
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        out.push((bytes[at], bytes[at + 5..at + 5 + len].to_vec()));
        at += 5 + len;
    }
    out
}

fn assemble(sections: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    for (kind, body) in sections {
        bytes.push(*kind);
        bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
        bytes.extend_from_slice(body);
    }
    bytes
}

fn header_of(sections: &[(u8, Vec<u8>)]) -> RangeHeader {
    assert_eq!(sections[0].0, HEADER);
    RangeHeader::decode(sections[0].1.as_slice()).unwrap()
}

/// The in-process verdict on `bytes` with the identity's policy: `None` when
/// the file is not even a readable range bundle.
fn verdict(bytes: &[u8], identity: &LogIdentity) -> Option<Verdict> {
    verify_range_bundle(bytes, Some(&identity.policy))
        .ok()
        .map(|report| report.verdict())
}

/// Verifies `bytes` written as a file through the CLI: must FAIL (exit 1).
fn cli_fails(daemon: &Daemon, bytes: &[u8], id: &str, what: &str) -> String {
    let path = file(daemon, "tampered.range");
    std::fs::write(&path, bytes).unwrap();
    let run = verify(daemon, &path, Some(id));
    assert_eq!(run.code, 1, "{what}: {run:?}");
    assert!(
        run.stdout.contains("verdict:            FAIL"),
        "{what}: {run:?}"
    );
    run.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_export_verifies_alone_at_the_start_the_end_and_across_anchors() {
    let Some(tpm) = Swtpm::start() else { return };
    let daemon = tally_tests::anchored::daemon(&tpm, "");
    append(&daemon, 0, 300).await;
    anchor(&daemon);
    append(&daemon, 300, 200).await;
    anchor(&daemon);
    append(&daemon, 500, 20).await; // not anchored yet
    let id = identity(&daemon);
    let full = export(&daemon, "full.bundle", &[]);
    let full_len = std::fs::metadata(&full).unwrap().len();

    // (args, first, last, anchored size proven against)
    let cases: [(&[&str], u64, u64, u64); 7] = [
        (&["--from", "100", "--to", "149"], 100, 149, 300),
        (&["--from", "0", "--to", "0"], 0, 0, 300),
        (&["--to", "9"], 0, 9, 300),
        (&["--from", "290", "--to", "299"], 290, 299, 300),
        (&["--from", "123", "--to", "123"], 123, 123, 300),
        (&["--from", "250", "--to", "350"], 250, 350, 500),
        // --to defaults to the last record the newest anchor covers.
        (&["--from", "480"], 480, 499, 500),
    ];
    for (args, first, last, size) in cases {
        let bundle = export(&daemon, "range.bundle", args);
        let run = verify(&daemon, &bundle, Some(&id));
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        let count = last - first + 1;
        assert!(
            run.stdout.contains(&format!(
                "seqs {first}..{last} ({count} records, inclusive), proven against the anchored log of {size} records"
            )) && run.stdout.contains("verdict:            PASS"),
            "{args:?}: {}",
            run.stdout
        );
        // The bundle is its records, one anchor, and at most 2 log2(size)
        // hashes: nothing grows with the log.
        let bytes = std::fs::read(&bundle).unwrap();
        let parts = sections(&bytes);
        let kinds: Vec<u8> = parts.iter().map(|(kind, _)| *kind).collect();
        // Each record is followed by its content section (section 0x05).
        let mut expected = vec![HEADER, ANCHOR, PROOF];
        for _ in 0..count {
            expected.extend([RECORD, CONTENT]);
        }
        expected.push(0x7f);
        assert_eq!(kinds, expected, "{args:?}");
        let records: usize = parts
            .iter()
            .filter(|(kind, _)| *kind == RECORD || *kind == CONTENT)
            .map(|(_, body)| body.len() + 5)
            .sum();
        let anchor_len = parts[1].1.len();
        assert!(
            parts[2].1.len() <= 2 * 9 * 32,
            "{args:?}: proof of {} bytes",
            parts[2].1.len()
        );
        assert!(
            bytes.len() <= records + anchor_len + 1024,
            "{args:?}: {} bytes for {records} bytes of records and a {anchor_len}-byte anchor",
            bytes.len()
        );
        assert!((bytes.len() as u64) < full_len / 2, "{args:?}");

        // Without the identity: PARTIAL, as for a whole-log bundle.
        let run = verify(&daemon, &bundle, None);
        assert_eq!(run.code, 3, "{args:?}: {run:?}");
        assert!(
            run.stdout
                .contains("PARTIAL (not checked: the anchor's TPM evidence"),
            "{run:?}"
        );
    }

    // Past the newest anchor, or past the log: refused, saying what to do.
    let out = file(&daemon, "refused.bundle");
    let run = daemon
        .tally(&["export", "--out", &out, "--from", "495", "--to", "505"])
        .unwrap();
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains(
            "seq 505 is not covered by an anchor yet (the newest anchor covers 500 records"
        ) && run.stderr.contains("run `tally anchor`"),
        "{run:?}"
    );
    assert!(!Path::new(&out).exists(), "no file is left behind");
    let run = daemon
        .tally(&["export", "--out", &out, "--from", "10", "--to", "9999"])
        .unwrap();
    assert!(
        run.code == 2
            && run
                .stderr
                .contains("seq 9999 is not in the log (it holds 520 records)"),
        "{run:?}"
    );
    let run = daemon
        .tally(&["export", "--out", &out, "--from", "20", "--to", "10"])
        .unwrap();
    assert!(
        run.code == 2 && run.stderr.contains("the range is empty"),
        "{run:?}"
    );
    // After `tally anchor`, the same range exports and verifies.
    anchor(&daemon);
    let bundle = export(&daemon, "after.bundle", &["--from", "495", "--to", "505"]);
    let run = verify(&daemon, &bundle, Some(&id));
    assert!(
        run.code == 0 && run.stdout.contains("anchored log of 520 records"),
        "{run:?}"
    );

    // `--out -` into a pipe (here a file): the bundle on stdout, the summary on stderr.
    for args in [&["--from", "7", "--to", "70"][..], &[][..]] {
        let piped = file(&daemon, "piped.bundle");
        let output = Command::new(binary("tally").unwrap())
            .args(["export", "--out", "-"])
            .args(args)
            .env("TALLY_SOCKET", daemon.socket())
            .stdout(Stdio::from(std::fs::File::create(&piped).unwrap()))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("to stdout"), "{stderr}");
        assert!(!Path::new(&file(&daemon, "-")).exists(), "no file named -");
        let run = verify(&daemon, &piped, Some(&id));
        if args.is_empty() {
            // The whole log: the chain and the anchors check out (PARTIAL
            // without a fresh attestation, as any whole-log bundle).
            assert_eq!(run.code, 3, "{run:?}");
            assert!(
                run.stdout.contains("chain intact:       OK (520 records"),
                "{run:?}"
            );
        } else {
            assert_eq!(run.code, 0, "{run:?}");
            assert!(run.stdout.contains("seqs 7..70 (64 records"), "{run:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_changed_byte_dropped_record_swapped_hash_or_foreign_anchor_fails() {
    let Some(tpm) = Swtpm::start() else { return };
    let daemon = tally_tests::anchored::daemon(&tpm, "");
    append(&daemon, 0, 40).await;
    anchor(&daemon);
    append(&daemon, 40, 20).await;
    anchor(&daemon);
    let id = identity(&daemon);
    let identity = LogIdentity::from_json(&std::fs::read_to_string(&id).unwrap()).unwrap();
    let bundle = export(&daemon, "range.bundle", &["--from", "10", "--to", "12"]);
    let good = std::fs::read(&bundle).unwrap();
    assert_eq!(verdict(&good, &identity), Some(Verdict::Pass));

    // A few through the CLI: in the header, the anchor, the proof, a record.
    let parts = sections(&good);
    let offset = |section: usize| {
        MAGIC.len()
            + parts[..section]
                .iter()
                .map(|(_, body)| 5 + body.len())
                .sum::<usize>()
            + 5
    };
    for (section, within) in [(0, 3), (1, 40), (2, 5), (3, 60), (5, 100)] {
        let mut bad = good.clone();
        bad[offset(section) + within] ^= 0x80;
        cli_fails(
            &daemon,
            &bad,
            &id,
            &format!("section {section} byte {within}"),
        );
    }

    // Two proof hashes swapped, or one replaced by a record's entry hash.
    let proof = &parts[2].1;
    assert!(
        proof.len() >= 64,
        "a range inside 40 records needs at least two hashes"
    );
    let mut swapped = parts.clone();
    let mut hashes = proof.clone();
    hashes[..32].copy_from_slice(&proof[32..64]);
    hashes[32..64].copy_from_slice(&proof[..32]);
    swapped[2].1 = hashes;
    let out = cli_fails(&daemon, &assemble(&swapped), &id, "proof hashes swapped");
    assert!(
        out.contains("do not lead to the anchored root of 40 records"),
        "{out}"
    );

    // A record inside the range removed: as exported, and with the header's
    // count fixed up to match.
    // (parts: header, anchor, proof, then each record and its content.)
    let mut removed = parts.clone();
    assert_eq!((removed[5].0, removed[6].0), (RECORD, CONTENT));
    removed.drain(5..7);
    let out = cli_fails(&daemon, &assemble(&removed), &id, "record removed");
    assert!(
        out.contains("position 1 of the range holds seq 12, not seq 11"),
        "{out}"
    );
    let mut header = header_of(&removed);
    header.count = 2;
    removed[0].1 = header.encode_to_vec();
    let out = cli_fails(
        &daemon,
        &assemble(&removed),
        &id,
        "record removed, count fixed",
    );
    assert!(out.contains("holds seq 12, not seq 11"), "{out}");
    // The last record dropped with the count fixed: seqs and links hold, the root does not.
    let mut cut = parts.clone();
    assert_eq!((cut[7].0, cut[8].0), (RECORD, CONTENT));
    cut.drain(7..9);
    let mut header = header_of(&cut);
    header.count = 2;
    cut[0].1 = header.encode_to_vec();
    let out = cli_fails(
        &daemon,
        &assemble(&cut),
        &id,
        "last record cut, count fixed",
    );
    assert!(out.contains("do not lead to the anchored root"), "{out}");

    // A record replaced by one from outside the range (seq 20), as is and
    // with its seq field rewritten to 11.
    let other = export(&daemon, "other.bundle", &["--from", "20", "--to", "20"]);
    let outside = sections(&std::fs::read(&other).unwrap())[3].1.clone();
    // (Seq 11's content section goes with it: it would not follow seq 20.)
    let mut replaced = parts.clone();
    assert_eq!((replaced[5].0, replaced[6].0), (RECORD, CONTENT));
    replaced.remove(6);
    replaced[5].1 = outside.clone();
    let out = cli_fails(&daemon, &assemble(&replaced), &id, "record from outside");
    assert!(out.contains("holds seq 20, not seq 11"), "{out}");
    let mut renumbered = outside;
    renumbered[1..9].copy_from_slice(&11u64.to_be_bytes());
    replaced[5].1 = renumbered;
    let out = cli_fails(
        &daemon,
        &assemble(&replaced),
        &id,
        "record from outside, renumbered",
    );
    assert!(out.contains("seq 11: its previous-hash field"), "{out}");

    // Claimed at other seqs: the header says 11..13 for records 10..12.
    let mut shifted = parts.clone();
    let mut header = header_of(&shifted);
    header.first_seq = 11;
    shifted[0].1 = header.encode_to_vec();
    cli_fails(&daemon, &assemble(&shifted), &id, "first_seq shifted");

    // Proven against the newer anchor's size, keeping the old proof.
    let newer = export(&daemon, "newer.bundle", &["--from", "45", "--to", "46"]);
    let newer_anchor = sections(&std::fs::read(&newer).unwrap())[1].1.clone();
    let mut mixed = parts.clone();
    mixed[1].1 = newer_anchor;
    cli_fails(&daemon, &assemble(&mixed), &id, "anchor of another size");

    // The anchor of another log (its own swtpm): refused with this log's
    // identity, and named as another log's even without one.
    let Some(other_tpm) = Swtpm::start() else {
        return;
    };
    let stranger = tally_tests::anchored::daemon(&other_tpm, "");
    append(&stranger, 0, 40).await;
    anchor(&stranger);
    let theirs = export(&stranger, "theirs.bundle", &["--from", "10", "--to", "12"]);
    let theirs = sections(&std::fs::read(&theirs).unwrap());
    let mut foreign = parts.clone();
    foreign[1].1 = theirs[1].1.clone();
    let bytes = assemble(&foreign);
    let out = cli_fails(&daemon, &bytes, &id, "another log's anchor");
    assert!(out.contains("anchor valid:       FAILED"), "{out}");
    let report = verify_range_bundle(bytes.as_slice(), None).unwrap();
    assert!(
        matches!(report.anchor, RangeAnchorVerdict::WrongLog { .. }),
        "{report:?}"
    );
    assert_eq!(report.verdict(), Verdict::Fail);
    // Their whole range (anchor, proof and records, all genuine for their log)
    // under our identity.
    let path = file(&daemon, "theirs.range");
    std::fs::write(&path, assemble(&theirs)).unwrap();
    assert_eq!(verify(&daemon, &path, Some(&id)).code, 1);

    // A range bundle given the whole-log magic is not replayed as a log
    // from seq 0: its header does not even decode as a whole-log header
    // (field 4 is a count here, the head hash there).
    let mut disguised = good.clone();
    disguised[..16].copy_from_slice(tally_attest::bundle::MAGIC);
    let path = file(&daemon, "disguised.bundle");
    std::fs::write(&path, &disguised).unwrap();
    let run = verify(&daemon, &path, Some(&id));
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout
            .contains("bundle readable: FAILED: bad bundle: bundle header is malformed")
            && !run.stdout.contains("chain intact"),
        "{run:?}"
    );
    assert!(BundleHeader::decode(parts[0].1.as_slice()).is_err());

    // Last (it takes longest): every byte, through the attest verifier in-process.
    let parts = sections(&good);
    let offset = |section: usize| {
        MAGIC.len()
            + parts[..section]
                .iter()
                .map(|(_, body)| 5 + body.len())
                .sum::<usize>()
            + 5
    };
    let place = |at: usize| {
        let section = (0..parts.len())
            .rev()
            .find(|s| offset(*s) - 5 <= at)
            .unwrap_or(0);
        format!(
            "section {section} (kind {}), byte {} of it",
            parts[section].0,
            at as i64 - offset(section) as i64
        )
    };
    // One field no signature covers, in any bundle: the anchor record's
    // `created_unix_nanos` (the daemon's wall clock when it stored the
    // anchor; in a whole-log bundle the next anchor's hash binds it, but a
    // range bundle has no next anchor). prost writes it last; its value bytes
    // are the only ones whose change leaves a PASS, and no verdict shows them.
    let anchor_bytes = &parts[1].1;
    let created = decode_anchor(anchor_bytes).unwrap().created_unix_nanos;
    let mut field = Vec::new();
    prost::encoding::int64::encode(3, &created, &mut field);
    assert!(
        anchor_bytes.ends_with(&field),
        "created_unix_nanos is the anchor's last field"
    );
    let anchor_end = offset(1) + anchor_bytes.len();
    let unsigned = anchor_end - (field.len() - 1)..anchor_end;
    for at in 0..good.len() {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        let got = verdict(&bad, &identity);
        if unsigned.contains(&at) {
            assert_eq!(got, Some(Verdict::Pass), "byte {at}: created_unix_nanos");
            continue;
        }
        assert!(
            matches!(got, None | Some(Verdict::Fail)),
            "flipping bit 0 of byte {at} of {} ({}) gave {got:?}",
            good.len(),
            place(at)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_and_until_pick_the_records_received_in_the_window() {
    let Some(tpm) = Swtpm::start() else { return };
    let daemon = tally_tests::anchored::daemon(&tpm, "");
    append(&daemon, 0, 10).await;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    // Whole seconds: wait until `start` has begun.
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        < start
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    append(&daemon, 10, 10).await;
    let end = start + 2;
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        < end
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    append(&daemon, 20, 10).await;
    anchor(&daemon);
    let id = identity(&daemon);
    let since = format!("@{start}");
    let until = format!("@{end}");
    let out = file(&daemon, "window.bundle");
    let args = [
        "export", "--out", &out, "--since", &since, "--until", &until,
    ];
    let client = daemon.client().await.unwrap();
    if !client.server_hello().read_filters {
        // Until the daemon evaluates filters, the CLI refuses before sending.
        let run = daemon.tally(&args).unwrap();
        assert_eq!(run.code, 2, "{run:?}");
        assert!(
            run.stderr.contains("the daemon predates read filters"),
            "{run:?}"
        );
        skip(
            Needs::ThisMachine,
            Part::Only("--since/--until picking seqs 10..19"),
            "this tallyd's hello has no read_filters (the daemon-side filters are not merged yet)",
        );
        return;
    }
    ok(daemon.tally(&args).unwrap(), "export --since --until");
    let run = verify(&daemon, &out, Some(&id));
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("seqs 10..19 (10 records"), "{run:?}");
}

#[test]
fn export_to_a_terminal_is_refused_before_connecting() {
    //! `--out -` with stdout on a terminal would print a binary bundle there.
    let tally = binary("tally").unwrap().display().to_string();
    // util-linux `script` gives the command a pseudo-terminal as stdout.
    let output = Command::new("script")
        .args([
            "-qec",
            &format!("{tally} export --out - --from 1 --to 2"),
            "/dev/null",
        ])
        .env("TALLY_SOCKET", "/nonexistent/tally.sock")
        .stdin(Stdio::null())
        .output();
    let Ok(output) = output else {
        skip(
            Needs::ThisMachine,
            Part::Whole,
            "util-linux `script` (a pseudo-terminal) is not installed",
        );
        return;
    };
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains("refusing to write a bundle (binary) to a terminal"),
        "{text}"
    );
    assert!(
        !text.contains("cannot connect"),
        "refused before connecting: {text}"
    );
}

/// `tally verify --json` on a range bundle is schema 1 (docs/VERIFY-JSON.md):
/// the range's fields and the `anchor` and `records` checks, with the
/// damage's kind and seq when a record was edited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_json_of_a_range_bundle_names_the_checks_and_the_damage() {
    let Some(tpm) = Swtpm::start() else { return };
    let daemon = tally_tests::anchored::daemon(&tpm, "");
    append(&daemon, 0, 40).await;
    anchor(&daemon);
    let id = identity(&daemon);
    let range = export(&daemon, "r.range", &["--from", "10", "--to", "19"]);
    let json = |path: &str, id: Option<&str>| {
        let mut args = vec!["verify", path, "--json"];
        if let Some(id) = id {
            args.extend(["--identity", id]);
        }
        let run = daemon.tally(&args).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(doc["exit_code"], run.code, "{run:?}");
        doc
    };
    let pass = json(&range, Some(&id));
    assert_eq!(pass["schema"], 1);
    assert_eq!(pass["verdict"], "pass");
    assert_eq!(pass["bundle_kind"], "range");
    assert_eq!(
        (pass["first_seq"].as_u64(), pass["last_seq"].as_u64()),
        (Some(10), Some(19))
    );
    assert_eq!(pass["tree_size"], 40);
    let names: Vec<_> = pass["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].clone(), c["status"].clone()))
        .collect();
    assert_eq!(
        names,
        [
            ("anchor".into(), "pass".into()),
            ("records".into(), "pass".into()),
            ("content".into(), "pass".into())
        ]
    );

    let partial = json(&range, None);
    assert_eq!(partial["verdict"], "partial");
    assert_eq!(partial["exit_code"], 3);
    assert_eq!(partial["checks"][0]["status"], "skipped");

    // Root edits the body of the range's fourth record (seq 13): its link to
    // seq 14 breaks.
    let mut parts = sections(&std::fs::read(&range).unwrap());
    let records: Vec<usize> = (0..parts.len()).filter(|&i| parts[i].0 == RECORD).collect();
    let body = &mut parts[records[3]].1;
    let last = body.len() - 1;
    body[last] ^= 1;
    let tampered = file(&daemon, "t.range");
    std::fs::write(&tampered, assemble(&parts)).unwrap();
    let fail = json(&tampered, Some(&id));
    assert_eq!(fail["verdict"], "fail");
    let records_check = &fail["checks"][1];
    assert_eq!(records_check["name"], "records");
    assert_eq!(records_check["status"], "fail");
    assert_eq!(records_check["kind"], "link_broken", "{fail}");
    assert_eq!(records_check["seq"], 14, "{fail}");
}

/// `tally show` reads a range bundle as it reads a whole-log one: the
/// range's records, in tail's output, offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_displays_a_range_bundle_as_tail_shows_the_same_seqs() {
    let Some(tpm) = Swtpm::start() else { return };
    let mut daemon = tally_tests::anchored::daemon(&tpm, "");
    append(&daemon, 0, 30).await;
    anchor(&daemon);
    let range = export(&daemon, "s.range", &["--from", "10", "--to", "19"]);
    let tail = ok(
        daemon
            .tally(&["tail", "--from", "10", "-o", "json"])
            .unwrap(),
        "tail",
    );
    daemon.terminate().unwrap();
    let shown = ok(
        daemon.tally(&["show", &range, "-o", "json"]).unwrap(),
        "show",
    );
    let expected: String = tail
        .lines()
        .take(10)
        .map(|line| format!("{line}\n"))
        .collect();
    assert_eq!(shown, expected);
    let seqs: Vec<u64> = shown
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (10..20).collect::<Vec<_>>());
}
