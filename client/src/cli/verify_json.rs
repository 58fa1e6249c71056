//! `tally verify --json`: the verdicts as data, schema 1 (docs/VERIFY-JSON.md).
//! One object per check (`name`, `status`, `message`, and the fields that
//! check has: seq, counter, size, the kind of damage), the overall verdict
//! and the exit code. The text output (verify.rs) says the same in prose.
//!
//! A damage `kind` is the snake_case name of the verifier's own error
//! variant (`RecordModified` -> `record_modified`), taken from its Debug
//! form: so a check or a violation added to tally-attest shows up here with
//! its name, without a second list to keep in step. `message` is its Display.

use serde_json::{json, Value};
use tally_attest::anchor::{AnchorPolicy, CounterFinding};
use tally_attest::verify::{
    AnchorViolation, AnchorsVerdict, ContentVerdict, CounterVerdict, CurrentVerdict, OriginVerdict,
    Verdict,
};
use tally_attest::Report;

pub use crate::cli::check_json::{check, kind_of, Status};

/// Bumped when a field changes meaning or goes away (adding one does not).
pub const SCHEMA: u64 = 1;

fn chain(report: &Report, line: String) -> Value {
    match &report.chain {
        Ok(chain) => check(
            "chain",
            Status::Pass,
            line,
            json!({"size": chain.size, "head_hash": hex::encode(chain.head_hash), "from_seq": report.start_seq}),
        ),
        Err(damage) => check(
            "chain",
            Status::Fail,
            damage.to_string(),
            json!({"kind": kind_of(damage), "seq": damage.first_bad_seq()}),
        ),
    }
}

fn origin(verdict: &OriginVerdict, line: String) -> Value {
    match verdict {
        OriginVerdict::Genesis { counter } => {
            check("origin", Status::Pass, line, json!({"counter": counter}))
        }
        OriginVerdict::Trusted { counter, size } => check(
            "origin",
            Status::Pass,
            line,
            json!({"counter": counter, "size": size}),
        ),
        OriginVerdict::Mismatch {
            expected_counter,
            found_counter,
        } => check(
            "origin",
            Status::Fail,
            line,
            json!({"kind": kind_of(verdict), "expected_counter": expected_counter, "counter": found_counter}),
        ),
        OriginVerdict::NotPinned(why) => check("origin", Status::Skipped, (*why).into(), json!({})),
    }
}

fn violation_fields(violation: &AnchorViolation) -> Value {
    let mut fields = json!({"kind": kind_of(violation)});
    match violation {
        AnchorViolation::Invalid { position, error } => {
            fields["position"] = json!(position);
            fields["cause"] = json!(kind_of(error));
        }
        AnchorViolation::WrongLog { counter, found } => {
            fields["counter"] = json!(counter);
            fields["found_log_id"] = json!(hex::encode(found));
        }
        AnchorViolation::CheckpointMismatch { counter, size } => {
            fields["counter"] = json!(counter);
            fields["size"] = json!(size);
        }
        AnchorViolation::BeyondLog {
            counter,
            size,
            log_size,
        } => {
            fields["counter"] = json!(counter);
            fields["size"] = json!(size);
            fields["log_size"] = json!(log_size);
        }
        AnchorViolation::Since(error) => fields["cause"] = json!(kind_of(error)),
        AnchorViolation::StartUnproven {
            counter,
            size,
            start,
        } => {
            fields["counter"] = json!(counter);
            fields["size"] = json!(size);
            fields["seq"] = json!(start);
        }
        // A violation added later keeps its kind and message.
        _ => {}
    }
    fields
}

fn anchors(verdict: &AnchorsVerdict, line: String) -> Value {
    match verdict {
        AnchorsVerdict::Valid {
            count,
            signatures_checked,
        } => check(
            "anchors",
            if count == signatures_checked {
                Status::Pass
            } else {
                Status::Partial
            },
            line,
            json!({"count": count, "signatures_checked": signatures_checked}),
        ),
        AnchorsVerdict::Invalid(violation) => check(
            "anchors",
            Status::Fail,
            violation.to_string(),
            violation_fields(violation),
        ),
        AnchorsVerdict::NoAnchors => check(
            "anchors",
            Status::Fail,
            line,
            json!({"kind": kind_of(verdict), "count": 0}),
        ),
        AnchorsVerdict::NotChecked(why) => {
            check("anchors", Status::Skipped, (*why).into(), json!({}))
        }
    }
}

/// The two anchors a counter finding sits between (`None` for a finding
/// added to tally-attest later: its kind and message still show).
fn around(finding: &CounterFinding) -> (Option<u64>, Option<u64>) {
    match *finding {
        CounterFinding::Gap { after, next }
        | CounterFinding::GapAcrossReset { after, next, .. }
        | CounterFinding::NotIncreasing { after, next }
        | CounterFinding::PrevMismatch { after, next }
        | CounterFinding::SizeShrank { after, next, .. }
        | CounterFinding::ClockWentBack { after, next, .. }
        | CounterFinding::ResetCountWentBack { after, next, .. } => (Some(after), Some(next)),
        _ => (None, None),
    }
}

fn counter(verdict: &CounterVerdict, line: String) -> Value {
    match verdict {
        CounterVerdict::Continuous { first, last } => check(
            "counter",
            Status::Pass,
            line,
            json!({"first": first, "last": last}),
        ),
        CounterVerdict::Broken(findings) => {
            let listed: Vec<Value> = findings
                .iter()
                .map(|finding| {
                    let (after, next) = around(finding);
                    json!({"kind": kind_of(finding), "after": after, "next": next, "message": finding.to_string()})
                })
                .collect();
            let first = listed.first().cloned().unwrap_or(Value::Null);
            check(
                "counter",
                Status::Fail,
                line,
                json!({"kind": first["kind"], "counter": first["after"], "findings": listed}),
            )
        }
        CounterVerdict::NotChecked(why) => {
            check("counter", Status::Skipped, (*why).into(), json!({}))
        }
    }
}

fn current(verdict: &CurrentVerdict, line: String) -> Value {
    let kind = kind_of(verdict);
    match verdict {
        CurrentVerdict::Current {
            tpm_counter,
            anchors_since,
            grown_by,
        } => check(
            "current",
            Status::Pass,
            line,
            json!({"tpm_counter": tpm_counter, "anchors_since": anchors_since, "grown_by": grown_by}),
        ),
        CurrentVerdict::NotCurrent {
            last_anchor,
            tpm_counter,
        }
        | CurrentVerdict::AttestationBehind {
            last_anchor,
            tpm_counter,
        } => check(
            "current",
            Status::Fail,
            line,
            json!({"kind": kind, "counter": last_anchor, "tpm_counter": tpm_counter}),
        ),
        CurrentVerdict::NoAnchor { tpm_counter } => check(
            "current",
            Status::Fail,
            line,
            json!({"kind": kind, "tpm_counter": tpm_counter}),
        ),
        CurrentVerdict::ClockWentBack(finding) => check(
            "current",
            Status::Fail,
            line,
            json!({"kind": kind, "cause": kind_of(finding), "counter": around(finding).0}),
        ),
        CurrentVerdict::Invalid(error) => check(
            "current",
            Status::Fail,
            line,
            json!({"kind": kind, "cause": kind_of(error)}),
        ),
        CurrentVerdict::Inconsistent(_) => {
            check("current", Status::Fail, line, json!({"kind": kind}))
        }
        CurrentVerdict::NotChecked(why) => {
            check("current", Status::Skipped, (*why).into(), json!({}))
        }
    }
}

fn checkpoint_keys(report: &Report, policy: Option<&AnchorPolicy>) -> Option<Value> {
    if !matches!(report.anchors, AnchorsVerdict::Valid { .. }) {
        return None;
    }
    Some(match policy.and_then(|policy| policy.log_key.as_ref()) {
        Some(key) => check(
            "checkpoint_keys",
            Status::Pass,
            format!("every checkpoint is signed by {}", key.to_key_string()),
            json!({"key": key.to_key_string()}),
        ),
        None => check(
            "checkpoint_keys",
            Status::Skipped,
            "no log key".into(),
            json!({}),
        ),
    })
}

/// The prose of each check, as the text output prints it (passed in so this
/// module renders data and verify.rs keeps the wording).
pub struct Lines {
    pub chain: String,
    pub origin: String,
    pub anchors: String,
    pub counter: String,
    pub current: String,
}

/// The whole document for a bundle that was read.
pub fn report_json(
    report: &Report,
    verdict: &Verdict,
    policy: Option<&AnchorPolicy>,
    lines: Lines,
) -> Value {
    let mut checks = vec![
        chain(report, lines.chain),
        origin(&report.origin, lines.origin),
        anchors(&report.anchors, lines.anchors),
        counter(&report.counter, lines.counter),
        current(&report.current, lines.current),
        crate::cli::verify_content::content_check(&report.content),
    ];
    checks.extend(checkpoint_keys(report, policy));
    let (size, head) = match &report.chain {
        Ok(chain) => (Some(chain.size), Some(hex::encode(chain.head_hash))),
        Err(_) => (None, None),
    };
    let not_checked: Vec<&str> = match verdict {
        Verdict::Partial(missing) => missing.clone(),
        _ => Vec::new(),
    };
    json!({
        "schema": SCHEMA,
        "verdict": verdict_word(verdict),
        "exit_code": verdict.exit_code(),
        "ok": *verdict == Verdict::Pass,
        "log_id": hex::encode(&report.header.log_id),
        "size": size,
        "head_hash": head,
        // The chain's damage, else the content check's (a record whose
        // content was removed or swapped is a damaged record too).
        "first_bad_seq": match (&report.chain, &report.content) {
            (Err(damage), _) => Some(damage.first_bad_seq()),
            (Ok(_), ContentVerdict::Damaged(damage)) => Some(damage.seq()),
            _ => None,
        },
        "anchor_count": match report.anchors {
            AnchorsVerdict::Valid { count, .. } => Some(count),
            _ => None,
        },
        "protected_records": report.coverage.map(|coverage| coverage.protected),
        "unprotected_tail": report.coverage.map(|coverage| coverage.size - coverage.protected),
        "not_checked": not_checked,
        "acknowledged_gaps": report.acknowledged_gaps.iter().map(|gap| json!({
            "after": gap.after, "next": gap.next, "reviewed_by": gap.reviewed_by, "reason": gap.reason,
        })).collect::<Vec<_>>(),
        "checks": checks,
    })
}

/// The document for a bundle that could not be read at all (exit 1).
pub fn unreadable_json(error: &impl std::fmt::Display, kind: String) -> Value {
    json!({
        "schema": SCHEMA,
        "verdict": "fail",
        "exit_code": 1,
        "ok": false,
        "log_id": null,
        "size": null,
        "head_hash": null,
        "first_bad_seq": null,
        "anchor_count": null,
        "protected_records": null,
        "unprotected_tail": null,
        "not_checked": [],
        "acknowledged_gaps": [],
        "checks": [check("bundle", Status::Fail, error.to_string(), json!({"kind": kind}))],
    })
}

pub fn verdict_word(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "pass",
        Verdict::Fail => "fail",
        Verdict::Partial(_) => "partial",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    #[allow(dead_code)]
    enum Sample {
        RecordModified { seq: u64 },
        Gap(u64),
        NoAnchors,
    }

    #[test]
    fn a_kind_is_the_variants_snake_case_name() {
        assert_eq!(
            kind_of(&Sample::RecordModified { seq: 3 }),
            "record_modified"
        );
        assert_eq!(kind_of(&Sample::Gap(1)), "gap");
        assert_eq!(kind_of(&Sample::NoAnchors), "no_anchors");
    }
}
