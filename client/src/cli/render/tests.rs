use jiff::tz::TimeZone;
use prost::Message;
use serde_json::{json, Value};
use tally_attest::RecordHeader;
use tally_client::attributes::attribute;
use tally_client::proto::{
    attribute_value::Value as V, peer, ArrayValue, AttributeValue, Event, Peer, RecordBody,
    UnixPeer,
};
use tally_client::record::{decode, DecodedRecord};

use super::text::{cat, token, value};
use super::{Mode, Renderer};

/// 2026-12-01T09:30:00.123456789Z.
const RECEIVED: i64 = 1_796_117_400_123_456_789;

fn record_of(event: Event) -> DecodedRecord {
    let body = RecordBody {
        receive_time_unix_nanos: RECEIVED,
        peer: Some(Peer {
            kind: Some(peer::Kind::Unix(UnixPeer {
                uid: 1,
                gid: 2,
                pid: 3,
            })),
        }),
        event: Some(event),
        ..Default::default()
    };
    let mut bytes = Vec::new();
    RecordHeader {
        seq: 7,
        prev_hash: [0; 32],
    }
    .encode_into(&mut bytes);
    body.encode(&mut bytes).unwrap();
    decode(&bytes).unwrap()
}

fn render(mode: Mode, zone: Option<TimeZone>, record: &DecodedRecord) -> String {
    let mut out = Vec::new();
    Renderer::with_zone(mode, zone)
        .write(&mut out, record)
        .unwrap();
    String::from_utf8(out).unwrap()
}

fn berlin() -> Option<TimeZone> {
    Some(TimeZone::get("Europe/Berlin").unwrap())
}

fn typed_event() -> Event {
    Event {
        kind: "gen_ai.chat".into(),
        actor: "agent-7".into(),
        attributes: [("model".to_owned(), "812".to_owned())].into(),
        typed_attributes: vec![
            attribute("gen_ai.usage.input_tokens", V::IntValue(812)),
            attribute("b", V::BoolValue(true)),
            attribute("raw", V::BytesValue(vec![0xff])),
            attribute(
                "tags",
                V::ArrayValue(ArrayValue {
                    values: vec![AttributeValue {
                        value: Some(V::StringValue("a\nb".into())),
                    }],
                }),
            ),
        ],
        payload: b"hi".to_vec(),
        ..Default::default()
    }
}

#[test]
fn short_puts_the_local_time_first_then_seq_kind_actor_subject_peer_attributes() {
    let record = record_of(typed_event());
    assert_eq!(
        render(Mode::Short, berlin(), &record),
        "2026-12-01T10:30:00.123456+01:00 7 gen_ai.chat actor=agent-7 subject=\"\" \
         [uid=1 pid=3] model=812 gen_ai.usage.input_tokens=812 b=true raw=base64:/w== \
         tags=[\"a\\nb\"] (2 payload bytes)\n"
    );
    let iso = render(Mode::ShortIso, berlin(), &record);
    assert!(
        iso.starts_with("2026-12-01T10:30:00.123456789+01:00 7 gen_ai.chat "),
        "{iso}"
    );
    let utc = render(Mode::Short, None, &record);
    assert!(utc.starts_with("2026-12-01T09:30:00.123456Z 7 "), "{utc}");
}

#[test]
fn json_keys_come_in_the_documented_order_with_rfc3339_times() {
    let mut event = typed_event();
    event.client_time_unix_nanos = 1_000_000_001;
    let line = render(Mode::Json, berlin(), &record_of(event));
    assert!(
        line.ends_with('\n') && line.matches('\n').count() == 1,
        "{line}"
    );
    let parsed: Value = serde_json::from_str(&line).unwrap();
    let keys: Vec<&str> = line[1..]
        .split(",\"")
        .filter_map(|member| member.trim_start_matches('"').split_once("\":"))
        .map(|(key, _)| key)
        .filter(|key| parsed.get(key).is_some())
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
            "entry_hash",
            "prev_hash",
        ]
    );
    // JSON times are UTC, to the nanosecond, whatever the local zone.
    assert_eq!(parsed["receive_time"], "2026-12-01T09:30:00.123456789Z");
    assert_eq!(parsed["receive_time_unix_nanos"], RECEIVED);
    assert_eq!(parsed["client_time"], "1970-01-01T00:00:01.000000001Z");
    assert_eq!(
        parsed["peer"],
        json!({"unix": {"uid": 1, "gid": 2, "pid": 3}})
    );
    assert_eq!(parsed["attributes"]["tags"], json!(["a\nb"]));
    // No client time: null beside the 0.
    let parsed: Value =
        serde_json::from_str(&render(Mode::Json, None, &record_of(typed_event()))).unwrap();
    assert_eq!(parsed["client_time"], Value::Null);
    assert_eq!(parsed["client_time_unix_nanos"], 0);
}

#[test]
fn json_pretty_is_the_same_object_over_several_lines() {
    let record = record_of(typed_event());
    let pretty = render(Mode::JsonPretty, None, &record);
    let compact = render(Mode::Json, None, &record);
    assert!(
        pretty.starts_with("{\n  \"seq\": 7,\n  \"receive_time\": "),
        "{pretty}"
    );
    assert!(
        pretty.contains("\n  \"peer\": {\n    \"unix\": {\n      \"gid\": 2,"),
        "{pretty}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&pretty).unwrap(),
        serde_json::from_str::<Value>(&compact).unwrap()
    );
}

#[test]
fn cat_prints_the_payload_on_one_line_with_controls_escaped() {
    assert_eq!(cat(b"hello world"), "hello world");
    assert_eq!(cat(br#"{"a":"x\"y"}"#), r#"{"a":"x\"y"}"#);
    assert_eq!(cat(b"a\nb\r\tc\x1b[2J\x07"), "a\\nb\\r\\tc\\u{1b}[2J\\u{7}");
    assert_eq!(cat("x\u{202e}y".as_bytes()), "x\\u{202e}y");
    assert_eq!(cat(&[b'o', b'k', 0xff, 0xfe]), "ok\\xff\\xfe");
    let record = record_of(Event {
        payload: b"line1\nline2".to_vec(),
        ..Default::default()
    });
    assert_eq!(render(Mode::Cat, None, &record), "line1\\nline2\n");
}

#[test]
fn client_fields_are_quoted_when_they_could_pass_for_more_than_one() {
    assert_eq!(value("agent-7"), "agent-7");
    assert_eq!(value("it's"), "it's");
    assert_eq!(value(""), "\"\"");
    assert_eq!(value("x uid=0"), "\"x uid=0\"");
    assert_eq!(value("say \"hi\""), "\"say \\\"hi\\\"\"");
    assert_eq!(value("a\\b"), "\"a\\\\b\"");
    assert_eq!(value("a\u{a0}b"), "\"a\\u{a0}b\"");
    assert_eq!(value("a\u{200b}b"), "\"a\\u{200b}b\"");
    // A kind or a key cannot pass for a pair or for the peer either.
    assert_eq!(token("uid=0"), "\"uid=0\"");
    assert_eq!(token("[uid=0"), "\"[uid=0\"");
    assert_eq!(token("model.load"), "model.load");
}

#[test]
fn injected_lines_escapes_and_fake_fields_stay_inside_their_field() {
    let mut event = typed_event();
    event.kind = "k\n2026-12-01T00:00:00.000000Z 9 tally.fake".into();
    event.actor = "a\u{1b}]0;title\u{7}".into();
    event.subject = "s [uid=0 pid=1]".into();
    event
        .typed_attributes
        .push(attribute("esc", V::StringValue("x\u{1b}[2Jy\n".into())));
    event
        .attributes
        .insert("uid=0 pid".to_owned(), "1".to_owned());
    let line = render(Mode::Short, None, &record_of(event));
    let line = line.strip_suffix('\n').unwrap();
    assert!(
        !line.contains(['\n', '\r', '\u{1b}', '\u{7}']),
        "a control character got through: {line:?}"
    );
    assert!(
        line.contains(" 7 \"k\\n2026-12-01T00:00:00.000000Z 9 tally.fake\" "),
        "{line}"
    );
    assert!(
        line.contains(" actor=\"a\\u{1b}]0;title\\u{7}\" "),
        "{line}"
    );
    assert!(
        line.contains(" subject=\"s [uid=0 pid=1]\" [uid=1 pid=3] "),
        "{line}"
    );
    assert!(line.contains(" esc=\"x\\u{1b}[2Jy\\n\" "), "{line}");
    assert!(line.contains(" \"uid=0 pid\"=1 "), "{line}");
}

#[test]
fn a_committed_record_without_content_says_so_in_text_and_json() {
    let mut record = record_of(Event {
        kind: "gen_ai.chat".into(),
        ..Default::default()
    });
    record.content = tally_client::record::ContentState::Erased;
    let line = super::text::line(&record, "T");
    assert!(
        line.ends_with("(0 payload bytes) [content erased]"),
        "{line}"
    );
    let mut out = Vec::new();
    Renderer::with_zone(Mode::Json, None)
        .write(&mut out, &record)
        .unwrap();
    let value: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(value["content"], "erased");
    record.content = tally_client::record::ContentState::Redacted;
    assert!(super::text::line(&record, "T").ends_with("[content redacted]"));
    // A record without a commitment has no `content` member at all.
    record.content = tally_client::record::ContentState::Inline;
    let mut out = Vec::new();
    Renderer::with_zone(Mode::Json, None)
        .write(&mut out, &record)
        .unwrap();
    let value: Value = serde_json::from_slice(&out).unwrap();
    assert!(value.get("content").is_none());
}
