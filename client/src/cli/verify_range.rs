//! `tally verify` on a range bundle: the verdicts of
//! `tally_attest::range::verify_range_bundle`, printed. The logic and the
//! verdict types live in attest; this file only renders them.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::{json, Value};
use tally_attest::anchor::AnchorPolicy;
use tally_attest::range::{
    is_range_bundle, verify_range_bundle, RangeAnchorVerdict, RangeDamage, RangeReport,
};
use tally_attest::verify::Verdict;

use crate::cli::verify_json::{check, kind_of, unreadable_json, verdict_word, Status, SCHEMA};

/// True when the file starts with the range bundle's magic.
pub fn is_range_file(path: &Path) -> anyhow::Result<bool> {
    let mut prefix = Vec::with_capacity(16);
    File::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .take(16)
        .read_to_end(&mut prefix)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(is_range_bundle(&prefix))
}

/// Verifies the range bundle `bundle` and prints the verdicts (`json`: as
/// docs/VERIFY-JSON.md). `whole_log_flags`: the caller was given flags that
/// only a whole-log bundle can use (refused, naming them).
pub fn run(
    bundle: &Path,
    json: bool,
    whole_log_flags: bool,
    policy: Option<&AnchorPolicy>,
) -> anyhow::Result<ExitCode> {
    if whole_log_flags {
        anyhow::bail!(
            "{} is a range bundle, proven against its one anchor: --attestation, --trusted, --save-trusted and --accept-gap apply to whole-log bundles only",
            bundle.display()
        );
    }
    let file = File::open(bundle).with_context(|| format!("cannot open {}", bundle.display()))?;
    let report = match verify_range_bundle(BufReader::with_capacity(1 << 20, file), policy) {
        Ok(report) => report,
        Err(err) => {
            if json {
                println!("{}", unreadable_json(&err, kind_of(&err)));
            } else {
                println!("bundle readable:    FAILED: {err}");
                println!("verdict:            FAIL");
            }
            return Ok(ExitCode::from(1));
        }
    };
    let verdict = report.verdict();
    if json {
        println!("{}", to_json(&report, &verdict));
    } else {
        print_human(&report, &verdict, policy.is_some());
    }
    Ok(ExitCode::from(verdict.exit_code()))
}

fn range_line(report: &RangeReport) -> String {
    let header = &report.header;
    format!(
        "seqs {}..{} ({} records, inclusive), proven against the anchored log of {} records",
        header.first_seq,
        header
            .first_seq
            .saturating_add(header.count)
            .saturating_sub(1),
        header.count,
        header.tree_size
    )
}

fn anchor_line(verdict: &RangeAnchorVerdict) -> String {
    match verdict {
        RangeAnchorVerdict::Valid { counter, tree_size } => format!(
            "OK (TPM counter {counter}, {tree_size} records: its TPM evidence and checkpoint signature verify with the identity's keys)"
        ),
        RangeAnchorVerdict::NotChecked {
            counter, tree_size, ..
        } => format!(
            "NOT CHECKED (TPM counter {counter}, {tree_size} records, its evidence not verified: no --identity)"
        ),
        RangeAnchorVerdict::Invalid(error) => format!("FAILED: {error}"),
        RangeAnchorVerdict::WrongLog { counter, found } => format!(
            "FAILED: anchor {counter} is for another log (log id {})",
            hex::encode(found)
        ),
        RangeAnchorVerdict::SizeMismatch {
            counter,
            checkpoint,
            header,
        } => format!(
            "FAILED: anchor {counter} covers {checkpoint} records, the bundle claims a proof against {header}"
        ),
    }
}

fn records_line(report: &RangeReport) -> String {
    match &report.records {
        Ok(proven) => format!(
            "OK (seqs {}..{} are exactly entries {}..{} of the log whose Merkle root at {} records is {}; each links to the one before)",
            proven.first_seq,
            proven.last_seq,
            proven.first_seq,
            proven.last_seq,
            proven.tree_size,
            hex::encode(proven.root)
        ),
        Err(damage) => format!("FAILED: {damage}"),
    }
}

fn verdict_text(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Pass => "PASS".into(),
        Verdict::Fail => "FAIL".into(),
        Verdict::Partial(missing) => format!("PARTIAL (not checked: {})", missing.join("; ")),
    }
}

fn print_human(report: &RangeReport, verdict: &Verdict, with_identity: bool) {
    println!("log:                {}", hex::encode(&report.header.log_id));
    println!("range:              {}", range_line(report));
    println!("anchor valid:       {}", anchor_line(&report.anchor));
    println!("records proven:     {}", records_line(report));
    println!(
        "content:            {}",
        crate::cli::verify_content::content_line(&report.content)
    );
    if let Some(disclosed) = &report.disclosed {
        println!(
            "disclosed:          seq {}: {} bytes of content (after its {}-byte salt), opening the commitment {} in the proven record",
            disclosed.seq,
            disclosed.content_len,
            tally_attest::content::SALT_LEN,
            hex::encode(disclosed.commitment)
        );
    }
    println!("note: a range bundle proves nothing about the records outside it, beyond the root they share");
    if !with_identity {
        println!("note: without the log's identity, anyone could have made the anchor and the records together");
    }
    println!("verdict:            {}", verdict_text(verdict));
}

/// Schema 1 of docs/VERIFY-JSON.md for a range bundle: the range's fields,
/// and two checks, `anchor` and `records`.
fn to_json(report: &RangeReport, verdict: &Verdict) -> Value {
    let not_checked: Vec<&str> = match verdict {
        Verdict::Partial(missing) => missing.clone(),
        _ => Vec::new(),
    };
    let header = &report.header;
    let proven = report.records.as_ref().ok();
    json!({
        "schema": SCHEMA,
        "verdict": verdict_word(verdict),
        "exit_code": verdict.exit_code(),
        "ok": *verdict == Verdict::Pass,
        "bundle_kind": "range",
        "log_id": hex::encode(&header.log_id),
        "first_seq": header.first_seq,
        "last_seq": header.first_seq.saturating_add(header.count).saturating_sub(1),
        "count": header.count,
        "tree_size": header.tree_size,
        "root": proven.map(|proven| hex::encode(proven.root)),
        "not_checked": not_checked,
        "disclosed": report.disclosed.as_ref().map(|d| json!({
            "seq": d.seq,
            "content_len": d.content_len,
            "commitment": hex::encode(d.commitment),
        })),
        "checks": [
            anchor_check(&report.anchor),
            records_check(report),
            crate::cli::verify_content::content_check(&report.content),
        ],
    })
}

fn anchor_check(verdict: &RangeAnchorVerdict) -> Value {
    let message = anchor_line(verdict);
    match verdict {
        RangeAnchorVerdict::Valid { counter, tree_size } => check(
            "anchor",
            Status::Pass,
            message,
            json!({"counter": counter, "tree_size": tree_size}),
        ),
        RangeAnchorVerdict::NotChecked {
            counter, tree_size, ..
        } => check(
            "anchor",
            Status::Skipped,
            message,
            json!({"counter": counter, "tree_size": tree_size}),
        ),
        RangeAnchorVerdict::Invalid(error) => check(
            "anchor",
            Status::Fail,
            message,
            json!({"kind": "invalid", "cause": kind_of(error)}),
        ),
        RangeAnchorVerdict::WrongLog { counter, found } => check(
            "anchor",
            Status::Fail,
            message,
            json!({"kind": "wrong_log", "counter": counter, "found_log_id": hex::encode(found)}),
        ),
        RangeAnchorVerdict::SizeMismatch {
            counter,
            checkpoint,
            header,
        } => check(
            "anchor",
            Status::Fail,
            message,
            json!({"kind": "size_mismatch", "counter": counter, "size": checkpoint, "tree_size": header}),
        ),
    }
}

fn records_check(report: &RangeReport) -> Value {
    let message = records_line(report);
    match &report.records {
        Ok(proven) => check(
            "records",
            Status::Pass,
            message,
            json!({
                "first_seq": proven.first_seq,
                "last_seq": proven.last_seq,
                "tree_size": proven.tree_size,
                "root": hex::encode(proven.root),
            }),
        ),
        Err(damage) => check("records", Status::Fail, message, damage_fields(damage)),
    }
}

/// A damage's kind and the numbers it names.
fn damage_fields(damage: &RangeDamage) -> Value {
    let kind = kind_of(damage);
    match damage {
        RangeDamage::Malformed { position, .. } => json!({"kind": kind, "position": position}),
        RangeDamage::WrongSeq {
            position,
            expected,
            found,
        } => json!({"kind": kind, "position": position, "seq": expected, "found": found}),
        RangeDamage::LinkBroken { seq } => json!({"kind": kind, "seq": seq}),
        RangeDamage::Truncated { declared, found } => {
            json!({"kind": kind, "declared": declared, "found": found})
        }
        RangeDamage::Extended { declared } => json!({"kind": kind, "declared": declared}),
        _ => json!({"kind": kind}),
    }
}
