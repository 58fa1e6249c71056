//! The content key file, `store/content-keys` (docs/DESIGN.md, section 3b):
//! one 32-byte key per record, at a fixed offset, so that destroying a
//! record's content is overwriting 32 bytes in place (crypto-shredding: every
//! copy of its sealed opening, in LMDB's free pages or the ack journal's old
//! frames, becomes unreadable at once).
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 8 | magic `TALLYK01` |
//! | 8 | 16 | the log id |
//! | 24 | 40 | zero |
//! | 64 + 32·s | 32 | the key of record `s`; zero once destroyed |
//!
//! Keys are written ahead of use, [`EXTEND_SLOTS`] at a time (one `pwrite`,
//! one `fdatasync`), whenever fewer than [`LOW_WATER_SLOTS`] remain beyond
//! the slots asked for: a key is on stable storage before any record sealed
//! with it is acknowledged, and the ack path pays that write once per
//! 65,536 records (about 2 ms here), never per record.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rand::RngCore;
use tally_attest::content::SeqRanges;
use zeroize::Zeroizing;

use super::seal::ContentKey;

/// The key file's name, in the store's directory.
pub const FILE_NAME: &str = "content-keys";
/// Slots added by one extension (2 MiB).
pub const EXTEND_SLOTS: u64 = 65_536;
/// An extension is due when fewer slots than this remain beyond those asked for.
pub const LOW_WATER_SLOTS: u64 = 16_384;

const MAGIC: [u8; 8] = *b"TALLYK01";
const HEADER: u64 = 64;
const SLOT: u64 = 32;
/// Zeros written per `pwrite` when destroying a long range.
const ZERO_CHUNK: usize = 64 << 10;

/// Why the key file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContentKeysError {
    #[error("content key file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("content key file {path} is not a Tally key file (no TALLYK01 magic)")]
    NotKeyFile { path: PathBuf },
    #[error("content key file {path} belongs to another log (its log id is {found}, this store's {expected}); refusing to use it")]
    OtherLog {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("content key file {path}: slot {seq} is not written (the file has {slots} slots)")]
    NotWritten { path: PathBuf, seq: u64, slots: u64 },
}

/// The open key file. Reads and destroys are positioned I/O on a shared
/// descriptor; extensions are serialised by `slots`.
#[derive(Debug)]
pub struct ContentKeys {
    file: File,
    path: PathBuf,
    /// Slots written and durable; extensions happen under this lock.
    slots: Mutex<u64>,
    /// A copy of `slots` read without the lock: `ensure`'s fast path, taken
    /// once per append job.
    slots_seen: AtomicU64,
}

impl ContentKeys {
    /// Opens (creating if needed) the key file of the store in `store_dir`,
    /// whose log id is `log_id` and which holds `size` records, and makes
    /// sure slots are written ahead of `size`.
    pub fn open(
        store_dir: &Path,
        log_id: &[u8; 16],
        size: u64,
    ) -> Result<ContentKeys, ContentKeysError> {
        let path = store_dir.join(FILE_NAME);
        let io_error = |source| ContentKeysError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .mode(0o600)
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error)?;
        let len = file.metadata().map_err(io_error)?.len();
        if len == 0 {
            let mut header = [0u8; HEADER as usize];
            header[..8].copy_from_slice(&MAGIC);
            header[8..24].copy_from_slice(log_id);
            file.write_all_at(&header, 0).map_err(io_error)?;
            file.sync_all().map_err(io_error)?;
            File::open(store_dir)
                .and_then(|dir| dir.sync_all())
                .map_err(io_error)?;
        } else {
            let mut header = [0u8; HEADER as usize];
            file.read_exact_at(&mut header, 0).map_err(|err| {
                if err.kind() == io::ErrorKind::UnexpectedEof {
                    ContentKeysError::NotKeyFile { path: path.clone() }
                } else {
                    io_error(err)
                }
            })?;
            if header[..8] != MAGIC {
                return Err(ContentKeysError::NotKeyFile { path });
            }
            if header[8..24] != log_id[..] {
                return Err(ContentKeysError::OtherLog {
                    found: hex::encode(&header[8..24]),
                    expected: hex::encode(log_id),
                    path,
                });
            }
        }
        let len = file.metadata().map_err(io_error)?.len();
        let slots = len.saturating_sub(HEADER) / SLOT;
        let keys = ContentKeys {
            file,
            path,
            slots: Mutex::new(slots),
            slots_seen: AtomicU64::new(slots),
        };
        keys.repair_tail(size)?;
        keys.ensure(size)?;
        Ok(keys)
    }

    /// After a crash during an extension, the slots past the log may be
    /// partly written (zeros where the write did not land, a length that is
    /// not whole slots). No acknowledged record used them (an extension is
    /// durable before `ensure` returns), except records in the ack journal,
    /// whose slots were durable before their ack: so slots from the first
    /// zero one past `size` are written afresh, and the rest made durable.
    fn repair_tail(&self, size: u64) -> Result<(), ContentKeysError> {
        let slots = self.lock();
        let io_error = |source| ContentKeysError::Io {
            path: self.path.clone(),
            source,
        };
        self.file
            .set_len(HEADER + *slots * SLOT)
            .map_err(io_error)?;
        let mut first_zero = None;
        let mut seq = size.min(*slots);
        while seq < *slots && first_zero.is_none() {
            let count = (*slots - seq).min(EXTEND_SLOTS);
            let keys = self.read_slots(seq, count)?;
            first_zero = keys
                .iter()
                .position(|key| !super::seal::is_live(key))
                .map(|at| seq + at as u64);
            seq += count;
        }
        if let Some(from) = first_zero {
            tracing::warn!(path = %self.path.display(), from, slots = *slots, "content key file: unwritten slots past the log (a crash during an extension); writing them afresh");
            let count = *slots - from;
            self.write_fresh(from, count)?;
        }
        self.file.sync_data().map_err(io_error)?;
        self.slots_seen.store(*slots, Ordering::Release);
        Ok(())
    }

    /// Makes sure slots `[0, up_to)` exist and are durable, extending the
    /// file by [`EXTEND_SLOTS`] whenever fewer than [`LOW_WATER_SLOTS`]
    /// remain beyond `up_to`.
    pub fn ensure(&self, up_to: u64) -> Result<(), ContentKeysError> {
        let wanted = up_to.saturating_add(LOW_WATER_SLOTS);
        if self.slots_seen.load(Ordering::Acquire) >= wanted {
            return Ok(());
        }
        let mut slots = self.lock();
        while *slots < wanted {
            self.write_fresh(*slots, EXTEND_SLOTS)?;
            self.file
                .sync_data()
                .map_err(|source| ContentKeysError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            *slots += EXTEND_SLOTS;
            self.slots_seen.store(*slots, Ordering::Release);
        }
        Ok(())
    }

    /// The keys of seqs `[from, from + count)`, in one `pread`.
    pub fn keys(&self, from: u64, count: u64) -> Result<Vec<ContentKey>, ContentKeysError> {
        let slots = self.slots_seen.load(Ordering::Acquire);
        let end = from.saturating_add(count);
        if end > slots {
            return Err(ContentKeysError::NotWritten {
                path: self.path.clone(),
                seq: slots.max(from),
                slots,
            });
        }
        self.read_slots(from, count)
    }

    /// Overwrites the slots of every seq in `ranges` with zeros, then
    /// `fdatasync`: once this returns, their sealed openings cannot be
    /// opened by anyone holding the data directory.
    pub fn destroy(&self, ranges: &SeqRanges) -> Result<(), ContentKeysError> {
        let slots = self.slots_seen.load(Ordering::Acquire);
        let io_error = |source| ContentKeysError::Io {
            path: self.path.clone(),
            source,
        };
        let zeros = [0u8; ZERO_CHUNK];
        for &(from, to) in ranges.ranges() {
            if to > slots {
                return Err(ContentKeysError::NotWritten {
                    path: self.path.clone(),
                    seq: slots.max(from),
                    slots,
                });
            }
            let mut offset = HEADER + from * SLOT;
            let end = HEADER + to * SLOT;
            while offset < end {
                let len = (end - offset).min(ZERO_CHUNK as u64) as usize;
                self.file
                    .write_all_at(&zeros[..len], offset)
                    .map_err(io_error)?;
                offset += len as u64;
            }
        }
        self.file.sync_data().map_err(io_error)
    }

    /// Reads `count` slots from `from` (the caller checked they exist).
    fn read_slots(&self, from: u64, count: u64) -> Result<Vec<ContentKey>, ContentKeysError> {
        let count = usize::try_from(count).map_err(|_| ContentKeysError::NotWritten {
            path: self.path.clone(),
            seq: from,
            slots: self.slots_seen.load(Ordering::Acquire),
        })?;
        let mut bytes = Zeroizing::new(vec![0u8; count * SLOT as usize]);
        self.file
            .read_exact_at(&mut bytes, HEADER + from * SLOT)
            .map_err(|source| ContentKeysError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(bytes
            .chunks_exact(SLOT as usize)
            .map(|chunk| {
                let mut key = [0u8; 32];
                key.copy_from_slice(chunk);
                key
            })
            .collect())
    }

    /// Writes `count` fresh random keys from slot `from` (one `pwrite`; the
    /// caller syncs). ThreadRng is ChaCha12, seeded and periodically
    /// reseeded from the OS's generator: a CSPRNG.
    fn write_fresh(&self, from: u64, count: u64) -> Result<(), ContentKeysError> {
        let len = usize::try_from(count * SLOT).unwrap_or(usize::MAX);
        let mut bytes = Zeroizing::new(vec![0u8; len]);
        rand::thread_rng().fill_bytes(&mut bytes);
        self.file
            .write_all_at(&bytes, HEADER + from * SLOT)
            .map_err(|source| ContentKeysError::Io {
                path: self.path.clone(),
                source,
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Slots written (tests).
    #[cfg(test)]
    pub(super) fn slots(&self) -> u64 {
        *self.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: [u8; 16] = [7; 16];

    #[test]
    fn a_new_file_has_the_design_layout_and_keys_ahead() {
        //! The header is magic || log id || zeros, and slots exist ahead of
        //! the log as DESIGN 3b says.
        let dir = tempfile::tempdir().unwrap();
        let keys = ContentKeys::open(dir.path(), &LOG, 0).unwrap();
        assert_eq!(keys.slots(), EXTEND_SLOTS);
        let bytes = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(&bytes[..8], b"TALLYK01");
        assert_eq!(&bytes[8..24], &LOG);
        assert_eq!(&bytes[24..64], &[0u8; 40]);
        assert_eq!(bytes.len() as u64, 64 + 32 * EXTEND_SLOTS);
        let read = keys.keys(3, 2).unwrap();
        assert_eq!(&read[0][..], &bytes[64 + 96..64 + 128]);
        assert_eq!(&read[1][..], &bytes[64 + 128..64 + 160]);
        assert!(read.iter().all(crate::store::seal::is_live));
        assert_ne!(read[0], read[1], "one key per record");
    }

    #[test]
    fn the_file_grows_when_fewer_than_the_low_water_mark_remain() {
        //! Extension: at exactly 16,384 slots left nothing is written; one
        //! fewer adds 65,536 slots; old keys are kept.
        let dir = tempfile::tempdir().unwrap();
        let keys = ContentKeys::open(dir.path(), &LOG, 0).unwrap();
        let before = keys.keys(0, 4).unwrap();
        keys.ensure(EXTEND_SLOTS - LOW_WATER_SLOTS).unwrap();
        assert_eq!(keys.slots(), EXTEND_SLOTS);
        keys.ensure(EXTEND_SLOTS - LOW_WATER_SLOTS + 1).unwrap();
        assert_eq!(keys.slots(), 2 * EXTEND_SLOTS);
        assert_eq!(keys.keys(0, 4).unwrap(), before);
        assert!(keys.keys(2 * EXTEND_SLOTS - 1, 1).is_ok());
        assert!(matches!(
            keys.keys(2 * EXTEND_SLOTS - 1, 2),
            Err(ContentKeysError::NotWritten { .. })
        ));
        drop(keys);
        let reopened = ContentKeys::open(dir.path(), &LOG, 10).unwrap();
        assert_eq!(reopened.slots(), 2 * EXTEND_SLOTS);
        assert_eq!(reopened.keys(0, 4).unwrap(), before);
    }

    #[test]
    fn a_key_file_of_another_log_is_refused_naming_it() {
        //! A key file copied from another log would open nothing right (and
        //! destroy the wrong keys): refused at open, with its path.
        let dir = tempfile::tempdir().unwrap();
        drop(ContentKeys::open(dir.path(), &LOG, 0).unwrap());
        let err = ContentKeys::open(dir.path(), &[8; 16], 0).unwrap_err();
        assert!(matches!(err, ContentKeysError::OtherLog { .. }), "{err}");
        assert!(err.to_string().contains("content-keys"), "{err}");
        std::fs::write(dir.path().join(FILE_NAME), b"not a key file at all").unwrap();
        let err = ContentKeys::open(dir.path(), &LOG, 0).unwrap_err();
        assert!(matches!(err, ContentKeysError::NotKeyFile { .. }), "{err}");
    }

    #[test]
    fn destroy_zeroes_exactly_the_ranges() {
        //! destroy overwrites the named slots with zeros on disk and leaves
        //! their neighbours.
        let dir = tempfile::tempdir().unwrap();
        let keys = ContentKeys::open(dir.path(), &LOG, 0).unwrap();
        let before = keys.keys(0, 10).unwrap();
        let ranges = SeqRanges::from_ordered([(2, 4), (7, 8)]).unwrap();
        keys.destroy(&ranges).unwrap();
        let after = keys.keys(0, 10).unwrap();
        for seq in 0..10u64 {
            let i = seq as usize;
            if ranges.contains(seq) {
                assert_eq!(after[i], [0; 32], "seq {seq}");
            } else {
                assert_eq!(after[i], before[i], "seq {seq}");
            }
        }
        let bytes = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(&bytes[64 + 64..64 + 128], &[0u8; 64]);
        let beyond = SeqRanges::from_ordered([(EXTEND_SLOTS, EXTEND_SLOTS + 1)]).unwrap();
        assert!(keys.destroy(&beyond).is_err());
    }

    #[test]
    fn a_torn_extension_is_written_afresh_past_the_log() {
        //! A crash during an extension can leave zero slots and a partial
        //! slot past the log: reopening rewrites them (never a slot below
        //! the log's size, whose records may be sealed with it).
        let dir = tempfile::tempdir().unwrap();
        let keys = ContentKeys::open(dir.path(), &LOG, 0).unwrap();
        let kept = keys.keys(0, 100).unwrap();
        drop(keys);
        let path = dir.path().join(FILE_NAME);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0u8; 64], 64 + 32 * 200).unwrap();
        file.set_len(64 + 32 * EXTEND_SLOTS - 5).unwrap();
        drop(file);
        let keys = ContentKeys::open(dir.path(), &LOG, 100).unwrap();
        assert_eq!(keys.keys(0, 100).unwrap(), kept);
        let tail = keys.keys(100, keys.slots() - 100).unwrap();
        assert!(tail.iter().all(crate::store::seal::is_live));
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            64 + 32 * keys.slots()
        );
    }
}
