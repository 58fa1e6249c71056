//! `tally prove` and `tally verify-proof`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use tally_attest::anchor::AnchorPolicy;
use tally_attest::proof::{verify_proof_file, VerifiedProof};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::cli::verify::{load_ak, load_log_key, parse_index, DEFAULT_COUNTER_INDEX};
use crate::Client;

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
    /// The TPM attestation key's public key (PEM).
    #[arg(long)]
    pub ak: PathBuf,
    /// The NV counter index the anchors must certify.
    #[arg(long, default_value = DEFAULT_COUNTER_INDEX)]
    pub counter_index: String,
    /// The log's Ed25519 checkpoint key (or a file holding it): the anchors'
    /// checkpoints must be signed by it.
    #[arg(long)]
    pub log_key: Option<String>,
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

/// Verifies either kind of proof file; exit 1 when it does not verify.
pub fn verify_proof(args: &VerifyProofArgs) -> anyhow::Result<ExitCode> {
    let policy = AnchorPolicy {
        ak: load_ak(&args.ak)?,
        counter_index: parse_index(&args.counter_index)?,
        log_key: args.log_key.as_deref().map(load_log_key).transpose()?,
    };
    let bytes = std::fs::read(&args.proof)
        .with_context(|| format!("cannot read {}", args.proof.display()))?;
    let result = verify_proof_file(&policy, &bytes).map(|verified| match verified {
        VerifiedProof::Consistency(verified) => format!(
            "OK: the log of {} records (TPM counter {}) extends the log of {} records (TPM counter {})",
            verified.new.checkpoint.size, verified.new.counter, verified.old.checkpoint.size, verified.old.counter
        ),
        VerifiedProof::Inclusion(verified) => format!(
            "OK: record seq {} (entry hash {}) is in the log of {} records anchored at TPM counter {}",
            verified.seq,
            hex::encode(verified.entry_hash),
            verified.anchor.checkpoint.size,
            verified.anchor.counter
        ),
    });
    Ok(match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            println!("FAILED: {err}");
            ExitCode::from(1)
        }
    })
}
