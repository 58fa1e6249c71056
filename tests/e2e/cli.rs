//! The `tally` CLI as a user runs it: append (flags and JSON lines), tail,
//! status, and its exit codes and messages when things go wrong.

use serde_json::Value;
use tally_tests::{Daemon, DaemonOpts, Run};

fn ok(run: Run) -> Run {
    assert_eq!(run.code, 0, "{run:?}");
    run
}

/// Parses "SEQ HASH" ack lines.
fn acks(stdout: &str) -> Vec<(u64, String)> {
    stdout
        .lines()
        .map(|line| {
            let (seq, hash) = line.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
            assert_eq!(hash.len(), 64, "{line:?}");
            assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{line:?}");
            (seq.parse().unwrap(), hash.to_owned())
        })
        .collect()
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{line:?}: {err}")))
        .collect()
}

/// An empty log exports and verifies; append from flags prints "seq hash";
/// --stdin takes JSON lines (text and base64 payloads); tail --json shows
/// every field, linked; status --json agrees with the last ack.
#[tokio::test]
async fn append_tail_and_status_round_trip() -> anyhow::Result<()> {
    let daemon = Daemon::start(DaemonOpts::default())?;
    let empty = daemon.export_and_verify()?;
    assert_eq!((empty.size, empty.head_hash), (0, "0".repeat(64)));

    let run = ok(daemon.tally(&[
        "append",
        "--kind",
        "model.load",
        "--actor",
        "agent-7",
        "--subject",
        "req-1",
        "--attr",
        "model_id=m-42",
        "--attr",
        "prompt_sha256=abc",
        "--payload",
        "hello world",
        "--content-type",
        "text/plain",
    ])?);
    let mut all = acks(&run.stdout);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].0, 0);

    let run = ok(daemon.tally(&["append", "--json", "--kind", "prompt"])?);
    let ack = json_lines(&run.stdout);
    assert_eq!(ack[0]["seq"], 1);
    all.push((1, ack[0]["entry_hash"].as_str().unwrap().to_owned()));

    let lines = concat!(
        r#"{"kind":"output","actor":"agent-7","attributes":{"output_sha256":"def"},"payload":"out"}"#,
        "\n\n",
        r#"{"kind":"dataset.read","payload_b64":"AAEC/w==","content_type":"application/octet-stream"}"#,
        "\n",
        r#"{"kind":"policy.decision","client_time_unix_nanos":42}"#,
        "\n",
    );
    let run = ok(daemon.tally_with_stdin(&["append", "--stdin"], lines.as_bytes())?);
    let stdin_acks = acks(&run.stdout);
    assert_eq!(
        stdin_acks.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        [2, 3, 4]
    );
    all.extend(stdin_acks);

    let run = ok(daemon.tally(&["tail", "--json"])?);
    let records = json_lines(&run.stdout);
    assert_eq!(records.len(), 5);
    let uid = nix::unistd::getuid().as_raw();
    let mut prev = "0".repeat(64);
    for (record, (seq, hash)) in records.iter().zip(&all) {
        assert_eq!(record["seq"], *seq, "{record}");
        assert_eq!(record["entry_hash"], hash.as_str(), "{record}");
        assert_eq!(record["prev_hash"], prev.as_str(), "{record}");
        assert_eq!(record["peer"]["unix"]["uid"], uid, "{record}");
        assert!(
            record["peer"]["unix"]["pid"].as_u64().unwrap() > 0,
            "{record}"
        );
        assert!(
            record["receive_time_unix_nanos"].as_i64().unwrap() > 0,
            "{record}"
        );
        prev = hash.clone();
    }
    let first = &records[0];
    assert_eq!(first["kind"], "model.load");
    assert_eq!(first["actor"], "agent-7");
    assert_eq!(first["subject"], "req-1");
    assert_eq!(first["attributes"]["model_id"], "m-42");
    assert_eq!(first["attributes"]["prompt_sha256"], "abc");
    assert_eq!(first["payload"], "hello world");
    assert_eq!(first["content_type"], "text/plain");
    assert_eq!(records[2]["attributes"]["output_sha256"], "def");
    assert_eq!(records[3]["payload_b64"], "AAEC/w==");
    assert!(records[3].get("payload").is_none());
    assert_eq!(records[4]["client_time_unix_nanos"], 42);

    let run = ok(daemon.tally(&["tail", "--from", "3", "--json"])?);
    let seqs: Vec<Value> = json_lines(&run.stdout)
        .iter()
        .map(|r| r["seq"].clone())
        .collect();
    assert_eq!(seqs, [3, 4]);
    let run = ok(daemon.tally(&["tail"])?);
    assert_eq!(run.stdout.lines().count(), 5);
    assert!(
        run.stdout
            .contains("model.load actor=agent-7 subject=req-1"),
        "{}",
        run.stdout
    );

    let run = ok(daemon.tally(&["status", "--json"])?);
    let status: Value = serde_json::from_str(run.stdout.trim())?;
    assert_eq!(status["size"], 5);
    assert_eq!(status["head_hash"], all[4].1.as_str());
    assert_eq!(status["format_version"], 5);
    assert_eq!(status["queued_events"], 0);
    assert_eq!(status["log_id"].as_str().unwrap().len(), 32);
    assert!(status["server"].as_str().unwrap().starts_with("tallyd/"));
    let used = status["store_used_bytes"].as_u64().unwrap();
    assert!(used > 0 && used <= status["store_map_bytes"].as_u64().unwrap());
    assert!(status["disk_free_bytes"].as_u64().unwrap() > 0);
    let hello = daemon.client().await?.server_hello().log_id.clone();
    assert_eq!(status["log_id"], hex::encode(hello));
    Ok(())
}

/// A bad JSON line is named and skipped: the valid lines of the input are
/// stored, and the run exits 4 (issue 13: it used to drop them all, exit 2).
#[tokio::test]
async fn a_bad_stdin_line_is_named_and_the_run_exits_4() -> anyhow::Result<()> {
    let daemon = Daemon::start(DaemonOpts::default())?;
    let bad_lines = [
        (
            concat!(
                r#"{"kind":"a"}"#,
                "\n",
                r#"{"kind":"b"}"#,
                "\n",
                "not json\n"
            ),
            3,
            2,
        ),
        (
            concat!(
                r#"{"kind":"a"}"#,
                "\n",
                r#"{"kind":"a","colour":"red"}"#,
                "\n"
            ),
            2,
            1,
        ),
        (r#"{"actor":"no kind"}"#, 1, 0),
        (r#"{"kind":"a","payload":"x","payload_b64":"eA=="}"#, 1, 0),
        (r#"{"kind":"a","payload_b64":"not base64!"}"#, 1, 0),
    ];
    let mut stored = 0;
    for (input, line, valid) in bad_lines {
        let run = daemon.tally_with_stdin(&["append", "--stdin"], input.as_bytes())?;
        assert_eq!(run.code, 4, "{input:?}: {run:?}");
        assert!(
            run.stderr.contains(&format!("stdin line {line}")),
            "{input:?}: expected line {line} named in {:?}",
            run.stderr
        );
        assert_eq!(acks(&run.stdout).len(), valid, "{input:?}: {run:?}");
        stored += valid;
    }
    let status: Value =
        serde_json::from_str(ok(daemon.tally(&["status", "--json"])?).stdout.trim())?;
    assert_eq!(status["size"], stored, "exactly the valid lines are stored");
    Ok(())
}

/// Regression: with small batches, a bad line after some batches were sent
/// exited 2 printing no acks, although those events were stored. Now the
/// lines on both sides of it are stored and acked (exit 4).
#[tokio::test]
async fn acks_around_a_bad_stdin_line_are_printed() -> anyhow::Result<()> {
    let daemon = Daemon::start(DaemonOpts::default())?;
    let input = concat!(
        r#"{"kind":"a"}"#,
        "\n",
        r#"{"kind":"b"}"#,
        "\n",
        "bad\n",
        r#"{"kind":"c"}"#,
        "\n"
    );
    let run = daemon.tally_with_stdin(&["append", "--stdin", "--batch", "1"], input.as_bytes())?;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("stdin line 3"), "{run:?}");
    let printed = acks(&run.stdout);
    assert_eq!(
        printed.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        vec![0, 1, 2],
        "{run:?}"
    );
    let status: Value =
        serde_json::from_str(ok(daemon.tally(&["status", "--json"])?).stdout.trim())?;
    assert_eq!(status["size"], 3, "exactly the acked events are stored");
    Ok(())
}

/// Without a daemon: exit 2 and a message naming the socket and the fix;
/// usage errors and unreadable bundles exit 2 as well.
#[tokio::test]
async fn errors_without_a_daemon_exit_2_with_a_helpful_message() -> anyhow::Result<()> {
    let mut daemon = Daemon::start(DaemonOpts::default())?;
    daemon.terminate()?;
    let socket = daemon.socket().display().to_string();
    for args in [
        &["status"][..],
        &["append", "--kind", "x"],
        &["tail"],
        &["export", "--out", "/dev/null"],
    ] {
        let run = daemon.tally(args)?;
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains(&socket), "{args:?}: {:?}", run.stderr);
        assert!(
            run.stderr.contains("is tallyd running?"),
            "{args:?}: {:?}",
            run.stderr
        );
    }
    let run = daemon.tally(&["append"])?;
    assert_eq!(run.code, 2, "missing --kind: {run:?}");
    assert!(run.stderr.contains("--kind"), "{run:?}");
    let missing = daemon.dir().join("no-such.bundle");
    let run = daemon.tally(&["verify".as_ref(), missing.as_os_str()])?;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("cannot open"), "{run:?}");
    Ok(())
}

/// A bad configuration exits 78 (EX_CONFIG) naming the problem, so a service
/// manager can tell it from a transient failure.
#[test]
fn a_bad_configuration_exits_78_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tallyd.toml");
    std::fs::write(&config, "data_dri = \"/tmp/x\"\n").unwrap();
    let run = tally_tests::tallyd(&[std::ffi::OsStr::new("--config"), config.as_os_str()]).unwrap();
    assert_eq!(run.code, 78, "{run:?}");
    assert!(
        run.stderr.contains("unknown field `data_dri`"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.matches("unknown field").count(),
        1,
        "the cause is printed once: {}",
        run.stderr
    );
    let run = tally_tests::tallyd(&["--no-tpm", "--socket-mode", "rw-rw----"]).unwrap();
    assert_eq!(run.code, 78, "{run:?}");
    assert!(run.stderr.contains("socket_mode"), "{}", run.stderr);
}
