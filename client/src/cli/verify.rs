//! `tally verify`: one verdict per property (chain, origin, anchors, counter,
//! current), printed as text or JSON; exit 0 PASS, 1 FAIL, 3 PARTIAL.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use prost::Message;
use serde_json::json;
use serde_json::Value;
use tally_attest::anchor::{verify_anchor, AnchorPolicy, FreshAttestation};
use tally_attest::identity::GapAck;
use tally_attest::verify::verify_sections;
use tally_attest::verify::{
    AnchorChecks, AnchorsVerdict, CounterVerdict, CurrentVerdict, Origin, OriginVerdict, Verdict,
};
use tally_attest::{verify_bundle, Report, VerifyOptions};
use tally_client::export::live::{LiveFrom, LiveSections};

use crate::cli::connect::Target;
use crate::cli::progress::progress_bar;
use crate::cli::sequential::SequentialReader;
use crate::cli::trust::{load_trust, TrustArgs};
use crate::cli::{verify_json, verify_live};

/// Which anchors' TPM signatures to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AnchorsArg {
    /// Every anchor (default; the only mode that can PASS).
    All,
    /// Only the origin's and the newest anchor's (fast; at best PARTIAL).
    Newest,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The bundle file (from `tally export`; a range bundle from `tally
    /// export --from/--to` is recognised and checked against its one anchor).
    #[arg(required_unless_present = "live", conflicts_with = "live")]
    pub bundle: Option<PathBuf>,
    /// Verify the log straight from the daemon (--socket / --vsock), with no
    /// bundle file: the same checks and verdicts as for a bundle, on the
    /// records and anchors the daemon streams (it is trusted for nothing).
    /// With --trusted, only the records and anchors after that anchor are read.
    #[arg(long)]
    pub live: bool,
    /// With --live: take a fresh attestation for a nonce chosen here, in the
    /// same run, so "current" is checked (as `export --attest` then
    /// `verify --attestation` would).
    #[arg(long, requires = "live", conflicts_with_all = ["attestation", "nonce"])]
    pub attest: bool,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// A fresh attestation (from `tally attest`) to check the log is current.
    #[arg(long, requires = "nonce")]
    pub attestation: Option<PathBuf>,
    /// The nonce (hex) you chose for that attestation.
    #[arg(long, requires = "attestation")]
    pub nonce: Option<String>,
    /// An anchor you verified before (from --save-trusted): verification
    /// starts there instead of at the genesis; earlier anchors are not
    /// checked again. With --live only the records after it are read and
    /// replayed (their link to it is proven); a bundle is still replayed whole.
    #[arg(long)]
    pub trusted: Option<PathBuf>,
    /// After a PASS, write the newest closed anchor here, for a later --trusted.
    #[arg(long)]
    pub save_trusted: Option<PathBuf>,
    /// A reviewed counter gap to accept (from `tally gap-ack`); repeatable.
    #[arg(long)]
    pub accept_gap: Vec<PathBuf>,
    /// Which anchors' TPM signatures to check.
    #[arg(long, value_enum, default_value_t = AnchorsArg::All)]
    pub anchors: AnchorsArg,
    /// Print the verdicts as JSON (schema 1, docs/VERIFY-JSON.md): the
    /// verdict, the exit code, and one object per check with its status,
    /// the kind of damage and fields such as seq and counter.
    #[arg(long)]
    pub json: bool,
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Verifies the bundle (or the daemon's log) with a progress bar and prints
/// the verdicts.
pub fn run(target: &Target, args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let bar = progress_bar("verifying");
    let code = verify(target, args, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    code
}

fn verify(
    target: &Target,
    args: &VerifyArgs,
    progress: impl FnMut(u64, u64),
) -> anyhow::Result<ExitCode> {
    let (policy, identity) = load_trust(&args.trust)?;
    if let Some(bundle) = args.bundle.as_deref() {
        if crate::cli::verify_range::is_range_file(bundle)? {
            let whole_log_flags = args.attestation.is_some()
                || args.trusted.is_some()
                || args.save_trusted.is_some()
                || !args.accept_gap.is_empty();
            return crate::cli::verify_range::run(
                bundle,
                args.json,
                whole_log_flags,
                policy.as_ref(),
            );
        }
    }
    if policy.is_none() && (args.attestation.is_some() || args.trusted.is_some() || args.attest) {
        anyhow::bail!(
            "--attestation, --attest and --trusted need the log's identity (--identity FILE)"
        );
    }
    let attestation = match &args.attestation {
        Some(path) => Some(
            FreshAttestation::decode(read(path)?.as_slice())
                .with_context(|| format!("{} is not a Tally attestation", path.display()))?,
        ),
        None => None,
    };
    let mut nonce = match &args.nonce {
        Some(text) => hex::decode(text).context("--nonce is not hex")?,
        None => Vec::new(),
    };
    let mut origin = identity.as_ref().map(|identity| Origin::Genesis {
        counter: identity.genesis_counter,
        anchor: identity.genesis_anchor,
    });
    let mut trusted_at = None;
    if let (Some(path), Some(policy)) = (&args.trusted, &policy) {
        let trusted = verify_anchor(policy, &read(path)?)
            .with_context(|| format!("the trusted anchor {} does not verify", path.display()))?;
        if let Some(identity) = &identity {
            // An anchor of another log (signed by the same TPM) is no
            // starting point for this one.
            if trusted.checkpoint.log_id != identity.log_id {
                anyhow::bail!(
                    "the trusted anchor {} is for another log (log id {}, the identity's is {})",
                    path.display(),
                    hex::encode(trusted.checkpoint.log_id),
                    hex::encode(identity.log_id)
                );
            }
        }
        trusted_at = Some((trusted.counter, trusted.checkpoint.size));
        origin = Some(Origin::Trusted {
            counter: trusted.counter,
            anchor: trusted.hash,
        });
    }
    let gaps = args
        .accept_gap
        .iter()
        .map(|path| {
            GapAck::from_json(&String::from_utf8_lossy(&read(path)?))
                .with_context(|| format!("{} is not a gap acknowledgement", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let anchor_checks = match args.anchors {
        AnchorsArg::All => AnchorChecks::All,
        AnchorsArg::Newest => AnchorChecks::Newest,
    };
    let options = VerifyOptions {
        policy: policy.as_ref(),
        origin,
        fresh: None,
        acknowledged_gaps: &gaps,
        anchor_checks,
    };
    let (result, source) = if args.live {
        let live_nonce: Option<[u8; 32]> = args.attest.then(rand::random);
        if let Some(live_nonce) = live_nonce {
            nonce = live_nonce.to_vec();
        }
        let from = LiveFrom {
            trusted: trusted_at,
            nonce: live_nonce,
        };
        let result = verify_live::verify(target, from, |sections: &mut LiveSections, fresh| {
            let fresh = fresh.map(|attestation| (attestation, nonce.as_slice()));
            verify_sections(sections, VerifyOptions { fresh, ..options }, progress)
        })?;
        (result, verify_live::source_json(target, trusted_at))
    } else {
        let path = args.bundle.as_deref().context("no bundle given")?;
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let input = SequentialReader::new(file);
        let fresh = attestation
            .as_ref()
            .map(|attestation| (attestation, nonce.as_slice()));
        (
            verify_bundle(
                BufReader::with_capacity(1 << 20, input),
                VerifyOptions { fresh, ..options },
                progress,
            ),
            json!({"kind": "bundle", "path": path.display().to_string()}),
        )
    };
    let report = match result {
        Ok(report) => report,
        Err(err) => {
            if args.json {
                let mut doc = verify_json::unreadable_json(&err, verify_json::kind_of(&err));
                doc["source"] = source;
                println!("{doc}");
            } else {
                println!(
                    "{} readable: FAILED: {err}",
                    if args.live { "log" } else { "bundle" }
                );
                println!("verdict:            FAIL");
            }
            return Ok(ExitCode::from(1));
        }
    };
    let verdict = report.verdict();
    if args.json {
        let mut doc = to_json(&report, &verdict, policy.as_ref());
        doc["source"] = source;
        println!("{doc}");
    } else {
        if args.live {
            println!(
                "source:             {}",
                verify_live::source_line(target, trusted_at)
            );
        }
        print_human(&report, &verdict, policy.as_ref());
    }
    if let (Verdict::Pass, Some(path), Some(bytes)) =
        (&verdict, &args.save_trusted, &report.last_closed_anchor)
    {
        std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        if !args.json {
            println!("trusted anchor written to {}", path.display());
        }
    }
    Ok(ExitCode::from(verdict.exit_code()))
}

fn chain_line(report: &Report) -> String {
    match &report.chain {
        Ok(chain) if report.start_seq > 0 => format!(
            "OK ({} records, head {}; seqs {}..{} replayed, linked to your trusted checkpoint at size {})",
            chain.size,
            hex::encode(chain.head_hash),
            report.start_seq,
            chain.size.saturating_sub(1),
            report.start_seq
        ),
        Ok(chain) => format!(
            "OK ({} records, head {})",
            chain.size,
            hex::encode(chain.head_hash)
        ),
        Err(damage) => format!("FAILED: chain damaged: {damage}"),
    }
}

fn origin_line(verdict: &OriginVerdict) -> String {
    match verdict {
        OriginVerdict::Genesis { counter } => {
            format!("OK (the first anchor is the log's genesis, counter {counter}, as the identity pins it)")
        }
        OriginVerdict::Trusted { counter, size } => format!(
            "OK (from your trusted anchor, counter {counter}, {size} records; earlier anchors not checked again)"
        ),
        OriginVerdict::Mismatch {
            expected_counter,
            found_counter: Some(found),
        } => format!(
            "FAILED: the first anchor (counter {found}) is not the pinned one (counter {expected_counter}): another log, a log rebuilt from seq 0, or its first anchors deleted"
        ),
        OriginVerdict::Mismatch {
            expected_counter, ..
        } => format!("FAILED: the pinned anchor (counter {expected_counter}) is not in the bundle"),
        OriginVerdict::NotPinned(why) => format!("NOT CHECKED: {why}"),
    }
}

fn anchors_line(verdict: &AnchorsVerdict) -> String {
    match verdict {
        AnchorsVerdict::Valid {
            count,
            signatures_checked,
        } if count == signatures_checked => {
            format!("OK ({count} anchors, TPM evidence verified for each)")
        }
        AnchorsVerdict::Valid {
            count,
            signatures_checked,
        } => format!(
            "OK ({count} anchors; TPM evidence verified for {signatures_checked}, the others bound to them by the chain of anchor hashes only)"
        ),
        AnchorsVerdict::Invalid(violation) => format!("FAILED: {violation}"),
        AnchorsVerdict::NoAnchors => {
            "FAILED: the bundle has no anchors, so nothing in it is protected (anchors stripped?)".into()
        }
        AnchorsVerdict::NotChecked(why) => format!("NOT CHECKED: {why}"),
    }
}

fn counter_line(verdict: &CounterVerdict) -> String {
    match verdict {
        CounterVerdict::Continuous { first, last } => {
            format!("OK (counter {first} to {last}, no gap, each anchor names the one before)")
        }
        CounterVerdict::Broken(findings) => {
            let text: Vec<String> = findings.iter().map(ToString::to_string).collect();
            format!("FAILED: {}", text.join("; "))
        }
        CounterVerdict::NotChecked(why) => format!("NOT CHECKED: {why}"),
    }
}

fn current_line(verdict: &CurrentVerdict) -> String {
    match verdict {
        CurrentVerdict::Current {
            tpm_counter,
            anchors_since,
            grown_by,
        } => {
            let mut line = format!(
                "OK (the TPM's counter is {tpm_counter}, one past the last anchor {}: every anchor's value is closed)",
                tpm_counter - 1
            );
            if *anchors_since > 0 || *grown_by > 0 {
                line.push_str(&format!(
                    "; the log grew by {grown_by} records since this export ({anchors_since} newer anchors checked, consistent with this bundle)"
                ));
            }
            line
        }
        CurrentVerdict::NotCurrent {
            last_anchor,
            tpm_counter,
        } => format!(
            "FAILED: not current: {} anchored counter values are missing (the last anchor here is {last_anchor}, the TPM's counter is {tpm_counter}): rolled back, truncated, or an older export (take the attestation with `tally attest --since BUNDLE`)",
            tpm_counter - last_anchor - 1
        ),
        CurrentVerdict::AttestationBehind {
            last_anchor,
            tpm_counter,
        } => format!(
            "FAILED: the attestation's counter {tpm_counter} is not past the last anchor {last_anchor} (an old attestation, another counter, or a value still open)"
        ),
        CurrentVerdict::NoAnchor { tpm_counter } => {
            format!("FAILED: the log has no anchor to compare with the TPM's counter {tpm_counter}")
        }
        CurrentVerdict::ClockWentBack(finding) => format!("FAILED: attestation: {finding}"),
        CurrentVerdict::Invalid(error) => format!("FAILED: attestation: {error}"),
        CurrentVerdict::Inconsistent(why) => format!("FAILED: {why}"),
        CurrentVerdict::NotChecked(why) => format!("NOT CHECKED: {why}"),
    }
}

fn coverage_line(report: &Report) -> Option<String> {
    let coverage = report.coverage?;
    let tail = coverage.size - coverage.protected;
    let protected = match coverage.protected {
        0 => "no records".to_owned(),
        n => format!("seqs 0..{} ({n} records)", n - 1),
    };
    Some(format!(
        "{protected} covered by closed anchors; unprotected tail: {}",
        match tail {
            0 => "none".to_owned(),
            n => format!(
                "seqs {}..{} ({n} records not yet covered by a closed anchor)",
                coverage.protected,
                coverage.size - 1
            ),
        }
    ))
}

fn verdict_text(report: &Report, verdict: &Verdict) -> String {
    match verdict {
        Verdict::Pass if report.acknowledged_gaps.is_empty() => "PASS".into(),
        Verdict::Pass => {
            let gaps: Vec<String> = report
                .acknowledged_gaps
                .iter()
                .map(|gap| {
                    format!(
                        "counter {} -> {}, reviewed by {}: {}",
                        gap.after, gap.next, gap.reviewed_by, gap.reason
                    )
                })
                .collect();
            format!(
                "PASS with {} acknowledged gap{} ({})",
                gaps.len(),
                if gaps.len() == 1 { "" } else { "s" },
                gaps.join("; ")
            )
        }
        Verdict::Fail => "FAIL".into(),
        Verdict::Partial(missing) => format!("PARTIAL (not checked: {})", missing.join("; ")),
    }
}

fn print_human(report: &Report, verdict: &Verdict, policy: Option<&AnchorPolicy>) {
    println!("log:                {}", hex::encode(&report.header.log_id));
    println!("chain intact:       {}", chain_line(report));
    println!("origin:             {}", origin_line(&report.origin));
    println!("anchors valid:      {}", anchors_line(&report.anchors));
    println!("counter continuous: {}", counter_line(&report.counter));
    println!("current:            {}", current_line(&report.current));
    println!(
        "content:            {}",
        crate::cli::verify_content::content_line(&report.content)
    );
    if let Some(line) = coverage_line(report) {
        println!("protected:          {line}");
    }
    if matches!(report.anchors, AnchorsVerdict::Valid { .. }) {
        match policy.and_then(|policy| policy.log_key.as_ref()) {
            Some(key) => println!(
                "checkpoint keys:    OK (every checkpoint is signed by {})",
                key.to_key_string()
            ),
            None => println!("checkpoint keys:    NOT CHECKED (no log key)"),
        }
    }
    if policy.is_none() {
        println!("note: without the log's identity, a consistent rewrite of the whole bundle is not detected");
    }
    println!("verdict:            {}", verdict_text(report, verdict));
}

fn to_json(report: &Report, verdict: &Verdict, policy: Option<&AnchorPolicy>) -> Value {
    verify_json::report_json(
        report,
        verdict,
        policy,
        verify_json::Lines {
            chain: chain_line(report),
            origin: origin_line(&report.origin),
            anchors: anchors_line(&report.anchors),
            counter: counter_line(&report.counter),
            current: current_line(&report.current),
        },
    )
}
