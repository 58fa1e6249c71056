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
}
