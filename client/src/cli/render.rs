//! How `tally tail` and `tally show` print a record: the output modes
//! (`-o short|short-iso|json|json-pretty|cat`, `--utc`), and writing to a
//! stdout that may be closed under us (`tally tail | head`). The layouts are
//! documented in docs/EVENTS.md ("Reading the log"); `text` holds the
//! escaping and quoting of client-supplied fields.

use std::io::{self, BufWriter, Write};

use clap::{Args, ValueEnum};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde_json::Value;
use tally_client::filter;
use tally_client::proto::{Event, Filter};
use tally_client::record::{attributes_json, DecodedRecord};

pub mod text;

/// How each record is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Mode {
    /// Time (microseconds, local zone with offset), seq, kind, actor,
    /// subject, [peer], attributes, payload size: one line per record.
    #[default]
    Short,
    /// As short, with the time to the nanosecond (the full stored precision).
    ShortIso,
    /// One JSON object per line, keys in a fixed order (docs/EVENTS.md).
    Json,
    /// The same object, indented over several lines.
    JsonPretty,
    /// The payload only, one record per line, control characters escaped.
    Cat,
}

/// The output flags `tail` and `show` share.
#[derive(Debug, Clone, Default, Args)]
pub struct OutputArgs {
    /// Output mode.
    #[arg(long, short, value_enum, default_value_t = Mode::Short)]
    pub output: Mode,
    /// Same as -o json (kept for scripts).
    #[arg(long, conflicts_with = "output")]
    pub json: bool,
    /// Show times in UTC (Z) instead of the local zone (short, short-iso).
    #[arg(long)]
    pub utc: bool,
}

/// Turns decoded records into output lines in one mode.
#[derive(Debug, Clone)]
pub struct Renderer {
    mode: Mode,
    /// None: UTC, written with `Z`.
    zone: Option<TimeZone>,
}

impl Renderer {
    /// The renderer the flags ask for; local means `TZ`, else the system
    /// zone (UTC when neither can be read).
    pub fn new(args: &OutputArgs) -> Renderer {
        let zone = if args.utc {
            None
        } else {
            Some(TimeZone::try_system().unwrap_or(TimeZone::UTC))
        };
        Renderer::with_zone(if args.json { Mode::Json } else { args.output }, zone)
    }

    /// A renderer with an explicit zone (None: UTC), for tests.
    pub fn with_zone(mode: Mode, zone: Option<TimeZone>) -> Renderer {
        Renderer { mode, zone }
    }

    /// Writes `record` in this mode, ending with a newline.
    pub fn write(&self, out: &mut impl Write, record: &DecodedRecord) -> io::Result<()> {
        match self.mode {
            Mode::Short => writeln!(out, "{}", text::line(record, &self.time(record, 6))),
            Mode::ShortIso => writeln!(out, "{}", text::line(record, &self.time(record, 9))),
            Mode::Json => writeln!(out, "{}", json_compact(&json_fields(record))),
            Mode::JsonPretty => writeln!(out, "{}", json_pretty(&json_fields(record))),
            Mode::Cat => {
                let payload = record
                    .body
                    .event
                    .as_ref()
                    .map_or(&[][..], |e| e.payload.as_slice());
                writeln!(out, "{}", text::cat(payload))
            }
        }
    }

    fn time(&self, record: &DecodedRecord, digits: u8) -> String {
        let nanos = record.body.receive_time_unix_nanos;
        match &self.zone {
            None => rfc3339_utc(nanos, digits),
            Some(zone) => match Timestamp::from_nanosecond(i128::from(nanos)) {
                Ok(at) => at
                    .to_zoned_datetime(zone.clone())
                    .strftime(&format!("%Y-%m-%dT%H:%M:%S%.{digits}f%:z"))
                    .to_string(),
                Err(_) => format!("@{nanos}ns"),
            },
        }
    }
}

/// `nanos` as RFC 3339 in UTC with `digits` fractional digits
/// (`2026-12-01T09:30:00.123456789Z`); `@<nanos>ns` if out of range.
pub fn rfc3339_utc(nanos: i64, digits: u8) -> String {
    match Timestamp::from_nanosecond(i128::from(nanos)) {
        Ok(at) => at
            .strftime(&format!("%Y-%m-%dT%H:%M:%S%.{digits}fZ"))
            .to_string(),
        Err(_) => format!("@{nanos}ns"),
    }
}

/// The JSON object's members in their documented order (docs/EVENTS.md).
/// serde_json's map sorts keys, so the order is kept here as a list.
fn json_fields(record: &DecodedRecord) -> Vec<(&'static str, Value)> {
    let none = Event::default();
    // Borrowed, not cloned: the payload can be large.
    let event = record.body.event.as_ref().unwrap_or(&none);
    let received = record.body.receive_time_unix_nanos;
    let client_time = event.client_time_unix_nanos;
    let mut fields = vec![
        ("seq", Value::from(record.header.seq)),
        ("receive_time", Value::from(rfc3339_utc(received, 9))),
        ("receive_time_unix_nanos", Value::from(received)),
        ("kind", Value::from(event.kind.as_str())),
        ("actor", Value::from(event.actor.as_str())),
        ("subject", Value::from(event.subject.as_str())),
        ("peer", tally_client::record::peer_json(&record.body)),
        ("attributes", attributes_json(event)),
        ("content_type", Value::from(event.content_type.as_str())),
        (
            "client_time",
            // 0: the client did not say.
            if client_time == 0 {
                Value::Null
            } else {
                Value::from(rfc3339_utc(client_time, 9))
            },
        ),
        ("client_time_unix_nanos", Value::from(client_time)),
    ];
    let (key, payload) = tally_client::record::payload_json(event);
    fields.push((key, payload));
    // Only for a record with a content commitment: "present" (checked and
    // joined back), "erased" or "redacted" (docs/EVENTS.md section 10).
    if let Some(word) = record.content.word() {
        fields.push(("content", Value::from(word)));
    }
    fields.push(("entry_hash", Value::from(hex::encode(record.entry_hash))));
    fields.push((
        "prev_hash",
        Value::from(hex::encode(record.header.prev_hash)),
    ));
    fields
}

fn json_compact(fields: &[(&str, Value)]) -> String {
    let members: Vec<String> = fields
        .iter()
        .map(|(key, value)| format!("{}:{value}", Value::from(*key)))
        .collect();
    format!("{{{}}}", members.join(","))
}

fn json_pretty(fields: &[(&str, Value)]) -> String {
    let members: Vec<String> = fields
        .iter()
        .map(|(key, value)| {
            // A nested value's own lines move in by one level. JSON strings
            // hold no raw newline (serde_json writes \n), so every newline
            // here is layout.
            let nested = serde_json::to_string_pretty(value)
                .unwrap_or_else(|_| value.to_string())
                .replace('\n', "\n  ");
            format!("  {}: {nested}", Value::from(*key))
        })
        .collect();
    format!("{{\n{}\n}}", members.join(",\n"))
}

/// Where records go: the ones that match the filter, rendered to a buffered
/// stdout. The filter is checked here on every record, whatever the daemon
/// did with it (a daemon that ignored it must not widen the output).
pub struct Sink {
    renderer: Renderer,
    filter: Filter,
    /// Stdout, buffered; a test's buffer.
    out: Box<dyn Write>,
    /// Records offered that did not match.
    skipped: u64,
}

impl Sink {
    pub fn new(renderer: Renderer, filter: Filter) -> Sink {
        Sink::to(
            renderer,
            filter,
            Box::new(BufWriter::new(io::stdout().lock())),
        )
    }

    /// A sink writing to `out`.
    pub fn to(renderer: Renderer, filter: Filter, out: Box<dyn Write>) -> Sink {
        Sink {
            renderer,
            filter,
            out,
            skipped: 0,
        }
    }

    /// Whether `record` passes the filter.
    pub fn matches(&self, record: &DecodedRecord) -> bool {
        filter::matches(&self.filter, &record.body)
    }

    /// Prints `record` if it passes the filter; returns whether it did.
    pub fn offer(&mut self, record: &DecodedRecord) -> Result<bool, OutputError> {
        if !self.matches(record) {
            self.skipped += 1;
            return Ok(false);
        }
        self.renderer
            .write(&mut self.out, record)
            .map_err(OutputError::of)?;
        Ok(true)
    }

    /// Records offered that the filter kept out.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Writes out what is buffered (after each batch, so a follower's
    /// reader sees records as they come).
    pub fn flush(&mut self) -> Result<(), OutputError> {
        self.out.flush().map_err(OutputError::of)
    }
}

/// Why the output could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The reader went away (`| head`): not a failure of the command. Its
    /// own variant, so a broken pipe elsewhere (the daemon's socket) is not
    /// mistaken for it.
    #[error("stdout was closed")]
    Closed,
    #[error("cannot write the output: {0}")]
    Write(io::Error),
}

impl OutputError {
    fn of(err: io::Error) -> OutputError {
        if err.kind() == io::ErrorKind::BrokenPipe {
            OutputError::Closed
        } else {
            OutputError::Write(err)
        }
    }
}

/// Ends a command quietly when its reader went away (`tally tail | head`):
/// a write or flush to a closed stdout ([`OutputError::Closed`]) is success,
/// not an error to report.
pub fn quiet_on_closed_stdout(result: anyhow::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(err) if is_broken_pipe(&err) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|cause| matches!(cause.downcast_ref(), Some(OutputError::Closed)))
}

#[cfg(test)]
mod tests;
