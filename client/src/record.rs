//! Decoding stored records for display. Verification never needs this: the
//! chain is checked over the raw bytes (see `tally_attest::record`).

use prost::Message;
use serde_json::{json, Map, Value};
use tally_attest::{entry_hash, RecordHeader};

use crate::attributes::{attr_to_json, attributes, to_text, AttrRef};
use crate::proto::{peer, Event, RecordBody};

/// Why stored bytes could not be shown as an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error(transparent)]
    Header(#[from] tally_attest::record::RecordError),
    #[error("record body is not a valid RecordBody: {0}")]
    Body(#[from] prost::DecodeError),
}

/// A stored record, split into its header and decoded body.
#[derive(Debug, Clone)]
pub struct DecodedRecord {
    pub header: RecordHeader,
    pub body: RecordBody,
    pub entry_hash: [u8; 32],
}

/// Parses the header and decodes the protobuf body of a stored record.
pub fn decode(record: &[u8]) -> Result<DecodedRecord, DecodeError> {
    let (header, body) = RecordHeader::parse(record)?;
    Ok(DecodedRecord {
        header,
        body: RecordBody::decode(body)?,
        entry_hash: entry_hash(record),
    })
}

impl DecodedRecord {
    /// A JSON object with every field; the payload as UTF-8 text when it is
    /// valid UTF-8, else base64 under `payload_b64`. `attributes` holds both
    /// of the event's attribute fields (see [`attributes_json`]).
    pub fn to_json(&self) -> Value {
        let event = self.body.event.clone().unwrap_or_default();
        let mut out = Map::new();
        out.insert("seq".into(), json!(self.header.seq));
        out.insert("entry_hash".into(), json!(hex::encode(self.entry_hash)));
        out.insert(
            "prev_hash".into(),
            json!(hex::encode(self.header.prev_hash)),
        );
        out.insert(
            "receive_time_unix_nanos".into(),
            json!(self.body.receive_time_unix_nanos),
        );
        out.insert("peer".into(), peer_json(&self.body));
        out.insert("kind".into(), json!(event.kind));
        out.insert("actor".into(), json!(event.actor));
        out.insert("subject".into(), json!(event.subject));
        out.insert("attributes".into(), attributes_json(&event));
        out.insert("content_type".into(), json!(event.content_type));
        out.insert(
            "client_time_unix_nanos".into(),
            json!(event.client_time_unix_nanos),
        );
        match String::from_utf8(event.payload) {
            Ok(text) => out.insert("payload".into(), json!(text)),
            Err(err) => {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD.encode(err.into_bytes());
                out.insert("payload_b64".into(), json!(b64))
            }
        };
        Value::Object(out)
    }

    /// One human-readable line.
    pub fn to_line(&self) -> String {
        let event = self.body.event.clone().unwrap_or_default();
        let attributes: Vec<String> = attributes(&event)
            .map(|(key, value)| {
                let text = match value {
                    AttrRef::String(s) => escape_controls(s),
                    AttrRef::Typed(typed) => escape_controls(&to_text(typed)),
                };
                format!("{}={text}", escape_controls(key))
            })
            .collect();
        format!(
            "{seq:>8} {hash} {peer} {kind} actor={actor} subject={subject}{sep}{attrs} ({len} payload bytes)",
            seq = self.header.seq,
            hash = &hex::encode(self.entry_hash)[..16],
            peer = peer_text(&self.body),
            kind = escape_controls(&event.kind),
            actor = escape_controls(&event.actor),
            subject = escape_controls(&event.subject),
            sep = if attributes.is_empty() { "" } else { " " },
            attrs = attributes.join(" "),
            len = event.payload.len(),
        )
    }
}

/// The event's attributes, string map and typed list, as one JSON object:
/// string-map values as strings, typed values as [`crate::attributes::to_json`]
/// gives them (812 as the number 812). Keys in byte order, whichever field
/// they came from (the protocol makes keys unique across the two), so the
/// output does not depend on serde_json's map features.
pub fn attributes_json(event: &Event) -> Value {
    let sorted: std::collections::BTreeMap<&str, Value> = attributes(event)
        .map(|(key, value)| (key, attr_to_json(value)))
        .collect();
    Value::Object(
        sorted
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect(),
    )
}

/// `text` with control characters (a newline, an escape sequence) written
/// as Rust escapes, so one record stays one line and cannot drive the
/// terminal.
fn escape_controls(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn peer_json(body: &RecordBody) -> Value {
    match body.peer.as_ref().and_then(|peer| peer.kind.as_ref()) {
        Some(peer::Kind::Unix(unix)) => {
            json!({"unix": {"uid": unix.uid, "gid": unix.gid, "pid": unix.pid}})
        }
        Some(peer::Kind::Vsock(vsock)) => json!({"vsock": {"cid": vsock.cid, "port": vsock.port}}),
        None => Value::Null,
    }
}

fn peer_text(body: &RecordBody) -> String {
    match body.peer.as_ref().and_then(|peer| peer.kind.as_ref()) {
        Some(peer::Kind::Unix(unix)) => format!("uid={} pid={}", unix.uid, unix.pid),
        Some(peer::Kind::Vsock(vsock)) => format!("cid={} port={}", vsock.cid, vsock.port),
        None => "peer=?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attributes::attribute;
    use crate::proto::{attribute_value::Value as V, ArrayValue, AttributeValue, UnixPeer};

    fn record_of(event: Event) -> DecodedRecord {
        let body = RecordBody {
            receive_time_unix_nanos: 1,
            peer: Some(crate::proto::Peer {
                kind: Some(peer::Kind::Unix(UnixPeer {
                    uid: 1,
                    gid: 2,
                    pid: 3,
                })),
            }),
            event: Some(event),
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

    fn typed_event() -> Event {
        Event {
            kind: "gen_ai.chat".into(),
            attributes: [("model".to_owned(), "812".to_owned())].into(),
            typed_attributes: vec![
                attribute("gen_ai.usage.input_tokens", V::IntValue(812)),
                attribute("b", V::BoolValue(true)),
                attribute("ratio", V::DoubleValue(f64::NAN)),
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
            ..Default::default()
        }
    }

    #[test]
    fn json_holds_typed_values_beside_the_string_map_in_key_order() {
        let json = record_of(typed_event()).to_json();
        let attributes = &json["attributes"];
        assert_eq!(
            attributes,
            &json!({
                "b": true,
                "gen_ai.usage.input_tokens": 812,
                "model": "812",
                "ratio": "NaN",
                "raw": {"base64": "/w=="},
                "tags": ["a\nb"],
            })
        );
        let keys: Vec<&str> = attributes
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "b",
                "gen_ai.usage.input_tokens",
                "model",
                "ratio",
                "raw",
                "tags"
            ]
        );
    }

    #[test]
    fn a_string_map_only_event_shows_as_before() {
        let event = Event {
            kind: "prompt".into(),
            actor: "agent-7".into(),
            attributes: [("model_id".to_owned(), "llama".to_owned())].into(),
            ..Default::default()
        };
        let record = record_of(event);
        assert_eq!(record.to_json()["attributes"], json!({"model_id": "llama"}));
        assert!(
            record.to_line().ends_with(
                " uid=1 pid=3 prompt actor=agent-7 subject= model_id=llama (0 payload bytes)"
            ),
            "{}",
            record.to_line()
        );
    }

    #[test]
    fn the_line_shows_typed_values_as_text_and_escapes_controls() {
        let line = record_of(typed_event()).to_line();
        assert!(
            line.ends_with(
                " model=812 gen_ai.usage.input_tokens=812 b=true ratio=NaN raw=base64:/w== tags=[\"a\\nb\"] (0 payload bytes)"
            ),
            "{line}"
        );
        let mut event = typed_event();
        event
            .typed_attributes
            .push(attribute("esc", V::StringValue("x\u{1b}[2Jy\n".into())));
        let line = record_of(event).to_line();
        assert!(line.contains(" esc=x\\u{1b}[2Jy\\n "), "{line}");
        assert!(!line.contains('\n') && !line.contains('\u{1b}'), "{line}");
        // Every field a client chose: a forged second line or a terminal
        // escape in kind, actor or subject is shown escaped too.
        let mut event = typed_event();
        event.kind = "k\n       9 0000000000000000 uid=0 pid=1 tally.fake".into();
        event.actor = "a\u{1b}]0;title\u{7}".into();
        event.subject = "s\r".into();
        let line = record_of(event).to_line();
        assert!(
            !line.contains(['\n', '\r', '\u{1b}', '\u{7}']),
            "a control character got through: {line:?}"
        );
        assert!(line.contains(" k\\n       9 "), "{line}");
        assert!(
            line.contains(" actor=a\\u{1b}]0;title\\u{7} subject=s\\r "),
            "{line}"
        );
    }
}

/// The typed-attribute encodings docs/DESIGN.md (section 3) gives.
#[cfg(test)]
mod encoding_tests {
    use prost::Message;

    use crate::attributes::attribute;
    use crate::proto::{attribute_value::Value as V, Event};

    fn typed_bytes(value: V) -> String {
        let event = Event {
            typed_attributes: vec![attribute("gen_ai.usage.input_tokens", value)],
            ..Default::default()
        };
        hex::encode(event.encode_to_vec())
    }

    #[test]
    fn typed_attributes_encode_as_the_design_says() {
        let key = "0a1967656e5f61692e75736167652e696e7075745f746f6b656e73";
        assert_eq!(
            typed_bytes(V::IntValue(812)),
            format!("4220{key}120318ac06")
        );
        // A oneof member is written even when it is the default.
        assert_eq!(typed_bytes(V::IntValue(0)), format!("421f{key}12021800"));
        // A string map that repeats a key on the wire decodes to its last
        // value, which is what the daemon stores.
        let entry = |value: &str| format!("2207 0a01 6b 1202 {}", hex::encode(value));
        let twice =
            hex::decode(format!("0a016b{}{}", entry("v1"), entry("v2")).replace(' ', "")).unwrap();
        let decoded = Event::decode(twice.as_slice()).unwrap();
        assert_eq!(
            decoded.attributes,
            [("k".to_owned(), "v2".to_owned())].into()
        );
        // Doubles are 8 bytes, little-endian (wire type I64).
        assert_eq!(
            typed_bytes(V::DoubleValue(1.0)),
            format!("4226{key}120921000000000000f03f")
        );
    }
}
