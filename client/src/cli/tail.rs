//! `tally tail`: print stored records as text or JSON lines, checking each entry
//! hash against its record; with `--follow`, keep printing new ones.

use std::io::{self, Write};

use anyhow::{bail, Context as _};
use tally_client::proto::StoredRecord;
use tally_client::record;

use crate::cli::connect::{connect, Target};

/// Prints records from seq `from` to the size at the start, or with
/// `follow` forever.
pub async fn run(target: &Target, from: u64, follow: bool, json: bool) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let stdout = io::stdout();
    if follow {
        let mut stream = client.follow(from).await?;
        loop {
            let record = stream.next().await?;
            let mut out = stdout.lock();
            print_record(&mut out, &record, json)?;
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
            print_record(&mut out, record, json)?;
        }
    }
    Ok(())
}

/// Prints one record, refusing it when the daemon's entry hash does not
/// match the record's bytes.
fn print_record(out: &mut impl Write, stored: &StoredRecord, json: bool) -> anyhow::Result<()> {
    let decoded = record::decode(&stored.record).with_context(|| format!("seq {}", stored.seq))?;
    if decoded.entry_hash.as_slice() != stored.entry_hash.as_ref() {
        bail!(
            "seq {}: the daemon's entry hash does not match the record",
            stored.seq
        );
    }
    if json {
        writeln!(out, "{}", decoded.to_json())?;
    } else {
        writeln!(out, "{}", decoded.to_line())?;
    }
    Ok(())
}
