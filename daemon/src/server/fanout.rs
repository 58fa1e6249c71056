//! Fan-out: committed pages encoded once and shared by every unfiltered
//! follower (DESIGN.md section 1, "following").
//!
//! One publisher task, started with the first follower, reads each newly
//! committed range from the store once (in pages of `read_page_records` /
//! `max_frame_bytes`, hashes from the chain's links), encodes it as the
//! `records` field of a `Response`, and pushes it into a bounded ring of
//! recent pages. A follower positioned at a page's start writes the shared
//! bytes behind its own frame header (length and `Response.id`): its cost is
//! the socket write of bytes it did not build. A follower whose position is
//! not in the ring reads from the store itself until it reaches a page start.
//!
//! The publisher never waits for a follower: pushing a page takes the ring's
//! lock for a `VecDeque` push (followers hold it only to clone an `Arc`), and
//! the oldest pages are dropped when the ring is full, whoever still needs
//! them (they read the store instead).
//!
//! Followers behind the ring share their reads too: the page one of them
//! read from the store is kept (the *catch-up pages*, [`CATCH_UP_BYTES`] of
//! the newest), and a follower at its start sends it as it is. Pages behind
//! the ring end at multiples of [`CATCH_UP_ALIGN`] (or sooner), so followers
//! that started at different seqs meet at the same page starts. Without
//! this, ten followers that fell off the ring at full speed each scanned,
//! joined, opened and encoded the same records again: tallyd's CPU went to
//! that, and they never caught up.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tally_client::proto;
use tokio::sync::{watch, Notify};

use super::page::{records_of, SCAN_MAX_RECORDS, SCAN_MAX_TIME};
use crate::batch::Head;
use crate::limits::Limits;
use crate::store::{Scan, Store};

/// The ring holds at most this many pages...
const RING_PAGES: usize = 1024;

/// ... and at most this many bytes of them (the newest page always stays):
/// under a tenth of a second of ingest at full speed, and what a stalled
/// follower costs in memory until the slow-reader timeout cuts it off.
const RING_BYTES: usize = 16 << 20;

/// The catch-up pages kept, at most (the newest page always stays).
const CATCH_UP_BYTES: usize = 32 << 20;

/// Pages read behind the ring end at the next multiple of this seq (or
/// sooner: the page limits, the ring's start).
pub(super) const CATCH_UP_ALIGN: u64 = 4096;

/// After a failed read the publisher tries again this much later.
const RETRY_AFTER: Duration = Duration::from_millis(100);

/// The tag of `Response.records` (field 4, length-delimited).
const RECORDS_TAG: u8 = (4 << 3) | 2;

/// The tag of `Response.id` (field 1, varint).
const ID_TAG: u8 = 1 << 3;

/// One committed page, encoded once.
#[derive(Debug)]
pub(super) struct SharedPage {
    /// The page covers the seqs `[from, to)`; `to` is its `resume_seq`.
    pub(super) from: u64,
    pub(super) to: u64,
    /// `Response.records` as prost encodes it: tag, length, `Records`.
    pub(super) body: Bytes,
}

impl SharedPage {
    /// Encodes `records`, which start at `from`.
    pub(super) fn new(from: u64, records: &proto::Records) -> SharedPage {
        let len = records.encoded_len();
        let mut body = BytesMut::with_capacity(1 + 10 + len);
        body.put_u8(RECORDS_TAG);
        prost::encoding::encode_varint(len as u64, &mut body);
        // Enough capacity was reserved: encoding cannot fail.
        let _ = records.encode(&mut body);
        SharedPage {
            from,
            to: records.resume_seq,
            body: body.freeze(),
        }
    }

    /// The bytes before [`SharedPage::body`] in the frame of a follow with
    /// request `id`: the 4-byte big-endian frame length, then `Response.id`
    /// as prost writes it (omitted when 0, proto3's default). Header then
    /// body are exactly `frame::encode(&Response { id, body: records })`
    /// behind the codec's length.
    pub(super) fn header(&self, id: u64) -> BytesMut {
        let mut header = BytesMut::with_capacity(4 + 1 + 10);
        let id_len = if id == 0 {
            0
        } else {
            1 + prost::encoding::encoded_len_varint(id)
        };
        // A page is bounded by `max_frame` (under 16 MiB): the length fits.
        header.put_u32((id_len + self.body.len()) as u32);
        if id != 0 {
            header.put_u8(ID_TAG);
            prost::encoding::encode_varint(id, &mut header);
        }
        header
    }
}

/// Where a follower at a seq stands against the ring.
#[derive(Debug)]
pub(super) enum Position {
    /// A shared page starts there: the ring's, or a catch-up page.
    Page(Arc<SharedPage>),
    /// No page starts there: read the store up to this seq (the next page's
    /// start, or where publishing is).
    ReadTo(u64),
    /// Nothing published past it yet: wait.
    Wait,
}

/// The ring of recent pages.
#[derive(Debug, Default)]
struct Ring {
    pages: VecDeque<Arc<SharedPage>>,
    bytes: usize,
    /// Everything before it is published (the newest page's `to`), or, with
    /// the ring empty, where publishing starts.
    end: u64,
    /// Raised by [`Fanout::forget_pages`]: a page read before is not pushed.
    generation: u64,
    /// Pages followers behind the ring read, by start seq.
    catch_up: CatchUp,
}

/// The newest catch-up pages, by start seq, dropped oldest first.
#[derive(Debug, Default)]
struct CatchUp {
    pages: BTreeMap<u64, Arc<SharedPage>>,
    /// Start seqs, oldest kept first.
    order: VecDeque<u64>,
    bytes: usize,
}

impl CatchUp {
    fn keep(&mut self, page: Arc<SharedPage>) {
        if self.pages.contains_key(&page.from) {
            return;
        }
        self.bytes += page.body.len();
        self.order.push_back(page.from);
        self.pages.insert(page.from, page);
        while self.bytes > CATCH_UP_BYTES && self.order.len() > 1 {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(old) = self.pages.remove(&old) {
                self.bytes -= old.body.len();
            }
        }
    }

    fn clear(&mut self) {
        *self = CatchUp::default();
    }
}

impl Ring {
    fn push(&mut self, page: Arc<SharedPage>) {
        self.end = page.to;
        self.bytes += page.body.len();
        self.pages.push_back(page);
        while self.pages.len() > RING_PAGES || (self.bytes > RING_BYTES && self.pages.len() > 1) {
            if let Some(old) = self.pages.pop_front() {
                self.bytes -= old.body.len();
            }
        }
    }

    /// Drops every page (the catch-up pages too), keeping `end`, and
    /// refuses pages read before.
    fn forget(&mut self) {
        self.pages.clear();
        self.bytes = 0;
        self.catch_up.clear();
        self.generation += 1;
    }

    fn restart(&mut self, at: u64) {
        self.pages.clear();
        self.bytes = 0;
        self.catch_up.clear();
        self.end = at;
    }

    fn position(&self, seq: u64) -> Position {
        // Pages are contiguous and in seq order.
        let after = self.pages.partition_point(|page| page.from < seq);
        let read_to = match self.pages.get(after) {
            Some(page) if page.from == seq => return Position::Page(page.clone()),
            Some(page) => page.from,
            None if seq < self.end => self.end,
            None => return Position::Wait,
        };
        // Behind the ring: a page another follower read from here, if kept.
        match self.catch_up.pages.get(&seq) {
            Some(page) => Position::Page(page.clone()),
            None => Position::ReadTo(read_to),
        }
    }
}

/// The shared pages and their publisher (one per server).
#[derive(Debug)]
pub struct Fanout {
    ring: Mutex<Ring>,
    /// The ring's `end`, for followers to wait on.
    published: watch::Sender<u64>,
    followers: AtomicUsize,
    /// A follower arrived (wakes an idle publisher).
    arrived: Notify,
    started: AtomicBool,
}

impl Default for Fanout {
    fn default() -> Fanout {
        Fanout {
            ring: Mutex::default(),
            published: watch::Sender::new(0),
            followers: AtomicUsize::new(0),
            arrived: Notify::new(),
            started: AtomicBool::new(false),
        }
    }
}

/// A follower's registration; leaving lets an idle publisher stop reading.
pub(super) struct Joined<'a>(&'a Fanout);

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        self.0.followers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Fanout {
    fn ring(&self) -> MutexGuard<'_, Ring> {
        // A panic while holding the lock leaves a consistent ring (each
        // change is one push or clear): keep serving.
        self.ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Drops every shared page, the catch-up pages too (publishing goes on
    /// where it was): after an erasure has destroyed its keys, pages encoded
    /// before may still hold the erased content in memory (DESIGN 3b).
    /// Followers positioned in them read the store instead, which no longer
    /// serves it; a page being read meanwhile is read again (by the
    /// publisher) or not kept (a catch-up page). The erase handler calls
    /// this after the erasure's ack.
    pub fn forget_pages(&self) {
        self.ring().forget();
    }

    /// Registers a follower, starting the publisher on first use.
    pub(super) fn join(
        self: &Arc<Self>,
        store: &Arc<Store>,
        head: &watch::Receiver<Head>,
        limits: &Limits,
    ) -> (Joined<'_>, watch::Receiver<u64>) {
        self.followers.fetch_add(1, Ordering::AcqRel);
        if !self.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(publish(
                self.clone(),
                Arc::downgrade(store),
                head.clone(),
                *limits,
            ));
        }
        self.arrived.notify_one();
        (Joined(self), self.published.subscribe())
    }

    pub(super) fn position(&self, seq: u64) -> Position {
        self.ring().position(seq)
    }

    /// Where pages are in the erasure order: taken before a follower reads
    /// the store, given back with the page to [`Fanout::keep_catch_up`].
    pub(super) fn generation(&self) -> u64 {
        self.ring().generation
    }

    /// Keeps a page a follower behind the ring read from the store, for the
    /// others behind it, unless [`Fanout::forget_pages`] came since its
    /// read began (`generation`): then it may hold erased content.
    pub(super) fn keep_catch_up(&self, page: Arc<SharedPage>, generation: u64) {
        let mut ring = self.ring();
        if ring.generation == generation {
            ring.catch_up.keep(page);
        }
    }
}

/// Where a page read behind the ring from `from` ends at most: the next
/// multiple of [`CATCH_UP_ALIGN`] (so reads from any seq meet at its
/// multiples), or `to`.
pub(super) fn catch_up_end(from: u64, to: u64) -> u64 {
    let next = (from / CATCH_UP_ALIGN + 1).saturating_mul(CATCH_UP_ALIGN);
    next.min(to)
}

/// The publisher: after each commit the head moved past, the new records as
/// shared pages; idle (the ring emptied) while no follower is connected.
/// Ends when the sequencer stops (its head channel closes).
async fn publish(
    fanout: Arc<Fanout>,
    store: Weak<Store>,
    mut head: watch::Receiver<Head>,
    limits: Limits,
) {
    let mut next = head.borrow_and_update().size;
    fanout.ring().restart(next);
    fanout.published.send_replace(next);
    loop {
        let size = head.borrow_and_update().size;
        if fanout.followers.load(Ordering::Acquire) == 0 {
            // Nobody to share with: publish nothing, restart at the head.
            next = size;
            fanout.ring().restart(next);
            fanout.published.send_replace(next);
        }
        while next < size && fanout.followers.load(Ordering::Acquire) > 0 {
            let Some(store) = store.upgrade() else { return };
            let from = next;
            let generation = fanout.ring().generation;
            let scan_limits = (limits.read_page_records, limits.max_frame);
            let read = tokio::task::spawn_blocking(move || {
                let filter = proto::Filter::default();
                store
                    .scan(&Scan {
                        from,
                        to: size,
                        newest: false,
                        filter: &filter,
                        max_records: scan_limits.0,
                        max_bytes: scan_limits.1,
                        max_examined: SCAN_MAX_RECORDS,
                        deadline: Some(std::time::Instant::now() + SCAN_MAX_TIME),
                    })
                    .map(|scanned| SharedPage::new(from, &records_of(scanned)))
            })
            .await;
            match read {
                Ok(Ok(page)) if page.to > from => {
                    let mut ring = fanout.ring();
                    // Read before a `forget_pages`: it may hold erased
                    // content; read it again.
                    if ring.generation != generation {
                        continue;
                    }
                    next = page.to;
                    ring.push(Arc::new(page));
                    drop(ring);
                    fanout.published.send_replace(next);
                }
                Ok(Ok(_)) => break,
                Ok(Err(err)) => {
                    tracing::error!(%err, from, "publishing committed records to followers failed; retrying");
                    tokio::time::sleep(RETRY_AFTER).await;
                }
                Err(err) => {
                    tracing::error!(%err, from, "the publisher's read task failed; retrying");
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
        }
        tokio::select! {
            changed = head.changed() => if changed.is_err() { return },
            _ = fanout.arrived.notified() => {}
        }
    }
}

#[cfg(test)]
#[path = "fanout_tests.rs"]
mod tests;
