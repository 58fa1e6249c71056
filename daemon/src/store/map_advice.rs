//! Advice to the kernel about the LMDB map during a long sequential scan
//! (`tallyd check`'s pass over every record): the access is sequential
//! (`MADV_SEQUENTIAL`: larger read-ahead, and the pages behind the reader
//! are the first reclaimed), and the pages already read are dropped from
//! this process's page tables (`MADV_DONTNEED`). Without the second, every
//! page a read-only map touched stays resident and counted as this
//! process's file-backed RSS: 23 GB during a check of 69M events, which
//! cgroup limits and monitors count against the host. The daemon's bulk
//! reads (a `tally verify --live` or an export streaming the log, a
//! follower catching up) drop the pages behind them the same way
//! ([`Store::drop_behind`]): 17 GB of tallyd's RssFile during a live verify
//! of 50M events before.
//!
//! The only `unsafe` of the store, kept to two `madvise` calls on addresses
//! checked to lie inside the map. Advice is best effort: a refused call
//! changes no result, only memory use, so its error is ignored.

use std::path::Path;

use super::Store;

/// The map's region once looked up (`Some(None)`: looked up, not found, no
/// advice); forgotten when the writer resizes the map.
pub(super) type RegionCache = std::sync::Mutex<Option<Option<MapRegion>>>;

/// The map's address range, page-aligned, as LMDB reports it.
#[derive(Debug, Clone, Copy)]
pub(super) struct MapRegion {
    start: usize,
    end: usize,
    page: usize,
}

impl MapRegion {
    /// The shared mapping of `file` that holds the byte at `inside` (a
    /// slice LMDB returned), read from /proc/self/maps: LMDB does not
    /// report its map's address (`mdb_env_info` gives the fixed address,
    /// null unless `MDB_FIXEDMAP`). Valid until the map is resized: callers
    /// hold the resize gate's read side for as long as they use it. `None`
    /// when no such mapping is found (then no advice is given).
    pub(super) fn of(file: &Path, inside: *const u8) -> Option<MapRegion> {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        let page = usize::try_from(super::growth::page_size()).ok()?;
        let at = inside as usize;
        maps.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?;
            // The path is the rest of the line (it may hold spaces).
            let path = &line[line.find(" /")? + 1..];
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            let found = (start..end).contains(&at)
                && perms.as_bytes().get(3) == Some(&b's')
                && Path::new(path) == file
                && start.is_multiple_of(page)
                && page > 0;
            found.then_some(MapRegion { start, end, page })
        })
    }

    /// Marks the whole map sequential until the returned guard drops, which
    /// marks it normal again (the daemon's followers read at random).
    pub(super) fn sequential(&self) -> Sequential {
        advise(*self, self.start, self.end, libc::MADV_SEQUENTIAL);
        Sequential(*self)
    }

    /// Drops every page of the map from this process's page tables: also
    /// those no slice names, such as the B-tree's branch pages a cursor
    /// passes through, and the pages the kernel mapped around them.
    pub(super) fn drop_all(&self) {
        advise(*self, self.start, self.end, libc::MADV_DONTNEED);
    }

    /// Drops from this process's page tables every page of the
    /// [`FAULT_AROUND`] blocks holding a byte of `slices` (slices into the
    /// map; others are ignored), one call also covering the gaps of at most
    /// `max_gap` bytes between them: the kernel maps a faulting page's
    /// neighbours too, so pages of other tables between a scan's records
    /// (the content rows and Merkle nodes, written beside them) are mapped
    /// without ever being read, and stay so unless dropped. A later read of
    /// a dropped page faults it back in from the page cache with the same
    /// bytes.
    pub(super) fn drop_pages_across<'a>(
        &self,
        slices: impl IntoIterator<Item = &'a [u8]>,
        max_gap: usize,
    ) {
        let mut run: Option<(usize, usize)> = None;
        for slice in slices {
            let at = slice.as_ptr() as usize;
            if slice.is_empty() || at < self.start || at >= self.end {
                continue;
            }
            // Out to the fault-around blocks holding the slice: the kernel
            // mapped the whole block with the page that faulted.
            let block = FAULT_AROUND.max(self.page);
            let from = (at - at % block).max(self.start);
            let to = at
                .saturating_add(slice.len())
                .div_ceil(block)
                .saturating_mul(block)
                .min(self.end);
            run = match run {
                Some((start, end)) if from >= start && from <= end.saturating_add(max_gap) => {
                    Some((start, end.max(to)))
                }
                Some((start, end)) => {
                    advise(*self, start, end, libc::MADV_DONTNEED);
                    Some((from, to))
                }
                None => Some((from, to)),
            };
        }
        if let Some((start, end)) = run {
            advise(*self, start, end, libc::MADV_DONTNEED);
        }
    }
}

/// The kernel's fault-around (`fault_around_bytes`, 64 KiB by default): a
/// read fault on a file mapping maps the page-cache pages of the aligned
/// block of this size around the faulting page. Drops cover whole blocks,
/// or the pages mapped beside a run of records (content rows, Merkle nodes:
/// about 25 bytes per event of a check at 10M) stay mapped.
const FAULT_AROUND: usize = 64 << 10;

/// The whole map's pages are dropped once per this many bytes committed or
/// served by bulk scans.
const WRITER_DROP_BYTES: usize = 64 << 20;

/// A bulk scan's drops span gaps up to this size between the pages it read.
pub(super) const BULK_GAP: usize = 1 << 20;

impl Store {
    /// The map's region, looked up once per map size from a slice LMDB
    /// returned (`inside`). The caller holds the resize gate's read side;
    /// the writer forgets the region under its exclusive side when it
    /// resizes ([`Store::forget_map_region`]), so a region is never used
    /// after its map moved.
    pub(super) fn map_region(&self, inside: &[u8]) -> Option<MapRegion> {
        let mut cached = self
            .map_region
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *cached.get_or_insert_with(|| {
            // As /proc/self/maps names it.
            let data = self.dir.join("data.mdb");
            let data = std::fs::canonicalize(&data).unwrap_or(data);
            MapRegion::of(&data, inside.as_ptr())
        })
    }

    /// After each commit of `bytes` (the writer's thread): once every
    /// [`WRITER_DROP_BYTES`] committed, drops every page of the map from
    /// this process's page tables. The writer reads each commit's rightmost
    /// pages through the map, and the kernel maps their written neighbours
    /// with them (fault-around): without this, RssFile grew by about 85
    /// bytes per event ingested (4 GiB at 50M events), which no scan drops.
    /// Readers meanwhile fault their pages back in from the page cache.
    pub(super) fn committed(&self, bytes: usize) {
        self.mapped(bytes);
    }

    /// `bytes` more went through the map (committed, or served by a bulk
    /// scan): once every [`WRITER_DROP_BYTES`] of them, every page of the
    /// map is dropped from this process's page tables. A bulk scan's own
    /// drops miss pages it never read that the kernel mapped with them.
    pub(super) fn mapped(&self, bytes: usize) {
        let due = {
            let mut since = self
                .committed_since_drop
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *since = since.saturating_add(bytes);
            let due = *since >= WRITER_DROP_BYTES;
            if due {
                *since = 0;
            }
            due
        };
        if !due {
            return;
        }
        let _gate = self.read_gate();
        let Ok(rtxn) = self.env.read_txn() else {
            return;
        };
        // Any slice LMDB returns from the map locates it.
        if let Ok(Some((_, last))) = self.records.last(&rtxn) {
            if let Some(map) = self.map_region(last) {
                map.drop_all();
            }
        }
    }

    /// Called by the writer holding the resize gate exclusively, after a
    /// resize: the next reader looks the map up again.
    pub(super) fn forget_map_region(&self) {
        *self
            .map_region
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }

    /// Drops the pages holding `slices` (read by a bulk scan, under the
    /// resize gate's read side, from a transaction still open) from this
    /// process's page tables, and empties `slices`. The slices stay valid:
    /// a later read faults the same page-cache pages back in.
    pub(super) fn drop_behind(&self, slices: &mut Vec<&[u8]>) {
        if let Some(map) = slices.first().and_then(|first| self.map_region(first)) {
            map.drop_pages_across(slices.iter().copied(), BULK_GAP);
        }
        slices.clear();
    }
}

/// The map's sequential advice, undone on drop.
#[derive(Debug)]
pub(super) struct Sequential(MapRegion);

impl Drop for Sequential {
    fn drop(&mut self) {
        advise(self.0, self.0.start, self.0.end, libc::MADV_NORMAL);
    }
}

/// `madvise(start, end - start, advice)` if `[start, end)` is a non-empty,
/// page-aligned range inside `map`; otherwise nothing.
fn advise(map: MapRegion, start: usize, end: usize, advice: libc::c_int) {
    if start >= end || start < map.start || end > map.end || !start.is_multiple_of(map.page) {
        return;
    }
    // SAFETY: `[start, end)` lies inside LMDB's map (checked above), which
    // LMDB creates with mmap(MAP_SHARED) of data.mdb and which the caller
    // keeps mapped (it holds the resize gate, so no remap happens). The
    // advice given is SEQUENTIAL, NORMAL (hints that change no contents) or
    // DONTNEED, which on a shared file mapping only unmaps the pages from
    // this process: the next access maps the same page-cache pages again,
    // so every `&[u8]` into the map still reads the same bytes afterwards.
    // (DONTNEED would zero a private or anonymous mapping; the map is
    // neither, and nothing outside it is ever passed.)
    let _ = unsafe { libc::madvise(start as *mut libc::c_void, end - start, advice) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_outside_the_map_are_never_advised() {
        //! A slice outside the map (here, on the heap) must not reach
        //! madvise: DONTNEED on an anonymous page would zero it.
        let heap = vec![0xa5u8; 3 * 4096];
        let map = MapRegion {
            start: 4096,
            end: 8192,
            page: 4096,
        };
        map.drop_pages_across([heap.as_slice()], 1 << 20);
        assert!(heap.iter().all(|&b| b == 0xa5), "heap bytes were dropped");
    }
}
