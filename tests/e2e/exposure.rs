//! The exposure window and the anchoring cadence, measured on a daemon
//! anchoring in a real swtpm every second (`anchor_interval_secs = 1`):
//! under load, `status`' `oldest_unanchored_age_millis` (how long the oldest
//! acked event no closed anchor covers has waited) stays within the
//! documented bound, one interval plus one anchor's latency, and anchors
//! come once per interval; idle for several intervals, tallyd makes no
//! anchor and the TPM counter does not move (read with `tpm2_nvread` once the
//! daemon is gone); the first append after the idle spell is anchored within
//! the same bound.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_tests::swtpm::Swtpm;
use tally_tests::{event, events, Daemon, DaemonOpts};

/// The anchoring interval of these tests.
const INTERVAL: Duration = Duration::from_secs(1);

/// What one anchor may take here (settle, sign, two TPM commands, the
/// anchor's commit, the increment): the anchors this test times on swtpm take
/// a few tens of milliseconds in a debug build on a busy 2-core machine,
/// and the test fails if one takes more than this.
const ANCHOR_LATENCY: Duration = Duration::from_millis(500);

/// How often status is sampled: the window's peak is seen to within this.
const SAMPLE: Duration = Duration::from_millis(20);

/// How long the load runs.
const LOAD: Duration = Duration::from_secs(5);

/// How long the log stays idle: several intervals.
const IDLE: Duration = Duration::from_millis(4_500);

/// The counter's NV index (the default `tpm.counter_index`).
const COUNTER_INDEX: &str = "0x01c17a11";

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposure_stays_within_one_interval_plus_one_anchor_and_an_idle_log_makes_no_anchors() {
    let Some(tpm) = Swtpm::start() else {
        return;
    };
    let mut daemon = Daemon::start(DaemonOpts {
        tpm: format!(
            "enabled = true\ntcti = \"{}\"\nanchor_interval_secs = {}\n",
            tpm.tcti(),
            INTERVAL.as_secs()
        ),
        ..DaemonOpts::default()
    })
    .unwrap();
    let bound = millis(INTERVAL + ANCHOR_LATENCY);
    let mut observer = daemon.client().await.unwrap();
    let status = observer.status().await.unwrap();
    assert_eq!(status.anchor_interval_millis, millis(INTERVAL));

    // One anchor's latency, timed on demand (the admin role: the daemon's own uid).
    let mut slowest = Duration::ZERO;
    for i in 0..3 {
        observer.append(vec![event(i)]).await.unwrap();
        let started = Instant::now();
        observer.anchor().await.unwrap();
        slowest = slowest.max(started.elapsed());
    }
    println!("slowest of 3 on-demand anchors: {slowest:?}");
    assert!(
        slowest < ANCHOR_LATENCY,
        "an anchor took {slowest:?}, more than the {ANCHOR_LATENCY:?} this test allows"
    );

    // Load: a client appending 20 events at a time, without pause.
    let stop = Arc::new(AtomicBool::new(false));
    let mut appender = daemon.client().await.unwrap();
    let loader = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut next = 3;
            while !stop.load(Ordering::Relaxed) {
                appender.append(events(next, 20)).await.unwrap();
                next += 20;
            }
            next
        })
    };
    let started = Instant::now();
    let first_counter = observer.status().await.unwrap().last_anchor_counter;
    let mut peak = 0;
    let mut samples = 0;
    while started.elapsed() < LOAD {
        let status = observer.status().await.unwrap();
        assert!(
            status.oldest_unanchored_age_millis <= bound,
            "under load the exposure reached {} ms, past the bound of {bound} ms \
             (one {INTERVAL:?} interval plus {ANCHOR_LATENCY:?} for an anchor): {status:?}",
            status.oldest_unanchored_age_millis
        );
        assert!(status.last_anchor_error.is_empty(), "{status:?}");
        peak = peak.max(status.oldest_unanchored_age_millis);
        samples += 1;
        tokio::time::sleep(SAMPLE).await;
    }
    stop.store(true, Ordering::Relaxed);
    let appended = loader.await.unwrap();
    let under_load = observer.status().await.unwrap().last_anchor_counter - first_counter;
    println!(
        "under load: {appended} events, {under_load} anchors in {LOAD:?}, \
         peak exposure {peak} ms over {samples} samples (bound {bound} ms)"
    );
    // The window was really measured: events waited for the next tick.
    assert!(
        peak >= millis(INTERVAL) / 2,
        "peak exposure {peak} ms: the load was not exposed at all?"
    );
    // Once per interval (the first tick after the load started may be
    // nearly a whole interval away, and the last one may fall after it).
    assert!(
        (3..=6).contains(&under_load),
        "{under_load} anchors in {LOAD:?} at a {INTERVAL:?} interval"
    );

    // The last events are anchored within the bound, then nothing is exposed.
    let drained = Instant::now();
    let settled = loop {
        let status = observer.status().await.unwrap();
        if status.unanchored_events == 0 {
            break status;
        }
        assert!(
            drained.elapsed() <= INTERVAL + ANCHOR_LATENCY,
            "the last events were not anchored within one interval and one anchor: {status:?}"
        );
        tokio::time::sleep(SAMPLE).await;
    };
    assert_eq!(settled.size, appended);
    assert_eq!(settled.last_anchor_size, appended);
    assert_eq!(settled.oldest_unanchored_age_millis, 0);

    // Idle: no anchor over several intervals, nothing exposed.
    let idle_counter = settled.last_anchor_counter;
    let idle = Instant::now();
    while idle.elapsed() < IDLE {
        let status = observer.status().await.unwrap();
        assert_eq!(
            (status.last_anchor_counter, status.unanchored_events),
            (idle_counter, 0),
            "an idle log anchored (or something became exposed): {status:?}"
        );
        assert_eq!(status.oldest_unanchored_age_millis, 0, "{status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The first append after the idle spell: anchored within the bound.
    observer.append(vec![event(appended)]).await.unwrap();
    let acked = Instant::now();
    let anchored = loop {
        let status = observer.status().await.unwrap();
        if status.unanchored_events == 0 {
            break status;
        }
        assert!(
            status.oldest_unanchored_age_millis <= bound,
            "after idle the exposure reached {} ms: {status:?}",
            status.oldest_unanchored_age_millis
        );
        tokio::time::sleep(SAMPLE).await;
    };
    let waited = acked.elapsed();
    println!("the first append after {IDLE:?} idle was anchored after {waited:?}");
    assert!(
        waited <= INTERVAL + ANCHOR_LATENCY,
        "anchored after {waited:?}"
    );
    assert_eq!(
        anchored.last_anchor_counter,
        idle_counter + 1,
        "{anchored:?}"
    );
    assert_eq!(anchored.last_anchor_size, appended + 1);

    // The TPM's own count: the newest anchor's value, closed (+1), and no
    // increment the anchors do not account for (swtpm serves one connection
    // at a time: the daemon goes first).
    drop(observer);
    daemon.kill().unwrap();
    let out = tpm.tool("tpm2_nvread", &[COUNTER_INDEX, "-C", "o", "-s", "8"]);
    assert!(out.status.success(), "tpm2_nvread: {out:?}");
    let counter = u64::from_be_bytes(out.stdout.as_slice().try_into().unwrap());
    assert_eq!(counter, anchored.last_anchor_counter + 1);
}
