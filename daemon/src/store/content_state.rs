//! The `content` database read back and erased (DESIGN 3b): which records
//! still have content, their openings decrypted for a read, and the
//! shredding that finishes an erasure (`shred_pending`).

use prost::Message;
use tally_attest::content::SeqRanges;
use tally_client::proto;

use super::records::StoredRecord;
use super::{seal, Store, StoreError, META_SHRED_PENDING};

/// Openings of records further apart than this are not fetched with one
/// `pread` of the keys between them (a sparse page of a filtered read).
const KEYS_SPAN: u64 = 4096;

impl Store {
    /// The seqs in `[from, to)` that have a content row (content not
    /// erased), from one snapshot, reading keys only.
    pub fn content_rows(&self, from: u64, to: u64) -> Result<SeqRanges, StoreError> {
        let _gate = self.read_gate();
        let rtxn = self.env.read_txn()?;
        let mut rows = SeqRanges::default();
        if from >= to {
            return Ok(rows);
        }
        let keys = self.content.remap_data_type::<heed::types::DecodeIgnore>();
        for entry in keys.range(&rtxn, &(from..to))? {
            let (seq, _) = entry?;
            rows.insert(seq, seq + 1);
        }
        Ok(rows)
    }

    /// The ranges of an erasure whose keys are not yet destroyed.
    pub(crate) fn shred_pending(&self) -> Result<Option<SeqRanges>, StoreError> {
        let _gate = self.read_gate();
        let rtxn = self.env.read_txn()?;
        let Some(bytes) = self.meta.get(&rtxn, META_SHRED_PENDING)? else {
            return Ok(None);
        };
        let erasure = proto::Erasure::decode(bytes)
            .map_err(|_| StoreError::CorruptMeta("shred_pending is not an Erasure"))?;
        SeqRanges::from_ordered(erasure.erased.iter().map(|r| (r.from_seq, r.to_seq)))
            .map(Some)
            .map_err(|_| StoreError::CorruptMeta("shred_pending's ranges are not in order"))
    }

    /// DESIGN 3b, steps 3 and 4 of an erasure: destroys the keys of the
    /// seqs `shred_pending` names (zeros, `fdatasync`), then deletes it.
    /// Nothing to do when it is absent. Run after an erasure's commit, and at
    /// open (a crash between the commit and this).
    pub fn finish_shred(&self) -> Result<(), StoreError> {
        let Some(ranges) = self.shred_pending()? else {
            return Ok(());
        };
        self.content_keys.destroy(&ranges)?;
        self.write_meta(|store, wtxn| {
            store.meta.delete(wtxn, META_SHRED_PENDING)?;
            Ok(())
        })?;
        tracing::info!(
            seqs = ranges.count(),
            "destroyed the content keys of erased records"
        );
        Ok(())
    }

    /// Fills each record's `content` with its opening, decrypted from its
    /// content row (`rows[i]`, read by the scan from the same snapshot),
    /// when it has one and its key is not destroyed. The keys are read in
    /// one `pread` per run of nearby seqs, not per record.
    pub(super) fn open_contents(
        &self,
        records: &mut [StoredRecord],
        rows: &[Option<&[u8]>],
    ) -> Result<(), StoreError> {
        let sealed: Vec<(usize, u64, &[u8])> = records
            .iter()
            .zip(rows)
            .enumerate()
            .filter_map(|(i, (record, row))| row.map(|bytes| (i, record.seq, bytes)))
            .collect();
        // Runs of seqs within KEYS_SPAN of their run's first, in the order
        // read (ascending forward, descending for a newest-first scan).
        let mut at = 0;
        while at < sealed.len() {
            let (_, first, _) = sealed[at];
            let mut end = at + 1;
            let (mut low, mut high) = (first, first);
            while let Some(&(_, seq, _)) = sealed.get(end) {
                let (l, h) = (low.min(seq), high.max(seq));
                if h - l >= KEYS_SPAN {
                    break;
                }
                (low, high) = (l, h);
                end += 1;
            }
            let keys = self.content_keys.keys(low, high - low + 1)?;
            for &(i, seq, bytes) in &sealed[at..end] {
                let Some(key) = keys.get((seq - low) as usize) else {
                    continue;
                };
                // A row whose key was destroyed after this snapshot began
                // (an erasure committing meanwhile): erased, not garbage.
                if !seal::is_live(key) {
                    continue;
                }
                let mut opening = bytes.to_vec();
                seal::apply(key, seq, &mut opening);
                records[i].content = Some(opening);
            }
            at = end;
        }
        Ok(())
    }
}
