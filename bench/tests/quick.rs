//! Smoke test of tally-bench: runs every scenario in its quick form,
//! in-process, against the debug tallyd, and checks that each produced sane
//! figures (finite, positive) and that the JSON report has every key. Not a
//! timed pass/fail: a slow or noisy machine passes as long as the figures
//! are real.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tally_bench::{AnchoringOptions, Options};
use tally_tests::skip::{skip, Needs, Part};

/// Bound on the whole quick run.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// `target/debug/deps/quick-<hash>` -> `target/debug/tallyd`.
fn debug_tallyd() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    let path = deps.parent()?.join("tallyd");
    path.is_file().then_some(path)
}

/// Every number in `value` must be finite and > 0; `path` names the spot.
fn assert_positive(value: &Value, path: &str) {
    match value {
        Value::Number(number) => {
            let x = number.as_f64().unwrap_or(f64::NAN);
            assert!(
                x.is_finite() && x > 0.0,
                "{path} = {x}: not a finite positive figure"
            );
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                assert_positive(item, &format!("{path}[{i}]"));
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                assert_positive(item, &format!("{path}.{key}"));
            }
        }
        Value::String(_) | Value::Bool(_) | Value::Null => {}
    }
}

fn get<'a>(json: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .fold(json, |value, key| match key.parse::<usize>() {
            Ok(index) => value.get(index).unwrap_or(&Value::Null),
            Err(_) => value.get(key).unwrap_or(&Value::Null),
        })
}

const KEYS: &[&str] = &[
    "erase.subject_events_per_sec",
    "erase.subject_over_scan",
    "erase.range_erased_per_sec",
    "erase.key_bytes_per_event",
    "machine.cpus",
    "machine.cpu_model",
    "machine.filesystem",
    "total_seconds",
    "throughput.events_per_sec",
    "many_clients.binaries.0.pipelined_events_per_sec",
    "many_clients.binaries.0.shapes.0.events_per_sec",
    "many_clients.binaries.0.shapes.0.admitted",
    "many_clients.binaries.0.shapes.0.p99_ms",
    "many_clients.binaries.0.shapes.0.cpu.bench_cores",
    "throughput.payload_mb_per_sec",
    "throughput.record_bytes",
    "throughput.commits",
    "throughput.events_per_commit",
    "throughput.cpu.tallyd_cores",
    "throughput.cpu.bench_cores",
    "baselines.heed.events_per_sec",
    "baselines.heed.commits_per_sec",
    "baselines.heed.p99_ms",
    "baselines.fsync_batch.commits_per_sec",
    "baselines.fsync_batch.p99_ms",
    "baselines.fsync_single.events_per_sec",
    "baselines.heed_single.commits_per_sec",
    "baselines.socket.round_trips_per_sec",
    "baselines.socket.p50_ms",
    "baselines.sha256.events_per_sec",
    "baselines.sha256.mb_per_sec",
    "latency.0.offered_per_sec",
    "latency.0.achieved_per_sec",
    "latency.0.p50_ms",
    "latency.0.p99_ms",
    "latency.0.p999_ms",
    "latency.0.send_lag_p99_ms",
    "latency.0.disk_probe_max_ms",
    "latency.1.p99_ms",
    "lone.events_per_sec",
    "lone.p99_ms",
    "lone.commits_per_event",
    "verify.events_per_sec",
    "verify.mb_per_sec",
    "verify.export_events_per_sec",
    "memory.peak_rss_bytes",
    "memory.idle_rss_bytes",
    "memory.queue_bytes",
    "memory.allowance_bytes",
    "memory.bounded",
    "memory.committed_events",
    "check.check.events_per_sec",
    "check.check.cpu_seconds",
    "check.check.peak_rss_file_bytes",
    "check.sha_events_per_sec",
    "check.check_over_sha",
    "growth.slices.3.events_per_sec",
    "growth.start_up_ms",
    "growth.status_p50_us",
    "targets.0.met",
    "targets.1.ratio",
];

const ANCHORING_KEYS: &[&str] = &[
    "anchoring.on_events_per_sec",
    "anchoring.off_events_per_sec",
    "anchoring.on_over_off",
    "anchoring.anchor_latency.p50_ms",
    "anchoring.anchor_latency.p99_ms",
];

#[test]
fn quick_run_produces_every_figure() {
    let Some(tallyd) = debug_tallyd() else {
        skip(
            Needs::Ci,
            Part::Whole,
            "target/debug/tallyd not built (cargo build -p tally-daemon)",
        );
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let mut options = Options::quick(tallyd);
    options.work_dir = work.path().to_owned();
    // Smaller still: everything here is a debug build.
    options.throughput.duration = Duration::from_secs(1);
    options.latency.duration = Duration::from_millis(600);
    // A debug tallyd is far from 200k events/s; a backlog would only make
    // the test wait for it to drain.
    options.latency.rates = vec![5_000, 20_000];
    options.lone.duration = Duration::from_millis(600);
    options.verify.events = 20_000;
    options.check.events = 20_000;
    options.growth.events = 40_000;
    options.growth.slice = 10_000;
    options.growth.status_samples = 100;
    options.memory.duration = Duration::from_secs(1);
    options.baseline_duration = Duration::from_millis(400);
    // One target row (the 100-connection one); 1,000 is e2e many_writers'.
    options.many_clients.connections = vec![100];
    options.followers.counts = vec![0, 1, 10];
    options.followers.paced = vec![(5_000, 10)];
    options.followers.duration = Duration::from_millis(600);
    options.followers.grace = Duration::from_secs(2);
    options.erase.events = 20_000;
    options.erase.range = 200;

    let swtpm = match tally_bench::swtpm::unavailable() {
        Some(reason) => {
            skip(Needs::Ci, Part::Only("anchoring scenario"), &reason);
            None
        }
        None => Some(tally_bench::swtpm::Swtpm::start(work.path()).unwrap()),
    };
    options.anchoring = swtpm.as_ref().map(|tpm| AnchoringOptions {
        tcti: tpm.tcti().to_owned(),
        interval_secs: 1,
        rounds: 1,
        duration: Duration::from_millis(1500),
        latency_anchors: 2,
    });

    // The bench's clients wait for the daemon without a timeout: bounded
    // here, so that a hung daemon fails this test instead of hanging the
    // suite (the run takes one to two minutes on a busy 2-core machine).
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let running = options.clone();
    std::thread::spawn(move || {
        let _ = done_tx.send(tally_bench::run(&running));
    });
    let results = done_rx
        .recv_timeout(RUN_TIMEOUT)
        .unwrap_or_else(|_| panic!("the quick bench run did not finish within {RUN_TIMEOUT:?}"))
        .unwrap();
    println!("{}", results.table());
    let path = work.path().join("tally-bench.json");
    results.write_json(&path).unwrap();
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();

    let mut keys = KEYS.to_vec();
    if swtpm.is_some() {
        keys.extend_from_slice(ANCHORING_KEYS);
    } else {
        assert!(get(&json, "anchoring_skipped").is_string());
    }
    for key in keys {
        assert!(!get(&json, key).is_null(), "the JSON report has no {key}");
    }
    // Followers: one row per (count, mode); each row with followers got
    // everything acked at these rates, or says how far it fell short.
    // (Counts of 0 followers, 0 kept up and lag clamped at 0 are figures
    // too: these rows are checked here, not by assert_positive.)
    let mut json = json;
    let followers = json
        .as_object_mut()
        .and_then(|report| report.remove("followers"))
        .unwrap();
    let followers = followers.as_array().unwrap();
    assert_eq!(followers.len(), 5, "{followers:?}");
    for row in followers {
        assert!(row["ingest_per_sec"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["kept_up"].is_u64(), "{row}");
    }
    assert_positive(&json, "report");
    let targets = json["targets"].as_array().unwrap();
    let expected = if swtpm.is_some() { 10 } else { 9 };
    assert_eq!(targets.len(), expected, "one row per target: {targets:?}");
    for target in targets {
        assert!(target["met"].is_boolean(), "{target}");
    }
}
