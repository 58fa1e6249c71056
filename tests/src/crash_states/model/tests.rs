//! The persistence model on hand-written op logs: what a cut forces, what
//! it leaves optional, and what the materialised files hold.

use super::*;
use crate::crash_states::image::FileImage;

fn timed(ops: Vec<Op>) -> Vec<Timed> {
    ops.into_iter()
        .enumerate()
        .map(|(at, op)| Timed {
            at: at as u64 * 10,
            op,
        })
        .collect()
}

fn write(path: &str, offset: u64, byte: u8, len: usize, sync: bool) -> Op {
    Op::Write {
        path: path.into(),
        offset,
        data: vec![byte; len],
        sync,
    }
}

/// A snapshot holding `f`: two blocks of `a`.
fn snapshot() -> Tree {
    let mut tree = Tree::default();
    tree.dirs.insert(".".into());
    let mut file = FileImage::default();
    file.write(0, &[b'a'; 8192]);
    tree.files.insert("f".into(), file);
    tree
}

fn block(tree: &Tree, path: &str, index: usize) -> u8 {
    tree.files[path].bytes()[index * 4096]
}

#[test]
fn an_fsynced_write_survives_and_a_later_unflushed_one_may_be_lost() {
    let ops = timed(vec![
        write("f", 0, b'b', 4096, false),
        Op::Flush { path: "f".into() },
        write("f", 4096, b'c', 4096, false),
    ]);
    let model = Model::new(snapshot(), &ops).unwrap();
    let end = Cut {
        k: 3,
        in_flight: false,
    };
    let space = model.space(end);
    assert_eq!(
        space.optional.len(),
        1,
        "only the write after the flush is optional"
    );
    let lost = model.materialise(&Choice {
        cut: end,
        meta_prefix: 0,
        kept: vec![],
    });
    assert_eq!((block(&lost, "f", 0), block(&lost, "f", 1)), (b'b', b'a'));
    let kept = model.materialise(&Choice {
        cut: end,
        meta_prefix: 0,
        kept: space.optional.clone(),
    });
    assert_eq!(block(&kept, "f", 1), b'c');
    // With the fsync in flight, the first write is not forced either.
    let in_flight = model.space(Cut {
        k: 2,
        in_flight: true,
    });
    assert_eq!(in_flight.optional.len(), 1);
    assert_eq!(
        model.acked_before(Cut {
            k: 2,
            in_flight: true
        }),
        10,
        "acks received before the fsync returned"
    );
    assert_eq!(model.acked_before(end), u64::MAX);
}

#[test]
fn a_dsync_write_is_forced_once_it_returned_and_torn_per_block_while_in_flight() {
    let ops = timed(vec![write("f", 0, b'z', 8192, true)]);
    let model = Model::new(snapshot(), &ops).unwrap();
    assert!(model
        .space(Cut {
            k: 1,
            in_flight: false
        })
        .optional
        .is_empty());
    let torn = model.space(Cut {
        k: 1,
        in_flight: true,
    });
    assert_eq!(torn.optional.len(), 2, "one unit per 4 KiB block");
    let half = model.materialise(&Choice {
        cut: torn.cut,
        meta_prefix: 0,
        kept: vec![torn.optional[1]],
    });
    assert_eq!((block(&half, "f", 0), block(&half, "f", 1)), (b'a', b'z'));
    assert_eq!(model.cuts().len(), 2);
}

#[test]
fn metadata_persists_as_a_prefix_and_a_size_with_the_bytes_it_makes_visible() {
    let ops = timed(vec![
        Op::Open {
            path: "g".into(),
            created: true,
            truncated: false,
        },
        write("g", 0, b'x', 100, false),
        Op::Rename {
            from: "g".into(),
            to: "h".into(),
        },
        Op::Flush { path: "h".into() },
    ]);
    let model = Model::new(snapshot(), &ops).unwrap();
    let before = model.space(Cut {
        k: 4,
        in_flight: true,
    });
    assert_eq!((before.meta_min, before.meta_max), (0, 3));
    let created = model.materialise(&Choice {
        cut: before.cut,
        meta_prefix: 1,
        kept: vec![],
    });
    assert_eq!(
        created.files["g"].size, 0,
        "created, its size not yet persisted"
    );
    let grown = model.materialise(&Choice {
        cut: before.cut,
        meta_prefix: 2,
        kept: vec![],
    });
    assert_eq!(
        grown.files["g"].bytes(),
        vec![b'x'; 100],
        "data=ordered: no size without its bytes"
    );
    let after = model.space(Cut {
        k: 4,
        in_flight: false,
    });
    assert_eq!(
        after.meta_min, 3,
        "fsync of the renamed file commits its creation, size and rename"
    );
    let state = model.materialise(&Choice {
        cut: after.cut,
        meta_prefix: 3,
        kept: vec![],
    });
    assert!(state.files.contains_key("h") && !state.files.contains_key("g"));
}

#[test]
fn what_the_model_cannot_see_is_refused() {
    let mapped = timed(vec![Op::MapShared {
        path: "store/data.mdb".into(),
    }]);
    let err = Model::new(snapshot(), &mapped).unwrap_err();
    assert!(err.to_string().contains("bypass the recorder"), "{err}");
    let lock = timed(vec![Op::MapShared {
        path: LMDB_LOCK_FILE.into(),
    }]);
    assert!(
        Model::new(snapshot(), &lock).is_ok(),
        "LMDB's reader table is left out on purpose"
    );
    let copied = timed(vec![Op::Unsupported {
        what: "copy_file_range f".into(),
    }]);
    let err = Model::new(snapshot(), &copied).unwrap_err();
    assert!(err.to_string().contains("copy_file_range"), "{err}");
}
