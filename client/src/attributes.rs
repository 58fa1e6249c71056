//! Typed attribute values (OpenTelemetry's kinds: string, bool, int, double,
//! bytes, and arrays of one of them) and the rules an event must follow.
//!
//! One place for the three things every side needs: [`check_client_event`]
//! (the daemon refuses what it fails; a client may call it before sending)
//! and [`check_event`], the rules every stored event follows, the daemon's own
//! included,
//! [`from_json`] (a JSON value as a typed value, for `tally append --stdin`)
//! and [`to_json`]/[`to_text`] (a typed value for display). An event's
//! attributes, string map and typed list together, are read through
//! [`attributes`].

use base64::Engine as _;
use serde_json::{json, Value};

use crate::proto::{attribute_value, ArrayValue, Attribute, AttributeValue, Event};

/// Why an event is not valid. The daemon answers `ERROR_CODE_BAD_REQUEST` with
/// this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    #[error("the event's kind is empty")]
    EmptyKind,
    #[error("kind {kind:?} is reserved: kinds starting {RESERVED_KIND_PREFIX:?} are written by tallyd only")]
    ReservedKind { kind: String },
    #[error("an attribute has an empty key")]
    EmptyKey,
    #[error("attribute {key:?} appears more than once")]
    DuplicateKey { key: String },
    #[error("attribute {key:?} has no value")]
    MissingValue { key: String },
    #[error("attribute {key:?}: {reason}")]
    BadArray { key: String, reason: ArrayError },
}

/// Why an array attribute is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArrayError {
    #[error("an array element has no value")]
    MissingElement,
    #[error("arrays may not nest")]
    Nested,
    #[error("array elements must all be of one kind")]
    Mixed,
}

/// Kinds starting with this are the daemon's own (`tally.access_denied`): a
/// client may not write them, so a record of such a kind is the daemon's.
pub const RESERVED_KIND_PREFIX: &str = "tally.";

/// Checks an event a client sends: [`check_event`]'s rules, and a kind that is
/// not reserved ([`RESERVED_KIND_PREFIX`]).
pub fn check_client_event(event: &Event) -> Result<(), EventError> {
    if event.kind.starts_with(RESERVED_KIND_PREFIX) {
        return Err(EventError::ReservedKind {
            kind: event.kind.clone(),
        });
    }
    check_event(event)
}

/// Checks the rules the protocol states for an event: a kind, and attribute
/// keys that are not empty and unique across `attributes` and
/// `typed_attributes`, each typed value set, arrays flat and of one kind.
pub fn check_event(event: &Event) -> Result<(), EventError> {
    if event.kind.is_empty() {
        return Err(EventError::EmptyKind);
    }
    if event.attributes.contains_key("") {
        return Err(EventError::EmptyKey);
    }
    let mut typed_keys = std::collections::BTreeSet::new();
    for attribute in &event.typed_attributes {
        if attribute.key.is_empty() {
            return Err(EventError::EmptyKey);
        }
        if event.attributes.contains_key(&attribute.key) || !typed_keys.insert(&attribute.key) {
            return Err(EventError::DuplicateKey {
                key: attribute.key.clone(),
            });
        }
        let Some(value) = attribute.value.as_ref().and_then(|v| v.value.as_ref()) else {
            return Err(EventError::MissingValue {
                key: attribute.key.clone(),
            });
        };
        if let attribute_value::Value::ArrayValue(array) = value {
            check_array(array).map_err(|reason| EventError::BadArray {
                key: attribute.key.clone(),
                reason,
            })?;
        }
    }
    Ok(())
}

fn check_array(array: &ArrayValue) -> Result<(), ArrayError> {
    let mut first_kind = None;
    for element in &array.values {
        let value = element.value.as_ref().ok_or(ArrayError::MissingElement)?;
        if matches!(value, attribute_value::Value::ArrayValue(_)) {
            return Err(ArrayError::Nested);
        }
        let kind = std::mem::discriminant(value);
        if *first_kind.get_or_insert(kind) != kind {
            return Err(ArrayError::Mixed);
        }
    }
    Ok(())
}

/// One attribute of an event, from either of its two fields.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttrRef<'a> {
    /// From the string map (`Event.attributes`).
    String(&'a str),
    /// From `Event.typed_attributes`.
    Typed(&'a attribute_value::Value),
}

/// Every attribute of an event as (key, value): the string map in key order,
/// then the typed list in the order it was sent. Typed entries without a value
/// (which the daemon never stores) are skipped.
pub fn attributes(event: &Event) -> impl Iterator<Item = (&str, AttrRef<'_>)> {
    let strings = event
        .attributes
        .iter()
        .map(|(key, value)| (key.as_str(), AttrRef::String(value)));
    let typed = event.typed_attributes.iter().filter_map(|attribute| {
        let value = attribute.value.as_ref()?.value.as_ref()?;
        Some((attribute.key.as_str(), AttrRef::Typed(value)))
    });
    strings.chain(typed)
}

/// Why a JSON value cannot be an attribute value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonValueError {
    #[error("null is not an attribute value")]
    Null,
    #[error("an object is not an attribute value (only strings, numbers, booleans and arrays of one of them are)")]
    Object,
    #[error("{0} does not fit a signed 64-bit integer")]
    IntegerRange(String),
    #[error("{0}")]
    Array(ArrayError),
}

/// A JSON value as a typed attribute value: a string, a boolean, an integer
/// (when it fits i64), any other number as a double, or a flat array of one
/// of these kinds. Integers and doubles in one array are all doubles.
pub fn from_json(value: &Value) -> Result<AttributeValue, JsonValueError> {
    let value = match value {
        Value::Array(elements) => {
            let all_numbers = elements.iter().all(Value::is_number);
            let any_float = elements
                .iter()
                .any(|e| e.is_number() && e.as_i64().is_none());
            let values = elements
                .iter()
                .map(|element| match element {
                    Value::Array(_) => Err(JsonValueError::Array(ArrayError::Nested)),
                    Value::Number(n) if all_numbers && any_float => {
                        Ok(double(n.as_f64().unwrap_or(f64::NAN)))
                    }
                    scalar => scalar_from_json(scalar),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let array = ArrayValue { values };
            check_array(&array).map_err(JsonValueError::Array)?;
            attribute_value::Value::ArrayValue(array)
        }
        scalar => return scalar_from_json(scalar),
    };
    Ok(AttributeValue { value: Some(value) })
}

fn scalar_from_json(value: &Value) -> Result<AttributeValue, JsonValueError> {
    let value = match value {
        Value::Null => return Err(JsonValueError::Null),
        Value::Object(_) => return Err(JsonValueError::Object),
        Value::Bool(b) => attribute_value::Value::BoolValue(*b),
        Value::String(s) => attribute_value::Value::StringValue(s.clone()),
        Value::Number(n) => match (n.as_i64(), n.is_f64()) {
            (Some(i), _) => attribute_value::Value::IntValue(i),
            (None, true) => return Ok(double(n.as_f64().unwrap_or(f64::NAN))),
            (None, false) => return Err(JsonValueError::IntegerRange(n.to_string())),
        },
        Value::Array(_) => return Err(JsonValueError::Array(ArrayError::Nested)),
    };
    Ok(AttributeValue { value: Some(value) })
}

fn double(d: f64) -> AttributeValue {
    AttributeValue {
        value: Some(attribute_value::Value::DoubleValue(d)),
    }
}

/// A typed attribute with the given key and value.
pub fn attribute(key: impl Into<String>, value: attribute_value::Value) -> Attribute {
    Attribute {
        key: key.into(),
        value: Some(AttributeValue { value: Some(value) }),
    }
}

/// A typed value as JSON: strings, booleans and numbers as themselves, arrays
/// as arrays; bytes as `{"base64": "..."}`; doubles that JSON cannot carry
/// (NaN, infinities) as the strings "NaN", "Infinity", "-Infinity".
pub fn to_json(value: &attribute_value::Value) -> Value {
    use attribute_value::Value as V;
    match value {
        V::StringValue(s) => json!(s),
        V::BoolValue(b) => json!(b),
        V::IntValue(i) => json!(i),
        V::DoubleValue(d) if d.is_finite() => json!(d),
        V::DoubleValue(d) => json!(non_finite_text(*d)),
        V::BytesValue(b) => json!({"base64": base64::engine::general_purpose::STANDARD.encode(b)}),
        V::ArrayValue(array) => Value::Array(
            array
                .values
                .iter()
                .filter_map(|element| element.value.as_ref().map(to_json))
                .collect(),
        ),
    }
}

/// A value of [`attributes`] as JSON (string-map values are strings).
pub fn attr_to_json(value: AttrRef<'_>) -> Value {
    match value {
        AttrRef::String(s) => json!(s),
        AttrRef::Typed(typed) => to_json(typed),
    }
}

/// A typed value as text for one line of human output: strings as they are,
/// numbers and booleans as JSON writes them, bytes as `base64:...`, arrays as
/// JSON arrays. The caller escapes control characters.
pub fn to_text(value: &attribute_value::Value) -> String {
    use attribute_value::Value as V;
    match value {
        V::StringValue(s) => s.clone(),
        V::BytesValue(b) => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(b)
        ),
        V::DoubleValue(d) if !d.is_finite() => non_finite_text(*d).to_owned(),
        other => to_json(other).to_string(),
    }
}

fn non_finite_text(d: f64) -> &'static str {
    match (d.is_nan(), d.is_sign_positive()) {
        (true, _) => "NaN",
        (false, true) => "Infinity",
        (false, false) => "-Infinity",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attribute_value::Value as V;

    fn event_with(typed: Vec<Attribute>) -> Event {
        Event {
            kind: "k".into(),
            typed_attributes: typed,
            ..Default::default()
        }
    }

    fn array(values: Vec<V>) -> V {
        V::ArrayValue(ArrayValue {
            values: values
                .into_iter()
                .map(|v| AttributeValue { value: Some(v) })
                .collect(),
        })
    }

    #[test]
    fn valid_events_pass_and_each_rule_is_enforced() {
        let good = event_with(vec![
            attribute("gen_ai.usage.input_tokens", V::IntValue(812)),
            attribute("ratio", V::DoubleValue(f64::NAN)),
            attribute("tags", array(vec![V::StringValue("a".into())])),
            attribute("empty", array(vec![])),
        ]);
        assert_eq!(check_event(&good), Ok(()));

        assert_eq!(check_client_event(&good), Ok(()));
        let mut reserved = good.clone();
        reserved.kind = "tally.access_denied".into();
        assert_eq!(
            check_event(&reserved),
            Ok(()),
            "the daemon's own events pass"
        );
        assert_eq!(
            check_client_event(&reserved),
            Err(EventError::ReservedKind {
                kind: "tally.access_denied".into()
            })
        );
        let mut lookalike = good.clone();
        lookalike.kind = "tallyx.event".into();
        assert_eq!(check_client_event(&lookalike), Ok(()));

        let mut no_kind = good.clone();
        no_kind.kind.clear();
        assert_eq!(check_event(&no_kind), Err(EventError::EmptyKind));

        let mut clash = good.clone();
        clash.attributes.insert("ratio".into(), "1".into());
        assert_eq!(
            check_event(&clash),
            Err(EventError::DuplicateKey {
                key: "ratio".into()
            })
        );
        let twice = event_with(vec![
            attribute("a", V::IntValue(1)),
            attribute("a", V::IntValue(2)),
        ]);
        assert_eq!(
            check_event(&twice),
            Err(EventError::DuplicateKey { key: "a".into() })
        );
        let mut empty_map_key = good.clone();
        empty_map_key.attributes.insert(String::new(), "x".into());
        assert_eq!(check_event(&empty_map_key), Err(EventError::EmptyKey));
        let empty_key = event_with(vec![attribute("", V::BoolValue(true))]);
        assert_eq!(check_event(&empty_key), Err(EventError::EmptyKey));
        let unset = event_with(vec![Attribute {
            key: "u".into(),
            value: Some(AttributeValue { value: None }),
        }]);
        assert_eq!(
            check_event(&unset),
            Err(EventError::MissingValue { key: "u".into() })
        );
        for (values, reason) in [
            (
                vec![V::IntValue(1), V::StringValue("x".into())],
                ArrayError::Mixed,
            ),
            (vec![array(vec![])], ArrayError::Nested),
        ] {
            let bad = event_with(vec![attribute("arr", array(values))]);
            assert_eq!(
                check_event(&bad),
                Err(EventError::BadArray {
                    key: "arr".into(),
                    reason
                })
            );
        }
    }

    #[test]
    fn json_values_map_to_their_kinds() {
        let cases = [
            (json!(812), V::IntValue(812)),
            (json!(-3), V::IntValue(-3)),
            (json!(0.25), V::DoubleValue(0.25)),
            (json!(true), V::BoolValue(true)),
            (json!("gpt"), V::StringValue("gpt".into())),
            (
                json!([1, 2.5]),
                array(vec![V::DoubleValue(1.0), V::DoubleValue(2.5)]),
            ),
            (json!([1, 2]), array(vec![V::IntValue(1), V::IntValue(2)])),
        ];
        for (input, expected) in cases {
            assert_eq!(from_json(&input).unwrap().value, Some(expected), "{input}");
        }
        assert_eq!(from_json(&json!(null)), Err(JsonValueError::Null));
        assert_eq!(from_json(&json!({"a": 1})), Err(JsonValueError::Object));
        assert_eq!(
            from_json(&json!(u64::MAX)),
            Err(JsonValueError::IntegerRange(u64::MAX.to_string()))
        );
        assert_eq!(
            from_json(&json!([1, "a"])),
            Err(JsonValueError::Array(ArrayError::Mixed))
        );
        assert_eq!(
            from_json(&json!([[1]])),
            Err(JsonValueError::Array(ArrayError::Nested))
        );
    }

    #[test]
    fn typed_values_render_as_json_and_text() {
        assert_eq!(to_json(&V::IntValue(812)), json!(812));
        assert_eq!(to_json(&V::DoubleValue(f64::INFINITY)), json!("Infinity"));
        assert_eq!(
            to_json(&V::BytesValue(vec![0xff])),
            json!({"base64": "/w=="})
        );
        assert_eq!(to_text(&V::BytesValue(vec![0xff])), "base64:/w==");
        assert_eq!(to_text(&V::StringValue("a b".into())), "a b");
        assert_eq!(to_text(&V::DoubleValue(f64::NEG_INFINITY)), "-Infinity");
        assert_eq!(
            to_text(&array(vec![V::BoolValue(true), V::BoolValue(false)])),
            "[true,false]"
        );
        let mut event = event_with(vec![attribute("n", V::IntValue(1))]);
        event.attributes.insert("s".into(), "v".into());
        let seen: Vec<_> = attributes(&event)
            .map(|(k, v)| (k.to_owned(), attr_to_json(v)))
            .collect();
        assert_eq!(
            seen,
            vec![("s".to_owned(), json!("v")), ("n".to_owned(), json!(1))]
        );
    }
}
