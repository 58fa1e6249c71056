//! `tally disclose --seq N`: one record's content, for a regulator or a
//! court, without the rest of the log. The file is a range bundle of the
//! one record [N, N+1) with its content section: the range proof ties the
//! record to a TPM anchor, and the commitment inside the record ties the
//! content to it (docs/DESIGN.md section 3b); `tally verify FILE` checks
//! both and prints the disclosed content's length and the commitment.

use std::path::PathBuf;

use tally_client::export::range::disclose;

use crate::cli::connect::{connect, Target};

#[derive(Debug, clap::Args)]
pub struct DiscloseArgs {
    /// The record whose content to disclose.
    #[arg(long, value_name = "SEQ")]
    pub seq: u64,
    /// The file to write (default: disclose-SEQ.range).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

/// Runs `tally disclose`.
pub async fn run(target: &Target, args: &DiscloseArgs) -> anyhow::Result<()> {
    let path = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("disclose-{}.range", args.seq)));
    let mut client = connect(target).await?;
    let summary = disclose(&mut client, args.seq, &path).await?;
    println!(
        "disclosed seq {} with its content to {}, proven against the anchor at {} records (TPM counter {}); check it with `tally verify {}`",
        summary.first_seq,
        path.display(),
        summary.tree_size,
        summary.anchor_counter,
        path.display()
    );
    Ok(())
}
