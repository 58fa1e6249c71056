//! The content check of `tally verify`, in prose and as data (one file for
//! the whole-log and the range verdicts, which share it): openings checked
//! against their commitments, and absent content against erasure records
//! (docs/DESIGN.md section 8, docs/VERIFY-JSON.md `content`).

use serde_json::{json, Value};
use tally_attest::verify::{ContentDamage, ContentSummary, ContentVerdict};

use crate::cli::check_json::{check, kind_of, Status};

/// The text line.
pub fn content_line(verdict: &ContentVerdict) -> String {
    match verdict {
        ContentVerdict::Checked(summary) => {
            let mut line = format!(
                "OK ({} committed records: {} contents open their commitments, {} erased (an erasure record covers each)",
                summary.committed, summary.opened, summary.erased
            );
            if summary.redacted > 0 {
                line.push_str(&format!(
                    ", {} redacted (left out of this bundle on purpose)",
                    summary.redacted
                ));
            }
            line.push(')');
            if let (n, Some(first)) = (summary.unproven, summary.first_unproven) {
                line = format!(
                    "UNPROVEN: {n} contents absent (first seq {first}) with no erasure record in the range; {}",
                    &line
                );
            }
            line
        }
        ContentVerdict::Damaged(damage) => format!("FAILED: {damage}"),
        ContentVerdict::NotChecked(why) => format!("NOT CHECKED ({why})"),
    }
}

/// The `content` check object.
pub fn content_check(verdict: &ContentVerdict) -> Value {
    let message = content_line(verdict);
    match verdict {
        ContentVerdict::Checked(summary) => {
            let status = if summary.unproven > 0 {
                Status::Partial
            } else {
                Status::Pass
            };
            check("content", status, message, counts(summary))
        }
        ContentVerdict::Damaged(damage) => {
            check("content", Status::Fail, message, damage_fields(damage))
        }
        ContentVerdict::NotChecked(_) => check("content", Status::Skipped, message, json!({})),
    }
}

fn counts(summary: &ContentSummary) -> Value {
    let mut fields = json!({
        "committed": summary.committed,
        "opened": summary.opened,
        "erased": summary.erased,
        "redacted": summary.redacted,
        "erasure_records": summary.erasure_records,
    });
    if let Some(first) = summary.first_unproven {
        fields["unproven"] = json!(summary.unproven);
        fields["seq"] = json!(first);
    }
    fields
}

fn damage_fields(damage: &ContentDamage) -> Value {
    let kind = kind_of(damage);
    match damage {
        ContentDamage::ContentMismatch { seq }
        | ContentDamage::ContentMissing { seq }
        | ContentDamage::MalformedBody { seq, .. } => json!({"kind": kind, "seq": seq}),
        ContentDamage::ErasedContentPresent { seq, erasure_seq } => {
            json!({"kind": kind, "seq": seq, "erasure_seq": erasure_seq})
        }
        ContentDamage::ErasureBeyondItself { erasure_seq } => {
            json!({"kind": kind, "seq": erasure_seq, "erasure_seq": erasure_seq})
        }
        _ => json!({"kind": kind}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damage_names_its_kind_and_seq() {
        let value = content_check(&ContentVerdict::Damaged(ContentDamage::ContentMissing {
            seq: 7,
        }));
        assert_eq!(value["status"], "fail");
        assert_eq!(value["kind"], "content_missing");
        assert_eq!(value["seq"], 7);
        let value = content_check(&ContentVerdict::Checked(ContentSummary {
            committed: 3,
            opened: 1,
            unproven: 2,
            first_unproven: Some(4),
            ..ContentSummary::default()
        }));
        assert_eq!(value["status"], "partial");
        assert_eq!(value["unproven"], 2);
        assert_eq!(value["seq"], 4);
    }
}
