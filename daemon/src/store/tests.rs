//! The store's unit tests: commits, reopening, map growth, the tree and
//! its proofs, and the key encodings of docs/DESIGN.md, section 4.

use super::growth::page_size;
use super::tree::tree_key;
use super::*;
use tally_attest::merkle;
use tally_attest::Hash;

const SMALL: MapSizing = MapSizing {
    initial: 1 << 20,
    max: 1 << 30,
};

/// `n` records of `payload` bytes on the store's committed state, and
/// their entry hashes.
fn batch_of(store: &Store, n: usize, payload: usize) -> (Batch, Vec<Hash>) {
    let mut batch = store.start_batch().unwrap();
    let hashes = (0..n)
        .map(|_| {
            let (_, hash) = batch
                .push(|bytes| bytes.extend(std::iter::repeat_n(b'x', payload)))
                .unwrap();
            hash
        })
        .collect();
    (batch, hashes)
}

#[test]
fn appends_survive_reopen_and_the_map_grows() {
    let dir = tempfile::tempdir().unwrap();
    let log_id;
    let mut head = Head::EMPTY;
    {
        let store = Store::open(dir.path(), SMALL).unwrap();
        log_id = store.log_id();
        // 64 batches of 100 records of 1 KiB: ~6.5 MiB through a 1 MiB map.
        for _ in 0..64 {
            let (batch, _) = batch_of(&store, 100, 1024);
            store.append(&batch).unwrap();
            head = batch.head();
        }
        assert!(store.map_bytes() > 1 << 20, "map should have grown");
    }
    let store = Store::open(dir.path(), SMALL).unwrap();
    assert_eq!(store.log_id(), log_id);
    assert_eq!(store.head().unwrap(), head);
    assert_eq!(store.verify().unwrap(), head);
    let page = store.read(6395, 10, usize::MAX).unwrap();
    assert_eq!(store.read(0, 1000, 5000).unwrap().len(), 4, "byte bound");
    assert_eq!(
        page.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (6395..6400).collect::<Vec<_>>()
    );
}

#[test]
fn a_batch_larger_than_an_eighth_of_the_map_grows_it_by_whole_pages() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    // 300 records of 1,001 bytes: the map grows by 8 x the batch, which
    // is no multiple of the page size.
    let (batch, _) = batch_of(&store, 300, 1001);
    store.append(&batch).unwrap();
    assert_eq!(store.map_bytes() % page_size(), 0);
    assert_eq!(store.verify().unwrap(), batch.head());
}

#[test]
fn the_stored_tree_matches_the_records_and_proves_inclusion_and_consistency() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    let mut head = Head::EMPTY;
    let mut leaves = Vec::new();
    // Uneven batches so subtrees complete across commits.
    for n in [1usize, 2, 7, 1, 13, 64, 3] {
        let (batch, hashes) = batch_of(&store, n, 10);
        leaves.extend(hashes);
        store.append(&batch).unwrap();
        head = batch.head();
        assert_eq!(head.root, merkle::root_from_leaf_hashes(&leaves));
        assert_eq!(store.head().unwrap(), head);
    }
    let size = leaves.len() as u64;
    assert_eq!(store.head().unwrap().root, head.root);
    for at in [1, 2, 3, 10, 24, 64, 90, size] {
        let root = store.root_at(at).unwrap();
        assert_eq!(root, merkle::root_from_leaf_hashes(&leaves[..at as usize]));
        for seq in [0, at / 2, at - 1] {
            let proof = store.inclusion_proof(seq, at).unwrap();
            merkle::verify_inclusion(seq, at, &leaves[seq as usize], &proof, &root).unwrap();
        }
        let proof = store.consistency_proof(at, size).unwrap();
        merkle::verify_consistency(at, size, &root, &head.root, &proof).unwrap();
    }
    // Reopened, the frontier continues where it was.
    drop(store);
    let store = Store::open(dir.path(), SMALL).unwrap();
    assert_eq!(store.head().unwrap(), head);
    assert_eq!(store.verify().unwrap(), head);
}

#[test]
fn a_batch_built_on_a_stale_state_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    let (first, _) = batch_of(&store, 3, 10);
    let (stale, _) = batch_of(&store, 2, 10);
    store.append(&first).unwrap();
    let err = store.append(&stale).unwrap_err();
    assert!(
        matches!(err, StoreError::StaleBatch { base: 0, size: 3 }),
        "{err}"
    );
    assert_eq!(store.head().unwrap(), first.head());
    assert_eq!(store.verify().unwrap(), first.head());
}

#[test]
fn map_at_maximum_is_a_full_error_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = MapSizing {
        initial: 1 << 20,
        max: 2 << 20,
    };
    let store = Store::open(dir.path(), tiny).unwrap();
    let mut head = Head::EMPTY;
    let err = loop {
        let (batch, _) = batch_of(&store, 50, 4000);
        match store.append(&batch) {
            Ok(()) => head = batch.head(),
            Err(err) => break err,
        }
    };
    assert!(err.is_full(), "{err}");
    assert_eq!(store.head().unwrap(), head);
    assert_eq!(store.verify().unwrap(), head);
}

#[test]
fn other_format_versions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), SMALL).unwrap();
        let mut wtxn = store.env.write_txn().unwrap();
        store
            .meta
            .put(&mut wtxn, META_FORMAT_VERSION, &7u32.to_be_bytes())
            .unwrap();
        wtxn.commit().unwrap();
    }
    match Store::open(dir.path(), SMALL) {
        Err(StoreError::IncompatibleFormat { found: 7 }) => {}
        other => panic!("expected IncompatibleFormat, got {other:?}"),
    }
}

#[test]
fn a_format_3_store_is_refused_naming_anchoring_v1_and_the_way_out() {
    //! Format 3 kept `anchor_intent` / `tpm_counter_base`; anchoring v2 cannot
    //! continue its anchors, so it is refused with what to do.
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), SMALL).unwrap();
        let mut wtxn = store.env.write_txn().unwrap();
        store
            .meta
            .put(&mut wtxn, META_FORMAT_VERSION, &3u32.to_be_bytes())
            .unwrap();
        wtxn.commit().unwrap();
    }
    let err = Store::open(dir.path(), SMALL).unwrap_err();
    assert!(
        matches!(err, StoreError::AnchoringV1 { found: 3 }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("format 3"), "{message}");
    assert!(message.contains("anchoring v2"), "{message}");
    assert!(message.contains("export"), "{message}");
    assert!(message.contains("old tallyd"), "{message}");
}

#[test]
fn the_key_encodings_are_those_of_the_layout_table() {
    //! docs/DESIGN.md, section 4 is the one table of the layout: these pin
    //! the encodings it states, so that the code cannot drift from it.
    assert_eq!(FORMAT_VERSION, 5);
    // `tree`: last leaf u64 big-endian || level; node (4, 0) covers leaves
    // 0..16, node (5, 3) leaves 96..128.
    assert_eq!(tree_key(4, 0), [0, 0, 0, 0, 0, 0, 0, 15, 4]);
    assert_eq!(tree_key(5, 3), [0, 0, 0, 0, 0, 0, 0, 127, 5]);
    // `head`: size u64 big-endian || entry hash of record size - 1.
    let tip = Tip {
        size: 0x0102,
        hash: [7; 32],
    };
    let encoded = super::records::encode_head(tip);
    assert_eq!(encoded[..8], [0, 0, 0, 0, 0, 0, 1, 2]);
    assert_eq!(encoded[8..], [7; 32]);
    assert_eq!(
        super::records::decode_head(&encoded, [9; 32]),
        Some(Head {
            size: 0x0102,
            hash: [7; 32],
            root: [9; 32]
        })
    );
    // `meta` keys, by name.
    assert_eq!(
        [
            META_FORMAT_VERSION,
            META_LOG_ID,
            META_HEAD,
            META_IDENTITY,
            META_PENDING_CHECKPOINT,
            META_FRONTIER,
            META_JOURNAL_KEY
        ],
        [
            "format_version",
            "log_id",
            "head",
            "identity",
            "pending_checkpoint",
            "frontier",
            "journal_key"
        ]
    );
    // `records`: seq u64 big-endian.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL).unwrap();
    let (batch, _) = batch_of(&store, 1, 3);
    store.append(&batch).unwrap();
    let rtxn = store.env.read_txn().unwrap();
    let raw = store.records.remap_key_type::<heed::types::Bytes>();
    assert!(raw.get(&rtxn, &0u64.to_be_bytes()).unwrap().is_some());
    let version = store.meta.get(&rtxn, META_FORMAT_VERSION).unwrap().unwrap();
    assert_eq!(version, FORMAT_VERSION.to_be_bytes());
}
