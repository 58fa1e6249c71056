//! The operator's start-up decisions that had no test of their own, each
//! with its exact exit code and message: a restored older copy of the store
//! is refused, then accepted with `--accept-rollback` (a gap anchor at the
//! TPM's value, logged; later starts are normal; verifiers name the gap until
//! it is acknowledged); an unclean TPM reset (TPM2_Startup(CLEAR) with no
//! TPM2_Shutdown before it, by tpm2-tools on the same swtpm) is refused while
//! an orderly one is not; and a TPM whose counter is behind the store (its
//! state restored from an older copy) is refused, `--accept-rollback` or not.

use tally_tests::anchored::{self, anchor, append, copy_dir, ok};
use tally_tests::swtpm::Swtpm;

use super::{path, refused, save_identity, status, verify};

const COUNTER: &str = "0x01c17a11";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_copy_is_refused_then_accepted_with_accept_rollback_as_a_named_gap() {
    //! Refused (exit 3), accepted once with the flag (gap anchor), normal after.
    let Some(tpm) = Swtpm::start() else { return };
    let mut daemon = anchored::daemon(&tpm, "");
    save_identity(&daemon);
    append(&daemon, 0, 100).await;
    let kept = anchor(&daemon);
    assert!(daemon.terminate().unwrap().success());
    let backup = daemon.dir().join("backup");
    copy_dir(&daemon.data_dir(), &backup);
    daemon.restart().unwrap();
    append(&daemon, 100, 100).await;
    anchor(&daemon);
    append(&daemon, 200, 100).await;
    let newest = anchor(&daemon);
    assert!(daemon.terminate().unwrap().success());

    std::fs::remove_dir_all(daemon.data_dir()).unwrap();
    copy_dir(&backup, &daemon.data_dir());
    let tpm_now = newest + 1;
    let missing = tpm_now - kept - 1;
    let err = refused(&mut daemon);
    assert!(
        err.contains(&format!(
            "tallyd: error: rollback detected: the store is behind the TPM: the TPM counter is {tpm_now} but the newest \
             anchor in the store is {kept}, so {missing} anchor(s) are missing."
        )),
        "{err}"
    );
    assert!(
        err.contains("start with --accept-rollback: it anchors at once at"),
        "{err}"
    );

    daemon.set_args(&["run", "--accept-rollback"]);
    daemon.restart().unwrap();
    let log = daemon.stderr();
    assert!(
        log.contains(&format!(
            "OPERATOR OVERRIDE (--accept-rollback): continuing from a store {missing} anchor(s) behind the TPM; \
             anchoring now at counter {tpm_now}: verifiers will report the gap {kept} -> {tpm_now} until it is reviewed"
        )),
        "{log}"
    );
    assert!(log.contains("gap anchor made (--accept-rollback)"), "{log}");
    // The gap anchor covers the restored store; the events after the backup are gone.
    let after = status(&daemon);
    assert_eq!(after["last_anchor_counter"], tpm_now, "{after}");
    assert_eq!(after["last_anchor_size"], 100, "{after}");
    assert_eq!(after["size"], 100, "{after}");

    // The decision is made once: the next start is a normal one.
    daemon.set_args(&[]);
    assert!(daemon.terminate().unwrap().success());
    daemon.restart().unwrap();
    append(&daemon, 300, 10).await;
    anchor(&daemon);
    let run = verify(&daemon, &[]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!(
            "counter continuous: FAILED: counter gap: anchor {kept} is followed by anchor {tpm_now} ({missing} counter \
             values without an anchor)"
        )),
        "{}",
        run.stdout
    );
    let gap = path(&daemon, "gap.json");
    let (bundle, id) = (path(&daemon, "b.bundle"), path(&daemon, "identity.json"));
    let after_kept = kept.to_string();
    ok(
        daemon
            .tally(&[
                "gap-ack",
                &bundle,
                "--identity",
                &id,
                "--after",
                &after_kept,
                "--reviewed-by",
                "oncall",
                "--reason",
                "restored the 09:00 backup",
                "--out",
                &gap,
            ])
            .unwrap(),
        "gap-ack",
    );
    let run = verify(&daemon, &["--accept-gap", &gap]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stdout.contains("PASS with 1 acknowledged gap (counter"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpm_reset_without_shutdown_is_refused_and_an_orderly_one_is_not() {
    //! tpm2_shutdown + reset: starts; reset without it: the counter jumps, exit 3.
    let Some(tpm) = Swtpm::start() else { return };
    let mut daemon = anchored::daemon(&tpm, "");
    append(&daemon, 0, 10).await;
    let newest = anchor(&daemon);
    assert!(daemon.terminate().unwrap().success());
    assert_eq!(
        tpm.nv_counter(COUNTER),
        newest + 1,
        "the newest value is closed"
    );

    // An orderly reboot of the TPM: the counter stays, tallyd starts.
    tpm.reset(true);
    assert_eq!(tpm.nv_counter(COUNTER), newest + 1);
    daemon.restart().unwrap();
    assert!(daemon.terminate().unwrap().success());

    // TPM2_Startup(CLEAR) after _TPM_Init with no TPM2_Shutdown: the
    // orderly counter jumps forward, and tallyd cannot tell it from a rollback.
    tpm.reset(false);
    let jumped = tpm.nv_counter(COUNTER);
    assert!(
        jumped > newest + 1,
        "the orderly counter did not jump: {} -> {jumped}",
        newest + 1
    );
    println!("unclean TPM reset: counter {} -> {jumped}", newest + 1);
    let err = refused(&mut daemon);
    assert!(
        err.contains(&format!(
            "tallyd: error: rollback detected: the store is behind the TPM: the TPM counter is {jumped} but the newest \
             anchor in the store is {newest}, so {} anchor(s) are missing.",
            jumped - newest - 1
        )),
        "{err}"
    );
    assert!(
        err.contains(
            "an unclean TPM reset, e.g. power loss, also moves an orderly counter forward"
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpm_behind_the_store_is_refused_even_with_accept_rollback() {
    //! The TPM state restored from an older copy: exit 3, flag or not.
    let Some(mut tpm) = Swtpm::start() else {
        return;
    };
    let mut daemon = anchored::daemon(&tpm, "");
    append(&daemon, 0, 10).await;
    let early = anchor(&daemon);
    assert!(daemon.terminate().unwrap().success());
    // A copy of the TPM's state at that time (same seeds, so the same keys).
    let tpm_copy = daemon.dir().join("tpm-state");
    tpm.stop_orderly();
    tpm.save_state(&tpm_copy);
    tpm.restart();
    daemon.restart().unwrap();
    append(&daemon, 10, 10).await;
    anchor(&daemon);
    append(&daemon, 20, 10).await;
    let newest = anchor(&daemon);
    assert!(daemon.terminate().unwrap().success());

    tpm.stop_orderly();
    tpm.load_state(&tpm_copy);
    tpm.restart();
    assert_eq!(tpm.nv_counter(COUNTER), early + 1);
    let expected = format!(
        "tallyd: error: the TPM counter ({}) is behind the store's newest anchor ({newest}): this is not the TPM that \
         anchored this log, or its counter index was redefined. Refusing to start (--accept-rollback cannot help: \
         counter values are never reused)",
        early + 1
    );
    let err = refused(&mut daemon);
    assert!(err.contains(&expected), "{err}");
    daemon.set_args(&["run", "--accept-rollback"]);
    let err = refused(&mut daemon);
    assert!(err.contains(&expected), "{err}");
}
