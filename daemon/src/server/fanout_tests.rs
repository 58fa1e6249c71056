//! The shared page's frame is byte for byte the frame the per-follower path
//! sends, and the ring says where a follower stands.

use prost::Message;
use tally_client::frame;
use tally_client::proto::{self, response, Response};

use super::*;

fn records(from: u64, count: u64, record_len: usize) -> proto::Records {
    proto::Records {
        records: (from..from + count)
            .map(|seq| proto::StoredRecord {
                seq,
                record: vec![seq as u8; record_len].into(),
                entry_hash: vec![!(seq as u8); 32].into(),
                content: Default::default(),
            })
            .collect(),
        resume_seq: from + count,
    }
}

fn page(from: u64, count: u64, record_len: usize) -> Arc<SharedPage> {
    Arc::new(SharedPage::new(from, &records(from, count, record_len)))
}

#[test]
fn a_shared_frame_is_the_frame_the_old_path_sends() {
    //! A follower's header plus the shared bytes must be exactly the
    //! length-prefixed `Response { id, records }` each follower encoded
    //! before, for every id width (0 is omitted by prost) and page size.
    for (from, count, record_len) in [(0, 0, 0), (7, 1, 10), (1 << 40, 300, 200), (5, 3, 70_000)] {
        let records = records(from, count, record_len);
        let page = SharedPage::new(from, &records);
        assert_eq!((page.from, page.to), (from, from + count));
        for id in [0, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let old = frame::encode(&Response {
                id,
                body: Some(response::Body::Records(records.clone())),
            });
            let mut expected = (old.len() as u32).to_be_bytes().to_vec();
            expected.extend_from_slice(&old);
            let mut sent = page.header(id).to_vec();
            sent.extend_from_slice(&page.body);
            assert_eq!(
                sent, expected,
                "id {id}, {count} records of {record_len} bytes"
            );
            let decoded = Response::decode(&sent[4..]).unwrap();
            assert_eq!(decoded.id, id);
            assert_eq!(decoded.body, Some(response::Body::Records(records.clone())));
        }
    }
}

#[test]
fn the_ring_says_where_a_follower_stands() {
    let mut ring = Ring::default();
    ring.restart(10);
    // Nothing published yet: before the start, read the store up to it.
    assert!(matches!(ring.position(3), Position::ReadTo(10)));
    assert!(matches!(ring.position(10), Position::Wait));
    ring.push(page(10, 5, 8));
    ring.push(page(15, 5, 8));
    assert_eq!(ring.end, 20);
    assert!(matches!(ring.position(10), Position::Page(page) if page.from == 10 && page.to == 15));
    assert!(matches!(ring.position(15), Position::Page(page) if page.from == 15));
    // Inside a page: read to the next page's start, or to the end.
    assert!(matches!(ring.position(12), Position::ReadTo(15)));
    assert!(matches!(ring.position(17), Position::ReadTo(20)));
    assert!(matches!(ring.position(2), Position::ReadTo(10)));
    assert!(matches!(ring.position(20), Position::Wait));
    assert!(matches!(ring.position(25), Position::Wait));
    ring.restart(40);
    assert!(ring.pages.is_empty());
    assert_eq!(ring.bytes, 0);
    assert!(matches!(ring.position(15), Position::ReadTo(40)));
}

#[test]
fn the_ring_is_bounded_and_keeps_its_newest_page() {
    //! Eviction by page count and by bytes; one page larger than the byte
    //! bound still stays (the followers at the head need it).
    let mut ring = Ring::default();
    for i in 0..(RING_PAGES as u64 + 10) {
        ring.push(page(i, 1, 1));
    }
    assert_eq!(ring.pages.len(), RING_PAGES);
    assert_eq!(ring.pages[0].from, 10);
    assert!(matches!(ring.position(5), Position::ReadTo(10)));
    let total: usize = ring.pages.iter().map(|page| page.body.len()).sum();
    assert_eq!(ring.bytes, total);
    let big = RING_BYTES / 3 + 1;
    let next = ring.end;
    for i in 0..4 {
        ring.push(page(next + i, 1, big));
    }
    assert!(ring.bytes <= RING_BYTES, "{} bytes held", ring.bytes);
    assert_eq!(ring.pages.len(), 2);
    let huge = next + 4;
    ring.push(page(huge, 1, RING_BYTES + 1));
    assert_eq!(ring.pages.len(), 1);
    assert!(matches!(ring.position(huge), Position::Page(_)));
}

#[test]
fn forgetting_the_pages_keeps_the_end_and_sends_followers_to_the_store() {
    //! After an erasure the ring's pages may hold erased content: forget
    //! drops them (a follower there reads the store, up to the end already
    //! published) and raises the generation a page read before is checked
    //! against.
    let mut ring = Ring::default();
    ring.restart(0);
    ring.push(page(0, 5, 8));
    ring.push(page(5, 5, 8));
    let generation = ring.generation;
    ring.forget();
    assert!(ring.pages.is_empty());
    assert_eq!(ring.bytes, 0);
    assert_eq!(ring.end, 10);
    assert_ne!(ring.generation, generation);
    assert!(matches!(ring.position(0), Position::ReadTo(10)));
    assert!(matches!(ring.position(5), Position::ReadTo(10)));
    assert!(matches!(ring.position(10), Position::Wait));
}

#[test]
fn catch_up_pages_are_kept_by_start_bounded_and_forgotten_with_the_ring() {
    //! A page a follower behind the ring read is found by its start seq,
    //! kept once, and the oldest go when over the byte bound (the newest
    //! stays); an erasure's forget drops them and refuses one read before.
    let fanout = Fanout::default();
    // Published up to 1,000, no ring page: every seq below is behind it.
    fanout.ring().restart(1_000);
    let catch_up_page = |seq: u64| match fanout.position(seq) {
        Position::Page(page) => Some(page),
        _ => None,
    };
    let generation = fanout.generation();
    fanout.keep_catch_up(page(0, 10, 100), generation);
    fanout.keep_catch_up(page(0, 10, 100), generation);
    assert_eq!(fanout.ring().catch_up.order.len(), 1, "kept once");
    let found = catch_up_page(0).expect("kept");
    assert_eq!((found.from, found.to), (0, 10));
    assert!(catch_up_page(5).is_none(), "found by its start only");

    // Pages of ~1 MiB: at most 32 are kept, the oldest go first.
    for k in 1..=40u64 {
        fanout.keep_catch_up(page(k * 10, 10, 100_000), generation);
    }
    let ring = fanout.ring();
    assert!(
        ring.catch_up.bytes <= CATCH_UP_BYTES,
        "{} bytes",
        ring.catch_up.bytes
    );
    drop(ring);
    assert!(catch_up_page(0).is_none(), "the oldest went");
    assert!(catch_up_page(400).is_some(), "the newest stays");

    fanout.forget_pages();
    assert!(catch_up_page(400).is_none(), "forgotten with the ring");
    assert_eq!(fanout.ring().catch_up.bytes, 0);
    // Read before the forget: it may hold erased content.
    fanout.keep_catch_up(page(500, 10, 100), generation);
    assert!(catch_up_page(500).is_none());
    fanout.keep_catch_up(page(500, 10, 100), fanout.generation());
    assert!(catch_up_page(500).is_some());
}

#[test]
fn reads_behind_the_ring_end_at_the_alignment() {
    //! Pages read behind the ring end at the next multiple of the
    //! alignment (or sooner), so reads from any seq meet at its multiples.
    let a = CATCH_UP_ALIGN;
    assert_eq!(catch_up_end(0, u64::MAX), a);
    assert_eq!(catch_up_end(1, u64::MAX), a);
    assert_eq!(catch_up_end(a - 1, u64::MAX), a);
    assert_eq!(catch_up_end(a, u64::MAX), 2 * a);
    assert_eq!(catch_up_end(a + 7, a + 9), a + 9);
    assert_eq!(catch_up_end(u64::MAX - 1, u64::MAX), u64::MAX);
}
