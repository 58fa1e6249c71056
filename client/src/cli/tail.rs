//! `tally tail`: print stored records as text or JSON lines, checking each entry
//! hash against its record; with `--follow`, keep printing new ones.

use std::io::{self, Write};

use anyhow::{bail, Context as _};
use tally_client::proto::{Filter, StoredRecord};
use tally_client::{filter, record};

use crate::cli::connect::{connect, Target};

/// Prints the records that match `filter` from seq `from` to the size at
/// the start, or with `follow` forever. (The filter is evaluated here, on
/// every record the daemon sends.)
pub async fn run(
    target: &Target,
    from: u64,
    follow: bool,
    json: bool,
    filter: &Filter,
) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let stdout = io::stdout();
    if follow {
        let mut stream = client.follow(from).await?;
        loop {
            let record = stream.next().await?;
            let mut out = stdout.lock();
            print_record(&mut out, &record, json, filter)?;
            out.flush()?;
        }
    }
    let size = client.status().await?.size;
    let mut next = from;
    let mut out = stdout.lock();
    while next < size {
        let page = client.read(next, 0).await?;
        let Some(last) = page.last() else { break };
        next = last.seq + 1;
        for record in &page {
            print_record(&mut out, record, json, filter)?;
        }
    }
    Ok(())
}

/// Prints one record if it matches `filter`, refusing it when the daemon's
/// entry hash does not match the record's bytes.
fn print_record(
    out: &mut impl Write,
    stored: &StoredRecord,
    json: bool,
    filter: &Filter,
) -> anyhow::Result<()> {
    let decoded = record::decode(&stored.record).with_context(|| format!("seq {}", stored.seq))?;
    if decoded.entry_hash.as_slice() != stored.entry_hash.as_ref() {
        bail!(
            "seq {}: the daemon's entry hash does not match the record",
            stored.seq
        );
    }
    if !filter::matches(filter, &decoded.body) {
        return Ok(());
    }
    if json {
        writeln!(out, "{}", decoded.to_json())?;
    } else {
        writeln!(out, "{}", decoded.to_line())?;
    }
    Ok(())
}
