//! Content beside the records, end to end (issue 15, verify slice): exports
//! carry each record's content in a section of its own that `tally verify`
//! checks against the commitment; `--redact` leaves all of it out and still
//! verifies; `tally disclose` proves one record's content alone; `tail` and
//! `show` join it back. Real daemon, real swtpm; root's attacks edit or drop
//! a content section in the bundle file.

use prost::Message;
use serde_json::Value;
use tally_attest::bundle::BundleHeader;
use tally_attest::range::RangeHeader;
use tally_tests::anchored::{anchor, append, ok, sections, write_sections, HEADER, RECORD};
use tally_tests::swtpm::Swtpm;
use tally_tests::{Daemon, Run};

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

fn export(daemon: &Daemon, name: &str, args: &[&str]) -> String {
    let out = file(daemon, name);
    let mut all = vec!["export", "--out", &out];
    all.extend_from_slice(args);
    ok(daemon.tally(&all).unwrap(), "tally export");
    out
}

/// `tally verify FILE --identity ID --json`: the run and its document.
fn verify_json(daemon: &Daemon, bundle: &str, id: &str) -> (Run, Value) {
    let run = daemon
        .tally(&["verify", bundle, "--identity", id, "--json"])
        .unwrap();
    let doc = serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|err| panic!("verify --json printed no document ({err}): {run:?}"));
    (run, doc)
}

fn check<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|check| check["name"] == name))
        .unwrap_or_else(|| panic!("no {name} check in {doc}"))
}

/// The seq in a content section (`seq u64 BE || opening`).
fn content_seq(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes[..8].try_into().unwrap())
}

/// A daemon with 20 standard events (each with a payload) and an anchor.
async fn anchored_log(tpm: &Swtpm) -> Daemon {
    let daemon = tally_tests::anchored::daemon(tpm, "");
    append(&daemon, 0, 20).await;
    anchor(&daemon);
    daemon
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_carries_each_content_and_an_edit_of_one_fails_naming_its_seq() {
    let Some(tpm) = Swtpm::start() else { return };
    let daemon = anchored_log(&tpm).await;
    let id = identity(&daemon);
    let bundle = export(&daemon, "log.tally", &[]);

    // One content section right after each record, for that record's seq.
    let all = sections(&bundle);
    let mut last_record = None;
    let mut contents = Vec::new();
    for (kind, bytes) in &all {
        match *kind {
            RECORD => last_record = Some(tally_attest::RecordHeader::parse(bytes).unwrap().0.seq),
            CONTENT => {
                assert_eq!(
                    Some(content_seq(bytes)),
                    last_record,
                    "content after its record"
                );
                contents.push(content_seq(bytes));
            }
            _ => {}
        }
    }
    assert_eq!(contents, (0..20).collect::<Vec<_>>());
    let (run, doc) = verify_json(&daemon, &bundle, &id);
    assert_ne!(run.code, 1, "{run:?}");
    let content = check(&doc, "content");
    assert_eq!(content["status"], "pass", "{content}");
    assert_eq!(
        (
            &content["committed"],
            &content["opened"],
            &content["erased"]
        ),
        (&Value::from(20), &Value::from(20), &Value::from(0))
    );

    // Root flips one byte of seq 7's content: FAIL naming seq 7.
    let mut edited = all.clone();
    let seven = edited
        .iter_mut()
        .find(|(kind, bytes)| *kind == CONTENT && content_seq(bytes) == 7)
        .unwrap();
    *seven.1.last_mut().unwrap() ^= 1;
    let path = file(&daemon, "edited.tally");
    write_sections(&path, &edited);
    let (run, doc) = verify_json(&daemon, &path, &id);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(check(&doc, "content")["kind"], "content_mismatch");
    assert_eq!(check(&doc, "content")["seq"], 7);
    // The chain and the anchors still hold: the content is not in them.
    assert_eq!(check(&doc, "chain")["status"], "pass");
    assert_eq!(check(&doc, "anchors")["status"], "pass");
    let text = daemon.tally(&["verify", &path, "--identity", &id]).unwrap();
    assert!(text.stdout.contains("seq 7"), "{text:?}");

    // Root drops seq 5's content with no erasure record: FAIL naming seq 5.
    let dropped: Vec<_> = all
        .iter()
        .filter(|(kind, bytes)| !(*kind == CONTENT && content_seq(bytes) == 5))
        .cloned()
        .collect();
    write_sections(&path, &dropped);
    let (run, doc) = verify_json(&daemon, &path, &id);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(check(&doc, "content")["kind"], "content_missing");
    assert_eq!(check(&doc, "content")["seq"], 5);

    // Root swaps the contents of seqs 3 and 4 (each keeps its seq prefix).
    let mut swapped = all.clone();
    let at = |s: &Vec<(u8, Vec<u8>)>, seq| {
        s.iter()
            .position(|(kind, bytes)| *kind == CONTENT && content_seq(bytes) == seq)
            .unwrap()
    };
    let (three, four) = (at(&swapped, 3), at(&swapped, 4));
    let opening3 = swapped[three].1[8..].to_vec();
    let opening4 = swapped[four].1[8..].to_vec();
    swapped[three].1.truncate(8);
    swapped[three].1.extend_from_slice(&opening4);
    swapped[four].1.truncate(8);
    swapped[four].1.extend_from_slice(&opening3);
    write_sections(&path, &swapped);
    let (run, doc) = verify_json(&daemon, &path, &id);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(check(&doc, "content")["seq"], 3);

    // `tally verify --live` judges the same content the same way.
    let live = daemon
        .tally(&["verify", "--live", "--identity", &id, "--json"])
        .unwrap();
    let live: Value = serde_json::from_str(live.stdout.trim()).unwrap();
    assert_eq!(check(&live, "content")["opened"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_and_show_join_the_content_back_and_refuse_an_edited_one() {
    let Some(tpm) = Swtpm::start() else { return };
    let daemon = anchored_log(&tpm).await;
    let tail = ok(
        daemon.tally(&["tail", "-n", "all", "-o", "json"]).unwrap(),
        "tail",
    );
    let bundle = export(&daemon, "log.tally", &[]);
    let show = ok(
        daemon.tally(&["show", &bundle, "-o", "json"]).unwrap(),
        "show",
    );
    assert_eq!(tail, show, "show of an export equals tail");
    for (i, line) in tail.lines().enumerate() {
        let record: Value = serde_json::from_str(line).unwrap();
        assert_eq!(record["content"], "present", "{record}");
        let sent = tally_tests::event(i as u64);
        assert_eq!(
            record["payload"],
            String::from_utf8(sent.payload).unwrap().as_str(),
            "{record}"
        );
    }

    // A content section edited in the bundle: show refuses, naming the seq.
    let mut edited = sections(&bundle);
    let nine = edited
        .iter_mut()
        .find(|(kind, bytes)| *kind == CONTENT && content_seq(bytes) == 9)
        .unwrap();
    nine.1[40] ^= 1;
    let path = file(&daemon, "edited.tally");
    write_sections(&path, &edited);
    let run = daemon.tally(&["show", &path]).unwrap();
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("seq 9"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redacted_export_holds_no_content_and_still_verifies() {
    let Some(tpm) = Swtpm::start() else { return };
    let daemon = anchored_log(&tpm).await;
    let id = identity(&daemon);
    let full = export(&daemon, "full.tally", &[]);
    let redacted = export(&daemon, "redacted.tally", &["--redact"]);
    let all = sections(&redacted);
    assert!(all.iter().all(|(kind, _)| *kind != CONTENT));
    assert_eq!(all[0].0, HEADER);
    assert!(BundleHeader::decode(all[0].1.as_slice()).unwrap().redacted);
    // No byte of any payload is in the file.
    let bytes = std::fs::read(&redacted).unwrap();
    let payload = tally_tests::event(11).payload;
    assert!(!bytes
        .windows(payload.len())
        .any(|w| w == payload.as_slice()));

    let (run, doc) = verify_json(&daemon, &redacted, &id);
    let (full_run, full_doc) = verify_json(&daemon, &full, &id);
    assert_eq!(run.code, full_run.code, "{run:?}");
    assert_eq!(doc["verdict"], full_doc["verdict"]);
    let content = check(&doc, "content");
    assert_eq!(content["status"], "pass", "{content}");
    assert_eq!(content["redacted"], 20);
    assert_eq!(content["opened"], 0);
    let shown = ok(daemon.tally(&["show", &redacted]).unwrap(), "show");
    assert!(
        shown
            .lines()
            .all(|line| line.ends_with("[content redacted]")),
        "{shown}"
    );

    // Root slips a content section into the redacted bundle: refused.
    let mut forged = all.clone();
    let from_full = sections(&full)
        .into_iter()
        .find(|(kind, bytes)| *kind == CONTENT && content_seq(bytes) == 2)
        .unwrap();
    let after = forged
        .iter()
        .position(|(kind, bytes)| {
            *kind == RECORD && tally_attest::RecordHeader::parse(bytes).unwrap().0.seq == 2
        })
        .unwrap();
    forged.insert(after + 1, from_full);
    let path = file(&daemon, "forged.tally");
    write_sections(&path, &forged);
    let (run, doc) = verify_json(&daemon, &path, &id);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(check(&doc, "bundle")["status"], "fail");

    // A redacted range export too.
    let range = export(
        &daemon,
        "redacted.range",
        &["--from", "3", "--to", "6", "--redact"],
    );
    let bytes = std::fs::read(&range).unwrap();
    let run = daemon
        .tally(&["verify", &range, "--identity", &id])
        .unwrap();
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!bytes
        .windows(payload.len())
        .any(|w| w == payload.as_slice()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disclosure_proves_one_content_alone_and_refuses_what_it_cannot() {
    let Some(tpm) = Swtpm::start() else { return };
    let daemon = anchored_log(&tpm).await;
    let id = identity(&daemon);
    let out = file(&daemon, "seven.range");
    ok(
        daemon
            .tally(&["disclose", "--seq", "7", "-o", &out])
            .unwrap(),
        "disclose",
    );
    let bytes = std::fs::read(&out).unwrap();
    assert!(tally_attest::range::is_range_bundle(&bytes));
    let run = daemon.tally(&["verify", &out, "--identity", &id]).unwrap();
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("disclosed:          seq 7: "),
        "{run:?}"
    );
    let doc: Value = serde_json::from_str(
        daemon
            .tally(&["verify", &out, "--identity", &id, "--json"])
            .unwrap()
            .stdout
            .trim(),
    )
    .unwrap();
    assert_eq!(doc["disclosed"]["seq"], 7);
    assert_eq!(doc["count"], 1);
    // Its content is seq 7's and no other record's.
    let sent = tally_tests::event(7).payload;
    assert!(bytes.windows(sent.len()).any(|w| w == sent.as_slice()));
    let other = tally_tests::event(8).payload;
    assert!(!bytes.windows(other.len()).any(|w| w == other.as_slice()));

    // Root edits the disclosed content: FAIL naming seq 7.
    let mut edited = bytes.clone();
    let last = edited.len() - 6; // inside the content section, before the end section
    edited[last] ^= 1;
    let path = file(&daemon, "edited.range");
    std::fs::write(&path, &edited).unwrap();
    let run = daemon.tally(&["verify", &path, "--identity", &id]).unwrap();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("seq 7"), "{run:?}");
    let header = RangeHeader::decode(&bytes[16 + 5..16 + 5 + bytes[16 + 4] as usize]).unwrap();
    assert!(!header.redacted);

    // Not anchored yet, not in the log, never had content: refused clearly.
    append(&daemon, 20, 1).await;
    let run = daemon.tally(&["disclose", "--seq", "20"]).unwrap();
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("not covered by an anchor"), "{run:?}");
    let run = daemon.tally(&["disclose", "--seq", "99"]).unwrap();
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("not in the log"), "{run:?}");
    ok(
        daemon.tally(&["append", "--kind", "heartbeat"]).unwrap(),
        "append without payload",
    );
    anchor(&daemon);
    let run = daemon.tally(&["disclose", "--seq", "21"]).unwrap();
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("no content to disclose"), "{run:?}");
}
