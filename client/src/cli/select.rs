//! The record filters shared by `tally tail`, `tally show` and `tally
//! export`: `--since`/`--until` and the event's fields, turned into the
//! protocol's `Filter` (evaluated by the daemon, or offline by
//! `tally_client::filter`).

use anyhow::Context as _;
use clap::Args;
use tally_client::proto::{AttributeMatch, Filter};

use crate::cli::when::{self, parse_time};

/// Which records: all that are set must match; a repeated flag matches any
/// of its values (`--attr` excepted: every one must match).
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// Records received at or after this time: RFC 3339, a local
    /// "2026-12-01 10:00", today, yesterday, -1h, "2 days ago", @UNIX_SECONDS.
    #[arg(long, short = 'S', value_name = "TIME", allow_hyphen_values = true)]
    pub since: Option<String>,
    /// Records received before this time (same forms as --since).
    #[arg(long, short = 'U', value_name = "TIME", allow_hyphen_values = true)]
    pub until: Option<String>,
    /// Events of this kind (repeatable: any of them).
    #[arg(long, value_name = "KIND")]
    pub kind: Vec<String>,
    /// Events by this actor (repeatable: any of them).
    #[arg(long, value_name = "ACTOR")]
    pub actor: Vec<String>,
    /// Events about this subject (repeatable: any of them).
    #[arg(long, value_name = "SUBJECT")]
    pub subject: Vec<String>,
    /// Events with attribute KEY whose value, as text, is VALUE (812, true,
    /// a string as it is); repeatable: all must match.
    #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = parse_attr_match)]
    pub attr: Vec<AttributeMatch>,
}

impl FilterArgs {
    /// The filter these flags describe, with relative times taken from now.
    pub fn filter(&self) -> anyhow::Result<Filter> {
        let now = when::now();
        let time = |flag: &str, text: &Option<String>| {
            text.as_deref()
                .map(|text| parse_time(text, &now).with_context(|| format!("--{flag}")))
                .transpose()
        };
        Ok(Filter {
            since_unix_nanos: time("since", &self.since)?,
            until_unix_nanos: time("until", &self.until)?,
            kinds: self.kind.clone(),
            actors: self.actor.clone(),
            subjects: self.subject.clone(),
            attributes: self.attr.clone(),
        })
    }
}

/// Parses `--attr KEY=VALUE` (the first `=` splits; the value may hold more).
fn parse_attr_match(text: &str) -> Result<AttributeMatch, String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok(AttributeMatch {
            key: key.to_owned(),
            value: value.to_owned(),
        }),
        _ => Err(format!("{text:?}: expected KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_matches_split_at_the_first_equals_sign() {
        let m = parse_attr_match("query=a=b").unwrap();
        assert_eq!((m.key.as_str(), m.value.as_str()), ("query", "a=b"));
        let empty = parse_attr_match("flag=").unwrap();
        assert_eq!(empty.value, "");
        assert!(parse_attr_match("noequals").is_err());
        assert!(parse_attr_match("=value").is_err());
    }

    #[test]
    fn flags_become_the_filter_and_bad_times_name_their_flag() {
        let args = FilterArgs {
            since: Some("@100".into()),
            kind: vec!["prompt".into()],
            ..Default::default()
        };
        let filter = args.filter().unwrap();
        assert_eq!(filter.since_unix_nanos, Some(100_000_000_000));
        assert_eq!(filter.until_unix_nanos, None);
        assert_eq!(filter.kinds, ["prompt"]);
        let bad = FilterArgs {
            until: Some("soon".into()),
            ..Default::default()
        };
        let err = format!("{:#}", bad.filter().unwrap_err());
        assert!(err.starts_with("--until: "), "{err}");
    }
}
