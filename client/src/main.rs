//! `tally`: the command-line client for tallyd, and the offline verifier.
//! This file holds the top-level flags and the list of subcommands, and
//! dispatches each to its family in `cli/`.
//!
//! Exit codes: 0 success (a verification: PASS); 1 verification failed
//! (FAIL: the log is damaged); 2 any other error (bad usage, daemon
//! unreachable, I/O); 3 a verification that is PARTIAL (something it needs
//! was not given, so it cannot say PASS); 4 `tally append --stdin` refused
//! some input lines (each named on stderr; every other line is stored).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tally_client::DEFAULT_SOCKET;

use crate::cli::connect::{connect, Target};

mod cli;

/// Top-level help: what the tool is, its subcommands by task, its exit
/// codes and where the docs are (the wire protocol is the library's business).
const AFTER_HELP: &str = "\
Tally is a tamper-evident audit log for AI hosts: tallyd stores events in an
append-only hash chain and anchors it in the TPM; tally talks to tallyd over
its Unix socket (--socket, TALLY_SOCKET; default /run/tally/tally.sock) and
verifies exported logs offline, with no daemon and no TPM.

By task:
  write       append (one event from flags, or JSON lines with --stdin)
  read        tail [-n N] [--follow] [--since ...], status; show BUNDLE (offline)
  anchor      anchor (now), anchors (list anchored sizes, counters, times)
  export      export (a bundle; --redact: no content), disclose --seq N (one
              record's content, proven), attest (a fresh TPM attestation)
  verify      verify BUNDLE --identity identity.json, quote-files (for tpm2_checkquote)
  prove       prove inclusion|consistency, verify-proof
  review      gap-ack (accept a reviewed counter gap for verify --accept-gap)

Exit codes: 0 success (verify: PASS); 1 verification failed (FAIL); 2 any other
error (usage, daemon unreachable, I/O); 3 verification PARTIAL (something it
needs was not given); 4 append --stdin refused some lines (each named).

Docs: README.md (Using it), docs/DESIGN.md (formats, what verify proves),
docs/OPERATIONS.md (running tallyd). `tally COMMAND --help` for each command.";

/// The first line of `tally --help`. Given here: a bare `about` would take
/// the crate's description, which is the library's (the wire protocol).
const ABOUT: &str =
    "tally: append to, read, anchor, export and verify a Tally audit log (tamper-evident, TPM-anchored)";

#[derive(Debug, Parser)]
#[command(version, about = ABOUT, long_about = None, after_help = AFTER_HELP)]
struct Cli {
    /// The daemon's Unix socket.
    #[arg(long, short, env = "TALLY_SOCKET", default_value = DEFAULT_SOCKET, global = true)]
    socket: PathBuf,
    /// Connect over vsock instead, as CID:PORT (from a guest VM the host is CID 2).
    #[arg(long, env = "TALLY_VSOCK", value_parser = cli::connect::parse_vsock, global = true)]
    vsock: Option<(u32, u32)>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Append one event from flags, or stream JSON lines from stdin (--stdin).
    /// Prints one ack per event (seq and entry hash) once it is durable.
    /// Exit 4: some --stdin lines refused (named), the others stored.
    Append(cli::append::AppendArgs),
    /// Print the last records (10; -n N, --from SEQ, --cursor FILE), checking
    /// each; with -f, keep printing new ones, across daemon restarts.
    /// Filters: --since/--until, --kind, --actor, --subject, --attr.
    Tail(cli::tail::TailArgs),
    /// Display an exported bundle's records offline (no daemon, no TPM), with
    /// tail's output modes and filters. `show` displays (checking each
    /// record's link to the one before); `verify` proves.
    Show(cli::show::ShowArgs),
    /// Export the whole log into a self-contained bundle file, or a range of
    /// it (--from/--to/--since/--until) into a range bundle that verifies alone.
    Export(cli::export::ExportArgs),
    /// Disclose one record's content (a prompt, an output) without the rest
    /// of the log: a range bundle of record N with its content, proven
    /// against the oldest anchor covering it; `tally verify FILE` checks it.
    Disclose(cli::disclose::DiscloseArgs),
    /// Verify a bundle offline (no daemon, no TPM needed) against the log's
    /// identity: chain intact, origin (genesis), anchors valid, counter
    /// continuous, current (--attestation, --nonce), content (each against
    /// its record's commitment; absent content only under an erasure
    /// record, or in a --redact bundle); a range bundle: its
    /// records are exactly those entries of the anchored log. Or, with
    /// --live, the daemon's log as it streams it, with no bundle file (with
    /// --trusted: only what is new since that anchor). Exit 0 PASS,
    /// 1 FAIL (naming the first violation), 3 PARTIAL (naming what was not checked).
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
    /// Erase the content (payload and personal attributes) of the records
    /// selected, for good; the records, their hashes and the anchors stay, and
    /// the daemon appends a tally.erasure record naming you, the selection,
    /// the seqs and the reason. Role admin.
    Erase(cli::erase::EraseArgs),
    /// List the anchors: counter, log size covered, time and age, TPM clock.
    ///
    /// From the daemon, or offline from a bundle (--bundle). The time is the
    /// daemon's clock when it made the anchor (the anchor record's
    /// created_unix_nanos: informational and not TPM-signed; the next anchor,
    /// once made, covers it by hashing this one); the TPM clock is the quote's (milliseconds
    /// since the TPM's last clear, AK-signed). Signatures are not checked here:
    /// `tally verify` does that.
    Anchors(cli::anchors::AnchorsArgs),
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
        Command::Verify(args) => return cli::verify::run(&target, &args),
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
        Command::Anchors(args) => cli::anchors::run(&target, &args).await?,
        Command::Erase(args) => cli::erase::run(&target, &args).await?,
        Command::Prove(what) => cli::proof::prove(&mut connect(&target).await?, &what).await?,
        Command::VerifyProof(args) => return cli::proof::verify_proof(&args),
        Command::Append(args) => return cli::append::run(&target, args).await,
        Command::Tail(args) => cli::tail::run(&target, &args).await?,
        Command::Show(args) => cli::show::run(&args)?,
        Command::Export(args) => cli::export::run(&target, &args).await?,
        Command::Disclose(args) => cli::disclose::run(&target, &args).await?,
        Command::Status { json } => cli::status::run(&target, json).await?,
    }
    Ok(ExitCode::SUCCESS)
}
