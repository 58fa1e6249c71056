//! `tally show BUNDLE`: offline, the same output as tail for the same
//! range, the filters on a bundle of known content, and a bundle edited or
//! cut by root stopped at the first record that no longer links.

use std::fs;

use tally_client::attributes::attribute;
use tally_client::proto::{attribute_value::Value as V, Event};
use tally_tests::{events, Daemon, DaemonOpts, Run};

use super::{append, json_lines, ok};

fn show(daemon: &Daemon, bundle: &str, args: &[&str]) -> Run {
    let mut all = vec!["show", bundle];
    all.extend(args);
    daemon.tally(&all).unwrap()
}

/// The seqs `tally show BUNDLE ARGS -o json` prints.
fn show_seqs(daemon: &Daemon, bundle: &str, args: &[&str]) -> Vec<u64> {
    let mut all = vec!["-o", "json"];
    all.extend(args);
    json_lines(&ok(show(daemon, bundle, &all)).stdout)
        .iter()
        .map(|record| record["seq"].as_u64().unwrap())
        .collect()
}

fn export(daemon: &Daemon, name: &str) -> String {
    let bundle = daemon.dir().join(name).to_str().unwrap().to_owned();
    ok(daemon.tally(&["export", "--out", &bundle]).unwrap());
    bundle
}

/// The acceptance test: for the same range, `show -o json` on the export
/// equals `tail -o json` on the daemon byte for byte (and so do the other
/// modes); show needs no daemon (it is stopped first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_on_a_bundle_equals_tail_on_the_daemon() {
    let mut daemon = Daemon::start(DaemonOpts::default()).unwrap();
    append(&daemon, events(0, 25)).await;
    let bundle = export(&daemon, "same.bundle");
    let ranges: [&[&str]; 5] = [
        &["-n", "all"],
        &["--from", "7"],
        &["-n", "5"],
        &["-n", "0"],
        &["--from", "24"],
    ];
    let modes = ["json", "json-pretty", "short", "short-iso", "cat"];
    let mut tails = Vec::new();
    for range in ranges {
        for mode in modes {
            let mut args = vec!["tail", "-o", mode, "--utc"];
            args.extend(range);
            tails.push(ok(daemon.tally(&args).unwrap()).stdout);
        }
    }
    daemon.terminate().unwrap();
    let mut tails = tails.into_iter();
    for range in ranges {
        for mode in modes {
            let mut args = vec!["-o", mode, "--utc"];
            args.extend(range);
            let shown = ok(show(&daemon, &bundle, &args)).stdout;
            assert_eq!(shown, tails.next().unwrap(), "{range:?} {mode}");
        }
    }
    assert_eq!(
        show_seqs(&daemon, &bundle, &["--from", "20"]),
        [20, 21, 22, 23, 24]
    );
    // show's default is the whole bundle.
    assert_eq!(
        show_seqs(&daemon, &bundle, &[]),
        (0..25).collect::<Vec<_>>()
    );
}

/// Each filter on a bundle of known content: kinds, actors, subjects,
/// attributes (string and typed, all must match), receive times (--since
/// includes its instant, --until excludes its own), -n with a filter is the
/// last N matching, --from with one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_filters_a_bundle_of_known_content() {
    let daemon = Daemon::start(DaemonOpts::default()).unwrap();
    let mut known: Vec<Event> = events(0, 12);
    for (i, event) in known.iter_mut().enumerate() {
        event.kind = ["model.load", "prompt", "tool.call"][i % 3].into();
        event.actor = if i < 6 { "agent-a" } else { "agent-b" }.into();
        event.typed_attributes = vec![attribute("n", V::IntValue(i64::try_from(i % 4).unwrap()))];
    }
    // One at a time: each its own receive time.
    for event in known {
        append(&daemon, vec![event]).await;
    }
    let bundle = export(&daemon, "known.bundle");
    let times: Vec<String> =
        json_lines(&ok(daemon.tally(&["tail", "-n", "all", "-o", "json"]).unwrap()).stdout)
            .iter()
            .map(|record| record["receive_time"].as_str().unwrap().to_owned())
            .collect();
    let cases: [(&[&str], &[u64]); 12] = [
        (&["--kind", "model.load"], &[0, 3, 6, 9]),
        (
            &["--kind", "model.load", "--kind", "prompt"],
            &[0, 1, 3, 4, 6, 7, 9, 10],
        ),
        (&["--actor", "agent-b"], &[6, 7, 8, 9, 10, 11]),
        (&["--subject", "event-4"], &[4]),
        (&["--attr", "i=5"], &[5]),
        (&["--attr", "n=2"], &[2, 6, 10]),
        (&["--attr", "n=2", "--attr", "i=6"], &[6]),
        (&["--attr", "n=2", "--actor", "agent-a"], &[2]),
        (&["--kind", "tool.call", "-n", "2"], &[8, 11]),
        (&["--kind", "tool.call", "--from", "3"], &[5, 8, 11]),
        (&["--kind", "nothing"], &[]),
        (&["--attr", "n=812"], &[]),
    ];
    for (args, expected) in cases {
        assert_eq!(show_seqs(&daemon, &bundle, args), expected, "{args:?}");
    }
    assert_eq!(
        show_seqs(&daemon, &bundle, &["--since", &times[4]]),
        (4..12).collect::<Vec<_>>()
    );
    assert_eq!(
        show_seqs(&daemon, &bundle, &["--until", &times[3]]),
        [0, 1, 2]
    );
    assert_eq!(
        show_seqs(
            &daemon,
            &bundle,
            &[
                "--since",
                &times[2],
                "--until",
                &times[5],
                "--kind",
                "model.load"
            ]
        ),
        [3]
    );
    assert_eq!(
        show_seqs(&daemon, &bundle, &["--since", "+1h"]),
        Vec::<u64>::new()
    );
    assert_eq!(show_seqs(&daemon, &bundle, &["--since", "-1h"]).len(), 12);
}

/// What root can do to a bundle before handing it over: change one byte of
/// a record, or drop a record. show prints the records before the damage,
/// then stops with exit 2 naming the first seq that no longer links (and
/// sends the reader to `tally verify`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_stops_at_an_edited_or_dropped_record() {
    let daemon = Daemon::start(DaemonOpts::default()).unwrap();
    append(&daemon, events(0, 6)).await;
    let bundle = export(&daemon, "intact.bundle");
    let bytes = fs::read(&bundle).unwrap();
    let records = tally_tests::read_range(&mut daemon.client().await.unwrap(), 0, 6)
        .await
        .unwrap();
    let at = |seq: usize| {
        let record = &records[seq].record;
        bytes
            .windows(record.len())
            .position(|w| w == &record[..])
            .unwrap()
    };

    // The last byte of seq 3 (its content commitment, the body's last
    // field): show refuses seq 3 itself, whose content no longer opens it
    // (seq 4 would not link to it either).
    let mut edited = bytes.clone();
    let end = at(3) + records[3].record.len();
    edited[end - 1] ^= 0x01;
    let path = daemon.dir().join("edited.bundle");
    fs::write(&path, &edited).unwrap();
    let run = show(&daemon, path.to_str().unwrap(), &["-o", "json"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(json_lines(&run.stdout).len(), 3, "{run:?}");
    assert!(
        run.stderr
            .contains("seq 3: its content does not match the record's commitment"),
        "{run:?}"
    );
    assert!(run.stderr.contains("tally verify"), "{run:?}");

    // Seq 2's record section (5-byte head and the record) removed, with the
    // content section that follows it (kind, u32 length, seq || opening).
    let mut dropped = bytes.clone();
    let record_end = at(2) + records[2].record.len();
    assert_eq!(
        bytes[record_end],
        tally_attest::bundle::SectionKind::Content as u8
    );
    let content_len = u32::from_be_bytes(bytes[record_end + 1..record_end + 5].try_into().unwrap());
    dropped.drain(at(2) - 5..record_end + 5 + content_len as usize);
    let path = daemon.dir().join("dropped.bundle");
    fs::write(&path, &dropped).unwrap();
    let run = show(&daemon, path.to_str().unwrap(), &["-o", "json"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(json_lines(&run.stdout).len(), 2, "{run:?}");
    assert!(run.stderr.contains("seq 3 follows seq 1"), "{run:?}");

    // A -n that would show only records after the damage still stops.
    let run = show(&daemon, path.to_str().unwrap(), &["-n", "1"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.stdout, "");
    // Seq 0's previous-hash set to something other than the genesis zeros.
    let mut genesis = bytes.clone();
    genesis[at(0) + 9] = 1;
    let path = daemon.dir().join("genesis.bundle");
    fs::write(&path, &genesis).unwrap();
    let run = show(&daemon, path.to_str().unwrap(), &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr
            .contains("seq 0: its previous-hash is not the genesis value"),
        "{run:?}"
    );
    // The intact bundle shows whole.
    assert_eq!(show_seqs(&daemon, &bundle, &[]), (0..6).collect::<Vec<_>>());
}
