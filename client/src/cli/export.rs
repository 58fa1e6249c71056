//! `tally export`: the whole log into a bundle file (with a progress bar),
//! and with `--attest`, a fresh attestation right after it.

use std::path::{Path, PathBuf};

use crate::cli::connect::{connect, Target};
use crate::cli::progress::progress_bar;
use crate::cli::tpm;

/// Exports into `out`; with `attest` (its file, default OUT.att, and the
/// nonce), also takes an attestation carrying the anchors made since.
pub async fn run(
    target: &Target,
    out: &Path,
    attest: Option<(Option<PathBuf>, String)>,
) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let bar = progress_bar("exporting");
    let summary = tally_client::export::export(&mut client, out, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await?;
    bar.finish_and_clear();
    println!(
        "exported {} records and {} anchors to {} (head {})",
        summary.size,
        summary.anchors,
        summary.path.display(),
        hex::encode(summary.head_hash)
    );
    if let Some((path, nonce)) = attest {
        let path = path.unwrap_or_else(|| PathBuf::from(format!("{}.att", out.display())));
        tpm::attest(&mut client, &nonce, summary.last_anchor_size, &path).await?;
    }
    Ok(())
}
