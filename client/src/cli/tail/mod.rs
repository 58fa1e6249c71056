//! `tally tail`: the last records (10 by default, `-n`), or from a seq
//! (`--from`) or a saved position (`--cursor`), then with `-f` each new one,
//! across daemon restarts (`follow`). Every record is checked before it is
//! shown: its entry hash recomputed, its seq after the previous one, its
//! link to the previous seq when both were received, and the filter
//! evaluated again here (the daemon evaluates it too, when it can).

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Args;
use tally_client::proto::{Filter, ReadRequest, StoredRecord};
use tally_client::{filter, record};

use crate::cli::connect::{connect, AnyClient, Target};
use crate::cli::render::{quiet_on_closed_stdout, OutputArgs, Renderer, Sink};
use crate::cli::select::FilterArgs;

mod cursor;
mod follow;

pub use cursor::Cursor;

/// How many records `tally tail` shows when not told (as tail and journalctl).
const DEFAULT_LINES: u64 = 10;

/// `tally tail`'s flags.
#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// Show the last N matching records (default 10); `all`: from seq 0.
    #[arg(long = "lines", short = 'n', value_name = "N|all", value_parser = parse_lines)]
    pub lines: Option<Lines>,
    /// Show from this seq to the current end instead of the last N.
    #[arg(long, value_name = "SEQ", conflicts_with = "lines")]
    pub from: Option<u64>,
    /// Then keep showing new records as they are committed; survives a
    /// daemon restart (reconnects and resumes where it was). Ctrl-C ends it
    /// (exit 0).
    #[arg(long, short)]
    pub follow: bool,
    /// Start where the last run with this file stopped (if it exists: it
    /// then wins over -n and --from), and save the position after each
    /// batch shown. The file names its log: another log's is refused.
    #[arg(long, value_name = "FILE")]
    pub cursor: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// `-n N` or `-n all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    Last(u64),
    All,
}

/// Parses `-n`: a count, or `all`.
pub fn parse_lines(text: &str) -> Result<Lines, String> {
    match text {
        "all" => Ok(Lines::All),
        _ => text
            .parse()
            .map(Lines::Last)
            .map_err(|_| format!("{text:?}: expected a number of records or `all`")),
    }
}

/// Where the first printed record is looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The last N that match.
    Last(u64),
    /// Every matching record from this seq.
    From(u64),
}

impl Start {
    /// From the flags: --from, else -n (all: from 0), else the default.
    pub fn of(lines: Option<Lines>, from: Option<u64>) -> Start {
        match (from, lines) {
            (Some(seq), _) => Start::From(seq),
            (None, Some(Lines::All)) => Start::From(0),
            (None, Some(Lines::Last(n))) => Start::Last(n),
            (None, None) => Start::Last(DEFAULT_LINES),
        }
    }
}

/// Runs `tally tail`.
pub async fn run(target: &Target, args: &TailArgs) -> anyhow::Result<()> {
    quiet_on_closed_stdout(tail(target, args).await)
}

async fn tail(target: &Target, args: &TailArgs) -> anyhow::Result<()> {
    let filter = args.filter.filter()?;
    let mut client = connect(target).await?;
    let log_id = client.server_hello().log_id.clone();
    let cursor = args
        .cursor
        .as_deref()
        .map(|path| Cursor::new(path, &log_id));
    let mut start = Start::of(args.lines, args.from);
    if let Some(next) = cursor.as_ref().map(Cursor::load).transpose()?.flatten() {
        start = Start::From(next);
    }
    let mut shown = Shown::new(Sink::new(Renderer::new(&args.output), filter.clone()));
    if let Start::From(seq) = start {
        // A cursor (or --from) past the end stays where it is.
        shown.next = seq;
    }
    let size = client.status().await?.size;
    history(&mut client, start, size, &filter, &mut shown).await?;
    shown.sink.flush()?;
    if let Some(cursor) = &cursor {
        shown.saved = size.max(shown.next);
        cursor.save(shown.saved)?;
    }
    if args.follow {
        let from = size.max(shown.next);
        return follow::run(target, client, from, filter, shown, cursor.as_ref()).await;
    }
    shown.warn_skipped();
    Ok(())
}

/// Shows the records `start` asks for among seqs below `size`.
async fn history(
    client: &mut AnyClient,
    start: Start,
    size: u64,
    filter: &Filter,
    shown: &mut Shown,
) -> anyhow::Result<()> {
    match start {
        Start::Last(n) if filter::is_empty(filter) => {
            forward(client, size.saturating_sub(n), size, filter, shown).await
        }
        Start::Last(n) => newest(client, n, size, filter, shown).await,
        Start::From(seq) => forward(client, seq, size, filter, shown).await,
    }
}

/// Every matching record in [from, to), oldest first: plain reads without a
/// filter (any daemon), filtered reads with one.
async fn forward(
    client: &mut AnyClient,
    from: u64,
    to: u64,
    filter: &Filter,
    shown: &mut Shown,
) -> anyhow::Result<()> {
    let mut next = from;
    while next < to {
        let (records, resume) = if filter::is_empty(filter) {
            (client.read(next, 0).await?, 0)
        } else {
            let page = client
                .read_where(ReadRequest {
                    from_seq: next,
                    to_seq: to,
                    filter: Some(filter.clone()),
                    ..Default::default()
                })
                .await?;
            (page.records, page.resume_seq)
        };
        let after_last = records.last().map_or(0, |record| record.seq + 1);
        for stored in records.iter().filter(|record| record.seq < to) {
            shown.show(stored)?;
        }
        let advanced = after_last.max(resume);
        if advanced <= next {
            if records.is_empty() && filter::is_empty(filter) {
                // The log ends before `to`: it cannot shrink, so the daemon
                // contradicts its own status.
                bail!("the daemon's log ended at seq {next}, below the size {to} it reported");
            }
            bail!("the daemon's read from seq {next} made no progress");
        }
        next = advanced;
    }
    shown.next = shown.next.max(to);
    Ok(())
}

/// The newest `n` matching records below `to`, shown oldest first: the
/// daemon scans backward (`newest`), each page ending where the last one's
/// scan stopped (`resume_seq`), until `n` are found or seq 0 is reached.
async fn newest(
    client: &mut AnyClient,
    n: u64,
    to: u64,
    filter: &Filter,
    shown: &mut Shown,
) -> anyhow::Result<()> {
    let mut pages: Vec<Vec<StoredRecord>> = Vec::new();
    let mut found = 0u64;
    let mut end = to;
    while found < n && end > 0 {
        let page = client
            .read_where(ReadRequest {
                from_seq: 0,
                to_seq: end,
                newest: true,
                max_records: u32::try_from(n - found).unwrap_or(u32::MAX),
                filter: Some(filter.clone()),
            })
            .await?;
        let mut records = page.records;
        if records.iter().any(|record| record.seq >= end)
            || page.resume_seq >= end
            || records
                .first()
                .is_some_and(|first| first.seq < page.resume_seq)
        {
            bail!("the daemon's newest-first read below seq {end} answered outside its range");
        }
        // The page's newest `n - found`, if the daemon sent more than asked.
        let keep = usize::try_from(n - found).unwrap_or(usize::MAX);
        if records.len() > keep {
            records.drain(..records.len() - keep);
        }
        found += records.len() as u64;
        end = page.resume_seq;
        pages.push(records);
    }
    for stored in pages.iter().rev().flatten() {
        shown.show(stored)?;
    }
    shown.next = shown.next.max(to);
    Ok(())
}

/// The records shown so far, and the checks that tie each to the last.
pub struct Shown {
    sink: Sink,
    /// The last record received: its seq and entry hash.
    last: Option<(u64, [u8; 32])>,
    /// Every seq below this was examined (shown or filtered out).
    next: u64,
    /// The position last saved to the cursor file.
    saved: u64,
}

impl Shown {
    fn new(sink: Sink) -> Shown {
        Shown {
            sink,
            last: None,
            next: 0,
            saved: 0,
        }
    }

    /// Checks `stored` and shows it if it matches the filter. Refused: an
    /// entry hash that is not the record's, a seq field that is not the
    /// seq it was served as, a seq not after the last one's (a repeat), a
    /// record whose previous-hash is not the entry hash of the record just
    /// before it when that one was received too.
    fn show(&mut self, stored: &StoredRecord) -> anyhow::Result<()> {
        // The daemon serves an empty content for a record without one, or
        // whose content was erased; a served one is checked against the
        // commitment before it is joined into the event.
        let opening = (!stored.content.is_empty()).then_some(stored.content.as_ref());
        let decoded =
            record::decode_with_content(&stored.record, opening, record::ContentState::Erased)
                .with_context(|| format!("seq {}", stored.seq))?;
        if decoded.entry_hash.as_slice() != stored.entry_hash.as_ref() {
            bail!(
                "seq {}: the daemon's entry hash does not match the record",
                stored.seq
            );
        }
        if decoded.header.seq != stored.seq {
            bail!(
                "the daemon served seq {} holding a record of seq {}",
                stored.seq,
                decoded.header.seq
            );
        }
        if let Some((seq, hash)) = self.last {
            if stored.seq <= seq {
                bail!("the daemon sent seq {} after seq {seq}", stored.seq);
            }
            if stored.seq == seq + 1 && decoded.header.prev_hash != hash {
                bail!(
                    "seq {}: its previous-hash is not the entry hash of seq {seq}",
                    stored.seq
                );
            }
        }
        self.last = Some((stored.seq, decoded.entry_hash));
        self.next = stored.seq + 1;
        self.sink.offer(&decoded)?;
        Ok(())
    }

    /// A notice on stderr if the daemon sent records the filter kept out
    /// (it should not, once it evaluates filters itself).
    fn warn_skipped(&self) {
        let skipped = self.sink.skipped();
        if skipped > 0 {
            eprintln!(
                "tally: the daemon sent {skipped} records that do not match the filter; not shown"
            );
        }
    }
}

#[cfg(test)]
mod tests;
