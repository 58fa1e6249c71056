//! Retention's rules (the server's `erase.rs` runs them): the content of records received longer ago than the
//! configured age is erased on a schedule, as erasure records with reason
//! `retention` (docs/DESIGN.md section 3b), by the daemon itself.
//!
//! Each rule (the default age, and one per kind with its own age) keeps a
//! watermark: the first seq that can have been received after its last
//! cutoff (the `times` index, section 4c). Every record before it was
//! received before that cutoff and has been dealt with, so a pass reads
//! only the records from the watermark on, not the whole log every minute.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tally_client::proto::Filter;

use super::Selection;

/// Default pause between retention passes.
pub const DEFAULT_RETENTION_INTERVAL_SECS: u64 = 60;

/// The reason retention's erasure records give.
pub const RETENTION_REASON: &str = "retention";

/// The `[retention]` table of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Erase the content of records received longer ago than this many
    /// seconds (0: keep content forever).
    pub payload_max_age_secs: u64,
    /// Per kind, an age that replaces `payload_max_age_secs` for records of
    /// that kind (0: keep that kind's content forever).
    pub kinds: BTreeMap<String, u64>,
    /// Seconds between passes.
    pub interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            payload_max_age_secs: 0,
            kinds: BTreeMap::new(),
            interval_secs: DEFAULT_RETENTION_INTERVAL_SECS,
        }
    }
}

impl RetentionConfig {
    /// Whether any rule erases anything.
    pub fn is_active(&self) -> bool {
        self.payload_max_age_secs > 0 || self.kinds.values().any(|age| *age > 0)
    }

    /// The rules: (kinds the rule covers, kinds it leaves alone, age).
    pub fn rules(&self) -> Vec<Rule> {
        let mut rules = Vec::new();
        if self.payload_max_age_secs > 0 {
            rules.push(Rule {
                kind: None,
                except: self.kinds.keys().cloned().collect(),
                max_age: Duration::from_secs(self.payload_max_age_secs),
                watermark: 0,
            });
        }
        for (kind, age) in &self.kinds {
            if *age > 0 {
                rules.push(Rule {
                    kind: Some(kind.clone()),
                    except: Vec::new(),
                    max_age: Duration::from_secs(*age),
                    watermark: 0,
                });
            }
        }
        rules
    }
}

/// One age and the records it applies to.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Only this kind (a per-kind rule), or every kind but `except`.
    pub kind: Option<String>,
    pub except: Vec<String>,
    pub max_age: Duration,
    /// Records before this seq were dealt with by an earlier pass.
    pub watermark: u64,
}

impl Rule {
    /// The selection of one pass at `now`, and its cutoff.
    pub fn selection(&self, now: i64) -> (Selection, i64) {
        let age = i64::try_from(self.max_age.as_nanos()).unwrap_or(i64::MAX);
        let cutoff = now.saturating_sub(age);
        let selection = Selection {
            from: self.watermark,
            to: None,
            filter: Filter {
                until_unix_nanos: Some(cutoff),
                kinds: self.kind.iter().cloned().collect(),
                ..Filter::default()
            },
            except_kinds: self.except.clone(),
        };
        (selection, cutoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_split_the_default_age_from_the_kinds_with_their_own() {
        let config = RetentionConfig {
            payload_max_age_secs: 30 * 86_400,
            kinds: BTreeMap::from([("prompt".to_owned(), 7 * 86_400), ("audit".to_owned(), 0)]),
            interval_secs: 60,
        };
        assert!(config.is_active());
        let rules = config.rules();
        assert_eq!(
            rules.len(),
            2,
            "a kind with age 0 keeps its content: no rule"
        );
        assert_eq!(rules[0].kind, None);
        assert_eq!(
            rules[0].except,
            vec!["audit".to_owned(), "prompt".to_owned()]
        );
        assert_eq!(rules[1].kind.as_deref(), Some("prompt"));
        let now = 1_000_000 * 1_000_000_000;
        let (selection, cutoff) = rules[1].selection(now);
        assert_eq!(cutoff, now - 7 * 86_400 * 1_000_000_000);
        assert_eq!(selection.filter.until_unix_nanos, Some(cutoff));
        assert_eq!(selection.filter.kinds, vec!["prompt".to_owned()]);
        assert!(!RetentionConfig::default().is_active());
    }
}
