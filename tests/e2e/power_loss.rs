//! Power loss, not only kill -9: on each commit path (the ack journal, LMDB
//! commits with the journal off and with batches too large for it, LMDB map
//! growth, TPM anchoring), every crash state the persistence model of
//! docs/DESIGN.md section 11 allows for a recorded run (prefix cuts at each
//! flush, unflushed 4 KiB blocks lost, torn or reordered, metadata in order)
//! is built and tallyd started on it: it must start, and give back every
//! event acked before the cut at its seq with its hash, on a chain that
//! verifies, with nothing that was never sent; with a TPM, the store must
//! not be behind the counter increments tallyd had already sent.
//!
//! Bounded form here (a seeded sample of the states, printed with the seed);
//! `TALLY_EXPLORER_FULL=1` records runs four times longer (twice for map
//! growth) and checks up to 2,000 distinct states per path (docs/OPERATIONS.md,
//! "Power-loss crash states: running the explorer").

use tally_tests::crash_states::oplog::{Op, Timed};
use tally_tests::crash_states::record::{record, Workload};
use tally_tests::crash_states::{explore, Budget};
use tally_tests::swtpm::Swtpm;

fn full() -> bool {
    std::env::var("TALLY_EXPLORER_FULL").is_ok_and(|full| full == "1")
}

/// Appends per connection: `bounded`, or `full_form` in the full form (a
/// longer run: more flushes, so more cuts).
fn appends(bounded: usize, full_form: usize) -> usize {
    if full() {
        full_form
    } else {
        bounded
    }
}

fn budget() -> Budget {
    if full() {
        Budget {
            samples_per_cut: 16,
            max_checks: 2000,
            workers: 2,
        }
    } else {
        Budget {
            samples_per_cut: 2,
            max_checks: 50,
            workers: 1,
        }
    }
}

/// What the recorded run did on the data directory, to show that a test
/// exercised the path it names.
#[derive(Debug, Default)]
struct Exercised {
    /// Ack-journal frames written (writes starting with the frame magic).
    frames: usize,
    /// Flushes of `data.mdb` (two per LMDB commit).
    lmdb_flushes: usize,
    /// The end of the furthest write to `data.mdb`.
    data_end: u64,
}

fn exercised(ops: &[Timed]) -> Exercised {
    let mut seen = Exercised::default();
    for timed in ops {
        match &timed.op {
            Op::Write {
                path, offset, data, ..
            } if path == "store/ack-journal" && data.starts_with(b"TALLYJ02") => {
                seen.frames += 1;
            }
            Op::Write {
                path, offset, data, ..
            } if path == "store/data.mdb" => {
                seen.data_end = seen.data_end.max(offset + data.len() as u64);
            }
            Op::Flush { path } if path == "store/data.mdb" => seen.lmdb_flushes += 1,
            _ => {}
        }
    }
    seen
}

/// Records `workload`, checks with `exercised` that it went down its path,
/// explores its crash states, fails on any failed state.
async fn run(workload: Workload, swtpm: Option<&Swtpm>, check: impl FnOnce(&Exercised, u64)) {
    let mut rng = tally_tests::seed::rng(workload.name);
    let tcti = swtpm.map(Swtpm::tcti);
    let recording = record(&workload, tcti.as_deref(), &mut rng).await.unwrap();
    let name = workload.name;
    let seen = exercised(&recording.ops);
    println!("{name}: {seen:?}");
    let report = tokio::task::block_in_place(|| {
        explore(name, &recording, swtpm.is_some(), budget(), &mut rng)
    })
    .unwrap();
    assert!(report.checked > 0, "{name}: no crash state was checked");
    check(&seen, report.increments);
    if !report.failures.is_empty() {
        let kept = recording.dir.keep();
        panic!(
            "{name}: {} of {} crash states failed (states kept under {}):\n{}",
            report.failures.len(),
            report.checked,
            kept.display(),
            report
                .failures
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_on_the_ack_journal_path_from_the_first_start() {
    run(
        Workload {
            name: "power_loss_journal",
            config: "",
            from_empty: true,
            connections: 3,
            window: 2,
            batch: 1..=4,
            appends: appends(12, 48),
            anchors: 0,
        },
        None,
        |seen, _| {
            assert!(
                seen.frames >= 10,
                "the acks did not come from the journal: {seen:?}"
            )
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_on_lmdb_commits_with_the_journal_off() {
    run(
        Workload {
            name: "power_loss_lmdb_journal_off",
            config: "ack_journal_max_bytes = 0",
            from_empty: false,
            connections: 3,
            window: 2,
            batch: 1..=8,
            appends: appends(8, 32),
            anchors: 0,
        },
        None,
        |seen, _| {
            assert_eq!(
                seen.frames, 0,
                "the journal is off, yet frames were written"
            );
            assert!(seen.lmdb_flushes >= 4, "no LMDB commits: {seen:?}");
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_on_lmdb_commits_of_batches_too_large_for_the_journal() {
    run(
        Workload {
            name: "power_loss_lmdb_large_batches",
            // The default (256 KiB) would journal these batches.
            config: "ack_journal_max_bytes = 16384",
            from_empty: false,
            connections: 2,
            window: 2,
            // 60 events of ~350 record bytes: past the journal's 16 KiB.
            batch: 60..=120,
            appends: appends(5, 20),
            anchors: 0,
        },
        None,
        |seen, _| {
            assert_eq!(seen.frames, 0, "batches over 16 KiB went to the journal");
            assert!(seen.lmdb_flushes >= 4, "no LMDB commits: {seen:?}");
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_while_the_lmdb_map_grows() {
    run(
        Workload {
            name: "power_loss_map_growth",
            // The smallest map allowed: ~1.5 MB of records grow it twice.
            config: "map_initial_bytes = 1048576",
            from_empty: false,
            connections: 2,
            window: 1,
            batch: 200..=300,
            appends: appends(8, 16),
            anchors: 0,
        },
        None,
        // LMDB writes pages only inside its map: past 1 MiB it grew.
        |seen, _| assert!(seen.data_end > 1 << 20, "the map did not grow: {seen:?}"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_while_anchoring_in_a_tpm() {
    let Some(swtpm) = Swtpm::start() else {
        return;
    };
    run(
        Workload {
            name: "power_loss_anchoring",
            config: "",
            from_empty: false,
            connections: 2,
            window: 2,
            batch: 1..=6,
            appends: appends(15, 60),
            anchors: if full() { 12 } else { 3 },
        },
        Some(&swtpm),
        |_, increments| {
            assert!(
                increments >= 3,
                "{increments} TPM counter increments recorded, at least 3 anchors asked for"
            )
        },
    )
    .await;
}

/// Regression: the sealed log key's rename into `tpm/` was never flushed
/// into its directory, so on a file system that does not commit a rename
/// with the next fsync of another file (POSIX promises nothing; ext4 in
/// `data=ordered` happens to), a power cut after the genesis could keep the
/// genesis and lose the key: the next start would make a new key that no
/// verifier of the identity accepts. Recorded on a first start: the rename
/// is followed by a flush of `tpm/` before LMDB's first commit after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sealed_log_key_is_flushed_into_its_directory_before_the_genesis() {
    let Some(swtpm) = Swtpm::start() else {
        return;
    };
    let workload = Workload {
        name: "first_start_log_key",
        config: "",
        from_empty: true,
        connections: 1,
        window: 1,
        batch: 1..=1,
        appends: 3,
        anchors: 0,
    };
    let mut rng = tally_tests::seed::rng(workload.name);
    let recording = record(&workload, Some(&swtpm.tcti()), &mut rng)
        .await
        .unwrap();
    let ops: Vec<&Op> = recording.ops.iter().map(|timed| &timed.op).collect();
    let renamed = ops
        .iter()
        .position(|op| matches!(op, Op::Rename { to, .. } if to.ends_with("log-key.sealed")))
        .unwrap_or_else(|| panic!("no rename of the sealed log key recorded: {ops:#?}"));
    let after = |wanted: &dyn Fn(&Op) -> bool| {
        ops[renamed..]
            .iter()
            .position(|op| wanted(op))
            .map(|at| renamed + at)
    };
    let lmdb_commit = after(&|op| matches!(op, Op::Flush { path } if path == "store/data.mdb"))
        .unwrap_or_else(|| panic!("no LMDB commit after the log key: {ops:#?}"));
    let key_dir_flushed = after(&|op| matches!(op, Op::Flush { path } if path == "tpm"));
    assert!(
        key_dir_flushed.is_some_and(|at| at < lmdb_commit),
        "the rename of the log key (op {renamed}) is not flushed into tpm/ before LMDB's \
         commit (op {lmdb_commit}); flushes of tpm/ at {key_dir_flushed:?}: {:#?}",
        &ops[renamed..=lmdb_commit]
    );
}
