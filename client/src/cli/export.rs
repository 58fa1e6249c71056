//! `tally export`: the whole log into a bundle file (with a progress bar),
//! and with `--attest`, a fresh attestation right after it; or, with
//! `--from/--to/--since/--until`, a range of it into a range bundle that
//! verifies on its own. `--out -` writes to stdout.

use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tally_client::export::range::{
    export_range, export_range_to, first_seq_since, last_seq_before, RangeSummary,
};

use tally_client::export::Content;

use crate::cli::connect::{connect, Target};
use crate::cli::progress::progress_bar;
use crate::cli::tpm;
use crate::cli::when::{now, parse_time};

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The bundle file to write; `-` writes it to stdout (which must not be
    /// a terminal; the summary then goes to stderr).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Right after the export, also take a fresh attestation for --nonce
    /// that carries the anchors made since (written to FILE, default OUT.att).
    /// Whole-log exports only.
    #[arg(long, requires = "nonce", value_name = "FILE", conflicts_with_all = ["from", "to", "since", "until"])]
    #[allow(clippy::option_option)]
    pub attest: Option<Option<PathBuf>>,
    /// Your nonce for --attest, hex (1 to 64 bytes).
    #[arg(long, requires = "attest")]
    pub nonce: Option<String>,
    /// Export a range only, starting at this seq (default 0). Any of
    /// --from/--to/--since/--until makes a range bundle: only those records,
    /// the anchor they are proven against and the Merkle hashes around them;
    /// `tally verify` checks it without the rest of the log.
    #[arg(long, value_name = "SEQ")]
    pub from: Option<u64>,
    /// The last seq of the range, INCLUSIVE (`--from 10 --to 19` is ten
    /// records). Default: the last record the newest anchor covers. Records
    /// past the newest anchor cannot be proven yet (run `tally anchor`).
    #[arg(long, value_name = "SEQ")]
    pub to: Option<u64>,
    /// Start the range at the first record received at or after TIME
    /// (RFC 3339, "2026-12-01 10:00" local, "-1h", "yesterday", @UNIX).
    /// Needs a daemon that evaluates read filters.
    #[arg(long, short = 'S', value_name = "TIME", allow_hyphen_values = true)]
    pub since: Option<String>,
    /// End the range at the last record received before TIME (exclusive:
    /// a record received at exactly TIME is not in it). Combined with --to,
    /// the earlier end wins.
    #[arg(long, short = 'U', value_name = "TIME", allow_hyphen_values = true)]
    pub until: Option<String>,
    /// Leave every record's content (payloads, personal attributes) out: the
    /// bundle holds the commitments only, says so in its header, and still
    /// verifies against the anchors (whole-log and range exports).
    #[arg(long)]
    pub redact: bool,
}

impl ExportArgs {
    fn content(&self) -> Content {
        if self.redact {
            Content::Redacted
        } else {
            Content::Included
        }
    }

    fn is_range(&self) -> bool {
        self.from.is_some() || self.to.is_some() || self.since.is_some() || self.until.is_some()
    }
}

/// Runs `tally export`.
pub async fn run(target: &Target, args: &ExportArgs) -> anyhow::Result<()> {
    let to_stdout = args.out.as_os_str() == "-";
    if to_stdout && io::stdout().is_terminal() {
        anyhow::bail!(
            "refusing to write a bundle (binary) to a terminal: redirect it (`tally export --out - > FILE`, or `| ssh host 'cat > FILE'`), or give --out FILE"
        );
    }
    if to_stdout && args.attest.is_some() {
        anyhow::bail!("--attest needs the bundle in a file (--out FILE), not on stdout");
    }
    if args.is_range() {
        return run_range(target, args, to_stdout).await;
    }
    let mut client = connect(target).await?;
    let bar = progress_bar("exporting");
    let progress = |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let summary = if to_stdout {
        let out = BufWriter::with_capacity(1 << 20, io::stdout());
        let (summary, mut out) =
            tally_client::export::export_to(&mut client, out, &args.out, args.content(), progress)
                .await?;
        out.flush().context("cannot write the bundle to stdout")?;
        summary
    } else {
        tally_client::export::export_with(&mut client, &args.out, args.content(), progress).await?
    };
    bar.finish_and_clear();
    let line = format!(
        "exported {} records ({}) and {} anchors to {} (head {})",
        summary.size,
        content_note(summary.redacted, summary.openings),
        summary.anchors,
        if to_stdout {
            "stdout".into()
        } else {
            summary.path.display().to_string()
        },
        hex::encode(summary.head_hash)
    );
    say(to_stdout, &line);
    if let (Some(path), Some(nonce)) = (&args.attest, &args.nonce) {
        let path = path
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.att", args.out.display())));
        tpm::attest(&mut client, nonce, summary.last_anchor_size, &path).await?;
    }
    Ok(())
}

/// What the summary says about content.
fn content_note(redacted: bool, openings: u64) -> String {
    if redacted {
        "redacted: no content".into()
    } else {
        format!("{openings} with content")
    }
}

/// The summary on stdout, or on stderr when stdout holds the bundle.
fn say(to_stdout: bool, line: &str) {
    if to_stdout {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

async fn run_range(target: &Target, args: &ExportArgs, to_stdout: bool) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let clock = now();
    let mut first = args.from.unwrap_or(0);
    let mut last = args.to;
    if let Some(text) = &args.since {
        let since = parse_time(text, &clock).with_context(|| format!("--since {text:?}"))?;
        let seq = first_seq_since(&mut client, since)
            .await?
            .with_context(|| format!("no record was received at or after --since {text:?}"))?;
        first = first.max(seq);
    }
    if let Some(text) = &args.until {
        let until = parse_time(text, &clock).with_context(|| format!("--until {text:?}"))?;
        let seq = last_seq_before(&mut client, until)
            .await?
            .with_context(|| format!("no record was received before --until {text:?}"))?;
        last = Some(last.map_or(seq, |to| to.min(seq)));
    }
    let summary: RangeSummary = if to_stdout {
        let out = BufWriter::with_capacity(1 << 20, io::stdout());
        let (summary, mut out) = export_range_to(
            &mut client,
            first,
            last,
            args.content(),
            out,
            Path::new("-"),
        )
        .await?;
        out.flush().context("cannot write the bundle to stdout")?;
        summary
    } else {
        export_range(&mut client, first, last, args.content(), &args.out).await?
    };
    let line = format!(
        "exported seqs {}..{} ({} records, {}) to {}, proven against the anchor at {} records (TPM counter {}, {} proof hashes)",
        summary.first_seq,
        summary.last_seq,
        summary.last_seq - summary.first_seq + 1,
        content_note(summary.redacted, summary.openings),
        if to_stdout {
            "stdout".into()
        } else {
            args.out.display().to_string()
        },
        summary.tree_size,
        summary.anchor_counter,
        summary.proof_hashes
    );
    say(to_stdout, &line);
    Ok(())
}
