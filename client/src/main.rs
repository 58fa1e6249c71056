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

/// tally: append to, read, export and verify a Tally audit log.
#[derive(Debug, Parser)]
#[command(version, about)]
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
        Command::Verify(args) => return cli::verify::run(&args),
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
        Command::Append(args) => return cli::append::run(&target, args).await,
        Command::Tail(args) => cli::tail::run(&target, &args).await?,
        Command::Show(args) => cli::show::run(&args)?,
        Command::Export { out, attest, nonce } => {
            cli::export::run(&target, &out, attest.zip(nonce)).await?
        }
        Command::Status { json } => cli::status::run(&target, json).await?,
    }
    Ok(ExitCode::SUCCESS)
}
