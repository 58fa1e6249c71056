//! The ack journal's recovery (`Journal::recover`: the frame parser, the
//! region scan and the replay into LMDB) against a model of what was acked.
//!
//! The input is a script (or, with an even first byte, the raw content of
//! a journal file). A script writes frames with the real `Journal::append`
//! into a journal on a real `Store` (tmpfs), commits batches to LMDB as the
//! sequencer does (a large batch with the journaled ones before it, then
//! the region starts over; an apply switches regions first), recovers in
//! the middle as a restart would, and may damage the file (flip a byte,
//! zero a range: a torn write). A model keeps every acked record. After
//! the last step the store is reopened and the journal recovered.
//!
//! Must hold: no panic; the store verifies; everything LMDB held before the
//! recovery is still there; every record in the store is byte for byte the
//! acked one with that seq (nothing damaged is ever replayed); with no
//! damage, every acked record is there; recovery fails only on damage, and
//! then only as `Damaged` or `Mismatch`, naming the file, with the store
//! unchanged. Raw content (no frame carries this store's key) replays
//! nothing and is never refused.

use std::path::Path;

use tally_daemon::batch::Batch;
use tally_daemon::journal::{Journal, JournalError, CAPACITY, REGION};
use tally_daemon::store::{MapSizing, Store};

/// Most steps of one script.
const MAX_STEPS: usize = 24;

const SIZING: MapSizing = MapSizing {
    initial: 4 << 20,
    max: 64 << 20,
};

/// Reads the input front to back; zeros once it is used up.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&first, rest)) => {
                self.0 = rest;
                first
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn bytes(&mut self, len: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

/// A change to the journal file, made once the daemon is "gone".
enum Damage {
    Flip { offset: usize, mask: u8 },
    Zero { offset: usize, len: usize },
}

/// What the script did, for the checks.
struct Model {
    /// Every acked record, by seq.
    acked: Vec<Vec<u8>>,
    /// Journaled batches not yet in LMDB, oldest first.
    pending: Vec<Batch>,
    /// The state after the newest acked record.
    tip: Batch,
}

/// How the final recovery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The journal was replayed; the store holds `size` records.
    Recovered { size: u64 },
    /// The start was refused (`Damaged` or `Mismatch`); the store holds
    /// `size` records, as before.
    Refused { size: u64 },
}

/// Runs `data` (see the module doc) in a fresh directory under `dir`.
pub fn run(data: &[u8], dir: &Path) -> Outcome {
    let store_dir = dir.join("store");
    let store = Store::open(&store_dir, SIZING).expect("a fresh store opens");
    // The journal file at its full size, all zeros (sparse): what the first
    // recovery would write (16 MiB per iteration), not what is fuzzed here.
    std::fs::File::create(store_dir.join(tally_daemon::journal::FILE_NAME))
        .and_then(|file| file.set_len(CAPACITY as u64))
        .expect("create the journal file");
    let (mut journal, replayed) =
        Journal::recover(&store_dir, &store).expect("a fresh journal is created");
    assert_eq!(replayed, 0);
    let mut input = Input(data);
    let raw = data.first().is_none_or(|first| first % 2 == 0);
    let mut model = Model {
        acked: Vec::new(),
        pending: Vec::new(),
        tip: store.start_batch().expect("start a batch"),
    };
    let mut damage = Vec::new();
    if raw {
        // The input as the journal's first bytes (with this store's key,
        // its tags never match: the header checks, the scan and the refusal
        // of the run's end are what this reaches).
        let content = input.bytes(CAPACITY);
        drop(journal);
        write_at(&store_dir, 0, content);
    } else {
        input.byte();
        for _ in 0..MAX_STEPS {
            if input.0.is_empty() {
                break;
            }
            match input.byte() % 6 {
                0 => commit(&store, &mut journal, &mut model, &mut input),
                1 => journal_batch(&mut journal, &mut model, &mut input),
                2 => apply(&store, &mut journal, &mut model),
                3 => damage.push(Damage::Flip {
                    offset: offset(&mut input),
                    mask: input.byte().max(1),
                }),
                4 => damage.push(Damage::Zero {
                    offset: offset(&mut input),
                    len: usize::from(input.u16()) + 1,
                }),
                _ if damage.is_empty() => {
                    // A restart: everything acked is back, nothing else.
                    drop(journal);
                    let replayed;
                    (journal, replayed) = Journal::recover(&store_dir, &store)
                        .expect("an undamaged journal recovers");
                    let pending: usize = model.pending.iter().map(Batch::len).sum();
                    assert_eq!(replayed as usize, pending);
                    model.pending.clear();
                    check_store(&store, &model.acked, model.acked.len() as u64);
                }
                _ => {}
            }
        }
        drop(journal);
        apply_damage(&store_dir, &damage);
    }
    let before = store.head().expect("head").size;
    drop(store);
    let store = Store::open(&store_dir, SIZING).expect("the store reopens");
    match Journal::recover(&store_dir, &store) {
        Ok((_, replayed)) => {
            let size = store.head().expect("head").size;
            assert_eq!(size, before + replayed);
            assert!(
                !raw || replayed == 0,
                "a frame without the key was replayed"
            );
            if damage.is_empty() {
                assert_eq!(size, model.acked.len() as u64, "acked records lost");
            }
            check_store(&store, &model.acked, size);
            Outcome::Recovered { size }
        }
        Err(err @ (JournalError::Damaged { .. } | JournalError::Mismatch { .. })) => {
            // Raw content holds no frame with this store's key: nothing to refuse.
            assert!(
                !raw && !damage.is_empty(),
                "an undamaged journal refused: {err}"
            );
            assert!(err.to_string().contains("ack-journal"), "{err}");
            assert_eq!(
                store.head().expect("head").size,
                before,
                "a refusal changed the store"
            );
            check_store(&store, &model.acked, before);
            Outcome::Refused { size: before }
        }
        Err(err) => panic!("unexpected recovery error: {err}"),
    }
}

/// An offset in the first 64 KiB of either region (where the script's
/// frames are).
fn offset(input: &mut Input) -> usize {
    let region = usize::from(input.byte() % 2) * REGION;
    region + usize::from(input.u16())
}

/// `count` records (1-4) with bodies from the input, on `model.tip`.
fn next_batch(model: &Model, input: &mut Input) -> Batch {
    let mut batch = Batch::new(model.tip.tip(), model.tip.frontier().clone());
    for _ in 0..=input.byte() % 4 {
        let len = usize::from(input.byte() % 64);
        let body = input.bytes(len).to_vec();
        batch
            .push(|bytes| bytes.extend_from_slice(&body))
            .expect("room in the tree");
    }
    batch
}

fn acked(model: &mut Model, batch: &Batch) {
    model
        .acked
        .extend(batch.records().map(|(_, record)| record.to_vec()));
    model.tip = Batch::new(batch.tip(), batch.frontier().clone());
}

/// A batch too large for the journal: committed to LMDB with the journaled
/// ones before it, after which the active region starts over.
fn commit(store: &Store, journal: &mut Journal, model: &mut Model, input: &mut Input) {
    let batch = next_batch(model, input);
    let mut all: Vec<&Batch> = model.pending.iter().collect();
    all.push(&batch);
    store.append_all(&all).expect("commit");
    journal.clear();
    model.pending.clear();
    acked(model, &batch);
}

/// A small batch: one frame in the journal, acked.
fn journal_batch(journal: &mut Journal, model: &mut Model, input: &mut Input) {
    let batch = next_batch(model, input);
    if journal.fits(&batch) {
        journal.append(&batch).expect("journal write");
        acked(model, &batch);
        model.pending.push(batch);
    }
}

/// The apply: switch regions (the other one's frames are all in LMDB), then
/// commit the journaled batches.
fn apply(store: &Store, journal: &mut Journal, model: &mut Model) {
    if model.pending.is_empty() {
        return;
    }
    journal.switch();
    let all: Vec<&Batch> = model.pending.iter().collect();
    store.append_all(&all).expect("apply");
    model.pending.clear();
}

fn write_at(store_dir: &Path, offset: usize, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(store_dir.join(tally_daemon::journal::FILE_NAME))
        .expect("open the journal");
    file.write_all_at(bytes, offset as u64)
        .expect("write the journal");
}

fn apply_damage(store_dir: &Path, damage: &[Damage]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(store_dir.join(tally_daemon::journal::FILE_NAME))
        .expect("open the journal");
    for change in damage {
        match *change {
            Damage::Flip { offset, mask } => {
                let mut byte = [0u8];
                file.read_exact_at(&mut byte, offset as u64)
                    .expect("read the journal");
                file.write_all_at(&[byte[0] ^ mask], offset as u64)
                    .expect("write the journal");
            }
            Damage::Zero { offset, len } => {
                let len = len.min(CAPACITY - offset);
                file.write_all_at(&vec![0u8; len], offset as u64)
                    .expect("write the journal");
            }
        }
    }
}

/// The store verifies, holds `size` records, and each is the acked one.
fn check_store(store: &Store, acked: &[Vec<u8>], size: u64) {
    let head = store.verify().expect("the store verifies");
    assert_eq!(head.size, size);
    let records = store.read(0, usize::MAX, usize::MAX).expect("read");
    assert_eq!(records.len() as u64, size);
    for record in &records {
        let expected = acked.get(record.seq as usize);
        assert_eq!(
            Some(&record.bytes),
            expected,
            "record {} is not the acked one",
            record.seq
        );
    }
}
