//! The size of the LMDB memory map: what is used, and growing the map
//! (under the resize gate) before a batch that could fill it.

use super::{Store, StoreError};

impl Store {
    /// Bytes in use by the environment (pages up to the last used one).
    pub fn used_bytes(&self) -> u64 {
        let info = self.env.info();
        (info.last_page_number as u64 + 1) * page_size()
    }

    /// Current map size in bytes.
    pub fn map_bytes(&self) -> u64 {
        self.env.info().map_size as u64
    }

    /// Grows the map before a batch of `incoming` bytes when it could fill it.
    pub(super) fn grow_if_needed(&self, incoming: usize) -> Result<(), StoreError> {
        let info = self.env.info();
        let used = (info.last_page_number + 1) * page_size() as usize;
        // LMDB needs room for copy-on-write pages of the batch as well as its
        // data: keep a margin of several times the batch plus a quarter of the map.
        if used + incoming * 4 + info.map_size / 4 > info.map_size {
            self.grow(incoming)?;
        }
        Ok(())
    }

    /// Doubles the map (or grows it by 8 times `incoming`, if more), up to
    /// the configured maximum.
    pub(super) fn grow(&self, incoming: usize) -> Result<(), StoreError> {
        let current = self.env.info().map_size;
        if current >= self.sizing.max {
            return Err(StoreError::MapAtMaximum {
                max: self.sizing.max,
            });
        }
        // LMDB takes only whole pages (heed refuses other sizes).
        let page = page_size() as usize;
        let wanted = current
            .saturating_mul(2)
            .max(current.saturating_add(incoming.saturating_mul(8)));
        let new_size = wanted
            .div_ceil(page)
            .saturating_mul(page)
            .min(self.sizing.max / page * page);
        if new_size <= current {
            return Err(StoreError::MapAtMaximum {
                max: self.sizing.max,
            });
        }
        let _exclusive = self
            .resize_gate
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // SAFETY: LMDB allows resizing only when no transaction is active in
        // this process. Every read transaction is opened under a shared
        // `resize_gate` guard and the only writer is the caller's thread, so
        // holding the gate exclusively guarantees there is none.
        unsafe { self.env.resize(new_size) }?;
        // The map may have moved: bulk readers look it up again.
        self.forget_map_region();
        tracing::info!(from = current, to = new_size, "grew the LMDB map");
        Ok(())
    }
}

/// The system's page size (LMDB's unit of allocation).
pub(super) fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|size| u64::try_from(size).ok())
        .unwrap_or(4096)
}
