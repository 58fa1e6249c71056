//! A full disk, for real: the data directory on a 64 MiB loop-mounted ext4,
//! filled while clients append. Appenders get `STORAGE_FULL` naming the file
//! system's free bytes (a full disk used to surface as "Input/output error
//! (os error 5)": LMDB's short write), `status` and the log warn below
//! `disk_warn_below_bytes`, reads keep working, appends resume once space is
//! freed (no restart), and every acked event is there with its hash. Both
//! commit paths: straight to LMDB (journal off, the map growing from 1 MiB on
//! the way) and through the ack journal (its apply fails first); and the map
//! at `map_max_bytes`, which needs no loop device.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_client::proto::ErrorCode;
use tally_client::ClientError;
use tally_tests::loopfs::LoopFs;
use tally_tests::{append_pipelined, check_records, read_range, wait_until, Daemon, DaemonOpts};

use super::status;

/// Acked events: seq -> entry hash.
type Acked = Arc<Mutex<BTreeMap<u64, [u8; 32]>>>;

/// Low-space threshold in these tests: the 64 MiB file system starts with
/// more free (about 40 MiB, after ext4's and the ack journal's 16 MiB).
const WARN_BELOW: u64 = 8 << 20;

fn daemon_on(fs: &LoopFs, config: &str) -> Daemon {
    Daemon::start(DaemonOpts {
        config: format!("disk_warn_below_bytes = {WARN_BELOW}\n{config}"),
        data_dir: Some(fs.path().join("data")),
        ..DaemonOpts::default()
    })
    .unwrap()
}

/// `clients` connections append `batch` events per request (8 in flight
/// each) until each is refused; returns every refusal. The acks go to `acked`.
async fn append_until_refused(
    daemon: &Daemon,
    clients: u64,
    batch: u64,
    acked: &Acked,
) -> Vec<ClientError> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = daemon.client().await.unwrap();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            // At most 400k events each: a disk that never fills fails the test.
            let first = (c + 1) << 32;
            let batches =
                (0..400_000 / batch).map(move |i| first + i * batch..first + (i + 1) * batch);
            append_pipelined(&mut client, batches, 8, |_, acks| {
                let mut acked = acked.lock().unwrap();
                for ack in acks {
                    assert!(
                        acked.insert(ack.seq, ack.entry_hash).is_none(),
                        "seq {} acked twice",
                        ack.seq
                    );
                }
            })
            .await
        }));
    }
    let mut refusals = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Err(err) => refusals.push(err),
            Ok(()) => panic!("400k events were stored: the file system never filled"),
        }
    }
    refusals
}

/// Each refusal is `STORAGE_FULL` naming the full file system and its free bytes.
fn assert_storage_full(refusals: &[ClientError], fs: &LoopFs) {
    let dir = fs.path().join("data/store").display().to_string();
    for refusal in refusals {
        let ClientError::Server { code, message } = refusal else {
            panic!("not a daemon error: {refusal}");
        };
        assert_eq!(*code, ErrorCode::StorageFull, "{message}");
        let expected = format!("the file system holding {dir} is full: ");
        assert!(message.starts_with(&expected), "{message}");
        let free: u64 = message[expected.len()..]
            .split(" bytes free (")
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no free bytes in {message}"));
        assert!(
            free < 1 << 20,
            "a full file system with {free} bytes free: {message}"
        );
        assert!(
            message.ends_with(
                "appends resume once space is freed, without a restart; nothing of this append was stored"
            ),
            "{message}"
        );
    }
}

/// Every acked event is stored under its seq with its entry hash, the stored
/// records from 0 form one chain, and the exported bundle verifies.
async fn assert_nothing_acked_lost(daemon: &Daemon, acked: &Acked) {
    let acked = acked.lock().unwrap().clone();
    let size = status(daemon)["size"].as_u64().unwrap();
    let last = *acked.keys().last().unwrap();
    assert!(size > last, "acked seq {last}, the log holds {size}");
    let mut client = daemon.client().await.unwrap();
    let records = read_range(&mut client, 0, size).await.unwrap();
    check_records(&records, 0).unwrap();
    for (seq, hash) in &acked {
        assert_eq!(
            records[*seq as usize].entry_hash.as_ref(),
            hash,
            "seq {seq}"
        );
    }
    // Requests queued behind a refused one may have been stored since.
    let verified = daemon.export_and_verify().unwrap();
    assert!(
        verified.size >= size,
        "the export holds {} records, status said {size}",
        verified.size
    );
}

/// Frees the filler and waits until an append is stored again, without a
/// restart; returns how long that took.
async fn appends_resume(
    daemon: &Daemon,
    fs: &LoopFs,
    filler: &std::path::Path,
    acked: &Acked,
) -> Duration {
    fs.free(filler);
    let started = std::time::Instant::now();
    let mut client = daemon.client().await.unwrap();
    loop {
        match client.append(tally_tests::events(9 << 40, 10)).await {
            Ok(acks) => {
                let mut acked = acked.lock().unwrap();
                for ack in acks {
                    acked.insert(ack.seq, ack.entry_hash);
                }
                return started.elapsed();
            }
            Err(ClientError::Server {
                code: ErrorCode::StorageFull,
                ..
            }) if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("appends did not resume after the space was freed: {err}"),
        }
    }
}

/// The low-space warning: in status (text and JSON) and in the log.
async fn assert_low_space_warned(daemon: &Daemon) {
    // Logged by the daemon's own periodic check (every 5 s), before anyone
    // asks for status.
    let logged = wait_until(Duration::from_secs(12), || {
        daemon.stderr().contains("low disk space: ")
    })
    .await;
    assert!(logged, "no log warning within 12 s:\n{}", daemon.stderr());
    let json = status(daemon);
    assert_eq!(json["disk_warn_below_bytes"], WARN_BELOW, "{json}");
    let free = json["disk_free_bytes"].as_u64().unwrap();
    assert!(free < WARN_BELOW, "{json}");
    let warning = json["disk_warning"].as_str().unwrap();
    assert!(
        warning.starts_with(&format!(
            "low disk space: {free} bytes free on the file system holding "
        )),
        "{json}"
    );
    assert!(
        warning.contains(&format!("below disk_warn_below_bytes = {WARN_BELOW}")),
        "{json}"
    );
    let text = daemon.tally(&["status"]).unwrap();
    assert!(
        text.stdout.contains("disk warning:  low disk space: "),
        "{}",
        text.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_lmdb_commits_with_storage_full_and_appends_resume_once_freed() {
    //! Journal off, map from 1 MiB: the map grows, then a commit meets the
    //! full disk (LMDB's short write): STORAGE_FULL with the free bytes,
    //! warning, reads, resume without a restart, nothing acked lost.
    let Some(fs) = LoopFs::mount(64) else { return };
    // Journal off: every batch is an LMDB commit; the map starts at 1 MiB and
    // grows on the way to the full disk.
    let daemon = daemon_on(
        &fs,
        "ack_journal_max_bytes = 0\nmap_initial_bytes = 1048576",
    );
    let acked: Acked = Arc::default();
    let mut client = daemon.client().await.unwrap();
    append_pipelined(
        &mut client,
        (0..10).map(|i| i * 100..(i + 1) * 100),
        4,
        |_, acks| {
            acked
                .lock()
                .unwrap()
                .extend(acks.iter().map(|ack| (ack.seq, ack.entry_hash)));
        },
    )
    .await
    .unwrap();
    let before = status(&daemon);
    assert_eq!(before["disk_warning"], "", "{before}");
    let map_before = before["store_map_bytes"].as_u64().unwrap();

    // 7.5 MiB left (under the 8 MiB warning): with the records' content
    // rows (store format 5) the store must pass the map's growth point
    // before the disk is full, as it did with 6 MiB before.
    let filler = fs.fill("filler", 15 << 19);
    assert_low_space_warned(&daemon).await;
    let refusals = append_until_refused(&daemon, 2, 100, &acked).await;
    assert_storage_full(&refusals, &fs);
    let full = status(&daemon);
    assert!(
        full["store_map_bytes"].as_u64().unwrap() > map_before,
        "the map did not grow on the way to the full disk: {before} -> {full}"
    );
    assert!(
        daemon.stderr().contains("grew the LMDB map"),
        "{}",
        daemon.stderr()
    );
    assert!(
        !daemon.stderr().contains("Input/output error"),
        "{}",
        daemon.stderr()
    );

    // Reads keep working while the disk is full: every stored record, by the
    // client and by `tally tail`.
    let size = full["size"].as_u64().unwrap();
    let records = read_range(&mut client, 0, size).await.unwrap();
    check_records(&records, 0).unwrap();
    let tail = daemon.tally(&["tail", "--from", "0", "--json"]).unwrap();
    assert_eq!(tail.code, 0, "{}", tail.stderr);
    // Requests still queued when their client saw the refusal may have been
    // stored since: at least `size` records, in seq order from 0.
    let seqs: Vec<u64> = tail
        .stdout
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        seqs.len() as u64 >= size,
        "tail printed {} records of {size}",
        seqs.len()
    );
    assert!(
        seqs.iter().enumerate().all(|(i, seq)| *seq == i as u64),
        "tail out of order"
    );

    let resumed = appends_resume(&daemon, &fs, &filler, &acked).await;
    println!(
        "appends resumed {resumed:?} after the filler was removed; {} events acked",
        acked.lock().unwrap().len()
    );
    assert_eq!(status(&daemon)["disk_warning"], "");
    assert!(daemon
        .stderr()
        .contains("disk space is back above disk_warn_below_bytes"));
    assert_nothing_acked_lost(&daemon, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_behind_the_ack_journal_acks_until_it_is_full_then_refuses_and_recovers() {
    //! Journal on: acks go on from the journal while its apply fails, then
    //! STORAGE_FULL; status and reads answer from the store meanwhile; the
    //! journaled events are applied once space is freed.
    let Some(fs) = LoopFs::mount(64) else { return };
    // Batches of one 35-event append (about 13 KiB, under the journal's
    // 256 KiB): every commit is a journal frame, never a group commit big
    // enough to go to LMDB directly.
    let daemon = daemon_on(&fs, "batch_max_events = 35");
    let acked: Acked = Arc::default();
    let filler = fs.fill("filler", 1 << 20);
    let refusals = append_until_refused(&daemon, 2, 35, &acked).await;
    assert_storage_full(&refusals, &fs);
    // Whether the scheduled apply or the full journal's own apply met the
    // full disk first is timing; that acked events wait in the journal is
    // asserted below.
    let log = daemon.stderr();
    assert!(!log.contains("Input/output error"), "{log}");

    // Status and reads answer from the store at once; the journaled tail is
    // acked but not in the store yet.
    let started = std::time::Instant::now();
    let full = status(&daemon);
    println!("status while full took {:?}", started.elapsed());
    assert!(
        full["disk_warning"]
            .as_str()
            .unwrap()
            .starts_with("low disk space: "),
        "{full}"
    );
    let stored = full["size"].as_u64().unwrap();
    let acked_size = acked.lock().unwrap().keys().last().unwrap() + 1;
    assert!(
        stored < acked_size,
        "every acked event reached LMDB ({stored}): the journal held none"
    );
    let mut client = daemon.client().await.unwrap();
    let records = read_range(&mut client, 0, stored).await.unwrap();
    check_records(&records, 0).unwrap();
    let journaled = acked_size - stored;
    println!("{journaled} acked events waited in the ack journal while the disk was full");

    appends_resume(&daemon, &fs, &filler, &acked).await;
    assert_nothing_acked_lost(&daemon, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_at_map_max_bytes_refuses_with_storage_full_and_keeps_serving() {
    //! The map at `map_max_bytes` is STORAGE_FULL with its own message.
    // No loop device: the map's own limit (2 MiB), journal off.
    let daemon = Daemon::start(DaemonOpts::with_config(
        "ack_journal_max_bytes = 0\nmap_initial_bytes = 1048576\nmap_max_bytes = 2097152",
    ))
    .unwrap();
    let acked: Acked = Arc::default();
    let refusals = append_until_refused(&daemon, 1, 100, &acked).await;
    let [ClientError::Server { code, message }] = refusals.as_slice() else {
        panic!("{refusals:?}");
    };
    assert_eq!(*code, ErrorCode::StorageFull, "{message}");
    assert_eq!(
        message,
        "the store's map is at its configured maximum of 2097152 bytes (map_max_bytes); nothing of this append was stored"
    );
    assert_nothing_acked_lost(&daemon, &acked).await;
}
