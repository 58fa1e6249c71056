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
    let (bytes, out) = match what {
        Prove::Inclusion { seq, size, out } => (client.prove_inclusion(*seq, *size).await?, out),
        Prove::Consistency { from, to, out } => (client.prove_consistency(*from, *to).await?, out),
    };
    std::fs::write(out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    println!("proof written to {} ({} bytes)", out.display(), bytes.len());
    Ok(())
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
