//! One JSON line of `tally append --stdin` as an event, and why a line is
//! refused. The mapping (documented in `tally append --help` and the README):
//! string attribute values go to the string map (`Event.attributes`, which
//! every daemon reads), numbers, booleans and arrays to `typed_attributes`
//! (through [`attributes::from_json`]); a string payload is its text, any
//! other JSON payload (object, array, number, boolean) is stored as its
//! compact JSON text with content type `application/json` unless the line
//! gives one; `payload_b64` is binary.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;
use tally_client::attributes::{self, EventError, JsonValueError};
use tally_client::clock::now_unix_nanos;
use tally_client::frame::{append_event_len, APPEND_ENVELOPE_BYTES};
use tally_client::proto::{Attribute, Event};

/// The content type of a payload given as a JSON object or array.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// One event as a JSON line on stdin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEvent {
    kind: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    attributes: BTreeMap<String, Value>,
    payload: Option<Value>,
    payload_b64: Option<String>,
    content_type: Option<String>,
    client_time_unix_nanos: Option<i64>,
}

/// Why one input line is refused (the lines around it are still sent).
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("not UTF-8")]
    NotUtf8,
    /// Longer than any event that fits one frame could be written (kept from
    /// being buffered whole).
    #[error("longer than {max} bytes")]
    TooLong { max: usize },
    #[error("not a JSON event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("give payload or payload_b64, not both")]
    TwoPayloads,
    #[error("payload_b64 is not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("attribute {key:?}: {reason}")]
    Attribute { key: String, reason: JsonValueError },
    #[error("{0}")]
    Event(#[from] EventError),
    #[error(
        "the event is {bytes} bytes encoded, over the {limit} bytes one request can carry \
         (the daemon's max_frame_bytes less {APPEND_ENVELOPE_BYTES} bytes of request envelope): \
         use a smaller payload, or raise max_frame_bytes in tallyd's configuration"
    )]
    TooLarge { bytes: usize, limit: usize },
}

/// One stdin line as an event (its client time defaults to now), checked
/// against the protocol's rules ([`attributes::check_client_event`]).
pub fn parse(line: &str) -> Result<Event, LineError> {
    let json: JsonEvent = serde_json::from_str(line)?;
    let mut content_type = json.content_type.unwrap_or_default();
    let payload = match (json.payload, json.payload_b64) {
        (Some(_), Some(_)) => return Err(LineError::TwoPayloads),
        (Some(Value::String(text)), None) => text.into_bytes(),
        (Some(Value::Null), None) | (None, None) => Vec::new(),
        (Some(value), None) => {
            if content_type.is_empty() {
                content_type = JSON_CONTENT_TYPE.to_owned();
            }
            value.to_string().into_bytes()
        }
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64)?,
    };
    let mut event = Event {
        kind: json.kind,
        actor: json.actor,
        subject: json.subject,
        payload,
        content_type,
        client_time_unix_nanos: json.client_time_unix_nanos.unwrap_or_else(now_unix_nanos),
        ..Default::default()
    };
    for (key, value) in json.attributes {
        put_attribute(&mut event, key, &value)?;
    }
    attributes::check_client_event(&event)?;
    Ok(event)
}

/// Adds one attribute: a string to the string map (old daemons read it), any
/// other JSON value as a typed attribute.
pub fn put_attribute(event: &mut Event, key: String, value: &Value) -> Result<(), LineError> {
    match value {
        Value::String(text) => {
            event.attributes.insert(key, text.clone());
        }
        other => match attributes::from_json(other) {
            Ok(typed) => event.typed_attributes.push(Attribute {
                key,
                value: Some(typed),
            }),
            Err(reason) => return Err(LineError::Attribute { key, reason }),
        },
    }
    Ok(())
}

/// The bytes `event` adds to an append request, or [`LineError::TooLarge`]
/// when that is more than `limit` (the frame limit less the envelope).
pub fn encoded_size(event: &Event, limit: usize) -> Result<usize, LineError> {
    match append_event_len(event) {
        bytes if bytes > limit => Err(LineError::TooLarge { bytes, limit }),
        bytes => Ok(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_client::proto::attribute_value::Value as V;

    fn typed(event: &Event, key: &str) -> Option<V> {
        event
            .typed_attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.clone()?.value)
    }

    #[test]
    fn json_values_become_typed_attributes_and_strings_stay_in_the_map() {
        let event = parse(
            r#"{"kind":"chat","attributes":{"model":"m","tokens":812,"t":0.5,"ok":true,"tags":["a","b"]}}"#,
        )
        .unwrap();
        assert_eq!(event.attributes.get("model").map(String::as_str), Some("m"));
        assert_eq!(event.attributes.len(), 1);
        assert_eq!(typed(&event, "tokens"), Some(V::IntValue(812)));
        assert_eq!(typed(&event, "t"), Some(V::DoubleValue(0.5)));
        assert_eq!(typed(&event, "ok"), Some(V::BoolValue(true)));
        assert!(matches!(typed(&event, "tags"), Some(V::ArrayValue(a)) if a.values.len() == 2));
        assert!(event.client_time_unix_nanos > 0);
    }

    #[test]
    fn payloads_text_json_and_base64() {
        let text = parse(r#"{"kind":"k","payload":"{\"a\":1}"}"#).unwrap();
        assert_eq!(text.payload, br#"{"a":1}"#);
        assert_eq!(text.content_type, "");
        let object = parse(r#"{"kind":"k","payload":{"b": [1, 2], "a": "x"}}"#).unwrap();
        assert_eq!(object.payload, br#"{"a":"x","b":[1,2]}"#);
        assert_eq!(object.content_type, JSON_CONTENT_TYPE);
        let array =
            parse(r#"{"kind":"k","payload":[1],"content_type":"application/x-y"}"#).unwrap();
        assert_eq!(array.payload, b"[1]");
        assert_eq!(array.content_type, "application/x-y");
        let binary = parse(r#"{"kind":"k","payload_b64":"AAEC/w=="}"#).unwrap();
        assert_eq!(binary.payload, [0, 1, 2, 255]);
        assert!(parse(r#"{"kind":"k","payload":null}"#)
            .unwrap()
            .payload
            .is_empty());
    }

    #[test]
    fn each_bad_line_names_its_reason() {
        type Expected = fn(&LineError) -> bool;
        let cases: [(&str, Expected); 8] = [
            ("not json", |e| matches!(e, LineError::Json(_))),
            (
                r#"{"kind":"a","colour":"red"}"#,
                |e| matches!(e, LineError::Json(j) if j.to_string().contains("colour")),
            ),
            (r#"{"actor":"x"}"#, |e| matches!(e, LineError::Json(_))),
            (r#"{"kind":""}"#, |e| {
                matches!(e, LineError::Event(EventError::EmptyKind))
            }),
            (
                r#"{"kind":"a","attributes":{"n":null}}"#,
                |e| matches!(e, LineError::Attribute { key, reason: JsonValueError::Null } if key == "n"),
            ),
            (r#"{"kind":"a","attributes":{"o":{"x":1}}}"#, |e| {
                matches!(
                    e,
                    LineError::Attribute {
                        reason: JsonValueError::Object,
                        ..
                    }
                )
            }),
            (r#"{"kind":"a","payload":"x","payload_b64":"eA=="}"#, |e| {
                matches!(e, LineError::TwoPayloads)
            }),
            (r#"{"kind":"a","payload_b64":"not base64!"}"#, |e| {
                matches!(e, LineError::Base64(_))
            }),
        ];
        for (line, expected) in cases {
            let err = parse(line).unwrap_err();
            assert!(expected(&err), "{line}: {err:?}");
        }
    }

    #[test]
    fn the_size_bound_is_the_encoded_length() {
        let event = parse(r#"{"kind":"k","payload":"0123456789"}"#).unwrap();
        let bytes = append_event_len(&event);
        assert_eq!(encoded_size(&event, bytes).unwrap(), bytes);
        assert!(matches!(
            encoded_size(&event, bytes - 1),
            Err(LineError::TooLarge { bytes: b, limit }) if b == bytes && limit == bytes - 1
        ));
    }
}
