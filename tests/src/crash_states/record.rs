//! A recorded run: `tallyd` under the recorder while clients append
//! concurrently (and, with a TPM, ask for anchors), then SIGKILL.

use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use rand::Rng;
use tempfile::TempDir;

use super::image::Tree;
use super::oplog::{self, Timed};
use super::process::{self, monotonic_ns, Started};

/// How long a start may take.
const START: Duration = Duration::from_secs(20);

/// What a path's recorded run does.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: &'static str,
    /// Top-level lines of the daemon's config file.
    pub config: &'static str,
    /// Record from an empty data directory (the first start: the store and
    /// the journal are created under the recorder) instead of after a clean
    /// first start.
    pub from_empty: bool,
    pub connections: u64,
    /// Appends in flight per connection.
    pub window: usize,
    /// Events per append, drawn from this range.
    pub batch: RangeInclusive<u64>,
    /// Appends per connection.
    pub appends: usize,
    /// Anchors asked for during the run (`tally anchor`; needs a TPM).
    pub anchors: usize,
}

/// An ack a client received, and when (CLOCK_MONOTONIC ns).
#[derive(Debug, Clone, Copy)]
pub struct Acked {
    pub seq: u64,
    pub entry_hash: [u8; 32],
    /// The event's id (`crate::event(id)` is the event sent).
    pub id: u64,
    pub at: u64,
}

/// Everything the explorer needs of one run.
#[derive(Debug)]
pub struct Recording {
    /// Holds the data directory, the config, the op log.
    pub dir: TempDir,
    pub config: PathBuf,
    /// The data directory before the recorded run.
    pub snapshot: Tree,
    pub ops: Vec<Timed>,
    pub acks: Vec<Acked>,
    /// Ids of every event sent (acked or not).
    pub sent: Vec<Range<u64>>,
}

/// The recorder library, built with the workspace next to the binaries.
pub fn recorder_library() -> anyhow::Result<PathBuf> {
    let tallyd = crate::binary("tallyd")?;
    let library = tallyd.with_file_name("libtally_iorec.so");
    ensure!(
        library.is_file(),
        "{} not found: run `cargo build --workspace` first (tests/iorec is a workspace member)",
        library.display()
    );
    Ok(library)
}

/// The socket path of a `swtpm:path=...` TCTI.
fn tpm_socket(tcti: &str) -> anyhow::Result<&str> {
    tcti.strip_prefix("swtpm:path=")
        .context("the explorer records TPM commands on a swtpm:path= TCTI only")
}

/// Runs `workload` under the recorder; with `tcti`, tallyd anchors in that
/// TPM (every second, and on demand).
pub async fn record(
    workload: &Workload,
    tcti: Option<&str>,
    rng: &mut impl Rng,
) -> anyhow::Result<Recording> {
    let dir = tempfile::Builder::new().prefix("tally-crash-").tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let config = dir.path().join("tallyd.toml");
    let tpm = match tcti {
        Some(tcti) => format!("tcti = \"{tcti}\"\nanchor_interval_secs = 1\n"),
        None => "enabled = false\n".to_owned(),
    };
    std::fs::write(&config, format!("{}\n[tpm]\n{tpm}", workload.config))?;
    if !workload.from_empty {
        let first = dir.path().join("first");
        std::fs::create_dir_all(&first)?;
        match process::start(&first, &data, &config, &[], &[], START)? {
            Started::Ready(tallyd) => {
                let status = tallyd.terminate(Duration::from_secs(20))?;
                ensure!(
                    status.success(),
                    "the clean first start did not stop cleanly: {status}"
                );
            }
            other => bail!("the clean first start failed: {other:?}"),
        }
    }
    let snapshot = Tree::load(&data)?;
    let log = dir.path().join("op.log");
    let library = recorder_library()?;
    let mut env = vec![
        (
            "LD_PRELOAD",
            library.to_str().context("library path")?.to_owned(),
        ),
        (
            "TALLY_IOREC_DIR",
            data.to_str().context("data path")?.to_owned(),
        ),
        (
            "TALLY_IOREC_LOG",
            log.to_str().context("log path")?.to_owned(),
        ),
    ];
    if let Some(tcti) = tcti {
        env.push(("TALLY_IOREC_TPM", tpm_socket(tcti)?.to_owned()));
    }
    let env: Vec<(&str, &str)> = env
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run)?;
    let tallyd = match process::start(&run, &data, &config, &[], &env, START)? {
        Started::Ready(tallyd) => tallyd,
        other => bail!("tallyd under the recorder did not start: {other:?}"),
    };
    let acks = Arc::new(Mutex::new(Vec::new()));
    let mut sent = Vec::new();
    let mut tasks = Vec::new();
    for connection in 0..workload.connections {
        let mut next = connection * 1_000_000;
        let mut batches = Vec::new();
        for _ in 0..workload.appends {
            let len = rng.gen_range(workload.batch.clone());
            batches.push(next..next + len);
            next += len;
        }
        sent.extend(batches.iter().cloned());
        let socket = tallyd.socket.clone();
        let acks = acks.clone();
        let window = workload.window;
        tasks.push(tokio::spawn(async move {
            let mut client = tally_client::Client::connect(&socket, "crash-states").await?;
            let result = crate::append_pipelined(&mut client, batches, window, |ids, got| {
                let at = monotonic_ns();
                let mut acks = acks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                for (id, ack) in ids.zip(got) {
                    acks.push(Acked {
                        seq: ack.seq,
                        entry_hash: ack.entry_hash,
                        id,
                        at,
                    });
                }
            })
            .await;
            anyhow::Ok(result.is_ok())
        }));
    }
    let mut anchoring = None;
    if workload.anchors > 0 {
        let socket = tallyd.socket.clone();
        let anchors = workload.anchors;
        anchoring = Some(tokio::spawn(async move {
            let mut client = tally_client::Client::connect(&socket, "crash-states").await?;
            for _ in 0..anchors {
                client
                    .anchor()
                    .await
                    .context("an anchor asked for during the run")?;
            }
            anyhow::Ok(())
        }));
    }
    // SIGKILL once most of the load is acked, while the rest is in flight.
    let planned: u64 = sent.iter().map(|ids| ids.end - ids.start).sum();
    let kill_at = planned * 9 / 10;
    let acked = || acks.lock().map_or(0, |acks| acks.len() as u64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let anchored = |anchoring: &Option<tokio::task::JoinHandle<_>>| {
        anchoring.as_ref().is_none_or(|task| task.is_finished())
    };
    while (acked() < kill_at && tasks.iter().any(|task| !task.is_finished()))
        || !anchored(&anchoring)
    {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{}: the load did not finish in 60 s",
            workload.name
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(tallyd);
    if let Some(task) = anchoring {
        task.await.context("the anchoring task panicked")??;
    }
    for task in tasks {
        // A client cut off by the kill ends with an error: expected.
        let _ = task.await.context("a client task panicked")?;
    }
    let ops = oplog::parse(&std::fs::read(&log)?)?;
    let acks = acks.lock().map(|acks| acks.clone()).unwrap_or_default();
    ensure!(!acks.is_empty(), "{}: no acks were received", workload.name);
    Ok(Recording {
        config,
        dir,
        snapshot,
        ops,
        acks,
        sent,
    })
}

impl Recording {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
