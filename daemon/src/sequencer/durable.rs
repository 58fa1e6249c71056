//! Where a batch is made durable: a small one as a frame of the ack journal
//! (one flush), any other in LMDB with the journaled batches before it; and
//! the apply, which commits the journaled batches to LMDB. Everything here
//! runs under the `durable` lock (see the protocol table in `mod.rs`).

use std::io;

use tally_attest::merkle::Frontier;

use super::policy::BatchPolicy;
use crate::batch::{Batch, Head, NotContiguous, Tip};
use crate::journal::Journal;
use crate::store::{OutOfSpace, Store, StoreError};

/// Why a batch could not be made durable (or the journaled ones applied).
/// Nothing of the batch was acked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the batch's frame to the ack journal failed (the frame was
    /// overwritten with zeros, best effort).
    #[error("ack journal: {0}")]
    Journal(io::Error),
    /// Writing the frame failed for lack of space (the journal is written in
    /// full when created, so this takes a file system that allocates on
    /// overwrite).
    #[error("ack journal: {0}")]
    JournalOutOfSpace(OutOfSpace),
    /// A batch offered to the journal was built on another state than the
    /// end of the journaled batches.
    #[error("store is inconsistent: a batch built on {base} records does not follow the journaled ones, which end at {journaled}")]
    NotAfterJournaled { base: u64, journaled: u64 },
    #[error("store is inconsistent: {0}")]
    NotContiguous(#[from] NotContiguous),
}

impl CommitError {
    /// True when the commit failed for lack of space (disk, quota or map):
    /// the jobs get `STORAGE_FULL`.
    pub fn is_full(&self) -> bool {
        match self {
            CommitError::Store(err) => err.is_full(),
            CommitError::JournalOutOfSpace(_) => true,
            CommitError::Journal(_)
            | CommitError::NotAfterJournaled { .. }
            | CommitError::NotContiguous(_) => false,
        }
    }
}

/// Where a batch was made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// In the store: readable now.
    Store,
    /// In the ack journal, which now has `used` bytes taken; in the store
    /// after the next apply.
    Journal { used: usize },
}

/// The ack journal and what it holds that the store does not.
#[derive(Debug)]
pub(super) struct Durable {
    pub(super) journal: Option<Journal>,
    /// The batches in the journal's active region not yet in the store, as
    /// one batch (empty when there are none) on the state after the store's
    /// head and after the batch being applied, if one is.
    pub(super) journaled: Batch,
    /// The journal's other region holds acked batches not yet in the store:
    /// they are being applied, or their apply failed (and then `journaled`
    /// holds them again, and the next apply does not switch).
    pub(super) other_busy: bool,
}

impl Durable {
    /// Makes `batch` durable: a small one in the journal (one flush), when
    /// there is one; any other in the store, in one transaction with the
    /// journaled batches before it.
    pub(super) fn commit(
        &mut self,
        store: &Store,
        batch: &Batch,
        policy: &BatchPolicy,
    ) -> Result<Place, CommitError> {
        // An erasure's batch goes to LMDB, with the journaled batches before
        // it (DESIGN 3b): its content deletes and `shred_pending` must be in
        // the transaction that holds its records.
        if batch.byte_len() + batch.sealed_len() <= policy.journal_max_bytes
            && batch.erased().is_empty()
        {
            if let Some(journal) = &self.journal {
                let (base, _) = batch.base();
                if base != self.journaled.tip() {
                    return Err(CommitError::NotAfterJournaled {
                        base: base.size,
                        journaled: self.journaled.tip().size,
                    });
                }
                if !journal.fits(batch) {
                    self.apply(store)?;
                }
                if let Some(journal) = self.journal.as_mut().filter(|journal| journal.fits(batch)) {
                    journal.append(batch).map_err(|err| {
                        match OutOfSpace::classify(store.dir(), err, batch.byte_len()) {
                            Ok(full) => CommitError::JournalOutOfSpace(full),
                            Err(err) => CommitError::Journal(err),
                        }
                    })?;
                    let used = journal.used();
                    self.journaled.absorb(batch)?;
                    return Ok(Place::Journal { used });
                }
            }
        }
        if self.journaled.is_empty() {
            store.append(batch)?;
        } else {
            store.append_all(&[&self.journaled, batch])?;
        }
        self.cleared(batch.tip(), batch.frontier());
        Ok(Place::Store)
    }

    /// Switches the journal to its other region and returns the batches
    /// journaled so far, to be applied while new ones go there.
    pub(super) fn switch(&mut self) -> Batch {
        let next = Batch::new(self.journaled.tip(), self.journaled.frontier().clone());
        if let Some(journal) = &mut self.journal {
            journal.switch();
        }
        self.other_busy = true;
        std::mem::replace(&mut self.journaled, next)
    }

    /// Takes back batches whose apply failed: they precede the ones
    /// journaled since, and the other region stays busy.
    pub(super) fn restore(&mut self, mut failed: Batch) {
        match failed.absorb(&self.journaled) {
            Ok(()) => self.journaled = failed,
            // `journaled` was started on `failed`'s head and only grown.
            Err(err) => tracing::error!(%err, "ack journal bookkeeping is inconsistent"),
        }
    }

    /// Commits the journaled batches to the store and empties the journal.
    /// Returns the store's new head, or `None` when nothing was journaled.
    pub(super) fn apply(&mut self, store: &Store) -> Result<Option<Head>, StoreError> {
        if self.journaled.is_empty() {
            return Ok(None);
        }
        store.append(&self.journaled)?;
        let head = self.journaled.head();
        let frontier = self.journaled.frontier().clone();
        self.cleared(head.into(), &frontier);
        Ok(Some(head))
    }

    /// The store holds everything up to `head`: the journal starts over.
    fn cleared(&mut self, head: Tip, frontier: &Frontier) {
        self.journaled.restart(head, frontier);
        self.other_busy = false;
        if let Some(journal) = &mut self.journal {
            journal.clear();
        }
    }
}
