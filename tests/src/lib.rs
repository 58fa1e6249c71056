//! Harness for Tally's end-to-end tests: the real `tallyd` and `tally`
//! binaries, each daemon on its own temporary data directory and socket, so
//! tests run in parallel without sharing anything.
//!
//! The binaries are not built by `cargo test -p tally-tests` (a test crate
//! cannot depend on another package's binaries): run `cargo build --workspace`
//! first. They are looked up next to the test executable.
//!
//! Starting, stopping and running processes is synchronous (it blocks the
//! calling thread for at most a few seconds); tests that keep clients busy
//! meanwhile use a multi-threaded runtime.

pub mod anchored;
pub mod crash_states;
mod events;
pub mod loopfs;
pub mod raw;
pub mod seed;
pub mod skip;
pub mod store_edit;
pub mod swtpm;

pub use events::{
    append_pipelined, check_records, event, events, hex_hash, never_reading_client, read_range,
    stored_event, wait_until,
};

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tally_client::Client;
use tempfile::TempDir;

/// How long a daemon may take to accept connections after being spawned.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a SIGTERMed daemon may take to exit before the test gives up.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a harness client ([`Daemon::client`]) waits for the daemon to
/// take a request or answer it before the call fails with
/// `ClientError::Timeout`: a hung daemon fails its test instead of hanging
/// the suite. Far above any answer a working daemon gives in these tests.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Payload size of [`event`]: a typical small audit event.
pub const EVENT_PAYLOAD_BYTES: usize = 256;

/// Path of a workspace binary (`tallyd`, `tally`), next to the test executable:
/// `target/debug/deps/e2e-<hash>` -> `target/debug/<name>`.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the test executable")?;
    let dir = exe
        .parent()
        .and_then(|deps| {
            if deps.file_name() == Some(OsStr::new("deps")) {
                deps.parent()
            } else {
                Some(deps)
            }
        })
        .context("the test executable has no parent directory")?;
    let path = dir.join(name);
    ensure!(
        path.is_file(),
        "{} not found: the end-to-end tests run the real binaries; \
         run `cargo build --workspace` first",
        path.display()
    );
    Ok(path)
}

/// How to start a daemon.
#[derive(Debug, Clone)]
pub struct DaemonOpts {
    /// Top-level lines for the daemon's TOML config file, e.g.
    /// `"max_frame_bytes = 65536"`.
    pub config: String,
    /// The body of the config file's `[tpm]` table. The default turns TPM
    /// anchoring off: these tests are about the log itself, and a machine
    /// without a TPM (or swtpm) must be able to run them.
    pub tpm: String,
    /// The `--log` filter.
    pub log: String,
    /// Extra environment variables for the daemon process (e.g. the debug
    /// build's `TALLYD_CRASH_POINT`).
    pub env: Vec<(String, String)>,
    /// Arguments after the base flags (e.g. `["run", "--accept-rollback"]`).
    pub args: Vec<String>,
    /// The data directory, when not `data/` in the daemon's temporary
    /// directory (e.g. on a small file system: `loopfs::LoopFs`).
    pub data_dir: Option<PathBuf>,
}

impl Default for DaemonOpts {
    fn default() -> Self {
        DaemonOpts {
            config: String::new(),
            tpm: "enabled = false".into(),
            log: "info".into(),
            env: Vec::new(),
            args: Vec::new(),
            data_dir: None,
        }
    }
}

impl DaemonOpts {
    /// Default options plus `config` lines.
    pub fn with_config(config: &str) -> Self {
        DaemonOpts {
            config: config.into(),
            ..DaemonOpts::default()
        }
    }
}

/// A running `tallyd` on a temporary data directory and socket. Killed with
/// SIGKILL when dropped; its stderr logs are printed if the test is failing.
#[derive(Debug)]
pub struct Daemon {
    /// Holds everything: `data/`, `tally.sock`, `tallyd.toml`, the stderr logs.
    dir: TempDir,
    opts: DaemonOpts,
    child: Option<Child>,
    /// Number of processes started so far; names each run's stderr log.
    runs: usize,
}

impl Daemon {
    /// Spawns `tallyd` and waits until its socket accepts connections.
    pub fn start(opts: DaemonOpts) -> anyhow::Result<Daemon> {
        let dir = tempfile::Builder::new()
            .prefix("tally-e2e-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let mut daemon = Daemon {
            dir,
            opts,
            child: None,
            runs: 0,
        };
        let config = format!("{}\n[tpm]\n{}\n", daemon.opts.config, daemon.opts.tpm);
        fs::write(daemon.config_path(), config).context("cannot write the daemon's config file")?;
        daemon.spawn()?;
        Ok(daemon)
    }

    /// Kills the daemon if it still runs, then starts it again on the same
    /// data directory, socket and config.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.kill()?;
        }
        self.spawn()
    }

    /// The temporary directory holding everything of this daemon.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.opts
            .data_dir
            .clone()
            .unwrap_or_else(|| self.dir.path().join("data"))
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("tally.sock")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("tallyd.toml")
    }

    /// Replaces the daemon's extra environment for its next start.
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.opts.env = env
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
    }

    /// Sets the arguments the next runs get after the base flags.
    pub fn set_args(&mut self, args: &[&str]) {
        self.opts.args = args.iter().map(|arg| arg.to_string()).collect();
    }

    /// True while the daemon process runs (reaps it once it has exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Process id of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The flags every run of this daemon gets (before any subcommand).
    pub fn base_args(&self) -> Vec<PathBuf> {
        vec![
            "--data-dir".into(),
            self.data_dir(),
            "--socket".into(),
            self.socket(),
            "--log".into(),
            self.opts.log.clone().into(),
            "--config".into(),
            self.config_path(),
        ]
    }

    fn stderr_path(&self, run: usize) -> PathBuf {
        self.dir.path().join(format!("tallyd-{run}.stderr"))
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.runs += 1;
        let stderr = File::create(self.stderr_path(self.runs))
            .context("cannot create the daemon's stderr log")?;
        // Readiness as systemd sees it (`READY=1` once the socket accepts),
        // not by connecting: a probe connection would hold one of the peer's
        // connection slots until the daemon noticed it close, and a test of
        // the per-peer limit raced it.
        let notify_path = self.dir.path().join(format!("notify-{}", self.runs));
        let notify = std::os::unix::net::UnixDatagram::bind(&notify_path)
            .context("cannot bind the readiness socket")?;
        notify.set_read_timeout(Some(Duration::from_millis(10)))?;
        let child = Command::new(binary("tallyd")?)
            .args(self.base_args())
            .args(&self.opts.args)
            .env("NOTIFY_SOCKET", &notify_path)
            .envs(self.opts.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("cannot spawn tallyd")?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        let mut message = [0u8; 512];
        loop {
            if let Ok(len) = notify.recv(&mut message) {
                let text = String::from_utf8_lossy(&message[..len]);
                if text.lines().any(|line| line == "READY=1") {
                    return Ok(());
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "tallyd exited during start-up ({status}); stderr:\n{}",
                        self.stderr()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "tallyd did not accept connections within {START_TIMEOUT:?}; stderr:\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// SIGKILL, then reap. The socket file stays behind, as after a crash.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("the daemon is not running")?;
        child.kill().context("cannot SIGKILL tallyd")?;
        child.wait().context("cannot reap tallyd")?;
        Ok(())
    }

    /// SIGTERM, then waits (up to [`STOP_TIMEOUT`]) for the exit status.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("the daemon is not running")?;
        let pid = Pid::from_raw(i32::try_from(child.id())?);
        signal::kill(pid, Signal::SIGTERM).context("cannot SIGTERM tallyd")?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "tallyd did not exit within {STOP_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The stderr of the current (or last) run.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.stderr_path(self.runs)).unwrap_or_default()
    }

    /// A client that has said hello; every call bounded by [`CLIENT_TIMEOUT`].
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect_with_timeout(self.socket(), "tally-e2e", CLIENT_TIMEOUT).await?)
    }

    /// Runs the `tally` CLI against this daemon (TALLY_SOCKET set).
    pub fn tally<S: AsRef<OsStr>>(&self, args: &[S]) -> anyhow::Result<Run> {
        self.tally_with_stdin(args, b"")
    }

    /// Runs the `tally` CLI with `stdin` as its standard input.
    pub fn tally_with_stdin<S: AsRef<OsStr>>(
        &self,
        args: &[S],
        stdin: &[u8],
    ) -> anyhow::Result<Run> {
        let mut command = Command::new(binary("tally")?);
        command.args(args).env("TALLY_SOCKET", self.socket());
        run_to_end(command, stdin)
    }

    /// Runs `tallyd` with this daemon's flags followed by `args` (e.g.
    /// `["check"]`) and waits for it to exit (killing it after 30 s).
    pub fn tallyd<S: AsRef<OsStr>>(&self, args: &[S]) -> anyhow::Result<Run> {
        let mut all: Vec<&OsStr> = Vec::new();
        let base = self.base_args();
        all.extend(base.iter().map(|arg| arg.as_os_str()));
        all.extend(args.iter().map(AsRef::as_ref));
        tallyd(&all)
    }

    /// `tally export` then `tally verify --json` of the bundle: the export
    /// must succeed and the chain verify intact. Returns what the verifier
    /// recomputed.
    pub fn export_and_verify(&self) -> anyhow::Result<Verified> {
        let bundle = self.dir.path().join("export.bundle");
        let export = self.tally(&[OsStr::new("export"), "--out".as_ref(), bundle.as_os_str()])?;
        ensure!(export.code == 0, "tally export failed: {export:?}");
        let verify = self.tally(&[OsStr::new("verify"), "--json".as_ref(), bundle.as_os_str()])?;
        // Without the log's identity the verdict is PARTIAL (exit 3): the
        // chain was checked and holds, the anchors were not checked.
        ensure!(
            verify.code == 3,
            "tally verify did not say PARTIAL: {verify:?}"
        );
        let json: serde_json::Value =
            serde_json::from_str(verify.stdout.trim()).context("tally verify --json output")?;
        ensure!(
            json["verdict"] == "partial" && json["first_bad_seq"].is_null(),
            "verify found damage: {json}"
        );
        Ok(Verified {
            size: json["size"].as_u64().context("verify --json: size")?,
            head_hash: json["head_hash"]
                .as_str()
                .context("verify --json: head_hash")?
                .to_owned(),
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for run in 1..=self.runs {
                let log = fs::read_to_string(self.stderr_path(run)).unwrap_or_default();
                eprintln!("----- tallyd run {run} stderr -----\n{log}");
            }
        }
    }
}

/// What a finished process printed, and its exit code (-1: killed by a signal).
#[derive(Debug, Clone)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// What `tally verify --json` recomputed from a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub size: u64,
    /// Hex.
    pub head_hash: String,
}

/// Runs `tallyd` with exactly `args` and waits for it to exit (killing it
/// after 30 s): for daemons expected to refuse to start.
pub fn tallyd<S: AsRef<OsStr>>(args: &[S]) -> anyhow::Result<Run> {
    let mut command = Command::new(binary("tallyd")?);
    command.args(args);
    run_to_end(command, b"")
}

fn run_to_end(mut command: Command, stdin: &[u8]) -> anyhow::Result<Run> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot spawn {command:?}"))?;
    if let Some(mut input) = child.stdin.take() {
        // A process that exits before reading all of it is not an error here.
        let _ = input.write_all(stdin);
    }
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    });
    let output = child.wait_with_output();
    let _ = done_tx.send(());
    let _ = watchdog.join();
    let output = output.with_context(|| format!("cannot run {command:?}"))?;
    Ok(Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}
