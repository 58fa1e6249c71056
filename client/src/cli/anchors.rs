//! `tally anchors`: the anchored log sizes, their TPM counter values and
//! times, from the daemon (ReadAnchors, page by page) or from a bundle
//! (offline). A listing, not a verification: `tally verify` checks the
//! anchors' signatures; this parses them without checking any.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::json;
use tally_attest::anchor::checks::parse_anchor_unverified;
use tally_attest::anchor::decode_anchor;
use tally_attest::bundle::BundleReader;
use tally_client::Client;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::cli::connect::{connect, Target};

/// Anchors asked for per ReadAnchors request (the daemon caps a page at its
/// `read_page_records`, so the listing pages until a page comes back empty).
const PAGE: u32 = 1024;

#[derive(Debug, clap::Args)]
pub struct AnchorsArgs {
    /// List the anchors of this bundle (from `tally export`), offline,
    /// instead of asking the daemon.
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,
    /// One JSON object per anchor per line instead of a table: counter,
    /// size, created (RFC 3339, UTC), created_unix_nanos, age, tpm_clock_ms.
    #[arg(long)]
    pub json: bool,
}

/// One anchor as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub counter: u64,
    /// Log size the anchored checkpoint covers (seqs 0..size-1).
    pub size: u64,
    /// The daemon's clock when it made the anchor (`AnchorRecord.created_unix_nanos`).
    pub created_unix_nanos: i64,
    /// The quote's TPM clock: milliseconds the TPM has run since its last TPM2_Clear.
    pub tpm_clock_ms: u64,
}

/// Parses one stored `AnchorRecord` (signatures not checked).
pub fn listed(bytes: &[u8]) -> anyhow::Result<Listed> {
    let record = decode_anchor(bytes).context("not an anchor record")?;
    let parsed = parse_anchor_unverified(bytes).context("not an anchor record")?;
    Ok(Listed {
        counter: parsed.counter,
        size: parsed.checkpoint.size,
        created_unix_nanos: record.created_unix_nanos,
        tpm_clock_ms: parsed.clock.clock,
    })
}

/// Every anchor the daemon stores, in counter order.
pub async fn from_daemon<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client<S>,
) -> anyhow::Result<Vec<Listed>> {
    let mut all = Vec::new();
    let mut from = 0;
    loop {
        let page = client.read_anchors(from, PAGE).await?;
        let Some(last) = page.last() else { break };
        from = last.counter + 1;
        for stored in &page {
            all.push(
                listed(&stored.anchor).with_context(|| {
                    format!("the daemon's anchor at counter {}", stored.counter)
                })?,
            );
        }
    }
    Ok(all)
}

/// Every anchor in a bundle file, in the bundle's order.
pub fn from_bundle(path: &PathBuf) -> anyhow::Result<Vec<Listed>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = BundleReader::new(BufReader::new(file))
        .with_context(|| format!("{} is not a Tally bundle", path.display()))?;
    let mut all = Vec::new();
    let mut buf = Vec::new();
    while reader
        .next_anchor(&mut buf)
        .with_context(|| format!("{} is not a Tally bundle", path.display()))?
    {
        all.push(
            listed(&buf).with_context(|| {
                format!("{}: anchor {} of the bundle", path.display(), all.len())
            })?,
        );
    }
    Ok(all)
}

/// RFC 3339 in UTC, and how long ago from `now`.
fn when(unix_nanos: i64, now: jiff::Timestamp) -> (String, String) {
    match jiff::Timestamp::from_nanosecond(i128::from(unix_nanos)) {
        Ok(time) => {
            let secs = now.as_second() - time.as_second();
            (time.to_string(), age(secs))
        }
        Err(_) => (format!("@{unix_nanos}ns"), "?".into()),
    }
}

/// "42s", "3m", "5h", "2d" (a clock behind the anchor's: "in the future").
fn age(secs: i64) -> String {
    match secs {
        ..0 => "in the future".into(),
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// `tally anchors`.
pub async fn run(target: &Target, args: &AnchorsArgs) -> anyhow::Result<()> {
    let anchors = match &args.bundle {
        Some(path) => from_bundle(path)?,
        None => {
            let mut client = connect(target).await?;
            let anchors = from_daemon(&mut client).await?;
            // "Run tally anchor" would be wrong advice where there is no TPM.
            if anchors.is_empty() && !client.status().await?.tpm_enabled {
                anyhow::bail!(
                    "this daemon runs without a TPM (tpm.enabled = false): it makes no anchors"
                );
            }
            anchors
        }
    };
    print(&anchors, args.json, jiff::Timestamp::now());
    Ok(())
}

/// Prints the listing as a table or JSON lines.
pub fn print(anchors: &[Listed], as_json: bool, now: jiff::Timestamp) {
    if !as_json {
        println!(
            "{:>10} {:>12} {:<32} {:>14} {:>14}",
            "COUNTER", "SIZE", "CREATED (daemon clock)", "AGE", "TPM CLOCK ms"
        );
    }
    for anchor in anchors {
        let (created, age) = when(anchor.created_unix_nanos, now);
        if as_json {
            println!(
                "{}",
                json!({
                    "counter": anchor.counter,
                    "size": anchor.size,
                    "created": created,
                    "created_unix_nanos": anchor.created_unix_nanos,
                    "age": age,
                    "tpm_clock_ms": anchor.tpm_clock_ms,
                })
            );
        } else {
            println!(
                "{:>10} {:>12} {:<32} {:>14} {:>14}",
                anchor.counter, anchor.size, created, age, anchor.tpm_clock_ms
            );
        }
    }
    if !as_json && anchors.is_empty() {
        println!("(no anchors yet: run `tally anchor`, or wait for tpm.anchor_interval_secs)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_round_down_to_their_unit() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(59), "59s");
        assert_eq!(age(60), "1m");
        assert_eq!(age(7200), "2h");
        assert_eq!(age(86_400 * 3 + 5), "3d");
        assert_eq!(age(-1), "in the future");
    }

    #[test]
    fn a_time_is_rfc3339_utc() {
        let now = jiff::Timestamp::from_second(1_800_000_100).unwrap();
        let (text, age) = when(1_800_000_000_000_000_000, now);
        assert_eq!(text, "2027-01-15T08:00:00Z");
        assert_eq!(age, "1m");
    }
}
