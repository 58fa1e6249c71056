//! `tally prove` and `tally verify-proof`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use tally_attest::proof::{verify_proof_file, VerifiedProof};
use tally_client::Client;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::cli::trust::{load_trust, TrustArgs};

#[derive(Debug, clap::Subcommand)]
pub enum Prove {
    /// Prove that record SEQ is in the log, against a TPM-anchored checkpoint.
    Inclusion {
        #[arg(long)]
        seq: u64,
        /// The anchored log size to prove against [default: the newest anchor].
        #[arg(long, default_value_t = 0)]
        size: u64,
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Prove that the log at one anchored size extends the log at an older one.
    Consistency {
        /// The older anchored size.
        #[arg(long)]
        from: u64,
        /// The newer anchored size [default: the newest anchor].
        #[arg(long, default_value_t = 0)]
        to: u64,
        #[arg(long, short)]
        out: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct VerifyProofArgs {
    /// A proof file from `tally prove`.
    pub proof: PathBuf,
    #[command(flatten)]
    pub trust: TrustArgs,
}

pub async fn prove<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client<S>,
    what: &Prove,
) -> anyhow::Result<()> {
    let (result, out, newest) = match what {
        Prove::Inclusion { seq, size, out } => (
            client.prove_inclusion(*seq, *size).await,
            out,
            // The newest anchor must cover the record: seq < its size.
            (*size == 0).then_some(*seq + 1),
        ),
        Prove::Consistency { from, to, out } => (
            client.prove_consistency(*from, *to).await,
            out,
            (*to == 0).then_some(*from + 1),
        ),
    };
    let bytes = match (result, newest) {
        (Ok(bytes), _) => bytes,
        // Against the newest anchor, the usual reason on a new log is that no
        // anchor covers the record yet: say what to do, from the daemon's status.
        (Err(err), Some(needed)) => {
            let status = client.status().await?;
            match not_yet_anchored(&status, needed) {
                Some(advice) => anyhow::bail!("{advice}"),
                None => return Err(err.into()),
            }
        }
        (Err(err), None) => return Err(err.into()),
    };
    std::fs::write(out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    println!("proof written to {} ({} bytes)", out.display(), bytes.len());
    Ok(())
}

/// When the newest anchor does not cover `needed` records, what to do about it.
pub fn not_yet_anchored(status: &tally_client::proto::StatusReply, needed: u64) -> Option<String> {
    if !status.tpm_enabled {
        return Some(
            "this daemon runs without a TPM (tpm.enabled = false): there are no anchors to prove against".into(),
        );
    }
    if status.last_anchor_size >= needed {
        return None;
    }
    let newest = match (status.last_anchor_size, status.last_anchor_age_millis) {
        (0, 0) => "the log has no anchor yet".to_owned(),
        (size, age) => format!(
            "the newest anchor covers {size} records (made {}s ago)",
            age / 1000
        ),
    };
    Some(format!(
        "no anchor covers {needed} records yet: {newest} and the log has {} records: run `tally anchor` to anchor \
         the head now, or wait for the anchoring interval ({}s, tpm.anchor_interval_secs); \
         `tally anchors` lists the anchored sizes (--size / --to take one of them)",
        status.size,
        status.anchor_interval_millis / 1000
    ))
}

/// Verifies either kind of proof file: exit 0 when it verifies against the
/// log's identity, 1 when it does not verify, 3 when it verifies with keys
/// given one by one (the log is then not pinned).
pub fn verify_proof(args: &VerifyProofArgs) -> anyhow::Result<ExitCode> {
    let (Some(policy), identity) = load_trust(&args.trust)? else {
        anyhow::bail!(
            "tally verify-proof needs the log's identity (--identity FILE) or --ak and --owner-key"
        );
    };
    let bytes = std::fs::read(&args.proof)
        .with_context(|| format!("cannot read {}", args.proof.display()))?;
    let result = verify_proof_file(&policy, &bytes).map(|verified| match verified {
        VerifiedProof::Consistency(verified) => format!(
            "OK: log {}: the log of {} records (TPM counter {}) extends the log of {} records (TPM counter {})",
            hex::encode(verified.new.checkpoint.log_id),
            verified.new.checkpoint.size, verified.new.counter, verified.old.checkpoint.size, verified.old.counter
        ),
        VerifiedProof::Inclusion(verified) => format!(
            "OK: log {}: record seq {} (entry hash {}) is in the log of {} records anchored at TPM counter {}",
            hex::encode(verified.anchor.checkpoint.log_id),
            verified.seq,
            hex::encode(verified.entry_hash),
            verified.anchor.checkpoint.size,
            verified.anchor.counter
        ),
    });
    Ok(match result {
        Ok(line) if identity.is_some() => {
            println!("{line} (the log the identity names)");
            ExitCode::SUCCESS
        }
        Ok(line) => {
            println!("{line}");
            println!("PARTIAL: the log id is not pinned (keys given one by one, no --identity): the proof may come from another log on the same TPM");
            ExitCode::from(3)
        }
        Err(err) => {
            println!("FAILED: {err}");
            ExitCode::from(1)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_client::proto::StatusReply;

    /// Regression: `tally prove` on a new log said only "seq 42 is not in the
    /// anchored log of 0 records".
    #[test]
    fn a_record_past_the_newest_anchor_says_to_anchor_or_wait() {
        let status = StatusReply {
            tpm_enabled: true,
            size: 100,
            last_anchor_size: 0,
            last_anchor_age_millis: 4000,
            anchor_interval_millis: 10_000,
            ..StatusReply::default()
        };
        let advice = not_yet_anchored(&status, 43).unwrap();
        assert!(advice.contains("run `tally anchor`"), "{advice}");
        assert!(
            advice.contains("(10s, tpm.anchor_interval_secs)"),
            "{advice}"
        );
        assert!(
            advice.contains("covers 0 records (made 4s ago)"),
            "{advice}"
        );
        let covered = StatusReply {
            last_anchor_size: 43,
            ..status.clone()
        };
        assert_eq!(not_yet_anchored(&covered, 43), None);
        let no_tpm = StatusReply {
            tpm_enabled: false,
            ..status
        };
        assert!(not_yet_anchored(&no_tpm, 1)
            .unwrap()
            .contains("without a TPM"));
    }
}
