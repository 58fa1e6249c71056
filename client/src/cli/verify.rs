//! `tally verify`: one verdict per property, exit 1 on any failure.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use prost::Message;
use serde_json::{json, Value};
use tally_attest::anchor::{AnchorPolicy, FreshAttestation};
use tally_attest::evidence::verify::AkPublicKey;
use tally_attest::verify::{AnchorsVerdict, CounterVerdict, CurrentVerdict};
use tally_attest::{verify_bundle, Report, VerifyOptions};

/// Default NV counter index of tallyd.
pub const DEFAULT_COUNTER_INDEX: &str = "0x01c17a11";

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The bundle file (from `tally export`).
    pub bundle: PathBuf,
    /// The TPM attestation key's public key (PEM), obtained out of band (from
    /// `tallyd provision`, i.e. <data_dir>/tpm/ak.pem). Without it, TPM
    /// anchors are not checked.
    #[arg(long)]
    pub ak: Option<PathBuf>,
    /// A fresh attestation (from `tally attest`) to check the log is current.
    #[arg(long, requires_all = ["ak", "nonce"])]
    pub attestation: Option<PathBuf>,
    /// The nonce (hex) you chose for that attestation.
    #[arg(long, requires = "attestation")]
    pub nonce: Option<String>,
    /// The NV counter index the anchors must certify.
    #[arg(long, default_value = DEFAULT_COUNTER_INDEX)]
    pub counter_index: String,
    /// The log's Ed25519 checkpoint key (C2SP verifier key, or a file holding
    /// it, e.g. <data_dir>/tpm/log-key.pub): every checkpoint must be signed by it.
    #[arg(long, requires = "ak")]
    pub log_key: Option<String>,
    /// Print the verdicts as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses "0x01c17a11" (or without 0x) as an NV index handle.
pub fn parse_index(text: &str) -> anyhow::Result<u32> {
    let digits = text.trim_start_matches("0x").trim_start_matches("0X");
    u32::from_str_radix(digits, 16).with_context(|| format!("{text:?} is not a hex NV index"))
}

/// A C2SP verifier key given inline or as a file.
pub fn load_log_key(text: &str) -> anyhow::Result<tally_attest::note::Verifier> {
    let key = match std::fs::read_to_string(text) {
        Ok(contents) => contents,
        Err(_) => text.to_owned(),
    };
    tally_attest::note::Verifier::parse(key.trim())
        .with_context(|| format!("{text:?} is not a log key"))
}

/// Reads a PEM AK public key.
pub fn load_ak(path: &Path) -> anyhow::Result<AkPublicKey> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    AkPublicKey::from_pem(&pem)
        .with_context(|| format!("{} is not a P-256 public key in PEM", path.display()))
}

pub fn run(args: &VerifyArgs, progress: impl FnMut(u64, u64)) -> anyhow::Result<ExitCode> {
    let policy = match &args.ak {
        Some(path) => Some(AnchorPolicy {
            ak: load_ak(path)?,
            counter_index: parse_index(&args.counter_index)?,
            log_key: args.log_key.as_deref().map(load_log_key).transpose()?,
        }),
        None => None,
    };
    let attestation = match &args.attestation {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            Some(
                FreshAttestation::decode(bytes.as_slice())
                    .with_context(|| format!("{} is not a Tally attestation", path.display()))?,
            )
        }
        None => None,
    };
    let nonce = match &args.nonce {
        Some(text) => hex::decode(text).context("--nonce is not hex")?,
        None => Vec::new(),
    };
    let file = File::open(&args.bundle)
        .with_context(|| format!("cannot open {}", args.bundle.display()))?;
    let options = VerifyOptions {
        policy: policy.as_ref(),
        fresh: attestation
            .as_ref()
            .map(|attestation| (attestation, nonce.as_slice())),
    };
    let report = match verify_bundle(BufReader::with_capacity(1 << 20, file), options, progress) {
        Ok(report) => report,
        Err(err) => {
            if args.json {
                println!("{}", json!({"ok": false, "error": err.to_string()}));
            } else {
                println!("bundle readable: FAILED: {err}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    if args.json {
        println!("{}", to_json(&report));
    } else {
        print_human(
            &report,
            policy
                .as_ref()
                .and_then(|p| p.log_key.as_ref())
                .map(|key| key.to_key_string()),
        );
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn chain_line(report: &Report) -> String {
    match &report.chain {
        Ok(chain) => format!(
            "OK ({} records, head {})",
            chain.size,
            hex::encode(chain.head_hash)
        ),
        Err(damage) => format!("FAILED: chain damaged: {damage}"),
    }
}

fn anchors_line(verdict: &AnchorsVerdict) -> String {
    match verdict {
        AnchorsVerdict::Valid { count } => format!("OK ({count} anchors, TPM evidence verified)"),
        AnchorsVerdict::Invalid(violation) => format!("FAILED: {violation}"),
        AnchorsVerdict::NotChecked(why) => format!("NOT CHECKED: {why}"),
    }
}

fn counter_line(verdict: &CounterVerdict) -> String {
    match verdict {
        CounterVerdict::Continuous { first, last } => {
            format!("OK (counter {first} to {last}, no gap)")
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
        CurrentVerdict::Current { counter, grown_since: 0 } => {
            format!("OK (the last anchor is the TPM's current counter {counter})")
        }
        CurrentVerdict::Current { counter, grown_since } => format!(
            "OK (the last anchor is the TPM's current counter {counter}; the live log has {grown_since} newer, unanchored records not in this bundle)"
        ),
        CurrentVerdict::NotCurrent {
            last_anchor,
            tpm_counter,
        } => format!(
            "FAILED: not current: {} anchors missing (the log's last anchor is counter {last_anchor}, the TPM's counter is {tpm_counter}): rolled back, truncated, or an older export",
            tpm_counter - last_anchor
        ),
        CurrentVerdict::AttestationBehind {
            last_anchor,
            tpm_counter,
        } => format!(
            "FAILED: the attestation's counter {tpm_counter} is behind the log's last anchor {last_anchor} (an old attestation, or another counter)"
        ),
        CurrentVerdict::NoAnchor { tpm_counter } => {
            format!("FAILED: the log has no anchor to compare with the TPM's counter {tpm_counter}")
        }
        CurrentVerdict::Invalid(error) => format!("FAILED: attestation: {error}"),
        CurrentVerdict::Inconsistent(why) => format!("FAILED: {why}"),
        CurrentVerdict::NotChecked(why) => format!("NOT CHECKED: {why}"),
    }
}

fn print_human(report: &Report, log_key_name: Option<String>) {
    println!("chain intact:       {}", chain_line(report));
    println!("anchors valid:      {}", anchors_line(&report.anchors));
    println!("counter continuous: {}", counter_line(&report.counter));
    println!("current:            {}", current_line(&report.current));
    if let Some(unanchored) = report.unanchored {
        println!("unanchored tail:    {unanchored} records after the last anchor (not yet protected against rollback)");
    }
    if matches!(report.anchors, AnchorsVerdict::Valid { .. }) {
        match &log_key_name {
            Some(name) => println!("checkpoint keys:    OK (every checkpoint is signed by {name})"),
            None => println!("checkpoint keys:    NOT CHECKED (no --log-key)"),
        }
    }
    if matches!(report.anchors, AnchorsVerdict::NotChecked(_)) {
        println!("note: without TPM anchors checked, a consistent rewrite of the whole bundle is not detected");
    }
    println!(
        "verdict:            {}",
        if report.passed() { "PASS" } else { "FAIL" }
    );
}

fn to_json(report: &Report) -> Value {
    let (size, head) = match &report.chain {
        Ok(chain) => (Some(chain.size), Some(hex::encode(chain.head_hash))),
        Err(_) => (None, None),
    };
    json!({
        "ok": report.passed(),
        "log_id": hex::encode(&report.header.log_id),
        "size": size,
        "head_hash": head,
        "first_bad_seq": report.chain.as_ref().err().map(|damage| damage.first_bad_seq()),
        "chain": chain_line(report),
        "anchors": anchors_line(&report.anchors),
        "counter": counter_line(&report.counter),
        "current": current_line(&report.current),
        "unanchored": report.unanchored,
    })
}
