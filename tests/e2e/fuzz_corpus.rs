//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`, and any saved crash in
//! `fuzz/artifacts-regressions/<target>/*`) without libFuzzer, through the
//! code the fuzz targets run: the attest parsers and verifier in-process
//! (`fuzz/src/checks.rs`), and the request streams (`fuzz/src/wire.rs`)
//! against a real `tallyd` over its Unix socket, and the ack journal's
//! recovery scripts (`fuzz/src/journal.rs`) against the daemon's journal and
//! store in-process. Fails if an input panics, hangs the daemon or kills it,
//! or if a well-behaved client cannot append afterwards.

#[path = "../../fuzz/src/checks.rs"]
mod checks;
#[path = "../../fuzz/src/journal.rs"]
mod journal;
#[path = "../../fuzz/src/wire.rs"]
mod wire;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use prost::Message;
use tally_client::proto::Response;
use tally_tests::{events, Daemon, DaemonOpts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// How long one replayed conversation may take before the daemon is deemed hung.
const CONVERSATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Every input saved for `target`: its corpus and its regressions, sorted.
fn inputs(target: &str) -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut inputs = Vec::new();
    for dir in ["corpus", "artifacts-regressions"] {
        let dir = fuzz.join(dir).join(target);
        if !dir.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
            let path = entry?.path();
            if path.is_file() {
                let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
                inputs.push((path, bytes));
            }
        }
    }
    inputs.sort();
    anyhow::ensure!(
        !inputs.is_empty(),
        "no corpus for fuzz target {target} under {}",
        fuzz.display()
    );
    Ok(inputs)
}

/// The `bundle_verify` and `checkpoint_and_attest_parse` targets' code on
/// every saved input of every target (inputs of one are cheap tests of the
/// others).
#[test]
fn attest_parsers_and_verifier_survive_the_corpus() -> anyhow::Result<()> {
    let fixtures = checks::Fixtures::load().map_err(anyhow::Error::msg)?;
    let mut all = Vec::new();
    for target in [
        "bundle_verify",
        "checkpoint_and_attest_parse",
        "frame_decode",
        "request_handler",
    ] {
        all.extend(inputs(target)?);
    }
    let mut panicked = Vec::new();
    let mut reports = 0;
    for (path, data) in &all {
        match catch_unwind(AssertUnwindSafe(|| {
            checks::parse_all(data, &fixtures);
            checks::bundle_verify(data, &fixtures)
        })) {
            Ok(count) => reports += count,
            Err(_) => panicked.push(path.display().to_string()),
        }
    }
    assert!(panicked.is_empty(), "inputs that panic: {panicked:#?}");
    let seed = all
        .iter()
        .find(|(path, _)| path.ends_with("bundle_verify/anchored_swtpm.tally"))
        .context("the seed bundle anchored_swtpm.tally is missing")?;
    assert!(
        checks::passes_with_fixtures(&seed.1, &fixtures),
        "the seed bundle does not verify with fuzz/fixtures: regenerate them together"
    );
    // The seed bundles are valid: each gets a report under all three options.
    assert!(
        reports >= 3,
        "no seed bundle was readable ({reports} reports)"
    );
    Ok(())
}

/// The `frame_decode` corpus as raw client bytes and the `request_handler`
/// corpus as the streams `wire::stream` makes of it, each on its own
/// connection to one real daemon with the fuzz target's limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_survives_the_corpus() -> anyhow::Result<()> {
    let mut daemon = Daemon::start(DaemonOpts::with_config(wire::DAEMON_CONFIG))?;
    let mut conversations = Vec::new();
    for (path, data) in inputs("frame_decode")? {
        conversations.push((path, data));
    }
    for (path, data) in inputs("request_handler")? {
        conversations.push((path, wire::stream(&data)));
    }
    for (path, bytes) in &conversations {
        let responses = converse(&daemon.socket(), bytes)
            .await
            .with_context(|| format!("replaying {}", path.display()))?;
        assert!(
            daemon.is_running(),
            "tallyd died on {}; stderr:\n{}",
            path.display(),
            daemon.stderr()
        );
        check_frames(&responses).with_context(|| format!("responses to {}", path.display()))?;
    }

    let acks = daemon.client().await?.append(events(0, 3)).await?;
    assert_eq!(acks.len(), 3, "a well-behaved client could not append");
    assert!(daemon.is_running(), "tallyd died");
    let stderr = daemon.stderr();
    assert!(!stderr.contains("panicked"), "tallyd panicked:\n{stderr}");
    let verified = daemon.export_and_verify()?;
    assert!(verified.size >= 3, "{verified:?}");
    Ok(())
}

/// Writes `bytes` and closes the write side while reading every response
/// until the daemon closes the connection. Fails if that takes longer than
/// [`CONVERSATION_TIMEOUT`] (a hung connection).
async fn converse(socket: &Path, bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    let (mut from_daemon, mut to_daemon) = stream.into_split();
    let write = async move {
        // The daemon may close first (protocol error): a failed write is fine.
        let _ = to_daemon.write_all(bytes).await;
        let _ = to_daemon.shutdown().await;
    };
    let read = async move {
        let mut responses = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match from_daemon.read(&mut buf).await {
                Ok(0) => return Ok(responses),
                Ok(n) => responses.extend_from_slice(&buf[..n]),
                // Closing with our bytes unread resets the connection: closed too.
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Ok(responses)
                }
                Err(err) => return Err(anyhow::Error::from(err)),
            }
        }
    };
    let ((), responses) =
        tokio::time::timeout(CONVERSATION_TIMEOUT, async { tokio::join!(write, read) })
            .await
            .context("the daemon did not close the connection after the client closed its side")?;
    responses
}

/// Every complete response frame decodes (a reset may cut the last one).
fn check_frames(mut bytes: &[u8]) -> anyhow::Result<()> {
    while let Some((len, rest)) = bytes.split_first_chunk::<4>() {
        let len = u32::from_be_bytes(*len) as usize;
        let Some(frame) = rest.get(..len) else {
            break;
        };
        Response::decode(frame).context("the daemon sent an undecodable response")?;
        bytes = &rest[len..];
    }
    Ok(())
}

/// The `journal_replay` target's code on its saved inputs; the named seeds
/// also end as their names say (the store's size after the replay, or the
/// refusal).
#[test]
fn journal_recovery_survives_the_corpus() -> anyhow::Result<()> {
    use journal::Outcome::{Recovered, Refused};
    let expected = [
        ("commit-then-journal", Recovered { size: 4 }),
        // A changed byte in the last frame's record: that frame is not
        // valid (as if torn), so it is not replayed.
        ("damaged-body-last-frame-is-dropped", Recovered { size: 2 }),
        ("damaged-first-tag-refuses", Refused { size: 0 }),
        ("damaged-record-middle-frame", Refused { size: 0 }),
        ("journal-apply-both-regions", Recovered { size: 6 }),
        ("journal-restart-journal", Recovered { size: 8 }),
        ("raw-frame-shaped-without-the-key", Recovered { size: 0 }),
        // The last frame torn: never acked as far as replay can tell.
        ("torn-last-frame", Recovered { size: 2 }),
    ];
    let mut checked = 0;
    for (path, bytes) in inputs("journal_replay")? {
        let dir = tempfile::Builder::new()
            .prefix("tally-journal-corpus-")
            .tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())?;
        let outcome = catch_unwind(AssertUnwindSafe(|| journal::run(&bytes, dir.path())))
            .map_err(|_| anyhow::anyhow!("{} panicked", path.display()))?;
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("");
        if let Some((_, wanted)) = expected.iter().find(|(seed, _)| *seed == name) {
            assert_eq!(outcome, *wanted, "{name}");
            checked += 1;
        }
    }
    assert_eq!(checked, expected.len(), "a named seed is missing");
    Ok(())
}
