//! Which records a read, a follow or `tally show` returns: the one
//! implementation of `proto::Filter`'s rules, shared by the daemon (which
//! evaluates filters before sending) and the CLI (which evaluates them
//! offline on a bundle, and again on what a daemon sent).

use crate::attributes::{self, AttrRef};
use crate::proto::{AttributeMatch, Filter, RecordBody};

/// Whether the filter has no condition (so it matches every record and
/// there is nothing to evaluate).
pub fn is_empty(filter: &Filter) -> bool {
    filter.since_unix_nanos.is_none()
        && filter.until_unix_nanos.is_none()
        && filter.kinds.is_empty()
        && filter.actors.is_empty()
        && filter.subjects.is_empty()
        && filter.attributes.is_empty()
}

/// Whether the filter restricts anything but the receive time (so a scan
/// must look inside each record; the time alone bounds a seq range).
pub fn matches_beyond_time(filter: &Filter) -> bool {
    !(filter.kinds.is_empty()
        && filter.actors.is_empty()
        && filter.subjects.is_empty()
        && filter.attributes.is_empty())
}

/// Whether a record with this body matches: every condition that is set
/// holds (a list holds when any of its values is equal).
pub fn matches(filter: &Filter, body: &RecordBody) -> bool {
    let time = body.receive_time_unix_nanos;
    if filter.since_unix_nanos.is_some_and(|since| time < since)
        || filter.until_unix_nanos.is_some_and(|until| time >= until)
    {
        return false;
    }
    if !matches_beyond_time(filter) {
        return true;
    }
    let Some(event) = body.event.as_ref() else {
        return false;
    };
    one_of(&filter.kinds, &event.kind)
        && one_of(&filter.actors, &event.actor)
        && one_of(&filter.subjects, &event.subject)
        && filter
            .attributes
            .iter()
            .all(|wanted| has_attribute(event, wanted))
}

/// The receive time of an encoded `RecordBody` without decoding the rest
/// (the daemon reads it at every commit to keep its time index, where a
/// full decode would allocate the event): field 1, the last occurrence as
/// protobuf wants, 0 when absent. `None` when the bytes are not a protobuf
/// message. Agrees with `RecordBody::decode(..).receive_time_unix_nanos`
/// (tested below).
pub fn receive_time(body: &[u8]) -> Option<i64> {
    let mut rest = body;
    let mut time = 0i64;
    while !rest.is_empty() {
        let key = varint(&mut rest)?;
        match (key >> 3, key & 7) {
            (0, _) => return None,
            // int64 is a two's complement varint.
            (1, 0) => time = varint(&mut rest)? as i64,
            (_, 0) => {
                varint(&mut rest)?;
            }
            (_, 1) => rest = rest.get(8..)?,
            (_, 2) => {
                let len = usize::try_from(varint(&mut rest)?).ok()?;
                rest = rest.get(len..)?;
            }
            (_, 5) => rest = rest.get(4..)?,
            _ => return None,
        }
    }
    Some(time)
}

/// A base-128 varint off the front of `bytes` (at most 10 bytes).
fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (index, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            *bytes = &bytes[index + 1..];
            return Some(value);
        }
    }
    None
}

fn one_of(wanted: &[String], value: &str) -> bool {
    wanted.is_empty() || wanted.iter().any(|w| w == value)
}

fn has_attribute(event: &crate::proto::Event, wanted: &AttributeMatch) -> bool {
    attributes::attributes(event).any(|(key, value)| {
        key == wanted.key
            && match value {
                AttrRef::String(text) => text == wanted.value,
                AttrRef::Typed(typed) => attributes::to_text(typed) == wanted.value,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attributes::attribute;
    use crate::proto::{attribute_value::Value as V, Event};

    fn body(time: i64, kind: &str, actor: &str, subject: &str) -> RecordBody {
        let mut event = Event {
            kind: kind.into(),
            actor: actor.into(),
            subject: subject.into(),
            ..Default::default()
        };
        event.attributes.insert("host".into(), "gpu-7".into());
        event.typed_attributes = vec![
            attribute("tokens", V::IntValue(812)),
            attribute("cached", V::BoolValue(true)),
        ];
        RecordBody {
            receive_time_unix_nanos: time,
            peer: None,
            event: Some(event),
            ..Default::default()
        }
    }

    fn attr(key: &str, value: &str) -> AttributeMatch {
        AttributeMatch {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn an_empty_filter_matches_everything() {
        let filter = Filter::default();
        assert!(is_empty(&filter));
        assert!(matches(&filter, &body(5, "a", "b", "c")));
        assert!(matches(&filter, &RecordBody::default()));
    }

    #[test]
    fn time_bounds_are_since_inclusive_until_exclusive() {
        let filter = Filter {
            since_unix_nanos: Some(10),
            until_unix_nanos: Some(20),
            ..Default::default()
        };
        assert!(!is_empty(&filter));
        assert!(!matches_beyond_time(&filter));
        let at = |t| matches(&filter, &body(t, "k", "a", "s"));
        assert!(!at(9));
        assert!(at(10));
        assert!(at(19));
        assert!(!at(20));
    }

    #[test]
    fn lists_match_any_value_and_fields_must_all_match() {
        let filter = Filter {
            kinds: vec!["model.load".into(), "prompt".into()],
            actors: vec!["svc".into()],
            ..Default::default()
        };
        assert!(matches(&filter, &body(0, "prompt", "svc", "x")));
        assert!(matches(&filter, &body(0, "model.load", "svc", "x")));
        assert!(!matches(&filter, &body(0, "output", "svc", "x")));
        assert!(!matches(&filter, &body(0, "prompt", "other", "x")));
        let subject = Filter {
            subjects: vec!["llama".into()],
            ..Default::default()
        };
        assert!(matches(&subject, &body(0, "k", "a", "llama")));
        assert!(!matches(&subject, &body(0, "k", "a", "llama-2")));
        assert!(!matches(&subject, &RecordBody::default()));
    }

    #[test]
    fn attributes_match_by_their_text_in_either_field_and_all_must() {
        let one = |key: &str, value: &str| Filter {
            attributes: vec![attr(key, value)],
            ..Default::default()
        };
        let record = body(0, "k", "a", "s");
        assert!(matches(&one("host", "gpu-7"), &record));
        assert!(matches(&one("tokens", "812"), &record));
        assert!(matches(&one("cached", "true"), &record));
        assert!(!matches(&one("tokens", "813"), &record));
        assert!(!matches(&one("absent", ""), &record));
        let both = Filter {
            attributes: vec![attr("host", "gpu-7"), attr("tokens", "812")],
            ..Default::default()
        };
        assert!(matches(&both, &record));
        let one_wrong = Filter {
            attributes: vec![attr("host", "gpu-7"), attr("tokens", "1")],
            ..Default::default()
        };
        assert!(!matches(&one_wrong, &record));
    }

    #[test]
    fn receive_time_agrees_with_a_full_decode() {
        use prost::Message;
        for time in [0, 1, -1, 1_764_000_000_123_456_789, i64::MIN, i64::MAX] {
            let encoded = body(time, "kind", "actor", "subject").encode_to_vec();
            let decoded = RecordBody::decode(encoded.as_slice()).map(|b| b.receive_time_unix_nanos);
            assert_eq!(receive_time(&encoded), decoded.ok(), "time {time}");
        }
        // The peer and the event before the time, and the time twice: the
        // last occurrence wins, as prost decides.
        let mut reordered = RecordBody {
            event: body(0, "k", "a", "s").event,
            ..Default::default()
        }
        .encode_to_vec();
        reordered.extend(
            RecordBody {
                receive_time_unix_nanos: 5,
                ..Default::default()
            }
            .encode_to_vec(),
        );
        reordered.extend(
            RecordBody {
                receive_time_unix_nanos: 7,
                ..Default::default()
            }
            .encode_to_vec(),
        );
        assert_eq!(receive_time(&reordered), Some(7));
        assert_eq!(
            RecordBody::decode(reordered.as_slice())
                .map(|b| b.receive_time_unix_nanos)
                .ok(),
            Some(7)
        );
        // Truncated or invalid bytes are not a time.
        let encoded = body(9, "k", "a", "s").encode_to_vec();
        assert_eq!(receive_time(&encoded[..encoded.len() - 1]), None);
        assert_eq!(receive_time(&[0x08, 0x80]), None);
        assert_eq!(receive_time(&[0x00]), None);
    }
}
