//! Decoding stored records for display. Verification never needs this: the
//! chain is checked over the raw bytes (see `tally_attest::record`).

use prost::Message;
use serde_json::{json, Value};
use tally_attest::{entry_hash, RecordHeader};

use tally_attest::content::{commitment_of_opening, split_opening, BodyFacts, ContentError};

use crate::attributes::{attr_to_json, attributes};
use crate::proto::{peer, Content, Event, RecordBody};

/// Why stored bytes could not be shown as an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error(transparent)]
    Header(#[from] tally_attest::record::RecordError),
    #[error("record body is not a valid RecordBody: {0}")]
    Body(#[from] prost::DecodeError),
    #[error("seq {seq}: {source}")]
    Facts { seq: u64, source: ContentError },
    /// The content given with the record does not open its commitment:
    /// edited where it is kept (the store, or the bundle's content section).
    #[error(
        "seq {seq}: its content does not match the record's commitment (the content was changed)"
    )]
    ContentMismatch { seq: u64 },
    #[error("seq {seq}: content was given for a record that has no content commitment")]
    ContentWithoutCommitment { seq: u64 },
    #[error("seq {seq}: its content opens the commitment but is not a valid Content: {source}")]
    ContentBody {
        seq: u64,
        source: prost::DecodeError,
    },
}

/// What became of a record's content (docs/DESIGN.md section 3b).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContentState {
    /// No commitment: the record holds all of its event.
    #[default]
    Inline,
    /// The opening opened the commitment and its payload and attributes
    /// were put back into the event.
    Joined,
    /// Committed, without its content: erased.
    Erased,
    /// Committed, without its content: left out of a redacted bundle.
    Redacted,
}

impl ContentState {
    /// The JSON value and text marker (`None` for [`ContentState::Inline`]).
    pub fn word(self) -> Option<&'static str> {
        match self {
            ContentState::Inline => None,
            ContentState::Joined => Some("present"),
            ContentState::Erased => Some("erased"),
            ContentState::Redacted => Some("redacted"),
        }
    }
}

/// A stored record, split into its header and decoded body.
#[derive(Debug, Clone)]
pub struct DecodedRecord {
    pub header: RecordHeader,
    pub body: RecordBody,
    pub entry_hash: [u8; 32],
    /// Whether the event's content is in it ([`decode_with_content`]).
    pub content: ContentState,
}

/// Parses the header and decodes the protobuf body of a stored record,
/// without content: a committed record shows as erased.
pub fn decode(record: &[u8]) -> Result<DecodedRecord, DecodeError> {
    decode_with_content(record, None, ContentState::Erased)
}

/// [`decode`], joining `opening` (the record's `salt || Content`) back into
/// the event after checking it against the record's commitment, so the
/// event reads as sent (the personal typed attributes come after the
/// others, whatever their order when sent). A committed record without an
/// opening is marked `absent` ([`ContentState::Erased`] from the daemon,
/// [`ContentState::Redacted`] from a redacted bundle).
pub fn decode_with_content(
    record: &[u8],
    opening: Option<&[u8]>,
    absent: ContentState,
) -> Result<DecodedRecord, DecodeError> {
    let (header, body_bytes) = RecordHeader::parse(record)?;
    let mut body = RecordBody::decode(body_bytes)?;
    let seq = header.seq;
    let facts =
        BodyFacts::parse(body_bytes).map_err(|source| DecodeError::Facts { seq, source })?;
    let content = match (facts.content_commitment, opening) {
        (None, None) => ContentState::Inline,
        (None, Some(_)) => return Err(DecodeError::ContentWithoutCommitment { seq }),
        (Some(_), None) => absent,
        (Some(commitment), Some(opening)) => {
            if commitment_of_opening(opening).ok() != Some(commitment) {
                return Err(DecodeError::ContentMismatch { seq });
            }
            let (_, bytes) =
                split_opening(opening).map_err(|source| DecodeError::Facts { seq, source })?;
            let content = Content::decode(bytes)
                .map_err(|source| DecodeError::ContentBody { seq, source })?;
            let event = body.event.get_or_insert_with(Event::default);
            event.payload = content.payload;
            event.attributes.extend(content.attributes);
            event.typed_attributes.extend(content.typed_attributes);
            ContentState::Joined
        }
    };
    Ok(DecodedRecord {
        header,
        body,
        entry_hash: entry_hash(record),
        content,
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

#[cfg(test)]
#[path = "record_content_tests.rs"]
mod content_tests;
