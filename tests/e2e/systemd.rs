//! The shipped systemd files are valid for this machine's systemd: the unit
//! passes `systemd-analyze verify` with no warning and scores exactly the
//! `systemd-analyze security` exposure docs/OPERATIONS.md documents (the
//! test reads the figure from there), sysusers.d creates the user, tmpfiles.d
//! the directories (skipped with a printed reason where systemd's tools are
//! not installed). The unit's `RestartPreventExitStatus=` names exactly the
//! codes of tallyd's refusals (3) and invalid configurations (78), which
//! tallyd exits with, and not the 1 of a failure a restart can cure. tallyd
//! speaks the `Type=notify` protocol: `READY=1` once its socket accepts,
//! `STOPPING=1` on SIGTERM.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tally_tests::skip::{skip, Needs, Part};

fn systemd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

/// The one source of the hardening score: docs/OPERATIONS.md says "scores
/// it S ("OK") with systemd V". Returns (S, V).
fn documented_score() -> anyhow::Result<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/OPERATIONS.md");
    let text = std::fs::read_to_string(&path)?.replace('\n', " ");
    let (_, rest) = text
        .split_once("scores it ")
        .context("OPERATIONS.md no longer says \"scores it\"")?;
    let words: Vec<&str> = rest.split_whitespace().take(4).collect();
    match words.as_slice() {
        [score, _, "with", "systemd"] => {
            let version = rest
                .split_whitespace()
                .nth(4)
                .context("no systemd version after the score")?;
            let version = version.trim_end_matches(|c: char| !c.is_ascii_digit());
            Ok((score.to_string(), version.to_owned()))
        }
        _ => anyhow::bail!("unexpected words after \"scores it\": {words:?}"),
    }
}

/// The major version of this machine's systemd (`systemctl --version`).
fn systemd_version() -> anyhow::Result<String> {
    let out = run(Command::new("systemd-analyze").arg("--version"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("unexpected systemd-analyze --version: {text}"))
}

fn installed(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

fn run(command: &mut Command) -> anyhow::Result<Output> {
    command
        .output()
        .with_context(|| format!("cannot run {command:?}"))
}

/// `systemd-analyze verify` needs ExecStart's binary to exist: a copy of the
/// unit runs the tallyd this workspace built instead of /usr/bin/tallyd.
fn unit_with_built_binary(dir: &Path) -> anyhow::Result<PathBuf> {
    let unit = std::fs::read_to_string(systemd_dir().join("tallyd.service"))?;
    let tallyd = tally_tests::binary("tallyd")?;
    let exec = "ExecStart=/usr/bin/tallyd ";
    anyhow::ensure!(unit.contains(exec), "the unit has no `{exec}` line");
    let path = dir.join("tallyd.service");
    std::fs::write(
        &path,
        unit.replace(exec, &format!("ExecStart={} ", tallyd.display())),
    )?;
    Ok(path)
}

#[test]
fn unit_verifies_and_is_hardened() -> anyhow::Result<()> {
    if !installed("systemd-analyze") {
        skip(Needs::Ci, Part::Whole, "systemd-analyze not installed");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let unit = unit_with_built_binary(dir.path())?;
    let socket_unit = dir.path().join("tallyd.socket");
    std::fs::copy(systemd_dir().join("tallyd.socket"), &socket_unit)?;

    let verify = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .arg(&socket_unit))?;
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "verify failed:\n{stderr}");
    // Unknown keys and bad values are warnings, not failures: refuse them too.
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("tallyd.service") || line.contains("tallyd.socket"))
        .collect();
    assert!(warnings.is_empty(), "verify warns: {warnings:#?}");

    let (documented, documented_version) = documented_score()?;
    let tenths: u32 = documented.replace('.', "").parse()?;
    let security = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(format!("--threshold={tenths}"))
        .arg(&unit))?;
    let report = String::from_utf8_lossy(&security.stdout);
    let line = report
        .lines()
        .find(|line| line.contains("Overall exposure level"))
        .unwrap_or("(no overall exposure line)");
    println!("{line}");
    // "→ Overall exposure level for tallyd.service: 1.5 OK 🙂"
    let score = line
        .split_once(": ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .with_context(|| format!("no score in {line:?}"))?;
    assert!(
        security.status.success(),
        "exposure above the documented {documented}: {line}\n{report}"
    );
    let version = systemd_version()?;
    if version == documented_version {
        assert_eq!(
            score, documented,
            "systemd {version} scores the unit {score}; docs/OPERATIONS.md says {documented}"
        );
    } else {
        skip(
            Needs::ThisMachine,
            Part::Only("exact hardening score"),
            &format!(
                "systemd {version} here scores {score} (at most the documented {documented}, \
                 checked); the documented figure is for systemd {documented_version}"
            ),
        );
    }
    Ok(())
}

/// The unit's `RestartPreventExitStatus=` names the codes tallyd exits with
/// when a restart cannot help: 3 for a refused start (here: an ack journal
/// damaged under acked frames) and 78 for an invalid configuration; the 1 of
/// a failure that can pass (the data directory locked by a tallyd still
/// running) is not in it, so `Restart=on-failure` retries that one.
/// systemd's restart policy itself is not run (a skip, counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_prevent_exit_status_names_the_codes_of_tallyds_refusals() -> anyhow::Result<()> {
    let unit = std::fs::read_to_string(systemd_dir().join("tallyd.service"))?;
    let setting = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|line| line.strip_prefix(key))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(setting("RestartPreventExitStatus="), ["3 78"]);
    assert_eq!(setting("Restart="), ["on-failure"]);

    // 78: an unknown key in the config file.
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "no_such_key = 1\n")?;
    let mut args = tallyd_args(dir.path(), &dir.path().join("tally.sock"))?;
    let position = args.iter().position(|arg| arg == "--config").unwrap() + 1;
    args[position] = bad.into();
    let invalid = tally_tests::tallyd(&args[1..])?;
    assert_eq!(invalid.code, 78, "{invalid:?}");
    assert!(invalid.stderr.contains("no_such_key"), "{invalid:?}");

    // 1: the data directory is locked by a tallyd that runs.
    let mut daemon = tally_tests::Daemon::start(tally_tests::DaemonOpts {
        env: vec![("TALLYD_HOLD_APPLY".into(), "1".into())],
        ..tally_tests::DaemonOpts::default()
    })?;
    let second = daemon.tallyd(&["run"])?;
    assert_eq!(second.code, 1, "{second:?}");
    assert!(
        second.stderr.contains("is in use by another tallyd"),
        "{second:?}"
    );

    // 3: acked frames behind a damaged one in the ack journal.
    let mut client = daemon.client().await?;
    for i in 0..2 {
        client.append(vec![tally_tests::event(i)]).await?;
    }
    daemon.kill()?;
    let journal = daemon.data_dir().join("store").join("ack-journal");
    let mut bytes = std::fs::read(&journal)?;
    bytes[24] ^= 1; // the first frame's tag
    std::fs::write(&journal, bytes)?;
    let refused = daemon.tallyd(&["run"])?;
    assert_eq!(refused.code, 3, "{refused:?}");

    // systemd's own handling of the setting is not run: that needs a
    // manager (systemd as PID 1) to start the unit and watch it.
    let init = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    skip(
        Needs::ThisMachine,
        Part::Only("systemd's restart policy itself"),
        &format!(
            "needs systemd as PID 1 to run the unit and watch it not restart (PID 1 here: {:?}); \
             the unit's setting and tallyd's exit codes 3, 78 and 1 are checked",
            init.trim()
        ),
    );
    Ok(())
}

/// sysusers.d and tmpfiles.d, applied to a scratch root (never to this machine).
#[test]
fn sysusers_and_tmpfiles_create_the_user_and_directories() -> anyhow::Result<()> {
    if !installed("systemd-sysusers") || !installed("systemd-tmpfiles") {
        skip(
            Needs::Ci,
            Part::Whole,
            "systemd-sysusers / systemd-tmpfiles not installed",
        );
        return Ok(());
    }
    let root = tempfile::tempdir()?;
    let etc = root.path().join("etc");
    std::fs::create_dir_all(&etc)?;
    std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(etc.join("group"), "root:x:0:\n")?;
    std::fs::write(etc.join("shadow"), "root:*:19000:0:99999:7:::\n")?;
    std::fs::write(etc.join("gshadow"), "root:*::\n")?;

    let sysusers = run(Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(systemd_dir().join("sysusers.d/tally.conf")))?;
    assert!(
        sysusers.status.success(),
        "systemd-sysusers failed: {}",
        String::from_utf8_lossy(&sysusers.stderr)
    );
    let passwd = std::fs::read_to_string(etc.join("passwd"))?;
    let tally = passwd
        .lines()
        .find(|line| line.starts_with("tally:"))
        .with_context(|| format!("no tally user in:\n{passwd}"))?;
    assert!(
        tally.ends_with(":/var/lib/tally:/usr/sbin/nologin"),
        "{tally}"
    );

    let tmpfiles = run(Command::new("systemd-tmpfiles")
        .args(["--create", &format!("--root={}", root.path().display())])
        .arg(systemd_dir().join("tmpfiles.d/tally.conf")))?;
    assert!(
        tmpfiles.status.success(),
        "systemd-tmpfiles failed: {}",
        String::from_utf8_lossy(&tmpfiles.stderr)
    );
    use std::os::unix::fs::PermissionsExt as _;
    for (dir, mode) in [("var/lib/tally", 0o700), ("run/tally", 0o750)] {
        let meta = std::fs::metadata(root.path().join(dir)).with_context(|| dir.to_owned())?;
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{dir}");
    }
    Ok(())
}

/// Kills the spawned daemon if the test ends early.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl KillOnDrop {
    /// Waits for the process to exit, at most 30 s.
    fn wait(&mut self) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the process did not exit within 30 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, as systemd stops a unit.
    fn terminate(&self) -> anyhow::Result<()> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.0.id())?),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        Ok(())
    }
}

/// tallyd's arguments for a run in `dir` on `socket`, without a TPM (the
/// config file is written into `dir`).
fn tallyd_args(dir: &Path, socket: &Path) -> anyhow::Result<Vec<OsString>> {
    let config = dir.join("tallyd.toml");
    std::fs::write(&config, "[tpm]\nenabled = false\n")?;
    Ok(vec![
        tally_tests::binary("tallyd")?.into(),
        "--data-dir".into(),
        dir.join("data").into(),
        "--socket".into(),
        socket.into(),
        "--config".into(),
        config.into(),
    ])
}

/// `Type=notify`: tallyd sends `READY=1` on `NOTIFY_SOCKET` only once its
/// socket accepts connections, and `STOPPING=1` when SIGTERM starts the drain.
#[test]
fn readiness_and_stopping_are_notified_to_systemd() -> anyhow::Result<()> {
    use std::os::unix::net::{UnixDatagram, UnixStream};

    let dir = tempfile::tempdir()?;
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path)?;
    notify.set_read_timeout(Some(Duration::from_secs(30)))?;
    let socket = dir.path().join("tally.sock");
    let args = tallyd_args(dir.path(), &socket)?;
    let child = Command::new(&args[0])
        .args(&args[1..])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut child = KillOnDrop(child);
    let mut message = [0u8; 256];
    let len = notify
        .recv(&mut message)
        .context("no notification from tallyd within 30 s")?;
    assert_eq!(&message[..len], b"READY=1\n");
    UnixStream::connect(&socket)
        .context("READY=1 was sent before the socket accepted connections")?;

    child.terminate()?;
    let len = notify
        .recv(&mut message)
        .context("no STOPPING=1 within 30 s of SIGTERM")?;
    assert_eq!(&message[..len], b"STOPPING=1\n");
    let status = child.wait()?;
    assert!(status.success(), "tallyd exited with {status}");
    Ok(())
}

/// Starts `tallyd --socket <configured>` under `systemd-socket-activate`
/// listening on `listen` (it binds, waits for the first connection, then
/// execs tallyd with the socket as fd 3), stderr to `dir/tallyd.stderr`.
fn socket_activated(dir: &Path, listen: &Path, configured: &Path) -> anyhow::Result<KillOnDrop> {
    let child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(listen)
        .args(tallyd_args(dir, configured)?)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("tallyd.stderr"))?)
        .spawn()?;
    let child = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listen.exists() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "systemd-socket-activate did not bind {}",
            listen.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child)
}

/// Socket activation: tallyd serves the socket systemd passes (the first
/// client's connection waits in its backlog while tallyd starts), and leaves
/// the socket file in place at exit (it is systemd's, for the next start).
#[test]
fn socket_activation_serves_the_passed_socket_and_leaves_it_in_place() -> anyhow::Result<()> {
    if !installed("systemd-socket-activate") {
        skip(
            Needs::Ci,
            Part::Whole,
            "systemd-socket-activate not installed (package systemd)",
        );
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("tally.sock");
    let mut daemon = socket_activated(dir.path(), &socket, &socket)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let acks = runtime.block_on(async {
        let mut client = tally_client::Client::connect_with_timeout(
            &socket,
            "socket-activation-test",
            tally_tests::CLIENT_TIMEOUT,
        )
        .await?;
        anyhow::Ok(client.append(vec![tally_tests::event(1)]).await?)
    })?;
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].seq, 0);
    daemon.terminate()?;
    let status = daemon.wait()?;
    let stderr = std::fs::read_to_string(dir.path().join("tallyd.stderr"))?;
    assert!(status.success(), "tallyd exited with {status}:\n{stderr}");
    assert!(
        stderr.contains("socket activation"),
        "tallyd did not say it used the passed socket:\n{stderr}"
    );
    assert!(socket.exists(), "the passed socket file was removed");
    Ok(())
}

/// A passed socket that is not the configured one is a configuration error
/// (exit 78, no restart loop), named with both paths.
#[test]
fn socket_activation_on_another_path_is_a_configuration_error() -> anyhow::Result<()> {
    if !installed("systemd-socket-activate") {
        skip(
            Needs::Ci,
            Part::Whole,
            "systemd-socket-activate not installed (package systemd)",
        );
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let passed = dir.path().join("passed.sock");
    let configured = dir.path().join("configured.sock");
    let mut daemon = socket_activated(dir.path(), &passed, &configured)?;
    // The first connection makes systemd-socket-activate start tallyd.
    let _trigger = std::os::unix::net::UnixStream::connect(&passed)?;
    let status = daemon.wait()?;
    let stderr = std::fs::read_to_string(dir.path().join("tallyd.stderr"))?;
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(&passed.display().to_string())
            && stderr.contains(&configured.display().to_string()),
        "the error names both sockets:\n{stderr}"
    );
    assert!(
        !configured.exists(),
        "tallyd bound the configured path anyway"
    );
    Ok(())
}
