//! `tally`: the command-line client for tallyd, and the offline verifier.
//!
//! Exit codes: 0 success (a verification: PASS); 1 verification failed
//! (FAIL: the log is damaged); 2 any other error (bad usage, daemon
//! unreachable, I/O); 3 a verification that is PARTIAL (something it needs
//! was not given, so it cannot say PASS).

use std::collections::BTreeMap;
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use base64::Engine as _;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde_json::json;
use tally_client::proto::{Event, StoredRecord};
use tally_client::{record, Ack, Client};

mod cli;

const DEFAULT_SOCKET: &str = "/run/tally/tally.sock";
const CLIENT_NAME: &str = concat!("tally-cli/", env!("CARGO_PKG_VERSION"));

/// tally: append to, read, export and verify a Tally audit log.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The daemon's Unix socket.
    #[arg(long, short, env = "TALLY_SOCKET", default_value = DEFAULT_SOCKET, global = true)]
    socket: PathBuf,
    /// Connect over vsock instead, as CID:PORT (from a guest VM the host is CID 2).
    #[arg(long, env = "TALLY_VSOCK", value_parser = parse_vsock, global = true)]
    vsock: Option<(u32, u32)>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Append one event from flags, or many as JSON lines on stdin (--stdin).
    /// Prints one ack per event (seq and entry hash) once it is durable.
    Append(AppendArgs),
    /// Print stored records; with --follow, keep printing new ones.
    Tail {
        /// First seq to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Keep following the log as it grows.
        #[arg(long, short)]
        follow: bool,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Export the whole log into a self-contained bundle file.
    Export {
        /// The bundle file to write.
        #[arg(long, short)]
        out: PathBuf,
        /// Right after the export, also take a fresh attestation for --nonce
        /// that carries the anchors made since (written to FILE, default OUT.att).
        #[arg(long, requires = "nonce", value_name = "FILE")]
        #[allow(clippy::option_option)]
        attest: Option<Option<PathBuf>>,
        /// Your nonce for --attest, hex (1 to 64 bytes).
        #[arg(long, requires = "attest")]
        nonce: Option<String>,
    },
    /// Verify a bundle offline (no daemon, no TPM needed) against the log's
    /// identity: chain intact, origin (genesis), anchors valid, counter
    /// continuous, current (--attestation, --nonce). Exit 0 PASS, 1 FAIL
    /// (naming the first violation), 3 PARTIAL (naming what was not checked).
    Verify(cli::verify::VerifyArgs),
    /// Get a fresh TPM attestation bound to your nonce.
    Attest {
        /// Your nonce, hex (1 to 64 bytes); pass the same to `tally verify --nonce`.
        #[arg(long)]
        nonce: String,
        /// The bundle you will verify (or the log size its newest anchor
        /// covers): the attestation then carries the anchors made since, so a
        /// log that kept growing still verifies as current.
        #[arg(long, value_name = "BUNDLE|SIZE")]
        since: Option<String>,
        /// Where to write the attestation.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Acknowledge a reviewed counter gap (e.g. an orderly counter's jump
    /// after a power loss), pinned by the anchors on both sides, for
    /// `tally verify --accept-gap`.
    GapAck(cli::tpm::GapAckArgs),
    /// Anchor the log's head in the TPM now (instead of waiting for the interval).
    Anchor,
    /// Write an inclusion or consistency proof, bound to TPM anchors.
    #[command(subcommand)]
    Prove(cli::proof::Prove),
    /// Verify a proof file offline against the log's identity.
    VerifyProof(cli::proof::VerifyProofArgs),
    /// Write each anchor's quote of a bundle as the files tpm2_checkquote reads,
    /// and print the tpm2_checkquote command for each.
    QuoteFiles {
        bundle: PathBuf,
        /// The AK public key (PEM).
        #[arg(long)]
        ak: PathBuf,
        /// Directory to write anchor-<counter>/ directories into.
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Show the log's size, head and store figures.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct AppendArgs {
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

fn parse_attr(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tally: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tally: {}", tally_client::error_text(err.as_ref()));
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let target = Target {
        socket: cli.socket.clone(),
        vsock: cli.vsock,
    };
    match cli.command {
        Command::Verify(args) => return verify(&args),
        Command::QuoteFiles {
            bundle,
            ak,
            out_dir,
        } => cli::tpm::quote_files(&bundle, &ak, &out_dir)?,
        Command::Attest { nonce, since, out } => {
            let since = since.as_deref().map(cli::tpm::since_size).transpose()?;
            cli::tpm::attest(&mut connect(&target).await?, &nonce, since, &out).await?
        }
        Command::GapAck(args) => cli::tpm::gap_ack(&args)?,
        Command::Anchor => cli::tpm::anchor(&mut connect(&target).await?).await?,
        Command::Prove(what) => cli::proof::prove(&mut connect(&target).await?, &what).await?,
        Command::VerifyProof(args) => return cli::proof::verify_proof(&args),
        Command::Append(args) => append(&target, args).await?,
        Command::Tail { from, follow, json } => tail(&target, from, follow, json).await?,
        Command::Export { out, attest, nonce } => export(&target, &out, attest.zip(nonce)).await?,
        Command::Status { json } => status(&target, json).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the daemon is.
#[derive(Debug, Clone)]
struct Target {
    socket: PathBuf,
    vsock: Option<(u32, u32)>,
}

/// A connection over either transport.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}
type AnyClient = Client<Box<dyn Stream>>;

fn parse_vsock(text: &str) -> Result<(u32, u32), String> {
    let (cid, port) = text.split_once(':').ok_or("expected CID:PORT")?;
    let cid = cid.parse().map_err(|_| format!("{cid:?} is not a CID"))?;
    let port = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port"))?;
    Ok((cid, port))
}

async fn connect(target: &Target) -> anyhow::Result<AnyClient> {
    let stream: Box<dyn Stream> = match target.vsock {
        Some((cid, port)) => Box::new(
            tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(cid, port))
                .await
                .with_context(|| format!("cannot connect to vsock {cid}:{port}; is tallyd listening there (vsock_port)?"))?,
        ),
        None => Box::new(
            tokio::net::UnixStream::connect(&target.socket)
                .await
                .with_context(|| {
                    format!(
                        "cannot connect to {}: is tallyd running? (set the socket with --socket or TALLY_SOCKET)",
                        target.socket.display()
                    )
                })?,
        ),
    };
    Ok(Client::handshake(stream, CLIENT_NAME).await?)
}

fn now_unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as i64)
        .unwrap_or(0)
}

async fn append(target: &Target, args: AppendArgs) -> anyhow::Result<()> {
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

async fn tail(target: &Target, from: u64, follow: bool, json: bool) -> anyhow::Result<()> {
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

fn progress_bar(what: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    let template = format!("{what} {{bar:40}} {{pos}}/{{len}} records ({{per_sec}}, eta {{eta}})");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

async fn export(
    target: &Target,
    out: &Path,
    attest: Option<(Option<PathBuf>, String)>,
) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let bar = progress_bar("exporting");
    let summary = tally_client::export::export(&mut client, out, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await?;
    bar.finish_and_clear();
    println!(
        "exported {} records and {} anchors to {} (head {})",
        summary.size,
        summary.anchors,
        summary.path.display(),
        hex::encode(summary.head_hash)
    );
    if let Some((path, nonce)) = attest {
        let path = path.unwrap_or_else(|| PathBuf::from(format!("{}.att", out.display())));
        cli::tpm::attest(&mut client, &nonce, summary.last_anchor_size, &path).await?;
    }
    Ok(())
}

fn verify(args: &cli::verify::VerifyArgs) -> anyhow::Result<ExitCode> {
    let bar = progress_bar("verifying");
    let code = cli::verify::run(args, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    code
}

async fn status(target: &Target, json: bool) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let status = client.status().await?;
    if json {
        println!(
            "{}",
            json!({
                "size": status.size,
                "head_hash": hex::encode(&status.head_hash),
                "root_hash": hex::encode(&status.root_hash),
                "log_id": hex::encode(&status.log_id),
                "server": status.server_name,
                "format_version": status.format_version,
                "store_used_bytes": status.store_used_bytes,
                "store_map_bytes": status.store_map_bytes,
                "disk_free_bytes": status.disk_free_bytes,
                "queued_events": status.queued_events,
                "tpm_enabled": status.tpm_enabled,
                "last_anchor_counter": status.last_anchor_counter,
                "last_anchor_size": status.last_anchor_size,
                "last_anchor_age_millis": status.last_anchor_age_millis,
                "unanchored_events": status.unanchored_events,
                "last_anchor_error": status.last_anchor_error,
                "oldest_unanchored_age_millis": status.oldest_unanchored_age_millis,
            })
        );
    } else {
        println!("server:        {}", status.server_name);
        println!("log id:        {}", hex::encode(&status.log_id));
        println!("size:          {} records", status.size);
        println!("head:          {}", hex::encode(&status.head_hash));
        println!("merkle root:   {}", hex::encode(&status.root_hash));
        println!(
            "store:         {} bytes used of a {} byte map",
            status.store_used_bytes, status.store_map_bytes
        );
        println!("disk free:     {} bytes", status.disk_free_bytes);
        println!("queued events: {}", status.queued_events);
        if status.tpm_enabled && status.last_anchor_age_millis == 0 && status.last_anchor_size == 0
        {
            println!(
                "last anchor:   none yet (TPM counter at {}; anchors every {} s when the log grows)",
                status.last_anchor_counter,
                status.anchor_interval_millis / 1000
            );
        }
        if status.tpm_enabled && (status.last_anchor_age_millis > 0 || status.last_anchor_size > 0)
        {
            println!(
                "last anchor:   TPM counter {} covering {} records, {:.1} s ago (every {} s when the log grows)",
                status.last_anchor_counter,
                status.last_anchor_size,
                status.last_anchor_age_millis as f64 / 1000.0,
                status.anchor_interval_millis / 1000
            );
        }
        if status.tpm_enabled {
            println!(
                "unanchored:    {} records (oldest acked {:.1} s ago)",
                status.unanchored_events,
                status.oldest_unanchored_age_millis as f64 / 1000.0
            );
            if !status.last_anchor_error.is_empty() {
                println!("anchor error:  {}", status.last_anchor_error);
            }
        } else {
            println!("TPM:           OFF (hash chain only)");
        }
    }
    Ok(())
}
