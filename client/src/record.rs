//! Decoding stored records for display. Verification never needs this: the
//! chain is checked over the raw bytes (see `tally_attest::record`).

use prost::Message;
use serde_json::{json, Value};
use tally_attest::{entry_hash, RecordHeader};

use crate::attributes::{attr_to_json, attributes};
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

/// The payload for JSON output, as (key, value): under `payload`, the
/// parsed JSON when the content type is JSON (`application/json` or
/// `+json`, parameters ignored) and the bytes parse, else the UTF-8 text;
/// under `payload_b64`, base64, when it is not UTF-8. Parsed JSON is the
/// value, not the bytes (spacing and number spelling are not kept).
pub fn payload_json(event: &Event) -> (&'static str, Value) {
    if is_json_type(&event.content_type) {
        if let Ok(value) = serde_json::from_slice::<Value>(&event.payload) {
            return ("payload", value);
        }
    }
    match std::str::from_utf8(&event.payload) {
        Ok(text) => ("payload", json!(text)),
        Err(_) => {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(&event.payload);
            ("payload_b64", json!(b64))
        }
    }
}

/// `application/json`, `application/ld+json`, `text/json; charset=utf-8`...
fn is_json_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// The peer the kernel reported for the appending connection, as JSON:
/// `{"unix": {uid, gid, pid}}`, `{"vsock": {cid, port}}`, or null.
pub fn peer_json(body: &RecordBody) -> Value {
    match body.peer.as_ref().and_then(|peer| peer.kind.as_ref()) {
        Some(peer::Kind::Unix(unix)) => {
            json!({"unix": {"uid": unix.uid, "gid": unix.gid, "pid": unix.pid}})
        }
        Some(peer::Kind::Vsock(vsock)) => json!({"vsock": {"cid": vsock.cid, "port": vsock.port}}),
        None => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attributes::attribute;
    use crate::proto::{attribute_value::Value as V, ArrayValue, AttributeValue};

    /// One attribute of each kind, for the display tests (here and in the
    /// CLI's renderer).
    pub fn typed_event() -> Event {
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
        let attributes = attributes_json(&typed_event());
        assert_eq!(
            attributes,
            json!({
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

    fn payload(content_type: &str, bytes: &[u8]) -> (&'static str, Value) {
        payload_json(&Event {
            content_type: content_type.into(),
            payload: bytes.to_vec(),
            ..Default::default()
        })
    }

    #[test]
    fn a_json_payload_is_json_and_anything_else_text_or_base64() {
        let doc = br#"{"b": [1, 2], "a": "x"}"#;
        let parsed = json!({"a": "x", "b": [1, 2]});
        assert_eq!(
            payload("application/json", doc),
            ("payload", parsed.clone())
        );
        assert_eq!(
            payload("Application/JSON; charset=utf-8", doc),
            ("payload", parsed.clone())
        );
        assert_eq!(payload("application/ld+json", doc), ("payload", parsed));
        // JSON bytes under another type, and a JSON type that does not parse,
        // stay text: the content type is the client's claim, checked here.
        let text = json!(std::str::from_utf8(doc).unwrap());
        assert_eq!(payload("text/plain", doc), ("payload", text));
        assert_eq!(
            payload("application/json", b"{not json"),
            ("payload", json!("{not json"))
        );
        assert_eq!(payload("application/jsonx", b"1"), ("payload", json!("1")));
        assert_eq!(
            payload("application/octet-stream", &[0, 1, 2, 0xff]),
            ("payload_b64", json!("AAEC/w=="))
        );
        assert_eq!(
            payload("application/json", &[0xff]),
            ("payload_b64", json!("/w=="))
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
