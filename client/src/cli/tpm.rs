//! `tally attest`, `tally anchor` and `tally quote-files`.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use anyhow::Context as _;
use prost::Message;
use tally_attest::anchor::{anchor_qualifying_data, decode_anchor, Checkpoint, FreshAttestation};
use tally_attest::bundle::BundleReader;
use tally_attest::evidence::checkquote::write_checkquote_files;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Client;

/// Asks the daemon for a fresh attestation bound to `nonce_hex` and writes it to `out`.
pub async fn attest<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client<S>,
    nonce_hex: &str,
    out: &Path,
) -> anyhow::Result<()> {
    let nonce = hex::decode(nonce_hex).context("--nonce is not hex")?;
    let bytes = client.attest(nonce).await?;
    let attestation = FreshAttestation::decode(bytes.as_slice())
        .context("the daemon sent an undecodable attestation")?;
    let checkpoint = Checkpoint::parse(&attestation.checkpoint)?;
    std::fs::write(out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "attestation written to {}: TPM counter {}, log size {} (verify it with tally verify BUNDLE --ak AK.pem --attestation {} --nonce {nonce_hex})",
        out.display(),
        attestation.evidence.as_ref().map_or(0, |evidence| evidence.counter),
        checkpoint.size,
        out.display(),
    );
    Ok(())
}

/// Asks the daemon to anchor its head now.
pub async fn anchor<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client<S>,
) -> anyhow::Result<()> {
    let (counter, bytes) = client.anchor().await?;
    let record = decode_anchor(&bytes)?;
    let checkpoint = Checkpoint::parse(&record.checkpoint)?;
    println!(
        "anchored: TPM counter {counter}, log size {}, Merkle root {}",
        checkpoint.size,
        hex::encode(checkpoint.root)
    );
    Ok(())
}

/// Writes, for every anchor in `bundle`, the files `tpm2_checkquote` reads.
pub fn quote_files(bundle: &Path, ak: &Path, out_dir: &Path) -> anyhow::Result<()> {
    let ak_pem =
        std::fs::read_to_string(ak).with_context(|| format!("cannot read {}", ak.display()))?;
    let file = File::open(bundle).with_context(|| format!("cannot open {}", bundle.display()))?;
    let reader = BundleReader::new(BufReader::new(file))?;
    if reader.anchors().is_empty() {
        anyhow::bail!("{} has no anchors", bundle.display());
    }
    for bytes in reader.anchors() {
        let record = decode_anchor(bytes)?;
        let evidence_record = record
            .evidence
            .as_ref()
            .context("an anchor without evidence")?;
        let qualifying_data = anchor_qualifying_data(&record.checkpoint);
        let evidence = evidence_record.to_evidence(qualifying_data)?;
        let dir = out_dir.join(format!("anchor-{}", evidence_record.counter));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let files = write_checkquote_files(&dir, &ak_pem, &evidence.quote, &evidence.pcrs)?;
        let qualifying_hex = hex::encode(qualifying_data);
        std::fs::write(dir.join("qualifying-data.hex"), &qualifying_hex)
            .with_context(|| format!("cannot write in {}", dir.display()))?;
        println!(
            "tpm2_checkquote -u {} -m {} -s {} -f {} -g sha256 -q {qualifying_hex}",
            files.ak_pem.display(),
            files.msg.display(),
            files.sig.display(),
            files.pcrs.display()
        );
    }
    Ok(())
}
