//! First contact, as a new user meets Tally: what `tally --help` says, what a
//! refused or missing socket says, `tallyd provision` on a new data directory,
//! every configuration key through its `TALLYD_*` variable, `tally anchors`,
//! `tally prove` on a log with no anchor covering the record, and the
//! `verify --json` schema against its documentation (issue 14, items 5-7).

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tally_tests::anchored::{self, ok};
use tally_tests::skip::{skip, Needs, Part};
use tally_tests::swtpm::Swtpm;
use tally_tests::{binary, Daemon, DaemonOpts, Run};

fn run(mut command: Command) -> Run {
    let out = command.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `tallyd` with exactly `args` and `env` (and no other TALLYD_* variable).
fn tallyd_env(args: &[&OsStr], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(binary("tallyd").unwrap());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TALLYD_") {
            command.env_remove(name);
        }
    }
    command.args(args).envs(env.iter().copied());
    run(command)
}

/// Regression: `tally --help` described the wire protocol, not the tool.
#[test]
fn help_describes_the_tool_its_tasks_exit_codes_and_docs() {
    let mut command = Command::new(binary("tally").unwrap());
    command.arg("--help");
    let help = run(command);
    assert_eq!(help.code, 0, "{help:?}");
    for needle in [
        "tamper-evident audit log",
        "By task:",
        "anchors (list anchored sizes",
        "verify BUNDLE --identity identity.json",
        "Exit codes: 0 success (verify: PASS); 1 verification failed (FAIL)",
        "3 verification PARTIAL",
        "docs/DESIGN.md",
        "README.md",
    ] {
        assert!(
            help.stdout.contains(needle),
            "{needle:?} not in:\n{}",
            help.stdout
        );
    }
    let first = help.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("tally: append to, read, anchor"),
        "{first}"
    );
    assert!(
        !help.stdout.to_lowercase().contains("wire protocol"),
        "{}",
        help.stdout
    );
}

/// Regression: "Permission denied" on the socket was prefixed with "is tallyd
/// running?". A user the socket's mode refuses is told about the group; a
/// missing socket asks whether tallyd runs.
#[test]
fn a_refused_socket_names_the_group_and_a_missing_one_asks_if_tallyd_runs() {
    let daemon = Daemon::start(DaemonOpts::with_config("socket_mode = \"0600\"")).unwrap();
    let missing = run({
        let mut command = Command::new(binary("tally").unwrap());
        command
            .args(["status"])
            .env("TALLY_SOCKET", daemon.dir().join("no-such.sock"));
        command
    });
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(
        missing
            .stderr
            .contains("no such socket: is tallyd running?"),
        "{missing:?}"
    );

    // Root passes any file mode: the refused user is nobody (65534), as
    // setpriv makes it; the socket's directory and mode both refuse it.
    let setpriv = Command::new("setpriv").arg("--version").output();
    if !nix_is_root() || setpriv.is_err() {
        skip(
            Needs::Ci,
            Part::Only("the refused-permission half"),
            "the refused-permission half needs root and setpriv (to run tally as another user)",
        );
        return;
    }
    let tally = binary("tally").unwrap();
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&tally)
        .arg("status")
        .env("TALLY_SOCKET", daemon.socket());
    let denied = run(command);
    if denied.stderr.contains("Permission denied") && !denied.stderr.starts_with("tally:") {
        // setpriv itself could not exec tally (a target dir nobody may read).
        skip(
            Needs::ThisMachine,
            Part::Only("the refused-permission half"),
            "nobody cannot execute the tally binary here",
        );
        return;
    }
    assert_eq!(denied.code, 2, "{denied:?}");
    assert!(denied.stderr.contains("permission denied"), "{denied:?}");
    assert!(denied.stderr.contains("socket_group"), "{denied:?}");
    assert!(!denied.stderr.contains("is tallyd running"), "{denied:?}");
}

fn nix_is_root() -> bool {
    // The uid of /proc/self: no libc call needed.
    std::fs::metadata("/proc/self")
        .map(|meta| std::os::unix::fs::MetadataExt::uid(&meta) == 0)
        .unwrap_or(false)
}

/// Regression: `tallyd provision` run first left the data directory 0755
/// (the README says 0700).
#[test]
fn provision_run_first_creates_the_data_directory_0700() {
    let Some(tpm) = Swtpm::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("lib/tally");
    let tcti = tpm.tcti();
    let out = tallyd_env(
        &[
            "--data-dir".as_ref(),
            data.as_os_str(),
            "--tcti".as_ref(),
            tcti.as_ref(),
            "provision".as_ref(),
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "data dir mode {mode:o}");
    assert!(data.join("tpm/ak.pem").is_file());
}

/// Regression: only 8 of the `TALLYD_*` variables worked, the rest (such as
/// TALLYD_DISK_WARN_BELOW_BYTES) were silently ignored. Keys set by the
/// environment show in `tallyd config` and in what the running daemon does;
/// an unknown variable is warned about, a malformed one refused (exit 78).
#[tokio::test]
async fn every_tallyd_variable_takes_effect_and_unknown_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tallyd.toml");
    std::fs::write(&file, "queue_jobs = 7\nlog = \"warn\"\n").unwrap();
    let config = |env: &[(&str, &str)], flags: &[&str]| {
        let mut args: Vec<&OsStr> = vec!["--config".as_ref(), file.as_os_str()];
        args.extend(flags.iter().map(OsStr::new));
        args.push("config".as_ref());
        tallyd_env(&args, env)
    };
    let env = [
        ("TALLYD_DISK_WARN_BELOW_BYTES", "12345"),
        ("TALLYD_QUEUE_JOBS", "8"),
        ("TALLYD_TPM_TCTI", "swtpm:path=/nowhere"),
        ("TALLYD_TPM_ENABLED", "false"),
        ("TALLYD_ACCESS_UNIX_DEFAULT", "[\"read\"]"),
        ("TALLYD_SOCKET_GROUP", "1000"),
        ("TALLYD_ANCHOR_INTERVAL_SECS", "4"),
        ("TALLYD_SOCKET_MODE", "0600"),
    ];
    let out = config(&env, &["--socket-mode", "0640"]);
    assert_eq!(out.code, 0, "{out:?}");
    // `tallyd config` prints TOML, one `key = value` line each (tables after).
    let lines: Vec<&str> = out.stdout.lines().collect();
    for line in [
        "disk_warn_below_bytes = 12345",
        "queue_jobs = 8",
        "log = \"warn\"",
        "socket_group = \"1000\"",
        "socket_mode = \"0640\"",
        "tcti = \"swtpm:path=/nowhere\"",
        "enabled = false",
        "anchor_interval_secs = 4",
        "unix_default = [\"read\"]",
    ] {
        assert!(lines.contains(&line), "{line:?} not in:\n{}", out.stdout);
    }
    // queue_jobs: environment over the file; log: the file's other keys stay;
    // socket_mode: the flag over the environment.
    let unknown = config(&[("TALLYD_DISK_WARN_BELOW", "1")], &[]);
    assert_eq!(unknown.code, 0, "{unknown:?}");
    assert!(
        unknown.stderr.contains(
            "unknown environment variable TALLYD_DISK_WARN_BELOW ignored (did you mean TALLYD_DISK_WARN_BELOW_BYTES?)"
        ),
        "{unknown:?}"
    );
    let malformed = config(&[("TALLYD_MAX_FRAME_BYTES", "4MiB")], &[]);
    assert_eq!(malformed.code, 78, "{malformed:?}");
    assert!(
        malformed
            .stderr
            .contains("environment variable TALLYD_MAX_FRAME_BYTES (sets max_frame_bytes)"),
        "{malformed:?}"
    );

    // And the running daemon: its hello's limits and its status.
    let daemon = Daemon::start(DaemonOpts {
        env: vec![
            ("TALLYD_MAX_EVENTS_PER_APPEND".into(), "77".into()),
            ("TALLYD_DISK_WARN_BELOW_BYTES".into(), "12345".into()),
        ],
        ..DaemonOpts::default()
    })
    .unwrap();
    // Without a TPM there is nothing to list, and `tally anchor` is no advice.
    let no_tpm = daemon.tally(&["anchors"]).unwrap();
    assert_eq!(no_tpm.code, 2, "{no_tpm:?}");
    assert!(no_tpm.stderr.contains("runs without a TPM"), "{no_tpm:?}");
    let client = daemon.client().await.unwrap();
    let limits = client.limits();
    assert_eq!(limits.max_events_per_append, 77);
    let status = ok(daemon.tally(&["status", "--json"]).unwrap(), "status");
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["disk_warn_below_bytes"], 12345, "{status}");
}

fn anchors_json(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// `tally anchors` lists the daemon's anchors (genesis, then each `tally
/// anchor`), with sizes, counters and times, and the same from a bundle offline.
/// Regression: `tally prove` on a log whose anchors do not cover the record
/// said only "seq 42 is not in the anchored log of 0 records".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchors_are_listed_and_prove_says_to_anchor_first() {
    let Some(tpm) = Swtpm::start() else { return };
    // Pages of 2 anchors: the listing of 3 must ask for the next page.
    let mut opts = anchored::opts(&tpm, "");
    opts.config = "read_page_records = 2".into();
    let daemon = Daemon::start(opts).unwrap();
    anchored::append(&daemon, 0, 100).await;
    let proof = daemon.dir().join("seq42.proof");
    let refused = daemon
        .tally(&[
            OsStr::new("prove"),
            "inclusion".as_ref(),
            "--seq".as_ref(),
            "42".as_ref(),
            "--out".as_ref(),
            proof.as_os_str(),
        ])
        .unwrap();
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("no anchor covers 43 records yet")
            && refused.stderr.contains("run `tally anchor`")
            && refused.stderr.contains("the log has 100 records"),
        "{refused:?}"
    );
    assert!(!proof.exists());
    let first = anchored::anchor(&daemon);
    anchored::append(&daemon, 100, 50).await;
    let second = anchored::anchor(&daemon);
    ok(
        daemon
            .tally(&[
                OsStr::new("prove"),
                "inclusion".as_ref(),
                "--seq".as_ref(),
                "42".as_ref(),
                "--out".as_ref(),
                proof.as_os_str(),
            ])
            .unwrap(),
        "prove after tally anchor",
    );

    let listed = anchors_json(&ok(
        daemon.tally(&["anchors", "--json"]).unwrap(),
        "anchors",
    ));
    let counters: Vec<u64> = listed
        .iter()
        .map(|a| a["counter"].as_u64().unwrap())
        .collect();
    let sizes: Vec<u64> = listed.iter().map(|a| a["size"].as_u64().unwrap()).collect();
    assert_eq!(counters, [first - 1, first, second], "genesis, then both");
    assert_eq!(sizes, [0, 100, 150]);
    for anchor in &listed {
        assert!(
            anchor["created"].as_str().unwrap().ends_with('Z'),
            "{anchor}"
        );
        let created = anchor["created_unix_nanos"].as_i64().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        let age_secs = (now - created) / 1_000_000_000;
        assert!((0..600).contains(&age_secs), "{anchor}");
        assert!(anchor["tpm_clock_ms"].as_u64().unwrap() > 0, "{anchor}");
    }
    let table = ok(daemon.tally(&["anchors"]).unwrap(), "anchors (text)");
    assert!(table.starts_with("   COUNTER"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");

    // Outside the daemon's directory, which goes with it.
    let keep = tempfile::tempdir().unwrap();
    let bundle = keep.path().join("log.tally");
    ok(
        daemon
            .tally(&[OsStr::new("export"), "--out".as_ref(), bundle.as_os_str()])
            .unwrap(),
        "export",
    );
    drop(daemon);
    // Offline: no daemon any more.
    let mut command = Command::new(binary("tally").unwrap());
    command
        .args(["anchors", "--json", "--bundle"])
        .arg(&bundle)
        .env("TALLY_SOCKET", "/nonexistent");
    let offline = run(command);
    assert_eq!(offline.code, 0, "{offline:?}");
    let from_bundle = anchors_json(&offline.stdout);
    let strip = |list: &[Value]| -> Vec<(Value, Value, Value)> {
        list.iter()
            .map(|a| {
                (
                    a["counter"].clone(),
                    a["size"].clone(),
                    a["created_unix_nanos"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(strip(&from_bundle), strip(&listed));
}

/// The `json` block of docs/VERIFY-JSON.md (the documented example).
fn documented_example() -> Value {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/VERIFY-JSON.md"),
    )
    .unwrap();
    let start = doc.find("```json\n").expect("a ```json block") + "```json\n".len();
    let end = start + doc[start..].find("```").unwrap();
    serde_json::from_str(&doc[start..end]).expect("the documented example parses")
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

fn check<'a>(document: &'a Value, name: &str) -> &'a Value {
    document["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {document}"))
}

/// `verify --json` gives one object per check with fields, not prose (schema
/// 1); the documented example parses and has a real PASS run's keys; a
/// damaged record is named by kind and seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_json_matches_its_documented_schema() {
    let Some(tpm) = Swtpm::start() else { return };
    let daemon = anchored::daemon(&tpm, "");
    anchored::append(&daemon, 0, 20).await;
    anchored::anchor(&daemon);
    let path = |name: &str| daemon.dir().join(name).display().to_string();
    let identity = daemon.tallyd(&["identity"]).unwrap();
    std::fs::write(path("identity.json"), &identity.stdout).unwrap();
    let nonce = "00112233445566778899aabbccddeeff";
    ok(
        daemon
            .tally(&[
                "export",
                "--out",
                &path("log.tally"),
                "--attest",
                &path("fresh.att"),
                "--nonce",
                nonce,
            ])
            .unwrap(),
        "export --attest",
    );
    let verify = |bundle: &str| {
        daemon
            .tally(&[
                "verify",
                bundle,
                "--identity",
                &path("identity.json"),
                "--attestation",
                &path("fresh.att"),
                "--nonce",
                nonce,
                "--json",
            ])
            .unwrap()
    };
    let pass = verify(&path("log.tally"));
    assert_eq!(pass.code, 0, "{pass:?}");
    let real: Value = serde_json::from_str(pass.stdout.trim()).unwrap();
    assert_eq!(real["schema"], 1);
    assert_eq!(real["verdict"], "pass");
    assert_eq!(real["exit_code"], 0);
    let names: Vec<&str> = real["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|check| check["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "chain",
            "origin",
            "anchors",
            "counter",
            "current",
            "content",
            "checkpoint_keys"
        ]
    );
    for check in real["checks"].as_array().unwrap() {
        assert_eq!(check["status"], "pass", "{check}");
    }
    assert_eq!(check(&real, "chain")["size"], 20);
    assert!(check(&real, "counter")["last"].as_u64().unwrap() > 0);

    let documented = documented_example();
    assert_eq!(keys(&documented), keys(&real), "top-level keys");
    for documented_check in documented["checks"].as_array().unwrap() {
        let name = documented_check["name"].as_str().unwrap();
        assert_eq!(
            keys(documented_check),
            keys(check(&real, name)),
            "the {name} check's keys"
        );
    }

    // Root edits one byte of record 7's payload in the bundle.
    let mut sections = anchored::sections(&path("log.tally"));
    let record = sections
        .iter_mut()
        .filter(|(kind, _)| *kind == anchored::RECORD)
        .nth(7)
        .unwrap();
    *record.1.last_mut().unwrap() ^= 1;
    anchored::write_sections(&path("damaged.tally"), &sections);
    let fail = verify(&path("damaged.tally"));
    assert_eq!(fail.code, 1, "{fail:?}");
    let fail: Value = serde_json::from_str(fail.stdout.trim()).unwrap();
    assert_eq!(fail["verdict"], "fail");
    assert_eq!(fail["exit_code"], 1);
    let chain = check(&fail, "chain");
    assert_eq!(chain["status"], "fail", "{chain}");
    assert_eq!(chain["kind"], "record_modified", "{chain}");
    assert_eq!(chain["seq"], 7, "{chain}");

    // Root drops record 12 (and its content section after it), then (from
    // an intact copy) the bundle's last anchor.
    let intact = anchored::sections(&path("log.tally"));
    let mut nth = 0;
    let mut in_twelfth = false;
    let content = tally_attest::bundle::SectionKind::Content as u8;
    let dropped: Vec<(u8, Vec<u8>)> = intact
        .iter()
        .filter(|(kind, _)| {
            if *kind == content {
                return !in_twelfth;
            }
            in_twelfth = *kind == anchored::RECORD && nth == 12;
            nth += usize::from(*kind == anchored::RECORD);
            !in_twelfth
        })
        .cloned()
        .collect();
    anchored::write_sections(&path("dropped.tally"), &dropped);
    let dropped = verify(&path("dropped.tally"));
    assert_eq!(dropped.code, 1, "{dropped:?}");
    let json: Value = serde_json::from_str(dropped.stdout.trim()).unwrap();
    let chain = check(&json, "chain");
    assert_eq!(
        (&chain["kind"], &chain["seq"]),
        (&"missing".into(), &12.into()),
        "{chain}"
    );
    let last_anchor = intact
        .iter()
        .rposition(|(kind, _)| *kind == anchored::ANCHOR)
        .unwrap();
    let mut no_anchor = intact.clone();
    no_anchor.remove(last_anchor);
    anchored::write_sections(&path("no-anchor.tally"), &no_anchor);
    let stripped = verify(&path("no-anchor.tally"));
    assert_eq!(stripped.code, 1, "{stripped:?}");
    let json: Value = serde_json::from_str(stripped.stdout.trim()).unwrap();
    let failed: Vec<&Value> = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|check| check["status"] == "fail")
        .collect();
    assert!(!failed.is_empty(), "{json}");
    for check in &failed {
        assert!(
            check["kind"].as_str().is_some_and(|kind| !kind.is_empty()),
            "{check}"
        );
    }
    assert_eq!(check(&json, "chain")["status"], "pass", "{json}");

    // Regression: `--log-key log-key.pub` (the README's) failed as "malformed
    // key": the file is in <data_dir>/tpm/. A name that is not there is named
    // with where tallyd writes it; the real path verifies.
    let tpm_dir = daemon.data_dir().join("tpm");
    let by_keys = |log_key: &str| {
        let mut command = Command::new(binary("tally").unwrap());
        command
            .current_dir(daemon.dir())
            .args(["verify", &path("log.tally"), "--json", "--ak"])
            .arg(tpm_dir.join("ak.pem"))
            .arg("--owner-key")
            .arg(tpm_dir.join("owner-key.pem"))
            .args(["--log-key", log_key]);
        run(command)
    };
    let missing = by_keys("log-key.pub");
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(
        missing
            .stderr
            .contains("cannot read the log key file log-key.pub")
            && missing.stderr.contains("<data_dir>/tpm/log-key.pub"),
        "{missing:?}"
    );
    let real_key = tpm_dir.join("log-key.pub").display().to_string();
    let partial = by_keys(&real_key);
    assert_eq!(
        partial.code, 3,
        "keys one by one pin no genesis: PARTIAL; {partial:?}"
    );
    let partial: Value = serde_json::from_str(partial.stdout.trim()).unwrap();
    assert_eq!(
        check(&partial, "checkpoint_keys")["status"],
        "pass",
        "{partial}"
    );
}

/// `[access]` given by the environment (`TALLYD_ACCESS_UNIX_DEFAULT`) holds
/// after a SIGHUP, which re-reads the file: the reload goes through the same
/// layers as the start, so it does not fall back to the file's defaults
/// (which would hand every local user the append role).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_from_the_environment_survives_a_reload() {
    use nix::sys::signal::{self, Signal};
    if !nix_is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        skip(
            Needs::Ci,
            Part::Whole,
            "needs root and setpriv to act as a second uid",
        );
        return;
    }
    let daemon = Daemon::start(DaemonOpts {
        config: "socket_mode = \"0666\"".into(),
        env: vec![("TALLYD_ACCESS_UNIX_DEFAULT".into(), "[\"read\"]".into())],
        ..DaemonOpts::default()
    })
    .unwrap();
    // nobody must reach the socket and run the CLI (as tests/e2e/access.rs).
    std::fs::set_permissions(daemon.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tally = daemon.dir().join("tally");
    std::fs::copy(binary("tally").unwrap(), &tally).unwrap();
    let as_nobody = |args: &[&str]| {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&tally)
            .args(args)
            .env("TALLY_SOCKET", daemon.socket());
        run(command)
    };
    let append = ["append", "--kind", "by-nobody"];
    let denied = as_nobody(&append);
    assert_eq!(denied.code, 2, "{denied:?}");
    assert!(
        denied.stderr.contains("lacks the 'append' role"),
        "{denied:?}"
    );

    let pid = nix::unistd::Pid::from_raw(daemon.pid().unwrap() as i32);
    signal::kill(pid, Signal::SIGHUP).unwrap();
    let reloaded = tally_tests::wait_until(std::time::Duration::from_secs(5), || {
        daemon.stderr().contains("access grants reloaded")
    })
    .await;
    assert!(reloaded, "no reload logged: {}", daemon.stderr());
    let still = as_nobody(&append);
    assert_eq!(
        still.code, 2,
        "the reload dropped the environment's access: {still:?}"
    );
    let read = as_nobody(&["status"]);
    assert_eq!(read.code, 0, "{read:?}");
}
