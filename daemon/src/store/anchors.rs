//! The `anchors` database and the log identity (`meta.identity`): anchor
//! records by counter value, the searches over them, and their commits.
//!
//! Anchor sizes never decrease with the counter (each anchor covers the head
//! the sequencer had committed when it was made), so an anchor covering a
//! given size is found by binary search over counter values: at most ~64
//! seeks, however many anchors there are (one every 10 s is ~3 million a year).

use std::path::Path;

use heed::types::{Bytes, Str};
use heed::{CommitOrAbort, EnvOpenOptions, WithoutTls};

use super::{
    check_format_version, identity_text, Store, StoreError, META_FORMAT_VERSION, META_IDENTITY,
    META_PENDING_CHECKPOINT,
};

impl Store {
    /// The log identity JSON of the store under `dir`, opened read-only: works
    /// while the daemon runs (LMDB serves readers in other processes). `None`:
    /// no store there yet, or no genesis anchor yet.
    pub fn read_identity(dir: &Path) -> Result<Option<String>, StoreError> {
        if !dir.join("data.mdb").exists() {
            return Ok(None);
        }
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.max_dbs(4);
        // SAFETY: READ_ONLY is not one of the unsafe flags (NO_SYNC, NO_META_SYNC,
        // NO_LOCK): readers take LMDB's reader lock. The environment is opened
        // once in this process (the `tallyd identity` command), read-only, so the
        // files are not modified from here.
        let env = unsafe {
            options.flags(heed::EnvFlags::READ_ONLY);
            options.open(dir)
        }?;
        let opened = env.open_databases_and_commit(env.read_txn()?, |opener, rtxn| {
            let meta = opener.open_database::<Str, Bytes>(rtxn, Some("meta"))?;
            Ok::<_, heed::Error>(CommitOrAbort::<_, std::convert::Infallible>::Commit(meta))
        })?;
        let meta = match opened {
            CommitOrAbort::Commit(Some(meta)) => meta,
            CommitOrAbort::Commit(None) => return Ok(None),
            CommitOrAbort::Abort(never) => match never {},
        };
        let rtxn = env.read_txn()?;
        if let Some(version) = meta.get(&rtxn, META_FORMAT_VERSION)? {
            check_format_version(version)?;
        }
        identity_text(meta.get(&rtxn, META_IDENTITY)?)
    }

    /// The newest anchor: its counter value and stored bytes.
    pub fn last_anchor(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let _gate = self.read_gate();
        let rtxn = self.env.read_txn()?;
        Ok(self
            .anchors
            .last(&rtxn)?
            .map(|(counter, bytes)| (counter, bytes.to_vec())))
    }

    /// Anchors with counter values from `from` on, at most `max`.
    pub fn anchors(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let _gate = self.read_gate();
        let rtxn = self.env.read_txn()?;
        let mut out = Vec::new();
        for entry in self.anchors.range(&rtxn, &(from..))?.take(max) {
            let (counter, bytes) = entry?;
            out.push((counter, bytes.to_vec()));
        }
        Ok(out)
    }

    /// The anchor whose checkpoint covers exactly `size` records (the
    /// newest such; `size` 0: the newest anchor), with its counter and size.
    /// Anchor sizes never decrease with the counter, so this is a binary
    /// search over counter values: at most ~64 seeks, however many anchors
    /// there are (one every 10 s is ~3 million a year).
    pub fn anchor_for_size(&self, size: u64) -> Result<Option<(u64, Vec<u8>, u64)>, StoreError> {
        let _gate = self.read_gate();
        let rtxn = self.env.read_txn()?;
        let found = |entry: Option<(u64, &[u8])>| -> Result<_, StoreError> {
            match entry {
                Some((counter, bytes)) => {
                    let covered = anchor_size(bytes)?;
                    Ok((size == 0 || covered == size).then(|| (counter, bytes.to_vec(), covered)))
                }
                None => Ok(None),
            }
        };
        if size == 0 {
            return found(self.anchors.last(&rtxn)?);
        }
        // The smallest counter value `end` such that the first anchor at or
        // after it covers more than `size` (or there is none): the anchor
        // wanted, if any, is the last one before `end`.
        let Some(end) = self.first_counter_where(&rtxn, |covered| covered > size)? else {
            return Ok(None);
        };
        let before = match u64::try_from(end) {
            Ok(end) => self.anchors.rev_range(&rtxn, &(..end))?.next(),
            Err(_) => self.anchors.rev_iter(&rtxn)?.next(),
        };
        found(before.transpose()?)
    }

    /// The *oldest* anchor whose checkpoint covers exactly `size` records (`size`
    /// 0 included: the genesis anchor of a log anchored while empty), with its
    /// counter and size. Later anchors may cover the same size (an anchor on
    /// request, a gap anchor); [`Store::anchor_for_size`] finds the newest.
    pub fn first_anchor_for_size(
        &self,
        size: u64,
    ) -> Result<Option<(u64, Vec<u8>, u64)>, StoreError> {
        let _gate = self.read_gate();
        let rtxn = self.env.read_txn()?;
        // The first anchor covering at least `size` starts the run of
        // anchors at or after the counter value found.
        let Some(end) = self.first_counter_where(&rtxn, |covered| covered >= size)? else {
            return Ok(None);
        };
        let Ok(end) = u64::try_from(end) else {
            return Ok(None);
        };
        let found = match self.anchors.range(&rtxn, &(end..))?.next().transpose()? {
            Some((counter, bytes)) => {
                let covered = anchor_size(bytes)?;
                (covered == size).then(|| (counter, bytes.to_vec(), covered))
            }
            None => None,
        };
        Ok(found)
    }

    /// Binary search over counter values (at most ~64 seeks): the smallest
    /// value `end` (as u128: it may be one past the newest anchor) such that
    /// the first anchor at or after `end` satisfies `above` of its size, or
    /// there is none. Anchor sizes never decrease with the counter, so
    /// `above` (monotonic in the size) is monotonic in the counter. `None`:
    /// no anchors.
    fn first_counter_where(
        &self,
        rtxn: &heed::RoTxn<'_, WithoutTls>,
        above: impl Fn(u64) -> bool,
    ) -> Result<Option<u128>, StoreError> {
        let (Some((first, _)), Some((last, _))) =
            (self.anchors.first(rtxn)?, self.anchors.last(rtxn)?)
        else {
            return Ok(None);
        };
        let (mut begin, mut end) = (u128::from(first), u128::from(last) + 1);
        while begin < end {
            let mid = begin + (end - begin) / 2;
            let holds = match u64::try_from(mid) {
                Ok(mid) => match self.anchors.range(rtxn, &(mid..))?.next() {
                    Some(entry) => above(anchor_size(entry?.1)?),
                    None => true,
                },
                Err(_) => true,
            };
            if holds {
                end = mid;
            } else {
                begin = mid + 1;
            }
        }
        Ok(Some(end))
    }

    /// Commits an anchor record under its counter value. Contract: returns only
    /// once committed (fsynced); the bytes are stored (and later hashed) verbatim.
    pub fn commit_anchor(&self, counter: u64, record: &[u8]) -> Result<(), StoreError> {
        self.write_meta(|store, wtxn| {
            store.anchors.put(wtxn, &counter, record)?;
            store.meta.delete(wtxn, META_PENDING_CHECKPOINT).map(drop)
        })
    }

    /// Durably records the signed checkpoint about to be certified at
    /// `counter`, before the TPM sees it: if a crash comes between the certify
    /// and the commit, the value is certified again over exactly these bytes,
    /// so evidence from the lost attempt (if root ever reads it from a core
    /// dump or swap) cannot stand for a checkpoint the committed anchor does
    /// not name. It authorizes nothing: root, who can write it, can certify
    /// the open value over anything anyway.
    pub fn put_pending_checkpoint(
        &self,
        counter: u64,
        checkpoint: &[u8],
    ) -> Result<(), StoreError> {
        let mut value = counter.to_be_bytes().to_vec();
        value.extend_from_slice(checkpoint);
        self.write_meta(|store, wtxn| store.meta.put(wtxn, META_PENDING_CHECKPOINT, &value))
    }

    /// The checkpoint [`Store::put_pending_checkpoint`] recorded, if its
    /// anchor was never committed.
    pub fn pending_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let _gate = self.read_gate();
        let rtxn = self.env.read_txn()?;
        let Some(value) = self.meta.get(&rtxn, META_PENDING_CHECKPOINT)? else {
            return Ok(None);
        };
        let (counter, checkpoint) =
            value
                .split_first_chunk::<8>()
                .ok_or(StoreError::CorruptMeta(
                    "pending_checkpoint is shorter than 8 bytes",
                ))?;
        Ok(Some((u64::from_be_bytes(*counter), checkpoint.to_vec())))
    }

    /// Commits the log's genesis anchor and its identity (JSON) in one transaction:
    /// a store with anchors always has its identity.
    pub fn commit_genesis(
        &self,
        counter: u64,
        record: &[u8],
        identity: &str,
    ) -> Result<(), StoreError> {
        self.write_meta(|store, wtxn| {
            store.anchors.put(wtxn, &counter, record)?;
            store.meta.delete(wtxn, META_PENDING_CHECKPOINT)?;
            store.meta.put(wtxn, META_IDENTITY, identity.as_bytes())
        })
    }

    /// The log identity JSON written with the genesis anchor, if there is one.
    pub fn identity(&self) -> Result<Option<String>, StoreError> {
        let _gate = self.read_gate();
        let rtxn = self.env.read_txn()?;
        identity_text(self.meta.get(&rtxn, META_IDENTITY)?)
    }
}

/// The log size an anchor record's checkpoint covers.
pub fn anchor_size(bytes: &[u8]) -> Result<u64, StoreError> {
    tally_attest::anchor::decode_anchor(bytes)
        .ok()
        .and_then(|record| tally_attest::anchor::Checkpoint::parse(&record.checkpoint).ok())
        .map(|checkpoint| checkpoint.size)
        .ok_or(StoreError::CorruptMeta("an anchor record does not decode"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MapSizing;

    const SMALL: MapSizing = MapSizing {
        initial: 1 << 20,
        max: 1 << 30,
    };

    #[test]
    fn anchors_and_the_identity_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), SMALL).unwrap();
            assert_eq!(store.last_anchor().unwrap(), None);
            assert_eq!(store.identity().unwrap(), None);
            store
                .commit_genesis(255, b"first", "{\"id\": 1}\n")
                .unwrap();
        }
        let store = Store::open(dir.path(), SMALL).unwrap();
        assert_eq!(store.identity().unwrap().as_deref(), Some("{\"id\": 1}\n"));
        assert_eq!(store.last_anchor().unwrap(), Some((255, b"first".to_vec())));
        store.commit_anchor(256, b"second").unwrap();
        assert_eq!(store.anchors(0, 10).unwrap().len(), 2);
        assert_eq!(
            store.anchors(256, 10).unwrap(),
            vec![(256, b"second".to_vec())]
        );
    }

    #[test]
    fn the_anchor_for_a_size_is_the_newest_covering_exactly_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), SMALL).unwrap();
        let record = |size: u64| {
            let checkpoint = tally_attest::anchor::Checkpoint {
                log_id: [7; 16],
                size,
                root: [1; 32],
                anchor: None,
            };
            prost::Message::encode_to_vec(&tally_attest::anchor::AnchorRecord {
                checkpoint: checkpoint.to_text().into_bytes(),
                ..Default::default()
            })
        };
        assert_eq!(store.anchor_for_size(0).unwrap(), None, "no anchor yet");
        assert_eq!(store.anchor_for_size(5).unwrap(), None);
        // Counters with gaps (TPM resets), sizes repeated (idle anchors).
        let anchors = [
            (5u64, 10u64),
            (6, 10),
            (7, 25),
            (10, 25),
            (11, 40),
            (20, 100),
            (21, 100),
            (300, 101),
        ];
        for (counter, size) in anchors {
            store.commit_anchor(counter, &record(size)).unwrap();
        }
        // The linear walk from the newest back is the oracle.
        let expected = |size: u64| {
            anchors
                .iter()
                .rev()
                .find(|&&(_, covered)| size == 0 || covered == size)
                .map(|&(counter, covered)| (counter, record(covered), covered))
        };
        let expected_first = |size: u64| {
            anchors
                .iter()
                .find(|&&(_, covered)| covered == size)
                .map(|&(counter, covered)| (counter, record(covered), covered))
        };
        for size in 0..=110 {
            assert_eq!(
                store.anchor_for_size(size).unwrap(),
                expected(size),
                "size {size}"
            );
            assert_eq!(
                store.first_anchor_for_size(size).unwrap(),
                expected_first(size),
                "first, size {size}"
            );
        }
        assert_eq!(store.anchor_for_size(u64::MAX).unwrap(), None);
        // A counter at the very top of the range.
        store.commit_anchor(u64::MAX, &record(200)).unwrap();
        assert_eq!(
            store.anchor_for_size(200).unwrap(),
            Some((u64::MAX, record(200), 200))
        );
        assert_eq!(
            store.anchor_for_size(101).unwrap().map(|found| found.0),
            Some(300)
        );
        assert_eq!(
            store
                .first_anchor_for_size(200)
                .unwrap()
                .map(|found| found.0),
            Some(u64::MAX)
        );
        assert_eq!(store.first_anchor_for_size(201).unwrap(), None);
    }

    #[test]
    fn the_first_anchor_for_size_zero_is_an_empty_logs_genesis() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), SMALL).unwrap();
        let record = |size: u64| {
            prost::Message::encode_to_vec(&tally_attest::anchor::AnchorRecord {
                checkpoint: tally_attest::anchor::Checkpoint {
                    log_id: [7; 16],
                    size,
                    root: [1; 32],
                    anchor: None,
                }
                .to_text()
                .into_bytes(),
                ..Default::default()
            })
        };
        assert_eq!(store.first_anchor_for_size(0).unwrap(), None);
        for (counter, size) in [(3u64, 0u64), (4, 0), (5, 9)] {
            store.commit_anchor(counter, &record(size)).unwrap();
        }
        assert_eq!(
            store.first_anchor_for_size(0).unwrap().map(|found| found.0),
            Some(3)
        );
        assert_eq!(
            store.anchor_for_size(0).unwrap().map(|found| found.0),
            Some(5),
            "0: the newest"
        );
    }
}
