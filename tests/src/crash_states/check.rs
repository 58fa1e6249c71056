//! Checking one crash state: `tallyd` itself starts on it (its own recovery:
//! LMDB's meta pages, the ack journal's replay) and gives back every event
//! acked before the cut, at its seq, with its entry hash, on a chain that
//! verifies, with nothing that was never sent.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use super::image::Tree;
use super::process::{self, Started};
use super::record::{Acked, Recording};

/// How long tallyd may take to start on a crash state, and a client call.
const DEADLINE: Duration = Duration::from_secs(20);

/// What a state showed when tallyd started on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub records: u64,
    /// The store's newest anchor's counter value.
    pub newest_anchor: Option<u64>,
}

/// Materialises `tree` under `work` (which must not exist), runs tallyd on it
/// (`--no-tpm`: the TPM's side is checked from the op log) and checks it.
/// `Err` is a failure of the state, described; the harness's own failures
/// are errors too (they fail the test just the same).
pub fn check(
    tree: &Tree,
    recording: &Recording,
    required: &[Acked],
    min_anchor: Option<u64>,
    work: &Path,
) -> anyhow::Result<Seen> {
    let data = work.join("data");
    tree.write_to(&data)?;
    let started = process::start(work, &data, &recording.config, &["--no-tpm"], &[], DEADLINE)?;
    let tallyd = match started {
        Started::Ready(tallyd) => tallyd,
        Started::Exited(status, stderr) => {
            anyhow::bail!("tallyd did not start on the crash state ({status}):\n{stderr}")
        }
        Started::Hung(stderr) => {
            anyhow::bail!("tallyd neither started nor exited within {DEADLINE:?} on the crash state:\n{stderr}")
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let seen = runtime.block_on(async {
        tokio::time::timeout(
            DEADLINE,
            read_back(&tallyd.socket, recording, required, min_anchor),
        )
        .await
        .context("reading the crash state back timed out")?
    });
    drop(tallyd);
    seen
}

async fn read_back(
    socket: &Path,
    recording: &Recording,
    required: &[Acked],
    min_anchor: Option<u64>,
) -> anyhow::Result<Seen> {
    let mut client = tally_client::Client::connect(socket, "crash-check").await?;
    let size = client.status().await?.size;
    let records = crate::read_range(&mut client, 0, size).await?;
    crate::check_records(&records, 0).context("the chain does not verify")?;
    let mut ids = HashSet::new();
    for record in &records {
        let event = crate::stored_event(record)?;
        let id: u64 = event
            .attributes
            .get("i")
            .and_then(|id| id.parse().ok())
            .with_context(|| format!("seq {}: an event the explorer never sent", record.seq))?;
        anyhow::ensure!(
            recording.sent.iter().any(|ids| ids.contains(&id)) && event == crate::event(id),
            "seq {}: an event the explorer never sent (id {id})",
            record.seq
        );
        anyhow::ensure!(
            ids.insert(id),
            "seq {}: event {id} is stored twice",
            record.seq
        );
    }
    for ack in required {
        let record = records.get(ack.seq as usize).with_context(|| {
            format!(
                "acked event lost: seq {} (event {}) was acked, the log has {size} records",
                ack.seq, ack.id
            )
        })?;
        anyhow::ensure!(
            record.entry_hash.as_ref() == ack.entry_hash.as_slice(),
            "acked event lost: seq {} holds another record than the one acked",
            ack.seq
        );
        anyhow::ensure!(
            crate::stored_event(record)? == crate::event(ack.id),
            "acked event lost: seq {} holds another event than event {}",
            ack.seq,
            ack.id
        );
    }
    let mut newest_anchor = None;
    let mut from = 0;
    loop {
        let page = client.read_anchors(from, 0).await?;
        let Some(last) = page.last() else { break };
        newest_anchor = Some(last.counter);
        from = last.counter + 1;
    }
    if let Some(min) = min_anchor {
        anyhow::ensure!(
            newest_anchor.is_some_and(|newest| newest >= min),
            "the store is behind the TPM: tallyd had incremented the counter past anchor {min}, \
             the crash state's newest anchor is {newest_anchor:?}"
        );
    }
    Ok(Seen {
        records: size,
        newest_anchor,
    })
}
