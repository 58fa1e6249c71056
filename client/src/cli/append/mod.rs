//! `tally append`: one event from flags, or JSON lines from stdin streamed to
//! the daemon as they are read ([`stream`]); one ack printed per event once it
//! is durable. [`line`] maps a JSON line to an event.

mod line;
mod stream;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::json;
use tally_client::attributes;
use tally_client::clock::now_unix_nanos;
use tally_client::proto::{ErrorCode, Event};
use tally_client::{Ack, ClientError};

use crate::cli::connect::{connect, Target};

/// The --help text on --stdin's input and behaviour, and the exit codes.
const STDIN_HELP: &str = "\
With --stdin, each line is one event as a JSON object:
  {\"kind\":\"chat\",\"actor\":\"agent-7\",\"subject\":\"req-1\",
   \"attributes\":{\"gen_ai.request.model\":\"m\",\"gen_ai.usage.input_tokens\":812},
   \"payload\":{\"prompt\":\"...\"},\"content_type\":\"application/json\",
   \"client_time_unix_nanos\":1700000000000000000}
Only kind is required (not empty). Attribute values that are strings go to
the string map (which every daemon reads); numbers, booleans and flat arrays
of one kind become typed attributes (int when the number fits i64, else
double); null and objects are refused. A string payload is stored as its
text; any other JSON payload (object, array, number, boolean) as its compact
JSON text, with content type application/json unless the line gives one.
Binary payloads go in \"payload_b64\" (base64). Blank lines are skipped.

Each line is sent as soon as it is read (lines already waiting share a
request) and its ack (seq and entry hash; with --json also its input line)
is printed as soon as the daemon has made it durable, in input order: a
producer that keeps stdin open gets each ack without closing it.

A bad line (not UTF-8 or JSON, not a valid event, or too large for one
request: its encoded size and the limit are named) is reported on stderr
with its line number and skipped; the lines around it are still sent. At
the end: \"N of M lines refused: lines ...\" and exit code 4.

A connection the daemon closed while nothing was in flight (idle, or a
restart) is reopened and the append sent again, once.

Exit codes: 0 every event stored; 4 some lines refused (each named; all
other lines stored); 2 any other error (daemon unreachable or refusing, the
connection lost): the acks printed are stored, the lines not acknowledged
are named.";

#[derive(Debug, clap::Args)]
#[command(after_long_help = STDIN_HELP)]
pub struct AppendArgs {
    /// Read events as JSON lines from stdin and stream them (see below).
    #[arg(long, conflicts_with_all = ["kind", "actor", "subject", "attr", "payload", "payload_file", "content_type"])]
    stdin: bool,
    /// With --stdin: at most N events per append request. Default: the
    /// daemon's maximum (max_events_per_append); requests are also bounded
    /// by bytes, below the daemon's max_frame_bytes.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    batch: Option<u64>,
    /// What happened, e.g. "prompt", "model.load" (not empty).
    #[arg(long, required_unless_present = "stdin")]
    kind: Option<String>,
    #[arg(long, default_value = "")]
    actor: String,
    #[arg(long, default_value = "")]
    subject: String,
    /// An attribute: KEY=VALUE (a string), or KEY:=JSON for a typed value
    /// (KEY:=812 an int, KEY:=0.5 a double, KEY:=true, KEY:='["a","b"]';
    /// a JSON string still goes to the string map). Repeatable.
    #[arg(long, value_name = "KEY=VALUE|KEY:=JSON", value_parser = parse_attr)]
    attr: Vec<Attr>,
    /// Payload as text.
    #[arg(long, conflicts_with = "payload_file")]
    payload: Option<String>,
    /// Payload from a file ("-" is not accepted: use --stdin for streams).
    #[arg(long)]
    payload_file: Option<PathBuf>,
    #[arg(long, default_value = "")]
    content_type: String,
    /// Print acks as JSON lines.
    #[arg(long)]
    json: bool,
}

/// One `--attr`: its key and the value as JSON (a string for `KEY=VALUE`).
#[derive(Debug, Clone)]
pub struct Attr {
    key: String,
    value: serde_json::Value,
}

/// Parses `--attr KEY=VALUE` and `--attr KEY:=JSON`.
fn parse_attr(text: &str) -> Result<Attr, String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE or KEY:=JSON"))?;
    let attr = match key.strip_suffix(':') {
        Some(key) => Attr {
            key: key.to_owned(),
            value: serde_json::from_str(value)
                .map_err(|err| format!("{text:?}: {value:?} is not JSON: {err}"))?,
        },
        None => Attr {
            key: key.to_owned(),
            value: serde_json::Value::String(value.to_owned()),
        },
    };
    Ok(attr)
}

/// Appends the events and prints one ack per event, in order, once durable.
pub async fn run(target: &Target, args: AppendArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(target).await?;
    if args.stdin {
        let options = stream::Options {
            batch: args.batch.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            json: args.json,
        };
        return stream::run(&mut client, target, options).await;
    }
    let payload = match (&args.payload, &args.payload_file) {
        (Some(text), _) => text.clone().into_bytes(),
        (None, Some(path)) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        (None, None) => Vec::new(),
    };
    let mut event = Event {
        kind: args.kind.unwrap_or_default(),
        actor: args.actor,
        subject: args.subject,
        payload,
        content_type: args.content_type,
        client_time_unix_nanos: now_unix_nanos(),
        ..Default::default()
    };
    for attr in args.attr {
        let key = attr.key.clone();
        line::put_attribute(&mut event, attr.key, &attr.value)
            .with_context(|| format!("--attr {key}"))?;
    }
    attributes::check_client_event(&event).context("the event is not valid")?;
    let acks = client.append(vec![event]).await.map_err(explain)?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    for ack in &acks {
        print_ack(&mut out, ack, None, args.json)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A client error, with what to do when the request was too large for the
/// daemon (refused by this client, or by the daemon, which then closes).
fn explain(err: ClientError) -> anyhow::Error {
    let too_large = match &err {
        ClientError::FrameTooLarge { .. } => true,
        ClientError::Server { code, .. } => *code == ErrorCode::FrameTooLarge,
        _ => false,
    };
    let err = anyhow::Error::new(err);
    match too_large {
        true => err.context(
            "the request is too large for the daemon: send fewer events per request (--batch), \
             a smaller payload, or raise max_frame_bytes in tallyd's configuration",
        ),
        false => err,
    }
}

/// One ack: "SEQ HASH", or a JSON object (with the input line, if any).
fn print_ack(out: &mut impl Write, ack: &Ack, line: Option<u64>, json: bool) -> io::Result<()> {
    let hash = hex::encode(ack.entry_hash);
    match (json, line) {
        (true, Some(line)) => writeln!(
            out,
            "{}",
            json!({"seq": ack.seq, "entry_hash": hash, "line": line})
        ),
        (true, None) => writeln!(out, "{}", json!({"seq": ack.seq, "entry_hash": hash})),
        (false, _) => writeln!(out, "{} {hash}", ack.seq),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_are_strings_unless_given_as_json() {
        let plain = parse_attr("model=gpt=4").unwrap();
        assert_eq!((plain.key.as_str(), plain.value), ("model", json!("gpt=4")));
        let typed = parse_attr("tokens:=812").unwrap();
        assert_eq!((typed.key.as_str(), typed.value), ("tokens", json!(812)));
        let array = parse_attr(r#"tags:=["a","b"]"#).unwrap();
        assert_eq!(array.value, json!(["a", "b"]));
        assert!(parse_attr("tokens:=eight")
            .unwrap_err()
            .contains("not JSON"));
        assert!(parse_attr("no-equals").is_err());
    }
}
