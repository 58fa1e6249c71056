//! What the clients were told (every ack, by seq) and what has been checked
//! against the restarted daemon: every acked event at its seq with its entry
//! hash and payload, the chain linked, each event stored at most once, and
//! the log continuing densely.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{ensure, Context as _};
use tally_client::proto::StoredRecord;
use tally_client::Ack;
use tally_tests::{check_records, event, read_range, stored_event, Daemon};

/// Every ack any client received, and the ids handed out.
#[derive(Debug, Default)]
pub struct Ledger {
    /// seq -> (event id, entry hash).
    acked: Mutex<BTreeMap<u64, (u64, [u8; 32])>>,
    /// Every event sent so far has an id below this (see [`event`]).
    next_id: AtomicU64,
}

impl Ledger {
    /// Ids for a batch of `count` events.
    pub fn take_ids(&self, count: u64) -> std::ops::Range<u64> {
        let first = self.next_id.fetch_add(count, Ordering::Relaxed);
        first..first + count
    }

    /// Records the acks of events `ids`; a seq acked twice fails the test.
    pub fn acked(&self, ids: std::ops::Range<u64>, acks: &[Ack]) {
        let mut acked = self.acked.lock().unwrap();
        for (id, ack) in ids.zip(acks) {
            let previous = acked.insert(ack.seq, (id, ack.entry_hash));
            assert!(previous.is_none(), "seq {} acked twice", ack.seq);
        }
    }

    pub fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn snapshot(&self) -> BTreeMap<u64, (u64, [u8; 32])> {
        self.acked.lock().unwrap().clone()
    }
}

/// How far the store has been checked: records `0..size` were read back and
/// hold every ack below `size`; `head` is the entry hash of record
/// `size - 1`; `ids` the events stored in them.
#[derive(Debug, Default)]
pub struct Checked {
    pub size: u64,
    pub head: [u8; 32],
    ids: HashSet<u64>,
}

/// What a check found.
#[derive(Debug, Clone, Copy)]
pub struct Found {
    /// The log's size after the restart, before the dense append.
    pub size: u64,
    /// Acks below `size` checked in this round.
    pub acks_checked: usize,
    /// Stored records past the last ack: committed, their ack cut off.
    pub unacked_stored: u64,
}

/// After a restart: the log id is the same, every ack not checked before
/// is in the store at its seq with its entry hash and its event, the new
/// records chain onto the checked ones and each stores an event that was
/// sent, at most once; then one append alone must get seq = the size (no
/// gap, no duplicate). Acked events missing or different fail the test with
/// their seqs.
pub async fn check_restarted(
    daemon: &Daemon,
    ledger: &Ledger,
    checked: &mut Checked,
    log_id: &[u8],
) -> anyhow::Result<Found> {
    let mut client = daemon.client().await?;
    ensure!(client.server_hello().log_id == log_id, "the log id changed");
    let size = client.status().await?.size;
    ensure!(
        size >= checked.size,
        "the log shrank from {} to {size} records",
        checked.size
    );
    // From the last checked record, to check the link onto it.
    let from = checked.size.saturating_sub(1);
    let records = read_range(&mut client, from, size).await?;
    check_records(&records, from)?;
    if checked.size > 0 {
        let first = tally_attest::entry_hash(&records[0].record);
        ensure!(
            first == checked.head,
            "record {from} changed since the last check"
        );
    }
    let new = &records[usize::from(checked.size > 0)..];
    let acked = ledger.snapshot();
    let acks_checked = compare(&acked, new, checked.size, size)?;
    let sent = ledger.next_id.load(Ordering::Relaxed);
    for record in new {
        let id = event_id(record)?;
        ensure!(id < sent, "seq {}: event {id} was never sent", record.seq);
        ensure!(
            checked.ids.insert(id),
            "seq {}: event {id} is stored twice",
            record.seq
        );
    }
    let last_acked = acked.keys().next_back().map_or(0, |seq| seq + 1);

    // Dense continuation: the next append, alone, gets seq = size.
    let ids = ledger.take_ids(1);
    let acks = client.append(ids.clone().map(event).collect()).await?;
    ensure!(
        acks[0].seq == size,
        "the first append after the restart got seq {}, the log had {size} records",
        acks[0].seq
    );
    ledger.acked(ids.clone(), &acks);
    checked.ids.insert(ids.start);
    checked.size = size + 1;
    checked.head = acks[0].entry_hash;
    Ok(Found {
        size,
        acks_checked,
        unacked_stored: size.saturating_sub(last_acked),
    })
}

/// Every ack in `from..to` against `records` (which start at seq `from`).
/// Returns how many were checked; fails naming the lost or changed seqs.
fn compare(
    acked: &BTreeMap<u64, (u64, [u8; 32])>,
    records: &[StoredRecord],
    from: u64,
    to: u64,
) -> anyhow::Result<usize> {
    let mut lost = Vec::new();
    let mut changed = Vec::new();
    let mut count = 0;
    for (&seq, &(id, hash)) in acked.range(from..) {
        count += 1;
        let Some(record) = records.get((seq - from) as usize).filter(|_| seq < to) else {
            lost.push(seq);
            continue;
        };
        if tally_attest::entry_hash(&record.record) != hash || stored_event(record)? != event(id) {
            changed.push(seq);
        }
    }
    ensure!(
        lost.is_empty() && changed.is_empty(),
        "{} acked event(s) lost (the log has {to} records; first seqs {:?}), {} changed (first {:?})",
        lost.len(),
        &lost[..lost.len().min(10)],
        changed.len(),
        &changed[..changed.len().min(10)]
    );
    Ok(count)
}

/// The id of the test event a record holds (its `i` attribute).
fn event_id(record: &StoredRecord) -> anyhow::Result<u64> {
    let event = stored_event(record)?;
    event
        .attributes
        .get("i")
        .and_then(|i| i.parse().ok())
        .with_context(|| format!("seq {}: not a test event", record.seq))
}

/// The final check, from seq 0: the whole chain, every ack ever received.
/// Returns the size, the head and the smallest record's length in bytes.
pub async fn check_all(daemon: &Daemon, ledger: &Ledger) -> anyhow::Result<(u64, [u8; 32], u64)> {
    let mut client = daemon.client().await?;
    let size = client.status().await?.size;
    let records = read_range(&mut client, 0, size).await?;
    check_records(&records, 0)?;
    let acked = ledger.snapshot();
    compare(&acked, &records, 0, size)?;
    let mut ids = HashSet::new();
    for record in &records {
        let id = event_id(record)?;
        ensure!(
            ids.insert(id),
            "seq {}: event {id} is stored twice",
            record.seq
        );
    }
    let head = records
        .last()
        .map_or([0; 32], |last| tally_attest::entry_hash(&last.record));
    // A record's bytes in a batch: the record and its sealed opening (as
    // long as the opening served), which the journal's limit counts too.
    let smallest = records
        .iter()
        .map(|record| record.record.len() + record.content.len())
        .min();
    Ok((size, head, smallest.unwrap_or(0) as u64))
}
