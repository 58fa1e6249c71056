//! `tally append`: one event from flags, or JSON lines from stdin sent as
//! pipelined batches; one ack printed per event once it is durable.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use tally_client::clock::now_unix_nanos;
use tally_client::proto::Event;
use tally_client::Ack;

use crate::cli::connect::{connect, Target};

#[derive(Debug, clap::Args)]
pub struct AppendArgs {
    /// Read events as JSON lines from stdin, e.g.
    /// {"kind":"prompt","actor":"agent-7","subject":"req-1","attributes":{"model_id":"m"},"payload":"..."}
    /// (binary payloads as "payload_b64").
    #[arg(long, conflicts_with_all = ["kind", "actor", "subject", "attr", "payload", "payload_file", "content_type"])]
    stdin: bool,
    /// Events per append request with --stdin.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// What happened, e.g. "prompt", "model.load".
    #[arg(long, required_unless_present = "stdin")]
    kind: Option<String>,
    #[arg(long, default_value = "")]
    actor: String,
    #[arg(long, default_value = "")]
    subject: String,
    /// An attribute, KEY=VALUE; repeatable.
    #[arg(long, value_parser = parse_attr)]
    attr: Vec<(String, String)>,
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

/// One event as a JSON line on stdin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEvent {
    kind: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    payload: Option<String>,
    payload_b64: Option<String>,
    #[serde(default)]
    content_type: String,
    client_time_unix_nanos: Option<i64>,
}

/// Parses `--attr KEY=VALUE`.
fn parse_attr(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

/// Appends the events and prints one ack per event, in order, once durable.
pub async fn run(target: &Target, args: AppendArgs) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if !args.stdin {
        let payload = match (&args.payload, &args.payload_file) {
            (Some(text), _) => text.clone().into_bytes(),
            (None, Some(path)) => {
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
            }
            (None, None) => Vec::new(),
        };
        let event = Event {
            kind: args.kind.unwrap_or_default(),
            actor: args.actor,
            subject: args.subject,
            attributes: args.attr.into_iter().collect(),
            payload,
            content_type: args.content_type,
            client_time_unix_nanos: now_unix_nanos(),
            typed_attributes: Vec::new(),
        };
        let acks = client.append(vec![event]).await?;
        print_acks(&mut out, &acks, args.json)?;
        return Ok(());
    }

    // Pipelined: keep up to WINDOW requests in flight, acks come back in order.
    const WINDOW: usize = 8;
    let batch = args.batch.max(1);
    let mut in_flight = std::collections::VecDeque::new();
    let mut events = Vec::with_capacity(batch);
    // A bad line stops reading; requests already sent are still acked and
    // printed (their events are in the log), the unsent partial batch is dropped.
    let mut input_error = None;
    let stdin = io::stdin();
    for (index, line) in stdin.lock().lines().enumerate() {
        let event = line
            .context("cannot read stdin")
            .and_then(|line| match line.trim().is_empty() {
                true => Ok(None),
                false => json_event(&line).map(Some),
            })
            .with_context(|| format!("stdin line {}", index + 1));
        match event {
            Ok(Some(event)) => events.push(event),
            Ok(None) => continue,
            Err(err) => {
                input_error = Some(err);
                break;
            }
        }
        if events.len() == batch {
            if in_flight.len() == WINDOW {
                let acks = client
                    .recv_append(in_flight.pop_front().unwrap_or_default())
                    .await?;
                print_acks(&mut out, &acks, args.json)?;
            }
            in_flight.push_back(client.send_append(std::mem::take(&mut events)).await?);
        }
    }
    if input_error.is_none() && !events.is_empty() {
        in_flight.push_back(client.send_append(events).await?);
    }
    while let Some(id) = in_flight.pop_front() {
        let acks = client.recv_append(id).await?;
        print_acks(&mut out, &acks, args.json)?;
    }
    match input_error {
        Some(err) => Err(err.context(
            "stopped at this line; the events acked above are in the log, none after them",
        )),
        None => Ok(()),
    }
}

/// One stdin line as an event (its client time defaults to now).
fn json_event(line: &str) -> anyhow::Result<Event> {
    let event: JsonEvent = serde_json::from_str(line)?;
    let payload = match (event.payload, event.payload_b64) {
        (Some(_), Some(_)) => bail!("give payload or payload_b64, not both"),
        (Some(text), None) => text.into_bytes(),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .context("payload_b64 is not base64")?,
        (None, None) => Vec::new(),
    };
    Ok(Event {
        kind: event.kind,
        actor: event.actor,
        subject: event.subject,
        attributes: event.attributes,
        payload,
        content_type: event.content_type,
        client_time_unix_nanos: event.client_time_unix_nanos.unwrap_or_else(now_unix_nanos),
        typed_attributes: Vec::new(),
    })
}

fn print_acks(out: &mut impl Write, acks: &[Ack], json: bool) -> io::Result<()> {
    for ack in acks {
        if json {
            writeln!(
                out,
                "{}",
                json!({"seq": ack.seq, "entry_hash": hex::encode(ack.entry_hash)})
            )?;
        } else {
            writeln!(out, "{} {}", ack.seq, hex::encode(ack.entry_hash))?;
        }
    }
    Ok(())
}
