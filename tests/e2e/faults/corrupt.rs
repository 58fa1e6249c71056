//! A damaged `data.mdb` (bytes flipped with the daemon stopped, as a disk
//! fault or a careless edit would) refuses the start with exit 3 and a
//! message naming the file, never a panic (101), a crash or a silent start:
//! a meta page's magic, the newest meta page's root pointer, and the header
//! of the B-tree leaf holding the newest records, each on a fresh copy of
//! the same store. A flipped byte inside an older record's payload is no
//! LMDB damage at all: the start reads only the newest records, so it is
//! found by `tallyd check` (and by every verifier of an export), named by seq.

use std::path::{Path, PathBuf};

use tally_tests::anchored::{append, copy_dir};
use tally_tests::{Daemon, DaemonOpts};

const PAGE: usize = 4096;

/// LMDB's page header: pgno u64, pad u16, flags u16 (P_LEAF = 0x02), ...
const PAGE_FLAGS: usize = 10;
/// The meta page's MDB_meta starts after the 16-byte page header: magic u32,
/// version u32, address, mapsize, dbs[FREE], dbs[MAIN] (48 bytes each; the
/// root pgno is their last 8), last_pg, txnid.
const META_MAGIC: usize = 16;
const META_MAIN_ROOT: usize = 16 + 8 + 8 + 8 + 48 + 40;
const META_TXNID: usize = 16 + 8 + 8 + 8 + 96 + 8;

fn data_mdb(daemon: &Daemon) -> PathBuf {
    daemon.data_dir().join("store/data.mdb")
}

/// The start is refused with exit 3 naming the file; returns the message.
fn refused_as_damaged(daemon: &mut Daemon) -> String {
    let err = super::refused(daemon);
    let expected = format!(
        "tallyd: error: the store {} is damaged: ",
        data_mdb(daemon).display()
    );
    assert!(err.contains(&expected), "{err}");
    assert!(
        err.contains(
            "tallyd will not serve it: keep a copy for investigation and restore the data directory from a backup"
        ),
        "{err}"
    );
    err
}

fn edit(path: &Path, offset: usize, bytes: &[u8]) {
    let mut file = std::fs::read(path).unwrap();
    file[offset..offset + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, file).unwrap();
}

fn u64_at(file: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(file[offset..offset + 8].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_data_mdb_refuses_the_start_naming_the_file() {
    //! Four damages, each on a fresh copy of one store, then the copy itself.
    let mut daemon = Daemon::start(DaemonOpts::with_config("ack_journal_max_bytes = 0")).unwrap();
    append(&daemon, 0, 3000).await;
    let mut client = daemon.client().await.unwrap();
    let newest = client.read(2999, 1).await.unwrap().remove(0).record;
    let older = client.read(10, 1).await.unwrap().remove(0).record;
    drop(client);
    assert!(daemon.terminate().unwrap().success());
    let pristine = daemon.dir().join("pristine");
    copy_dir(&daemon.data_dir(), &pristine);
    let restore = |daemon: &Daemon| {
        std::fs::remove_dir_all(daemon.data_dir()).unwrap();
        copy_dir(&pristine, &daemon.data_dir());
    };
    let file = std::fs::read(data_mdb(&daemon)).unwrap();
    let newest_meta = if u64_at(&file, PAGE + META_TXNID) > u64_at(&file, META_TXNID) {
        PAGE
    } else {
        0
    };

    // 1. The first meta page's magic.
    edit(&data_mdb(&daemon), META_MAGIC, &[0xde, 0xad, 0xbe, 0xef]);
    let err = refused_as_damaged(&mut daemon);
    assert!(err.contains("File is not an LMDB file"), "{err}");

    // 2. The newest meta page's main root: a page past the end of the file.
    restore(&daemon);
    edit(
        &data_mdb(&daemon),
        newest_meta + META_MAIN_ROOT,
        &u64::MAX.to_le_bytes()[..6],
    );
    let err = refused_as_damaged(&mut daemon);
    assert!(
        err.contains("Requested page not found") || err.contains("Located page was wrong type"),
        "{err}"
    );

    // 3. The B-tree leaf holding the newest record: its page type (in
    // every copy: copy-on-write leaves stale copies in free pages).
    restore(&daemon);
    let copies = find_all(&file, &newest);
    assert!(!copies.is_empty(), "the newest record is not in data.mdb");
    for at in copies {
        let leaf = at / PAGE * PAGE;
        assert_eq!(
            file[leaf + PAGE_FLAGS] & 0x02,
            0x02,
            "not a leaf page at {leaf}"
        );
        edit(&data_mdb(&daemon), leaf + PAGE_FLAGS, &[0x00, 0x00]);
    }
    let err = refused_as_damaged(&mut daemon);
    assert!(err.contains("Located page was wrong type"), "{err}");

    // 4. One byte of an older record's payload: LMDB's pages are intact.
    restore(&daemon);
    let copies = find_all(&file, &older);
    assert!(!copies.is_empty(), "record 10 is not in data.mdb");
    for at in copies {
        let payload = at + older.len() - 8;
        edit(&data_mdb(&daemon), payload, &[file[payload] ^ 0x01]);
    }
    let check = daemon.tallyd(&["check"]).unwrap();
    assert_eq!(check.code, 1, "{check:?}");
    assert!(
        check
            .stderr
            .contains("store is inconsistent: chain broken at seq 11"),
        "{}",
        check.stderr
    );

    // The untouched copy still starts and serves every record.
    restore(&daemon);
    daemon.restart().unwrap();
    assert_eq!(daemon.export_and_verify().unwrap().size, 3000);
}

/// Every offset of `needle` in `haystack`.
fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, window)| *window == needle)
        .map(|(at, _)| at)
        .collect()
}
