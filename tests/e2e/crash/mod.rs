//! SIGKILL on every commit path, under concurrent load: every acked event
//! survives at its seq with its entry hash and payload, the chain verifies,
//! no event is stored twice, and the log continues densely (the next
//! append's seq is the size before it). After each kill the daemon itself
//! restarts on the store as the kill left it (its own ack-journal replay
//! and start-up: no `tallyd check` first) and must not refuse; `tallyd
//! check` runs once, at the end, offline.
//!
//! The paths: the ack journal (small batches); LMDB (batches over the
//! journal's 16 KiB, committed with the journaled ones before them); the
//! journal off (`ack_journal_max_bytes = 0`), also turned off and on
//! across restarts (what the journal holds must come back either way); map growth (a 1 MiB initial
//! map, doubled under the load); the SIGTERM drain (SIGKILL a random delay
//! after SIGTERM); start-up (killing the restarted daemon at a random delay
//! while it replays the journal and starts); and anchoring in a real swtpm
//! every second, with kills of first starts (provisioning and the genesis
//! anchor, each on a new data directory), during the load, right after
//! `tally anchor`, during the drain's final anchor and during start-up
//! anchoring, after each of which the anchors verify against the log's identity with a fresh
//! attestation (PASS: genuine, consecutive, current). Half the kills during
//! the load wait for an LMDB commit (`aim.rs`). The erasure path (an
//! erasure's commit, its key shredding, and the restart's redo) has its own
//! rounds in `erasure.rs`.
//!
//! Every random choice comes from `tally_tests::seed::rng` (the seed is
//! printed; `TALLY_SEED=<seed>` replays the choices, not the timing). The
//! CI form makes 4-6 rounds per path, about 50 kills in all (35-40 s here).
//! The full form, 20 rounds per path, about 230 kills (docs/OPERATIONS.md,
//! section 3b, has one run's figures):
//!
//! ```sh
//! cargo build --workspace
//! TALLY_KILLS=20 cargo test -p tally-tests --test e2e -- crash:: --nocapture
//! ```
//!
//! `TALLY_KILLS=N` gives every path N rounds (each ends in a kill, or in a
//! drain that ended first, counted apart; a start-up round also kills up to
//! three starting daemons). Each round prints where its kill landed, and
//! each path its kills by where they landed and its acked events.

mod aim;
mod anchored;
mod driver;
mod erasure;
mod ledger;
mod load;
mod startup;

use driver::{Kill, KillPath, Report};
use tally_tests::swtpm::Swtpm;
use tally_tests::DaemonOpts;

/// Events per request that stay under the journal's 16 KiB (the limit the
/// paths with big requests pin, [`JOURNAL_16K`])...
const SMALL: u64 = 5;
/// ...and that do not (64 records of about 400 bytes: checked below).
const BIG: u64 = 64;

/// The journal's limit on the paths that send big requests. The default
/// (256 KiB) would journal a 64-event request too; these paths exist to
/// kill LMDB commits of batches larger than the journal takes.
const JOURNAL_MAX_BYTES: u64 = 16 << 10;
const JOURNAL_16K: &str = "ack_journal_max_bytes = 16384";

/// Rounds per path: `TALLY_KILLS` if set, else the CI form's `ci`.
fn rounds(ci: usize) -> usize {
    match std::env::var("TALLY_KILLS") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("TALLY_KILLS={text:?} is not a number")),
        Err(_) => ci,
    }
}

fn path(name: &'static str, config: &str, batches: &[u64], kills: &[Kill], ci: usize) -> KillPath {
    KillPath {
        name,
        opts: DaemonOpts::with_config(config),
        batches: batches.to_vec(),
        kills: kills.to_vec(),
        rounds: rounds(ci),
        genesis_kills: 0,
        toggle_journal: false,
    }
}

async fn run(path: &KillPath) -> Report {
    let mut rng = tally_tests::seed::rng(path.name);
    driver::run(path, &mut rng, None).await.unwrap()
}

/// How many restarts committed events from the ack journal.
fn replays(report: &Report) -> usize {
    report.logs.matches(driver::REPLAYED).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_on_the_journal_path() {
    let report = run(&path("journal", "", &[SMALL; 3], &[Kill::Load], 6)).await;
    // The restarts found acked events only the journal held, and gave them back.
    let replays = replays(&report);
    println!("journal: {replays} restarts replayed the ack journal");
    assert!(
        replays > 0,
        "no kill left events in the journal: the journal path was not tested"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_on_the_lmdb_path() {
    let report = run(&path(
        "lmdb",
        JOURNAL_16K,
        &[BIG, BIG, SMALL],
        &[Kill::Load],
        5,
    ))
    .await;
    assert!(
        BIG * report.min_record_bytes > JOURNAL_MAX_BYTES,
        "a {BIG}-event request of {}-byte records fits the journal: not the LMDB path",
        report.min_record_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_with_the_journal_off() {
    let config = "ack_journal_max_bytes = 0";
    let report = run(&path("journal-off", config, &[SMALL; 3], &[Kill::Load], 5)).await;
    assert_eq!(
        replays(&report),
        0,
        "the journal is off, yet a restart replayed it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_with_the_journal_turned_off_and_on_across_restarts() {
    //! An operator may turn the journal off after a crash: the next start
    //! must still give back what the journal holds.
    let mut path = path("journal-toggled", "", &[SMALL; 3], &[Kill::Load], 4);
    path.toggle_journal = true;
    let report = run(&path).await;
    println!(
        "journal-toggled: {} restarts with the journal off replayed it",
        report.replayed_with_journal_off
    );
    assert!(
        report.replayed_with_journal_off > 0,
        "no restart with the journal off found events in it: the path was not tested"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_across_map_growth() {
    let config = "map_initial_bytes = 1048576\nack_journal_max_bytes = 16384";
    let report = run(&path(
        "map-growth",
        config,
        &[BIG, SMALL, SMALL],
        &[Kill::Load],
        5,
    ))
    .await;
    let growths = report.logs.matches("grew the LMDB map").count();
    println!("map-growth: the map grew {growths} times");
    assert!(growths > 0, "the map never grew: map growth was not tested");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_the_sigterm_drain() {
    let report = run(&path(
        "drain",
        JOURNAL_16K,
        &[BIG, SMALL, SMALL],
        &[Kill::Drain],
        5,
    ))
    .await;
    let in_drain: u64 = report
        .kills
        .iter()
        .filter(|(landed, _)| landed.starts_with("during the drain"))
        .map(|(_, kills)| kills)
        .sum();
    assert!(
        in_drain > 0,
        "no kill landed during a drain: {:?}",
        report.kills
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_start_up_replay() {
    let report = run(&path("start-up", "", &[SMALL; 3], &[Kill::Startup], 4)).await;
    let in_replay = report.kills.get(startup::IN_REPLAY).copied().unwrap_or(0);
    assert!(
        in_replay > 0,
        "no kill landed during a journal replay: {:?}",
        report.kills
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_while_anchoring() {
    let Some(tpm) = Swtpm::start() else { return };
    let anchored = anchored::Anchored { tpm };
    let kills = [Kill::Load, Kill::Anchor, Kill::Drain, Kill::Startup];
    let mut path = path("anchoring", "", &[SMALL, SMALL, BIG], &kills, 5);
    path.opts = DaemonOpts {
        config: JOURNAL_16K.into(),
        ..anchored.opts()
    };
    path.genesis_kills = rounds(3);
    let mut rng = tally_tests::seed::rng(path.name);
    driver::run(&path, &mut rng, Some(&anchored)).await.unwrap();
}
