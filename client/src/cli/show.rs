//! `tally show BUNDLE`: an exported bundle's records, offline (no daemon,
//! no TPM), in `tally tail`'s output modes and with its filters, so a
//! responder can read what `tally verify` named. It displays; it does not
//! prove: it checks each record's link to the one before it as it streams
//! (a damaged bundle stops it at the first bad record, after the ones
//! before it were shown), but not the anchors, the counter or the log's
//! identity. That is `tally verify`'s work. A range bundle (`tally export
//! --from/--since ...`) is shown the same way; its first record's link to
//! the record before it, which the bundle does not hold, is for `verify`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use tally_attest::bundle::BundleReader;
use tally_attest::range::{is_range_bundle, RangeReader};
use tally_attest::GENESIS_PREV;
use tally_client::record::{self, DecodedRecord};

use crate::cli::render::{quiet_on_closed_stdout, OutputArgs, Renderer, Sink};
use crate::cli::select::FilterArgs;
use crate::cli::tail::{parse_lines, Lines};

/// `tally show`'s flags.
#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// The bundle (from `tally export`: the whole log, or a range).
    pub bundle: PathBuf,
    /// Show only the last N matching records; `all` (the default): every one.
    #[arg(long = "lines", short = 'n', value_name = "N|all", value_parser = parse_lines)]
    pub lines: Option<Lines>,
    /// Show from this seq on.
    #[arg(long, value_name = "SEQ")]
    pub from: Option<u64>,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// Why a bundle's records do not hold together.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("seq {seq} follows seq {previous} (a record is missing, repeated or moved); run `tally verify` on the bundle")]
    Seq { previous: u64, seq: u64 },
    #[error("seq {seq}: its previous-hash is not the entry hash of seq {previous} (a record was modified); run `tally verify` on the bundle")]
    PrevHash { previous: u64, seq: u64 },
    #[error("seq 0: its previous-hash is not the genesis value (zeros); run `tally verify` on the bundle")]
    Genesis,
    #[error("the bundle's first record is seq {seq}, its header says seq {expected}; run `tally verify` on the bundle")]
    First { expected: u64, seq: u64 },
}

/// Runs `tally show`.
pub fn run(args: &ShowArgs) -> anyhow::Result<()> {
    quiet_on_closed_stdout(show(args))
}

fn show(args: &ShowArgs) -> anyhow::Result<()> {
    let filter = args.filter.filter()?;
    let path = &args.bundle;
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader =
        Bundle::open(BufReader::new(file)).with_context(|| format!("{}", path.display()))?;
    let mut sink = Sink::new(Renderer::new(&args.output), filter);
    let from = args.from.unwrap_or(0);
    // -n N keeps the newest N matches seen so far; memory is N records.
    let mut last: Option<(usize, VecDeque<DecodedRecord>)> = match (args.from, args.lines) {
        (None, Some(Lines::Last(n))) => {
            Some((usize::try_from(n).unwrap_or(usize::MAX), VecDeque::new()))
        }
        _ => None,
    };
    let mut previous: Option<(u64, [u8; 32])> = None;
    let mut buf = Vec::new();
    while reader
        .next_record(&mut buf)
        .with_context(|| format!("{}", path.display()))?
    {
        let decoded = record::decode_with_content(&buf, reader.opening(), reader.absent())
            .with_context(|| {
                let after = previous.map_or("the start".into(), |(seq, _)| format!("seq {seq}"));
                format!(
                    "{}: the record after {after} (run `tally verify` on the bundle)",
                    path.display()
                )
            })?;
        if previous.is_none() && decoded.header.seq != reader.first_seq() {
            return Err(LinkError::First {
                expected: reader.first_seq(),
                seq: decoded.header.seq,
            }
            .into());
        }
        check_link(previous, &decoded)?;
        previous = Some((decoded.header.seq, decoded.entry_hash));
        if decoded.header.seq < from {
            continue;
        }
        match &mut last {
            None => {
                sink.offer(&decoded)?;
            }
            Some((n, kept)) => {
                if *n > 0 && sink.matches(&decoded) {
                    if kept.len() == *n {
                        kept.pop_front();
                    }
                    kept.push_back(decoded);
                }
            }
        }
    }
    if let Some((_, kept)) = &last {
        for decoded in kept {
            sink.offer(decoded)?;
        }
    }
    sink.flush()?;
    Ok(())
}

/// A whole-log bundle or a range bundle, told apart by their magic.
enum Bundle<R: BufRead> {
    Log(BundleReader<R>),
    Range(RangeReader<R>),
}

impl<R: BufRead> Bundle<R> {
    fn open(mut input: R) -> anyhow::Result<Bundle<R>> {
        if is_range_bundle(input.fill_buf()?) {
            Ok(Bundle::Range(RangeReader::new(input)?))
        } else {
            Ok(Bundle::Log(BundleReader::new(input)?))
        }
    }

    /// The next record's bytes into `buf`; false after the last.
    fn next_record(&mut self, buf: &mut Vec<u8>) -> anyhow::Result<bool> {
        Ok(match self {
            Bundle::Log(reader) => reader.next_record(buf)?,
            Bundle::Range(reader) => reader.next_record(buf)?,
        })
    }

    /// The opening that followed the record last read, if any.
    fn opening(&self) -> Option<&[u8]> {
        match self {
            Bundle::Log(reader) => reader.opening(),
            Bundle::Range(reader) => reader.opening(),
        }
    }

    /// What a committed record without its opening is in this bundle.
    fn absent(&self) -> record::ContentState {
        let redacted = match self {
            Bundle::Log(reader) => reader.header().redacted,
            Bundle::Range(reader) => reader.header().redacted,
        };
        if redacted {
            record::ContentState::Redacted
        } else {
            record::ContentState::Erased
        }
    }

    /// The seq the first record must have.
    fn first_seq(&self) -> u64 {
        match self {
            Bundle::Log(_) => 0,
            Bundle::Range(reader) => reader.header().first_seq,
        }
    }
}

/// `record` follows `previous` in a chain: the next seq, linked by its
/// previous-hash; a first record of seq 0 links to the genesis value. (A
/// first record of a later seq cannot be checked here: its predecessor is
/// not in the bundle.)
fn check_link(previous: Option<(u64, [u8; 32])>, record: &DecodedRecord) -> Result<(), LinkError> {
    let seq = record.header.seq;
    match previous {
        None if seq == 0 && record.header.prev_hash != GENESIS_PREV => Err(LinkError::Genesis),
        None => Ok(()),
        Some((previous, _)) if previous.checked_add(1) != Some(seq) => {
            Err(LinkError::Seq { previous, seq })
        }
        Some((previous, hash)) if record.header.prev_hash != hash => {
            Err(LinkError::PrevHash { previous, seq })
        }
        Some(_) => Ok(()),
    }
}
