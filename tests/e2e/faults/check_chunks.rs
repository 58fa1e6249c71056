//! `tallyd check` hashes records on every core in chunks of 16,384
//! (daemon/src/store/verify.rs): root's edit of one byte of a record's
//! payload in `data.mdb` must still be named by the exact seq a replay of
//! one record at a time names, for the last record of a chunk and for the
//! record before the log's last (the last link the pass checks); the last
//! record itself is refused already by the open's head check (exit 3).

use tally_tests::anchored::{append, copy_dir};
use tally_tests::{Daemon, DaemonOpts};

/// `CHUNK` in daemon/src/store/verify.rs.
const CHUNK: u64 = 16_384;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_at_a_chunk_edge_or_the_last_record_is_named_by_seq() {
    //! Each edit on a fresh copy of one store; the untouched copy checks ok.
    let total = CHUNK + 40;
    let mut daemon = Daemon::start(DaemonOpts::with_config("ack_journal_max_bytes = 0")).unwrap();
    append(&daemon, 0, total).await;
    let mut client = daemon.client().await.unwrap();
    let edge = client.read(CHUNK - 1, 1).await.unwrap().remove(0).record;
    let before_last = client.read(total - 2, 1).await.unwrap().remove(0).record;
    let last = client.read(total - 1, 1).await.unwrap().remove(0).record;
    drop(client);
    assert!(daemon.terminate().unwrap().success());
    let data = daemon.data_dir().join("store/data.mdb");
    let pristine = daemon.dir().join("pristine");
    copy_dir(&daemon.data_dir(), &pristine);
    let file = std::fs::read(&data).unwrap();
    let check = |daemon: &Daemon| daemon.tallyd(&["check"]).unwrap();

    let ok = check(&daemon);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(
        ok.stdout.starts_with(&format!("ok: {total} records")),
        "{ok:?}"
    );

    let cases = [
        (
            &edge,
            1,
            format!("store is inconsistent: chain broken at seq {CHUNK}"),
        ),
        (
            &before_last,
            1,
            format!("store is inconsistent: chain broken at seq {}", total - 1),
        ),
        (
            &last,
            3,
            format!(
                "store is inconsistent: head says {total} records, last stored record is Some({})",
                total - 1
            ),
        ),
    ];
    for (record, code, expected) in cases {
        std::fs::remove_dir_all(daemon.data_dir()).unwrap();
        copy_dir(&pristine, &daemon.data_dir());
        let copies = find_all(&file, record);
        assert!(!copies.is_empty(), "the record is not in data.mdb");
        let mut edited = file.clone();
        for at in copies {
            // The payload's last byte: LMDB's pages stay intact.
            edited[at + record.len() - 1] ^= 0x01;
        }
        std::fs::write(&data, &edited).unwrap();
        let found = check(&daemon);
        assert_eq!(found.code, code, "{found:?}");
        assert!(found.stderr.contains(&expected), "{}", found.stderr);
    }
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
