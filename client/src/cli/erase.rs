//! `tally erase`: erase the content of selected records for good
//! (docs/DESIGN.md section 3b). The records stay, hashed and anchored; what
//! goes is their payload and personal attributes, and the daemon records
//! the erasure in the log itself.

use anyhow::bail;
use clap::Args;
use serde_json::json;
use tally_client::proto::EraseRequest;

use super::connect::{connect, Target};
use super::when::{now, parse_time};

/// Which records, and why. Selectors combine: a record must match all given.
#[derive(Debug, Args)]
pub struct EraseArgs {
    /// The record with this seq.
    #[arg(long, conflicts_with_all = ["from", "to"])]
    seq: Option<u64>,
    /// Records from this seq on.
    #[arg(long)]
    from: Option<u64>,
    /// Records before this seq (exclusive).
    #[arg(long)]
    to: Option<u64>,
    /// Records whose subject is exactly this (e.g. a data subject's id).
    #[arg(long)]
    subject: Option<String>,
    /// Records whose actor is exactly this.
    #[arg(long)]
    actor: Option<String>,
    /// Records received before this time (RFC 3339, a local time, -30d, ...,
    /// as `tally tail --until` takes it).
    #[arg(long, value_name = "TIME")]
    before: Option<String>,
    /// Why (mandatory): recorded in the erasure record, e.g. a ticket number.
    #[arg(long)]
    reason: String,
    /// Print the reply as JSON.
    #[arg(long)]
    json: bool,
}

impl EraseArgs {
    fn request(&self) -> anyhow::Result<EraseRequest> {
        let (from_seq, to_seq) = match (self.seq, self.from, self.to) {
            (Some(seq), _, _) => (Some(seq), seq.saturating_add(1)),
            (None, from, to) => (from, to.unwrap_or(0)),
        };
        if self.to == Some(0) {
            bail!("--to 0 selects nothing");
        }
        let before_unix_nanos = self
            .before
            .as_deref()
            .map(|text| parse_time(text, &now()))
            .transpose()?;
        if from_seq.is_none()
            && to_seq == 0
            && self.subject.is_none()
            && self.actor.is_none()
            && before_unix_nanos.is_none()
        {
            bail!("say which records: --seq, --from/--to, --subject, --actor or --before");
        }
        Ok(EraseRequest {
            from_seq,
            to_seq,
            subject: self.subject.clone().unwrap_or_default(),
            actor: self.actor.clone().unwrap_or_default(),
            before_unix_nanos,
            reason: self.reason.clone(),
        })
    }
}

pub async fn run(target: &Target, args: &EraseArgs) -> anyhow::Result<()> {
    let request = args.request()?;
    let mut client = connect(target).await?;
    let reply = client.erase(request).await?;
    if args.json {
        println!(
            "{}",
            json!({
                "erased": reply.erased,
                "already_erased": reply.already_erased,
                "without_content": reply.without_content,
                "erasure_seqs": reply.erasure_seqs,
            })
        );
        return Ok(());
    }
    match reply.erasure_seqs.as_slice() {
        [] => println!("nothing erased"),
        [seq] => println!(
            "erased the content of {} records (erasure record at seq {seq})",
            reply.erased
        ),
        seqs => println!(
            "erased the content of {} records (erasure records at seqs {})",
            reply.erased,
            seqs.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
    if reply.already_erased > 0 {
        println!(
            "{} selected records were already erased",
            reply.already_erased
        );
    }
    if reply.without_content > 0 {
        println!(
            "{} selected records have no content to erase",
            reply.without_content
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        erase: EraseArgs,
    }

    fn request(args: &[&str]) -> anyhow::Result<EraseRequest> {
        let mut all = vec!["erase"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)?.erase.request()
    }

    #[test]
    fn selectors_become_the_request() {
        let one = request(&["--seq", "7", "--reason", "r"]).unwrap();
        assert_eq!((one.from_seq, one.to_seq), (Some(7), 8));
        let range = request(&[
            "--from",
            "3",
            "--to",
            "9",
            "--subject",
            "u",
            "--reason",
            "r",
        ])
        .unwrap();
        assert_eq!((range.from_seq, range.to_seq), (Some(3), 9));
        assert_eq!(range.subject, "u");
        let before = request(&["--before", "@1764460800", "--reason", "r"]).unwrap();
        assert_eq!(before.before_unix_nanos, Some(1_764_460_800_000_000_000));
        assert!(request(&["--reason", "r"]).is_err(), "no selector");
        assert!(request(&["--seq", "1"]).is_err(), "no reason");
        assert!(request(&["--seq", "1", "--from", "0", "--reason", "r"]).is_err());
    }
}
