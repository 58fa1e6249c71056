//! The TPM hanging (swtpm SIGSTOPped) and vanishing mid-anchor (SIGKILLed
//! while an anchor's command hangs in it), with anchoring every second:
//! appends keep being acked (the events/s before and during the fault are
//! printed), `status` says `anchoring: failing` with the reason while the
//! exposure (unanchored events and the oldest one's age) grows, and once the
//! TPM is back (SIGCONT; or swtpm restarted on the same state) anchoring
//! resumes by itself, status is healthy again and the new anchors verify.

use std::time::{Duration, Instant};

use tally_tests::anchored::ok;
use tally_tests::swtpm::Swtpm;
use tally_tests::{append_pipelined, wait_until, Daemon, DaemonOpts};

use super::{save_identity, status, verify};

fn daemon(tpm: &Swtpm) -> Daemon {
    Daemon::start(DaemonOpts {
        tpm: format!(
            "enabled = true\ntcti = \"{}\"\nanchor_interval_secs = 1\ntimeout_secs = 1",
            tpm.tcti()
        ),
        ..DaemonOpts::default()
    })
    .unwrap()
}

/// Appends 50-event requests (4 in flight) from `first` on for `time`;
/// returns the events acked and their rate.
async fn ingest(daemon: &Daemon, first: u64, time: Duration) -> (u64, f64) {
    let mut client = daemon.client().await.unwrap();
    let started = Instant::now();
    let mut acked = 0;
    let batches = (0..)
        .map(|i| first + i * 50..first + (i + 1) * 50)
        .take_while(|_| started.elapsed() < time);
    append_pipelined(&mut client, batches, 4, |ids, acks| {
        assert_eq!(acks.len() as u64, ids.end - ids.start);
        acked += acks.len() as u64;
    })
    .await
    .unwrap();
    (acked, acked as f64 / started.elapsed().as_secs_f64())
}

/// Waits until status says anchoring failed with `reason` in its error.
async fn failing(daemon: &Daemon, reason: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let seen = wait_until(Duration::from_secs(15), || {
        last = status(daemon);
        last["anchoring"] == "failing"
            && last["last_anchor_error"].as_str().unwrap().contains(reason)
    })
    .await;
    assert!(
        seen,
        "status never said anchoring is failing with {reason:?}: {last}"
    );
    last
}

/// While the TPM is away: acks keep arriving, status stays "failing", and
/// the exposure grows. Returns the events acked during the outage.
async fn ingest_while_away(daemon: &Daemon, first: u64, before: f64, fault: &str) -> u64 {
    let exposed = status(daemon);
    let (acked, during) = ingest(daemon, first, Duration::from_secs(3)).await;
    assert!(acked > 0, "no append was acked while the TPM was away");
    println!(
        "{fault}: {before:.0} events/s before, {during:.0} during (ratio {:.2})",
        during / before
    );
    let later = status(daemon);
    assert_eq!(later["anchoring"], "failing", "{later}");
    assert!(
        later["unanchored_events"].as_u64().unwrap()
            >= exposed["unanchored_events"].as_u64().unwrap() + acked,
        "the unanchored count did not grow by the {acked} events acked: {exposed} -> {later}"
    );
    assert!(
        later["oldest_unanchored_age_millis"].as_u64().unwrap()
            > exposed["oldest_unanchored_age_millis"].as_u64().unwrap() + 2000,
        "the exposure window did not grow over 3 s: {exposed} -> {later}"
    );
    let text = ok(daemon.tally(&["status"]).unwrap(), "status");
    assert!(text.contains("anchoring:     FAILING: "), "{text}");
    acked
}

/// Anchoring is back: status healthy, everything anchored.
async fn healthy_again(daemon: &Daemon, size: u64) {
    let mut last = serde_json::Value::Null;
    let back = wait_until(Duration::from_secs(30), || {
        last = status(daemon);
        last["anchoring"] == "ok"
            && last["last_anchor_error"] == ""
            && last["unanchored_events"] == 0
            && last["size"] == size
    })
    .await;
    assert!(
        back,
        "anchoring did not resume after the TPM came back: {last}"
    );
    assert_eq!(last["last_anchor_size"], size, "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_tpm_leaves_ingest_running_shows_failing_and_anchoring_resumes() {
    //! swtpm SIGSTOPped, then SIGCONTed: no gap, the export PASSes.
    let Some(tpm) = Swtpm::start() else { return };
    let daemon = daemon(&tpm);
    save_identity(&daemon);
    let (first, before) = ingest(&daemon, 0, Duration::from_secs(2)).await;
    healthy_again(&daemon, first).await;

    // An idle log makes no anchor: the hang shows once the log grows.
    tpm.pause();
    let (grew, _) = ingest(&daemon, first, Duration::from_millis(300)).await;
    failing(&daemon, "the TPM did not answer within 1s").await;
    let during = ingest_while_away(&daemon, first + grew, before, "swtpm SIGSTOP").await;

    tpm.resume();
    let size = first + grew + during;
    let (after, _) = ingest(&daemon, size, Duration::from_millis(500)).await;
    healthy_again(&daemon, size + after).await;
    let run = verify(&daemon, &[]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(run.stdout.contains("PASS"), "{}", run.stdout);
    assert!(run.stdout.contains("no gap"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpm_killed_mid_anchor_leaves_ingest_running_and_anchoring_resumes_after_a_named_gap() {
    //! swtpm SIGKILLed with an anchor's command hanging in it, restarted on
    //! the same state: the counter jumped, the gap is named, then acknowledged.
    let Some(mut tpm) = Swtpm::start() else {
        return;
    };
    let daemon = daemon(&tpm);
    save_identity(&daemon);
    let (first, before) = ingest(&daemon, 0, Duration::from_secs(2)).await;
    healthy_again(&daemon, first).await;
    let counter_before = status(&daemon)["last_anchor_counter"].as_u64().unwrap();

    // An anchor's command hangs in the stopped swtpm, then swtpm dies under
    // it: the TPM vanishes mid-anchor.
    tpm.pause();
    ingest(&daemon, first, Duration::from_millis(300)).await;
    failing(&daemon, "the TPM did not answer within 1s").await;
    tpm.kill();
    let size = status(&daemon)["size"].as_u64().unwrap();
    let during = ingest_while_away(&daemon, size, before, "swtpm SIGKILL").await;

    // Back on the same state directory and socket: an unclean TPM reset.
    tpm.restart();
    healthy_again(&daemon, size + during).await;
    let counter_after = status(&daemon)["last_anchor_counter"].as_u64().unwrap();
    assert!(
        counter_after > counter_before + 2,
        "the orderly counter jumps after an unclean reset: {counter_before} -> {counter_after}"
    );
    // The new anchors are genuine; the jump is a gap until someone reviews it.
    let run = verify(&daemon, &[]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout.contains("counter gap across a TPM reset"),
        "{}",
        run.stdout
    );
    // No anchor was made between `counter_before` and the kill (the log was
    // idle, then the TPM hung): the gap follows it.
    let last_before_gap = counter_before.to_string();
    let dir = daemon.dir().display().to_string();
    ok(
        daemon
            .tally(&[
                "gap-ack",
                &format!("{dir}/b.bundle"),
                "--identity",
                &format!("{dir}/identity.json"),
                "--after",
                &last_before_gap,
                "--reviewed-by",
                "oncall",
                "--reason",
                "swtpm killed in a fault test",
                "--out",
                &format!("{dir}/gap.json"),
            ])
            .unwrap(),
        "gap-ack",
    );
    let gap = format!("{dir}/gap.json");
    let run = verify(&daemon, &["--accept-gap", &gap]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stdout.contains("PASS with 1 acknowledged gap (counter"),
        "{}",
        run.stdout
    );
}
