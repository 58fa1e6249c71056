//! The ingest split (docs/DESIGN.md, section 3b): what of an event is
//! *content* (its payload, and the attributes `[content]` marks as personal)
//! is moved out of the event before its record body is encoded, committed to
//! in the body, and kept beside the record, sealed, where it can be erased.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use tally_client::proto::{Content, Event};

/// `[content]` in tallyd.toml: which attributes are personal data (erasable
/// content) besides the payload. Both empty by default: only payloads are.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ContentSettings {
    /// Attribute keys (string map or typed) that are content, exactly.
    pub personal_attributes: Vec<String>,
    /// Attribute keys starting with any of these are content.
    pub personal_attribute_prefixes: Vec<String>,
}

/// [`ContentSettings`], ready to test keys.
#[derive(Debug, Clone, Default)]
pub struct PersonalAttributes {
    exact: BTreeSet<String>,
    prefixes: Vec<String>,
}

impl PersonalAttributes {
    pub fn new(settings: &ContentSettings) -> PersonalAttributes {
        PersonalAttributes {
            exact: settings.personal_attributes.iter().cloned().collect(),
            prefixes: settings
                .personal_attribute_prefixes
                .iter()
                .filter(|prefix| !prefix.is_empty())
                .cloned()
                .collect(),
        }
    }

    /// Whether an attribute with this key is content.
    pub fn is_personal(&self, key: &str) -> bool {
        self.exact.contains(key) || self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// Moves the event's content out of it: its payload and its personal
    /// attributes (string map in key order, typed in the order sent). `None`
    /// (and the event unchanged) when there is none.
    pub fn split(&self, event: &mut Event) -> Option<Content> {
        let mut content = Content {
            payload: std::mem::take(&mut event.payload),
            ..Default::default()
        };
        if !self.exact.is_empty() || !self.prefixes.is_empty() {
            let personal: Vec<String> = event
                .attributes
                .keys()
                .filter(|key| self.is_personal(key))
                .cloned()
                .collect();
            for key in personal {
                if let Some(value) = event.attributes.remove(&key) {
                    content.attributes.insert(key, value);
                }
            }
            let (personal, kept) = std::mem::take(&mut event.typed_attributes)
                .into_iter()
                .partition(|attribute| self.is_personal(&attribute.key));
            event.typed_attributes = kept;
            content.typed_attributes = personal;
        }
        let empty = content.payload.is_empty()
            && content.attributes.is_empty()
            && content.typed_attributes.is_empty();
        (!empty).then_some(content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_client::proto::{attribute_value, Attribute, AttributeValue};

    fn typed(key: &str) -> Attribute {
        Attribute {
            key: key.into(),
            value: Some(AttributeValue {
                value: Some(attribute_value::Value::IntValue(1)),
            }),
        }
    }

    fn event() -> Event {
        Event {
            kind: "prompt".into(),
            actor: "svc".into(),
            subject: "u-1".into(),
            payload: b"the prompt".to_vec(),
            attributes: [
                ("user.email", "a@b"),
                ("model", "m1"),
                ("ssn", "123"),
                ("user.name", "A"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            typed_attributes: vec![typed("user.age"), typed("tokens"), typed("ssn2")],
            ..Default::default()
        }
    }

    #[test]
    fn payload_and_personal_attributes_by_key_and_prefix_move_to_content() {
        //! The split takes the payload, the exact keys and the prefixed keys
        //! (both attribute kinds), and leaves everything else in the event.
        let personal = PersonalAttributes::new(&ContentSettings {
            personal_attributes: vec!["ssn".into(), "ssn2".into()],
            personal_attribute_prefixes: vec!["user.".into()],
        });
        let mut event = event();
        let content = personal.split(&mut event).unwrap();
        assert_eq!(&content.payload[..], b"the prompt");
        assert!(event.payload.is_empty());
        let moved: Vec<&str> = content.attributes.keys().map(String::as_str).collect();
        assert_eq!(moved, ["ssn", "user.email", "user.name"]);
        let kept: Vec<&str> = event.attributes.keys().map(String::as_str).collect();
        assert_eq!(kept, ["model"]);
        let moved: Vec<&str> = content
            .typed_attributes
            .iter()
            .map(|a| a.key.as_str())
            .collect();
        assert_eq!(moved, ["user.age", "ssn2"]);
        let kept: Vec<&str> = event
            .typed_attributes
            .iter()
            .map(|a| a.key.as_str())
            .collect();
        assert_eq!(kept, ["tokens"]);
        assert_eq!(
            (event.kind.as_str(), event.subject.as_str()),
            ("prompt", "u-1")
        );
    }

    #[test]
    fn by_default_only_the_payload_is_content() {
        //! Empty `[content]`: attributes stay in the hashed record.
        let personal = PersonalAttributes::new(&ContentSettings::default());
        let mut event = event();
        let content = personal.split(&mut event).unwrap();
        assert!(content.attributes.is_empty() && content.typed_attributes.is_empty());
        assert_eq!(event.attributes.len(), 4);
        assert_eq!(event.typed_attributes.len(), 3);
    }

    #[test]
    fn an_event_without_content_is_left_alone() {
        //! No payload and no personal attribute: no content (so no
        //! commitment and no key use), the event unchanged.
        let personal = PersonalAttributes::new(&ContentSettings {
            personal_attributes: vec!["absent".into()],
            personal_attribute_prefixes: vec!["nope.".into(), String::new()],
        });
        let mut event = event();
        event.payload = Default::default();
        let before = event.clone();
        assert!(personal.split(&mut event).is_none());
        assert_eq!(event, before);
        assert!(
            !personal.is_personal("model"),
            "an empty prefix marks nothing"
        );
    }
}
