//! Erasure end to end (docs/DESIGN.md section 3b): `tally erase` by each
//! selector against the real tallyd; afterwards no file of the data
//! directory (nor a fresh export) holds the content or the key that could
//! open it; the erasure is itself in the log; a peer without the admin role
//! is refused and recorded; retention erases on schedule. The verifier's
//! side (erased told from tampered) is in `verify_erasures_*` below, with
//! root editing the store beside the genuine tallyd.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tally_client::clock::now_unix_nanos;
use tally_client::proto::{EraseRequest, Event, StoredRecord};
use tally_tests::anchored::{anchor, ok};
use tally_tests::skip::{skip, Needs, Part};
use tally_tests::swtpm::Swtpm;
use tally_tests::{read_range, store_edit, wait_until, Daemon, DaemonOpts};

const NOBODY: u32 = 65534;

/// A payload no other test writes, so a byte search finds only this one.
fn secret(i: u64) -> Vec<u8> {
    format!("zq9-SECRET-PROMPT-{i:04}-of-the-data-subject-zq9").into_bytes()
}

fn event(i: u64) -> Event {
    Event {
        kind: if i % 5 == 4 {
            "keep".into()
        } else {
            "prompt".into()
        },
        actor: if i.is_multiple_of(2) {
            "agent-a".into()
        } else {
            "agent-b".into()
        },
        subject: format!("user-{}", i % 3),
        attributes: BTreeMap::from([("i".to_owned(), i.to_string())]),
        payload: secret(i),
        content_type: "text/plain".into(),
        ..Event::default()
    }
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The files under `dir` that contain `needle`.
fn holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    files(dir)
        .into_iter()
        .filter(|path| {
            let bytes = std::fs::read(path).unwrap_or_default();
            bytes.windows(needle.len()).any(|w| w == needle)
        })
        .map(|path| path.display().to_string())
        .collect()
}

/// Record `seq`'s key, read from the key file as root would.
fn key_of(data_dir: &Path, seq: u64) -> Vec<u8> {
    let keys = std::fs::read(data_dir.join("store/content-keys")).unwrap();
    let at = 64 + 32 * seq as usize;
    keys[at..at + 32].to_vec()
}

async fn records(daemon: &Daemon) -> Vec<StoredRecord> {
    let mut client = daemon.client().await.unwrap();
    let size = client.status().await.unwrap().size;
    read_range(&mut client, 0, size).await.unwrap()
}

async fn erase(daemon: &Daemon, request: EraseRequest) -> tally_client::proto::EraseReply {
    let mut client = daemon.client().await.unwrap();
    client.erase(request).await.unwrap()
}

/// The erasure records' events, as `tally tail -o json` shows them.
fn erasure_events(daemon: &Daemon) -> Vec<Value> {
    let tail = ok(
        daemon.tally(&["tail", "-n", "1000", "--json"]).unwrap(),
        "tally tail",
    );
    tail.lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|event| event["kind"] == "tally.erasure")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_selector_erases_and_nothing_that_could_open_the_content_remains() {
    let mut daemon = Daemon::start(DaemonOpts::default()).unwrap();
    let mut client = daemon.client().await.unwrap();
    let first: Vec<Event> = (0..10).map(event).collect();
    client.append(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = now_unix_nanos();
    tokio::time::sleep(Duration::from_millis(20)).await;
    client.append((10..20).map(event).collect()).await.unwrap();
    let data_dir = daemon.data_dir();

    // Before: every record has its content, and root can read each key.
    let before = records(&daemon).await;
    assert_eq!(before.len(), 20);
    assert!(
        before.iter().all(|r| !r.content.is_empty()),
        "content served"
    );
    let keys: Vec<Vec<u8>> = (0..20).map(|seq| key_of(&data_dir, seq)).collect();
    assert!(keys.iter().all(|k| k.iter().any(|b| *b != 0)), "keys exist");
    // The content is never on disk in the clear, even before an erasure.
    assert_eq!(holding(&data_dir, &secret(3)), Vec::<String>::new());

    // --seq (the CLI), --from/--to, --subject, --actor, --before (the client).
    let run = ok(
        daemon
            .tally(&["erase", "--seq", "0", "--reason", "ticket 1", "--json"])
            .unwrap(),
        "tally erase --seq",
    );
    let reply: Value = serde_json::from_str(run.trim()).unwrap();
    assert_eq!(reply["erased"], 1, "{reply}");
    assert_eq!(reply["erasure_seqs"], serde_json::json!([20]));
    let range = erase(
        &daemon,
        EraseRequest {
            from_seq: Some(1),
            to_seq: 3,
            reason: "ticket 2".into(),
            ..EraseRequest::default()
        },
    )
    .await;
    assert_eq!((range.erased, range.erasure_seqs.clone()), (2, vec![21]));
    // user-1: seqs 1, 4, 7, 10, 13, 16, 19; 1 is already erased.
    let subject = erase(
        &daemon,
        EraseRequest {
            subject: "user-1".into(),
            reason: "gdpr art. 17".into(),
            ..EraseRequest::default()
        },
    )
    .await;
    assert_eq!((subject.erased, subject.already_erased), (6, 1));
    // agent-b below seq 10: 1, 3, 5, 7, 9; 1 and 7 are gone already; the
    // erasure records (seqs 20-22) are daemon records without content.
    let actor = erase(
        &daemon,
        EraseRequest {
            actor: "agent-b".into(),
            to_seq: 10,
            reason: "ticket 3".into(),
            ..EraseRequest::default()
        },
    )
    .await;
    assert_eq!((actor.erased, actor.already_erased), (3, 2));
    let old = erase(
        &daemon,
        EraseRequest {
            before_unix_nanos: Some(between),
            reason: "ticket 4".into(),
            ..EraseRequest::default()
        },
    )
    .await;
    // 0..10 were received before `between`: 0, 1, 2, 3, 4, 5, 7, 9 are gone;
    // 6 and 8 remain; the erasure records (20..24) came later.
    assert_eq!((old.erased, old.already_erased), (2, 8));
    let again = erase(
        &daemon,
        EraseRequest {
            from_seq: Some(0),
            to_seq: 3,
            reason: "again".into(),
            ..EraseRequest::default()
        },
    )
    .await;
    assert_eq!(
        (again.erased, again.already_erased, again.erasure_seqs.len()),
        (0, 3, 0),
        "nothing left to erase appends nothing"
    );

    let erased: Vec<u64> = vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 16, 19];
    let after = records(&daemon).await;
    for record in &after[..20] {
        let gone = erased.contains(&record.seq);
        assert_eq!(record.content.is_empty(), gone, "seq {}", record.seq);
    }
    // The erasure records name the requester (root here), the selection and
    // the reason.
    let events = erasure_events(&daemon);
    assert_eq!(events.len(), 5, "{events:?}");
    assert_eq!(events[2]["attributes"]["reason"], "gdpr art. 17");
    assert_eq!(events[2]["attributes"]["selection"], "subject=\"user-1\"");
    assert_eq!(events[2]["attributes"]["erased"], "6");
    assert_eq!(events[0]["peer"]["unix"]["uid"], 0);

    // Nothing in the data directory can open an erased content: no key of
    // an erased record, and no clear text, in any file (also after a clean
    // stop, when the journal has been applied). The kept records' keys are
    // still there: the search finds what it looks for.
    for pass in ["running", "stopped"] {
        for &seq in &erased {
            let key = &keys[seq as usize];
            assert_eq!(
                holding(&data_dir, key),
                Vec::<String>::new(),
                "{pass}: key of seq {seq}"
            );
            assert_eq!(
                holding(&data_dir, &secret(seq)),
                Vec::<String>::new(),
                "{pass}: seq {seq}"
            );
        }
        assert!(
            !holding(&data_dir, &keys[11]).is_empty(),
            "{pass}: the key of a kept record is found by the same search"
        );
        if pass == "running" {
            assert!(daemon.terminate().unwrap().success());
        }
    }
    daemon.restart().unwrap();

    // A fresh export holds the kept content and none of the erased.
    let bundle = daemon.dir().join("after.bundle");
    ok(
        daemon
            .tally(&["export", "--out", bundle.to_str().unwrap()])
            .unwrap(),
        "tally export",
    );
    let exported = std::fs::read(&bundle).unwrap();
    let has = |needle: &[u8]| exported.windows(needle.len()).any(|w| w == needle);
    assert!(has(&secret(11)), "a kept content is exported");
    for &seq in &erased {
        assert!(!has(&secret(seq)), "seq {seq} exported after its erasure");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_without_the_admin_role_is_refused_and_recorded() {
    let root = nix::unistd::getuid().is_root();
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok();
    if !root || !setpriv {
        skip(
            Needs::Ci,
            Part::Whole,
            &format!(
                "needs root and setpriv to act as a second uid (root: {root}, setpriv: {setpriv})"
            ),
        );
        return;
    }
    let config = "socket_mode = \"0666\"\n[access]\nunix_default = [\"append\", \"read\"]\n";
    let daemon = Daemon::start(DaemonOpts::with_config(config)).unwrap();
    std::fs::set_permissions(daemon.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tally = daemon.dir().join("tally");
    std::fs::copy(tally_tests::binary("tally").unwrap(), &tally).unwrap();
    let mut client = daemon.client().await.unwrap();
    client.append(vec![event(0)]).await.unwrap();

    let denied = Command::new("setpriv")
        .args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}")])
        .arg("--clear-groups")
        .arg(&tally)
        .args(["erase", "--seq", "0", "--reason", "not mine to erase"])
        .env("TALLY_SOCKET", daemon.socket())
        .output()
        .unwrap();
    assert_eq!(denied.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(stderr.contains("lacks the 'admin' role"), "{stderr}");

    let recorded = wait_until(Duration::from_secs(5), || {
        daemon
            .tally(&["tail", "--json"])
            .ok()
            .is_some_and(|run| run.stdout.contains("tally.access_denied"))
    })
    .await;
    assert!(recorded, "the denial is not in the log");
    let tail = ok(daemon.tally(&["tail", "--json"]).unwrap(), "tally tail");
    let denial: Value = tail
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|event| event["kind"] == "tally.access_denied")
        .unwrap();
    assert_eq!(denial["subject"], "erase");
    assert_eq!(denial["peer"]["unix"]["uid"], NOBODY);
    let kept = records(&daemon).await;
    assert!(!kept[0].content.is_empty(), "the content is untouched");
    assert!(erasure_events(&daemon).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_erases_on_schedule_and_keeps_what_its_kinds_keep() {
    let config =
        "[retention]\npayload_max_age_secs = 1\ninterval_secs = 1\n[retention.kinds]\nkeep = 0\n";
    let daemon = Daemon::start(DaemonOpts::with_config(config)).unwrap();
    let mut client = daemon.client().await.unwrap();
    client.append((0..10).map(event).collect()).await.unwrap();
    // kind "keep" is 4 and 9: their content stays; the others go within
    // about two intervals after a second.
    let done = wait_until(Duration::from_secs(15), || {
        daemon
            .tally(&["tail", "-n", "100", "--json"])
            .ok()
            .is_some_and(|run| run.stdout.contains("tally.erasure"))
    })
    .await;
    assert!(done, "retention erased nothing: {}", daemon.stderr());
    // Let a pass or two more run: nothing more may be erased.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = records(&daemon).await;
    for record in &after[..10] {
        let kept = record.seq % 5 == 4;
        assert_eq!(!record.content.is_empty(), kept, "seq {}", record.seq);
    }
    let events = erasure_events(&daemon);
    assert!(!events.is_empty());
    let erased: u64 = events
        .iter()
        .map(|e| {
            e["attributes"]["erased"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(erased, 8, "{events:?}");
    assert!(events
        .iter()
        .all(|e| e["attributes"]["reason"] == "retention"));
}

/// `tally verify --json` of a fresh export of `daemon`, current for a
/// fresh attestation.
fn export_verify(daemon: &Daemon, identity: &str, name: &str) -> (i32, Value) {
    let bundle = daemon.dir().join(name);
    let bundle = bundle.to_str().unwrap();
    ok(
        daemon.tally(&["export", "--out", bundle]).unwrap(),
        "tally export",
    );
    let attestation = daemon.dir().join(format!("{name}.att"));
    let attestation = attestation.to_str().unwrap();
    let nonce = "e7a5e0";
    ok(
        daemon
            .tally(&[
                "attest",
                "--nonce",
                nonce,
                "--since",
                bundle,
                "--out",
                attestation,
            ])
            .unwrap(),
        "tally attest",
    );
    let run = daemon
        .tally(&[
            "verify",
            bundle,
            "--identity",
            identity,
            "--attestation",
            attestation,
            "--nonce",
            nonce,
            "--json",
        ])
        .unwrap();
    let doc: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|err| panic!("verify --json printed no JSON ({err}): {run:?}"));
    (run.code, doc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_erasures_pass_and_content_removed_or_swapped_by_root_fails_naming_the_seq() {
    let Some(tpm) = Swtpm::start() else { return };
    let mut daemon = tally_tests::anchored::daemon(&tpm, "");
    let identity_json = ok(daemon.tallyd(&["identity"]).unwrap(), "tallyd identity");
    let identity = daemon.dir().join("identity.json");
    std::fs::write(&identity, identity_json).unwrap();
    let identity = identity.to_str().unwrap().to_owned();
    let mut client = daemon.client().await.unwrap();
    client.append((0..12).map(event).collect()).await.unwrap();
    anchor(&daemon);
    let reply = erase(
        &daemon,
        EraseRequest {
            subject: "user-2".into(),
            reason: "gdpr".into(),
            ..EraseRequest::default()
        },
    )
    .await;
    assert_eq!(reply.erased, 4); // 2, 5, 8, 11
    anchor(&daemon);

    let (code, doc) = export_verify(&daemon, &identity, "erased.bundle");
    assert_eq!(code, 0, "erasures verify: {doc}");
    assert_eq!(doc["verdict"], "pass", "{doc}");
    assert!(
        doc.to_string().contains("\"erased\":4"),
        "the verdict counts the erased contents: {doc}"
    );

    // Root puts seq 0's sealed content under seq 6: it no longer opens 6's
    // commitment.
    assert!(daemon.terminate().unwrap().success());
    let six = store_edit::edit(&daemon.data_dir(), |txn, dbs| {
        let six = dbs.content.get(txn, &6)?.map(<[u8]>::to_vec).unwrap();
        let zero = dbs.content.get(txn, &0)?.map(<[u8]>::to_vec).unwrap();
        dbs.content.put(txn, &6, &zero)?;
        Ok(six)
    })
    .unwrap();
    daemon.restart().unwrap();
    // The export itself checks each served content against its record's
    // commitment and refuses, naming the seq; `verify --live` says the same.
    let bundle = daemon.dir().join("swapped.bundle");
    let run = daemon
        .tally(&["export", "--out", bundle.to_str().unwrap()])
        .unwrap();
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("seq 6"), "{run:?}");
    let run = daemon
        .tally(&["verify", "--live", "--identity", &identity, "--json"])
        .unwrap();
    assert_eq!(run.code, 1, "{run:?}");
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(doc["first_bad_seq"], 6, "{doc}");

    // Root puts 6 back and deletes a kept content row (no erasure record
    // covers it): tampering, named at seq 3.
    assert!(daemon.terminate().unwrap().success());
    store_edit::edit(&daemon.data_dir(), |txn, dbs| {
        dbs.content.put(txn, &6, &six)?;
        assert!(dbs.content.delete(txn, &3)?, "seq 3 had a content row");
        Ok(())
    })
    .unwrap();
    daemon.restart().unwrap();
    let (code, doc) = export_verify(&daemon, &identity, "removed.bundle");
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["first_bad_seq"], 3, "{doc}");
}
