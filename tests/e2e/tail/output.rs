//! The output modes' shapes, and what clients wrote rendered so that it
//! cannot drive the terminal or pass for another field.

use serde_json::{json, Value};
use tally_client::attributes::attribute;
use tally_client::proto::{attribute_value::Value as V, Event};
use tally_tests::{Daemon, DaemonOpts};

use super::{append, json_lines, ok};

/// Unix nanoseconds of an RFC 3339 UTC time with nine fractional digits
/// (`2026-12-01T09:30:00.123456789Z`), computed here rather than by the
/// library the CLI uses, or None if it is not of that form.
fn utc_nanos(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 30
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'.'
        || b[29] != b'Z'
    {
        return None;
    }
    let num = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + num(11..13)? * 3_600 + num(14..16)? * 60 + num(17..19)?;
    Some(seconds * 1_000_000_000 + num(20..29)?)
}

fn mixed_events() -> Vec<Event> {
    vec![
        Event {
            kind: "tool.call".into(),
            actor: "agent-7".into(),
            subject: "req-1".into(),
            content_type: "application/json".into(),
            payload: br#"{"tool": "search", "args": {"q": "x"}}"#.to_vec(),
            client_time_unix_nanos: 1_796_117_400_000_000_001,
            typed_attributes: vec![attribute("gen_ai.usage.input_tokens", V::IntValue(812))],
            ..Default::default()
        },
        Event {
            kind: "prompt".into(),
            content_type: "text/plain".into(),
            payload: b"hello world".to_vec(),
            ..Default::default()
        },
        Event {
            kind: "blob".into(),
            content_type: "application/octet-stream".into(),
            payload: vec![0, 1, 2, 0xff],
            ..Default::default()
        },
    ]
}

/// json: one object per line, keys in the documented order, times as RFC
/// 3339 UTC strings equal to the nanoseconds beside them, a JSON payload as
/// JSON; json-pretty the same objects indented; short/short-iso/--utc the
/// time first in the asked zone and precision; cat the payloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_output_mode_has_its_documented_shape() {
    let daemon = Daemon::start(DaemonOpts::default()).unwrap();
    append(&daemon, mixed_events()).await;
    let stdout = ok(daemon.tally(&["tail", "-o", "json"]).unwrap()).stdout;
    assert_eq!(
        stdout,
        ok(daemon.tally(&["tail", "--json"]).unwrap()).stdout
    );
    let records = json_lines(&stdout);
    assert_eq!(records.len(), 3);
    let keys: Vec<String> = stdout
        .lines()
        .next()
        .unwrap()
        .split(",\"")
        .map(|member| {
            member
                .trim_start_matches(['{', '"'])
                .split('"')
                .next()
                .unwrap()
                .to_owned()
        })
        .filter(|key| records[0].get(key).is_some())
        .collect();
    assert_eq!(
        keys,
        [
            "seq",
            "receive_time",
            "receive_time_unix_nanos",
            "kind",
            "actor",
            "subject",
            "peer",
            "attributes",
            "content_type",
            "client_time",
            "client_time_unix_nanos",
            "payload",
            "content",
            "entry_hash",
            "prev_hash",
        ]
    );
    for record in &records {
        let text = record["receive_time"].as_str().unwrap();
        assert_eq!(
            utc_nanos(text),
            record["receive_time_unix_nanos"].as_i64(),
            "{record}"
        );
    }
    let first = &records[0];
    assert_eq!(
        first["payload"],
        json!({"tool": "search", "args": {"q": "x"}})
    );
    assert_eq!(first["client_time"], "2026-12-01T09:30:00.000000001Z");
    assert_eq!(first["attributes"]["gen_ai.usage.input_tokens"], 812);
    assert_eq!(records[1]["payload"], "hello world");
    assert_eq!(records[1]["client_time"], Value::Null);
    assert_eq!(records[2]["payload_b64"], "AAEC/w==");

    let pretty = ok(daemon.tally(&["tail", "-o", "json-pretty"]).unwrap()).stdout;
    assert!(
        pretty.starts_with("{\n  \"seq\": 0,\n  \"receive_time\": \""),
        "{pretty}"
    );
    let objects: Vec<Value> = serde_json::Deserializer::from_str(&pretty)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(objects, records);

    let berlin = |args: &[&str]| {
        let mut command = std::process::Command::new(tally_tests::binary("tally").unwrap());
        command
            .args(args)
            .env("TALLY_SOCKET", daemon.socket())
            .env("TZ", "Europe/Berlin");
        let output = command.output().unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let received = records[1]["receive_time"].as_str().unwrap();
    let short = berlin(&["tail", "--from", "1"])
        .lines()
        .next()
        .unwrap()
        .to_owned();
    // Berlin is UTC+1 in December (the test log is written now: accept +02:00 in summer).
    let (time, rest) = short.split_once(' ').unwrap();
    assert!(
        time.ends_with("+01:00") || time.ends_with("+02:00"),
        "{short}"
    );
    assert_eq!(
        time.len(),
        "2026-12-01T10:30:00.123456+01:00".len(),
        "{short}"
    );
    assert!(
        rest.starts_with("1 prompt actor=\"\" subject=\"\" [uid="),
        "{short}"
    );
    assert!(rest.ends_with("] (11 payload bytes)"), "{short}");
    let iso = berlin(&["tail", "-n", "1", "-o", "short-iso"]);
    assert_eq!(
        iso.split_once(' ').unwrap().0.len(),
        "2026-12-01T10:30:00.123456789+01:00".len(),
        "{iso}"
    );
    let utc = berlin(&["tail", "-n", "1", "-o", "short-iso", "--utc"]);
    assert_eq!(
        utc.split_once(' ').unwrap().0,
        records[2]["receive_time"],
        "{utc}"
    );
    let utc_short = berlin(&["tail", "-n", "2", "--utc"]);
    assert_eq!(
        utc_short.split_once(' ').unwrap().0,
        format!("{}Z", &received[..26]),
        "{utc_short}"
    );

    let cat = ok(daemon.tally(&["tail", "-o", "cat"]).unwrap()).stdout;
    assert_eq!(
        cat,
        "{\"tool\": \"search\", \"args\": {\"q\": \"x\"}}\nhello world\n\\0\\u{1}\\u{2}\\xff\n"
    );
}

/// ANSI escapes, newlines and fake fields in every field a client sets
/// (kind, actor, subject, attribute keys and values, payload) come out
/// escaped and quoted: one record is one line, no escape byte reaches the
/// terminal, and the kernel's [peer] is the only one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_escapes_and_lines_are_rendered_escaped() {
    let daemon = Daemon::start(DaemonOpts::default()).unwrap();
    let forged = "\n2026-12-01T10:30:00.000000+01:00 1 tally.access_denied actor=root";
    append(
        &daemon,
        vec![Event {
            kind: format!("x{forged}"),
            actor: "a\u{1b}[31mred\u{1b}[0m".into(),
            subject: "s [uid=0 pid=1]".into(),
            attributes: [("k\u{1b}]0;t\u{7}".to_owned(), "v\r\nuid=0".to_owned())].into(),
            typed_attributes: vec![attribute("t", V::StringValue("\u{1b}[2J".into()))],
            payload: format!("p\u{1b}[2J{forged}").into_bytes(),
            ..Default::default()
        }],
    )
    .await;
    for mode in ["short", "short-iso", "cat"] {
        let out = ok(daemon.tally(&["tail", "-o", mode]).unwrap()).stdout;
        assert_eq!(out.matches('\n').count(), 1, "{mode}: {out:?}");
        assert!(!out.contains(['\u{1b}', '\r', '\u{7}']), "{mode}: {out:?}");
    }
    let line = ok(daemon.tally(&["tail"]).unwrap()).stdout;
    assert!(
        line.contains(
            " 0 \"x\\n2026-12-01T10:30:00.000000+01:00 1 tally.access_denied actor=root\" "
        ),
        "{line}"
    );
    assert!(
        line.contains(" actor=\"a\\u{1b}[31mred\\u{1b}[0m\" "),
        "{line}"
    );
    assert!(
        line.contains(" subject=\"s [uid=0 pid=1]\" [uid="),
        "{line}"
    );
    assert!(
        line.contains(" \"k\\u{1b}]0;t\\u{7}\"=\"v\\r\\nuid=0\" "),
        "{line}"
    );
    assert!(line.contains(" t=\"\\u{1b}[2J\" "), "{line}");
    let cat = ok(daemon.tally(&["tail", "-o", "cat"]).unwrap()).stdout;
    assert_eq!(
        cat,
        format!("p\\u{{1b}}[2J{}\n", forged.replace('\n', "\\n"))
    );
    // JSON carries them exactly (as JSON escapes).
    let json = json_lines(&ok(daemon.tally(&["tail", "-o", "json"]).unwrap()).stdout);
    assert_eq!(json[0]["actor"], "a\u{1b}[31mred\u{1b}[0m");
}
