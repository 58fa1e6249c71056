//! The ack journal: a small commit acknowledged after one write.
//!
//! An LMDB commit flushes twice (the data pages, then the meta page), and
//! for a lone client that waits for each ack the second flush is half the
//! wait. So a small batch is written to this journal instead, as one frame:
//! one `pwrite` of whole blocks on a descriptor opened `O_DSYNC` (and
//! `O_DIRECT` where the file system allows it), which returns once the frame
//! is on stable storage. The file is created zero-filled at its full size
//! (and fsynced, with its directory) and afterwards only overwritten in
//! place, so such a write has no allocation or file size to commit. Its
//! jobs are acked then. The sequencer later commits the journaled batches
//! to LMDB together (the *apply*). At start-up, [`Journal::recover`] commits
//! to LMDB what the journal holds and the store does not.
//!
//! The file is two regions of [`REGION`] bytes. Frames are written into the
//! active region from its start, each at a multiple of [`BLOCK`]. To apply
//! without stopping the acks, the sequencer switches to the other region
//! ([`Journal::switch`]) and commits the first region's batches while new
//! frames go to the other; so a region is written over only after everything
//! in it is in the store.
//!
//! The frame layout, what makes a frame valid, and the replay rules are
//! docs/DESIGN.md, section 5b (the one table of the layout; the test
//! `the_frame_layout_is_that_of_the_design_table` pins it). In short: the
//! records are the exact bytes LMDB will hold, so they carry their own
//! integrity (seqs count up, each `prev_hash` is the entry hash of the
//! record before, the last entry hash is the trailer): a torn write breaks
//! that chain. The tag, keyed with a random secret kept in the store
//! ([`Store::journal_key`]), binds the header to the trailer (and so to the
//! records): a client whose payload holds bytes shaped like a frame cannot
//! make them pass for one.
//!
//! A region's content is the run of valid frames from its start in which
//! each frame continues the one before; frames left from before the region
//! was last started over hold lower seqs and end the run. Replay takes the
//! records of both regions' runs past the store's head, in seq order.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tally_attest::{entry_hash, Hash, RecordHeader};

use tally_attest::content::{commitment_of_opening, BodyFacts};
use zeroize::Zeroize;

use crate::batch::Batch;
use crate::store::{seal, Store, StoreError};

/// Frames start at multiples of this (one page): a frame's first block is
/// never shared with the frame before it.
pub const BLOCK: usize = 4096;

/// Size of the journal file: two regions.
pub const CAPACITY: usize = 2 * REGION;

/// Size of one region.
pub const REGION: usize = 8 << 20;

/// The journal's file name, in the store's directory.
pub const FILE_NAME: &str = "ack-journal";

/// A frame's first bytes: each record is followed by its sealed opening.
const MAGIC: [u8; 8] = *b"TALLYJ02";
/// The magic of the frames of a tallyd before content (store format 4):
/// records only. Replayed as records without content, so an upgrade after a
/// crash loses no acknowledged event.
const MAGIC_V1: [u8; 8] = *b"TALLYJ01";
/// Bytes of a frame's header: magic, first seq u64, number of records u32,
/// length u32, tag.
const FRAME_HEADER: usize = 8 + 8 + 4 + 4 + TAG;
/// Bytes of a frame's tag (a truncated SHA-256).
const TAG: usize = 16;
/// Bytes of a frame's trailer: the last record's entry hash.
const TRAILER: usize = 32;

/// The secret that keys frame tags.
pub type JournalKey = [u8; 32];

/// The tag of a frame whose header starts `fields` (magic to length) and
/// whose trailer is `trailer`.
fn tag(key: &JournalKey, fields: &[u8], trailer: &Hash) -> [u8; TAG] {
    let digest = Sha256::new()
        .chain_update(key)
        .chain_update(fields)
        .chain_update(trailer)
        .finalize();
    let mut tag = [0; TAG];
    tag.copy_from_slice(&digest[..TAG]);
    tag
}

/// Why the journal could not be used or recovered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    #[error("ack journal {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("ack journal {path}: the frame at offset {offset} is damaged and acknowledged events follow it; refusing to drop them silently (move the file aside to start without them)")]
    Damaged { path: PathBuf, offset: usize },
    #[error("ack journal {path} does not continue the store: {detail}")]
    Mismatch { path: PathBuf, detail: String },
    #[error("ack journal: replaying into the store failed: {0}")]
    Store(#[from] StoreError),
}

/// The open journal: where the next frame goes.
#[derive(Debug)]
pub struct Journal {
    /// Opened `O_DSYNC` (a write returns once it is on stable storage: one
    /// system call per frame) and, where the file system allows it,
    /// `O_DIRECT` (whole blocks from an aligned buffer, past the page
    /// cache: 10-25% less time per frame than a buffered write on this
    /// project's test machine).
    file: File,
    path: PathBuf,
    /// The region frames are written to.
    active: usize,
    /// Offset of the next frame in the active region (a multiple of
    /// `BLOCK`).
    tail: usize,
    /// The frame being written, reused; frames are built at its first
    /// `BLOCK`-aligned byte.
    buffer: Vec<u8>,
    key: JournalKey,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, commits to `store`
    /// the records it holds past the store's head, and empties it. Returns
    /// the journal and the number of records replayed.
    pub fn recover(dir: &Path, store: &Store) -> Result<(Journal, u64), JournalError> {
        let path = dir.join(FILE_NAME);
        let io_error = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        let key = store.journal_key()?;
        let file = OpenOptions::new()
            .mode(0o600)
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error)?;
        // Mapped, not read into a buffer: a 16 MiB allocation, freed, would
        // raise glibc's mmap threshold for good, and with it the daemon's
        // peak RSS under load.
        let map = if file.metadata().map_err(io_error)?.len() == 0 {
            None
        } else {
            // SAFETY: the file must not change while mapped. The caller holds
            // the data directory's lock (no other tallyd), and this process
            // writes the journal only after the map is dropped, below.
            Some(unsafe { memmap2::Mmap::map(&file) }.map_err(io_error)?)
        };
        let content: &[u8] = map.as_deref().unwrap_or_default();
        let applied = store.head()?.size;
        let mut frames = Vec::new();
        for region in [0, REGION] {
            let end = (region + REGION).min(content.len());
            let content = content.get(region..end).unwrap_or_default();
            frames.extend(scan(content, &key, applied, &path, region)?);
        }
        frames.sort_by_key(|frame| frame.first_seq);
        let replayed = replay(&frames, store, &path)?;
        let len = content.len();
        drop(frames);
        drop(map);
        if len != CAPACITY {
            // Every block written once now, so that a later overwrite and
            // flush need no metadata (allocation or size) committed.
            file.set_len(0).map_err(io_error)?;
            // In 64 KiB writes: one 16 MiB buffer would raise glibc's mmap
            // threshold for good, and with it the daemon's peak RSS under
            // load (136-142 MiB became 163-165 in the overload scenario).
            let zeros = [0u8; 64 << 10];
            for offset in (0..CAPACITY).step_by(zeros.len()) {
                file.write_all_at(&zeros, offset as u64).map_err(io_error)?;
            }
            file.sync_all().map_err(io_error)?;
            File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(io_error)?;
        }
        drop(file);
        // The store now holds every record the journal did: its content is
        // no longer needed, and a first block of zeros tests the writer.
        let mut journal = Journal {
            file: open_writer(&path, true).map_err(io_error)?,
            path: path.clone(),
            active: 0,
            tail: 0,
            buffer: Vec::new(),
            key,
        };
        journal.blocks(1);
        let probe = journal.write_blocks(1);
        if probe
            .as_ref()
            .is_err_and(|err| err.raw_os_error() == Some(nix::libc::EINVAL))
        {
            // No O_DIRECT here (tmpfs, some FUSE file systems).
            tracing::debug!(path = %journal.path.display(), "ack journal: no O_DIRECT on this file system; buffered writes");
            journal.file = open_writer(&journal.path, false).map_err(io_error)?;
            journal.write_blocks(1).map_err(io_error)?;
        } else {
            probe.map_err(io_error)?;
        }
        Ok((journal, replayed))
    }

    /// The first `blocks` blocks of the aligned buffer, zeroed.
    fn blocks(&mut self, blocks: usize) -> &mut [u8] {
        let len = blocks * BLOCK;
        if self.buffer.len() < len + BLOCK {
            self.buffer = vec![0; len + BLOCK];
        }
        let start = self.buffer.as_ptr().align_offset(BLOCK);
        let blocks = &mut self.buffer[start..start + len];
        blocks.fill(0);
        blocks
    }

    /// Writes the first `blocks` blocks of the buffer at the tail; durable
    /// when this returns `Ok`.
    fn write_blocks(&mut self, blocks: usize) -> io::Result<()> {
        let start = self.buffer.as_ptr().align_offset(BLOCK);
        let blocks = self
            .buffer
            .get(start..start + blocks * BLOCK)
            .ok_or_else(|| io::Error::other("journal buffer too small"))?;
        let offset = self.active * REGION + self.tail;
        self.file.write_all_at(blocks, offset as u64)
    }

    /// Whether `batch` fits in the active region.
    pub fn fits(&self, batch: &Batch) -> bool {
        self.tail.saturating_add(frame_len(batch)) <= REGION
    }

    /// Bytes of the active region taken.
    pub fn used(&self) -> usize {
        self.tail
    }

    /// Writes `batch` as the next frame and flushes it: when this returns
    /// `Ok`, the batch survives a crash. The caller checks [`Journal::fits`].
    pub fn append(&mut self, batch: &Batch) -> io::Result<()> {
        if !self.fits(batch) {
            return Err(io::Error::other("the frame does not fit in the journal"));
        }
        let Some((first_seq, _)) = batch.records().next() else {
            return Ok(());
        };
        let len = frame_len(batch);
        let body_len = len - FRAME_HEADER - TRAILER;
        let count = u32::try_from(batch.len()).map_err(io::Error::other)?;
        let body_len = u32::try_from(body_len).map_err(io::Error::other)?;
        let trailer = batch.tip().hash;
        let key = self.key;
        let blocks = len.div_ceil(BLOCK);
        let mut fields = [0u8; 24];
        fields[..8].copy_from_slice(&MAGIC);
        fields[8..16].copy_from_slice(&first_seq.to_be_bytes());
        fields[16..20].copy_from_slice(&count.to_be_bytes());
        fields[20..].copy_from_slice(&body_len.to_be_bytes());
        let mut frame = Cursor(self.blocks(blocks));
        frame.put(&fields);
        frame.put(&tag(&key, &fields, &trailer));
        for (_, record, sealed) in batch.records_sealed() {
            // `frame_len` checked every length fits the u32 field.
            frame.put(&(record.len() as u32).to_be_bytes());
            frame.put(record);
            // The sealed opening (0 bytes: none), never the opening itself.
            frame.put(&(sealed.len() as u32).to_be_bytes());
            frame.put(sealed);
        }
        frame.put(&trailer);
        if let Err(err) = self.write_blocks(blocks) {
            // The frame may be on disk in part or in whole: overwrite it with
            // zeros so a restart does not replay a batch that was answered
            // with an error. Best effort: this write can fail too.
            self.blocks(blocks);
            let _ = self.write_blocks(blocks);
            tracing::error!(path = %self.path.display(), %err, "ack journal write failed");
            return Err(err);
        }
        self.tail += blocks * BLOCK;
        Ok(())
    }

    /// Starts the active region over, once the store holds every journaled
    /// record. Nothing is written: the old frames hold lower seqs than any
    /// frame written after this, so they never continue the new run.
    pub fn clear(&mut self) {
        self.tail = 0;
    }

    /// Makes the other region the active one, from its start. Only once
    /// the store holds every record in the other region; the caller then
    /// commits the active region's batches to the store while new frames go
    /// to the other.
    pub fn switch(&mut self) {
        self.active = 1 - self.active;
        self.tail = 0;
    }
}

/// Writes into a byte slice from the front.
struct Cursor<'a>(&'a mut [u8]);

impl Cursor<'_> {
    /// Copies `bytes` in and moves past them. The slice is sized for the
    /// whole frame.
    fn put(&mut self, bytes: &[u8]) {
        let rest = std::mem::take(&mut self.0);
        let (head, tail) = rest.split_at_mut(bytes.len());
        head.copy_from_slice(bytes);
        self.0 = tail;
    }
}

/// Opens the journal for frames: `O_DSYNC`, and `O_DIRECT` if `direct`.
fn open_writer(path: &Path, direct: bool) -> io::Result<File> {
    let mut flags = nix::libc::O_DSYNC;
    if direct {
        flags |= nix::libc::O_DIRECT;
    }
    OpenOptions::new()
        .write(true)
        .custom_flags(flags)
        .open(path)
}

/// Bytes of `batch`'s frame, before rounding to blocks; `usize::MAX` when a
/// record or the body is too long for the frame's u32 fields.
fn frame_len(batch: &Batch) -> usize {
    let body = batch.byte_len() + batch.sealed_len() + 8 * batch.len();
    if u32::try_from(body).is_err() {
        return usize::MAX;
    }
    FRAME_HEADER + body + TRAILER
}

/// A valid frame read back: its records, each with its sealed opening
/// (empty: none), in order.
#[derive(Debug)]
struct Frame<'a> {
    first_seq: u64,
    first_prev: Hash,
    last_hash: Hash,
    records: Vec<(&'a [u8], &'a [u8])>,
    /// Bytes between the header and the trailer.
    body_len: usize,
}

impl Frame<'_> {
    fn end_seq(&self) -> u64 {
        self.first_seq + self.records.len() as u64
    }
}

/// The frame at `offset`, if one is there and valid.
fn parse<'a>(content: &'a [u8], key: &JournalKey, offset: usize) -> Option<Frame<'a>> {
    let rest = content.get(offset..)?;
    let (header, rest) = rest.split_first_chunk::<FRAME_HEADER>()?;
    let sealed_follow = match header[..8].try_into().ok()? {
        MAGIC => true,
        MAGIC_V1 => false,
        _ => return None,
    };
    let first_seq = u64::from_be_bytes(header[8..16].try_into().ok()?);
    let count = u32::from_be_bytes(header[16..20].try_into().ok()?);
    let body_len = u32::from_be_bytes(header[20..24].try_into().ok()?) as usize;
    let body = rest.get(..body_len)?;
    let trailer: &Hash = rest.get(body_len..)?.first_chunk::<TRAILER>()?;
    if count == 0 || header[24..] != tag(key, &header[..24], trailer) {
        return None;
    }
    let mut records = Vec::with_capacity(count as usize);
    let mut first_prev = None;
    let mut last_hash = None;
    let mut body = body;
    for i in 0..u64::from(count) {
        let (len, rest) = body.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        let record = rest.get(..len)?;
        body = &rest[len..];
        let mut sealed: &[u8] = &[];
        if sealed_follow {
            let (len, rest) = body.split_first_chunk::<4>()?;
            let len = u32::from_be_bytes(*len) as usize;
            sealed = rest.get(..len)?;
            body = &rest[len..];
        }
        let (record_header, _) = RecordHeader::parse(record).ok()?;
        if record_header.seq != first_seq.checked_add(i)? {
            return None;
        }
        match last_hash {
            None => first_prev = Some(record_header.prev_hash),
            Some(prev) if prev != record_header.prev_hash => return None,
            Some(_) => {}
        }
        last_hash = Some(entry_hash(record));
        records.push((record, sealed));
    }
    if !body.is_empty() || last_hash? != *trailer {
        return None;
    }
    Some(Frame {
        first_seq,
        first_prev: first_prev?,
        last_hash: *trailer,
        records,
        body_len,
    })
}

/// A region's content: the run of valid frames from its start, each
/// continuing the one before. A valid frame further on that would continue
/// the run (or lies past its end) means a frame in between was acknowledged
/// and then damaged: an error, rather than a silent loss.
///
/// `applied` is the store's size: frames left from before the region was
/// last started over hold only records below it.
/// `content` is one region, starting at `region` in the file.
fn scan<'a>(
    content: &'a [u8],
    key: &JournalKey,
    applied: u64,
    path: &Path,
    region: usize,
) -> Result<Vec<Frame<'a>>, JournalError> {
    let mut frames: Vec<Frame<'a>> = Vec::new();
    let mut offset = 0;
    while let Some(frame) = parse(content, key, offset) {
        if let Some(last) = frames.last() {
            if frame.first_seq != last.end_seq() || frame.first_prev != last.last_hash {
                break;
            }
        }
        offset += (FRAME_HEADER + frame.body_len + TRAILER).div_ceil(BLOCK) * BLOCK;
        frames.push(frame);
    }
    let next = frames
        .last()
        .map_or(applied, |last| last.end_seq().max(applied));
    let later = (offset..content.len())
        .step_by(BLOCK)
        .filter(|&at| first_seq(content, at).is_some_and(|seq| seq >= next))
        .find_map(|at| parse(content, key, at));
    match later {
        Some(_) => Err(JournalError::Damaged {
            path: path.to_owned(),
            offset: region + offset,
        }),
        None => Ok(frames),
    }
}

/// The first seq in the header of a frame at `offset`, before any check
/// but the magic.
fn first_seq(content: &[u8], offset: usize) -> Option<u64> {
    let header = content.get(offset..)?.first_chunk::<FRAME_HEADER>()?;
    (header[..8] == MAGIC || header[..8] == MAGIC_V1)
        .then(|| u64::from_be_bytes(header[8..16].try_into().unwrap_or_default()))
}

/// A replayed record's sealed opening opens its commitment, and it has one
/// exactly when the record commits to content: the frame's tag and chain
/// cover the records, not the sealed bytes after each, so a torn frame could
/// otherwise bring back a record with a damaged opening.
fn check_sealed(store: &Store, seq: u64, body: &[u8], sealed: &[u8]) -> Result<(), String> {
    // The store holds any bytes as a body; only a record that parses can
    // commit to content.
    let commitment = match BodyFacts::parse(body) {
        Ok(facts) => facts.content_commitment,
        Err(_) if sealed.is_empty() => None,
        Err(err) => return Err(format!("record {seq}: {err}")),
    };
    match (commitment, sealed.is_empty()) {
        (None, true) => Ok(()),
        (None, false) => Err(format!(
            "record {seq} has a sealed opening but commits to no content"
        )),
        (Some(_), true) => Err(format!(
            "record {seq} commits to content but its sealed opening is missing"
        )),
        (Some(commitment), false) => {
            let keys = store
                .content_keys()
                .keys(seq, 1)
                .map_err(|err| format!("record {seq}: {err}"))?;
            let key = keys
                .first()
                .ok_or_else(|| format!("record {seq}: no key"))?;
            let mut opening = sealed.to_vec();
            seal::apply(key, seq, &mut opening);
            let opened = commitment_of_opening(&opening).ok();
            opening.zeroize();
            if opened != Some(commitment) {
                return Err(format!(
                    "record {seq}'s sealed opening does not open its commitment"
                ));
            }
            Ok(())
        }
    }
}

/// Commits to `store`, in one transaction, the records of `frames` past its
/// head. Returns how many.
fn replay(frames: &[Frame], store: &Store, path: &Path) -> Result<u64, JournalError> {
    let mismatch = |detail: String| JournalError::Mismatch {
        path: path.to_owned(),
        detail,
    };
    let mut batch = store.start_batch()?;
    let head = batch.tip();
    let records = frames
        .iter()
        .flat_map(|frame| (frame.first_seq..).zip(frame.records.iter()))
        .filter(|&(seq, _)| seq >= head.size);
    for (seq, &(record, sealed)) in records {
        let expected = batch.tip();
        if seq != expected.size {
            return Err(mismatch(format!(
                "it holds record {seq} where record {} is due (the store holds {} records)",
                expected.size, head.size
            )));
        }
        let (header, body) =
            RecordHeader::parse(record).map_err(|err| mismatch(format!("record {seq}: {err}")))?;
        if header.prev_hash != expected.hash {
            return Err(mismatch(format!(
                "record {seq} does not chain onto record {}",
                seq.wrapping_sub(1)
            )));
        }
        let (pushed, hash) = batch
            .push(|bytes| bytes.extend_from_slice(body))
            .map_err(StoreError::from)?;
        if pushed != seq || hash != entry_hash(record) {
            return Err(mismatch(format!("record {seq} is not reproduced exactly")));
        }
        check_sealed(store, seq, body, sealed).map_err(mismatch)?;
        batch.seal_last(sealed);
    }
    if batch.is_empty() {
        return Ok(0);
    }
    store.append(&batch)?;
    tracing::info!(
        records = batch.len(),
        size = batch.head().size,
        "replayed acknowledged records from the ack journal"
    );
    Ok(batch.len() as u64)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_content;
