//! `tally attest`, `tally anchor`, `tally gap-ack` and `tally quote-files`.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use prost::Message;
use tally_attest::anchor::{
    anchor_qualifying_data, decode_anchor, verify_anchor, Checkpoint, FreshAttestation,
};
use tally_attest::bundle::BundleReader;
use tally_attest::evidence::checkquote::write_checkquote_files;
use tally_attest::identity::GapAck;
use tally_client::Client;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::cli::trust::{load_trust, TrustArgs};

/// `--since FILE|SIZE`: the log size of the newest anchor the verifier holds.
pub fn since_size(since: &str) -> anyhow::Result<u64> {
    if let Ok(size) = since.parse::<u64>() {
        return Ok(size);
    }
    let path = Path::new(since);
    let file = File::open(path).with_context(|| {
        format!("--since {since:?} is neither a log size nor a readable bundle")
    })?;
    let mut reader = BundleReader::new(BufReader::new(file))
        .with_context(|| format!("{} is not a bundle", path.display()))?;
    let mut buf = Vec::new();
    let mut last = None;
    while reader.next_anchor(&mut buf)? {
        last = Some(std::mem::take(&mut buf));
    }
    let last = last.with_context(|| format!("{} has no anchors", path.display()))?;
    Ok(Checkpoint::parse(&decode_anchor(&last)?.checkpoint)?.size)
}

/// Asks the daemon for a fresh attestation bound to `nonce_hex` (and, with
/// `since`, carrying the anchors made since then) and writes it to `out`.
pub async fn attest<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client<S>,
    nonce_hex: &str,
    since: Option<u64>,
    out: &Path,
) -> anyhow::Result<()> {
    let nonce = hex::decode(nonce_hex).context("--nonce is not hex")?;
    let bytes = client.attest(nonce, since).await?;
    let attestation = FreshAttestation::decode(bytes.as_slice())
        .context("the daemon sent an undecodable attestation")?;
    let checkpoint = Checkpoint::parse(&attestation.checkpoint)?;
    std::fs::write(out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "attestation written to {}: TPM counter {}, log size {}, {} anchors since size {} (verify with: tally verify BUNDLE --identity identity.json --attestation {} --nonce {nonce_hex})",
        out.display(),
        attestation.evidence.as_ref().map_or(0, |evidence| evidence.counter),
        checkpoint.size,
        attestation.anchors.len(),
        since.map_or_else(|| "-".to_owned(), |size| size.to_string()),
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

#[derive(Debug, clap::Args)]
pub struct GapAckArgs {
    /// The bundle holding the gap.
    pub bundle: PathBuf,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// The counter value of the anchor before the gap (`tally verify` names it).
    #[arg(long)]
    pub after: u64,
    /// Who reviewed the gap.
    #[arg(long)]
    pub reviewed_by: String,
    /// Why the gap is acceptable (e.g. "power loss on 2026-11-30, host log shows no login").
    #[arg(long)]
    pub reason: String,
    /// Where to write the acknowledgement (pass it to `tally verify --accept-gap`).
    #[arg(long, short)]
    pub out: PathBuf,
}

/// Writes an acknowledgement of the gap after anchor `--after`, pinned by the
/// hashes of the anchors on both sides (both verified first).
pub fn gap_ack(args: &GapAckArgs) -> anyhow::Result<()> {
    let (Some(policy), _) = load_trust(&args.trust)? else {
        anyhow::bail!("tally gap-ack needs the log's identity (--identity FILE)");
    };
    let file = File::open(&args.bundle)
        .with_context(|| format!("cannot open {}", args.bundle.display()))?;
    let mut reader = BundleReader::new(BufReader::new(file))?;
    let mut buf = Vec::new();
    let mut before = None;
    while reader.next_anchor(&mut buf)? {
        let anchor = verify_anchor(&policy, &buf)?;
        match before.take() {
            Some(after) if anchor.counter > args.after => {
                let after: tally_attest::anchor::VerifiedAnchor = after;
                if anchor.counter == after.counter + 1 {
                    anyhow::bail!("there is no gap after anchor {}", args.after);
                }
                let reviewed_at_unix = tally_client::clock::now_unix_secs();
                let ack = GapAck::between(
                    after.checkpoint.log_id,
                    (after.counter, after.hash),
                    (anchor.counter, anchor.hash),
                    &args.reviewed_by,
                    &args.reason,
                    reviewed_at_unix,
                );
                std::fs::write(&args.out, ack.to_json()?)
                    .with_context(|| format!("cannot write {}", args.out.display()))?;
                println!(
                    "acknowledged: the gap between anchors {} and {} ({} counter values); written to {}",
                    after.counter,
                    anchor.counter,
                    anchor.counter - after.counter - 1,
                    args.out.display()
                );
                return Ok(());
            }
            _ if anchor.counter == args.after => before = Some(anchor),
            _ => {}
        }
    }
    anyhow::bail!(
        "{} has no anchor {} followed by a later one",
        args.bundle.display(),
        args.after
    )
}

/// Writes, for every anchor in `bundle`, the files `tpm2_checkquote` reads.
pub fn quote_files(bundle: &Path, ak: &Path, out_dir: &Path) -> anyhow::Result<()> {
    let ak_pem =
        std::fs::read_to_string(ak).with_context(|| format!("cannot read {}", ak.display()))?;
    let file = File::open(bundle).with_context(|| format!("cannot open {}", bundle.display()))?;
    let mut reader = BundleReader::new(BufReader::new(file))?;
    let mut bytes = Vec::new();
    let mut written = 0;
    while reader.next_anchor(&mut bytes)? {
        let record = decode_anchor(&bytes)?;
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
        written += 1;
    }
    if written == 0 {
        anyhow::bail!("{} has no anchors", bundle.display());
    }
    Ok(())
}
