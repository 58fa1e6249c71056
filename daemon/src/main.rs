//! The `tallyd` binary: configuration, logging, signals.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tally_daemon::config::Config;
use tally_daemon::datadir::DataDirLock;
use tally_daemon::RunOptions;
use tokio_util::sync::CancellationToken;

/// tallyd: a tamper-evident audit log for AI hosts.
///
/// Settings come from the config file, then TALLYD_* environment variables,
/// then flags, each overriding the one before. Every key of the file is a
/// variable: TALLYD_ + its name in upper case, a table's name first
/// (max_frame_bytes: TALLYD_MAX_FRAME_BYTES; [tpm] tcti: TALLYD_TPM_TCTI);
/// an unknown TALLYD_* variable is warned about, a malformed one refused.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// TOML config file (see tallyd.example.toml).
    #[arg(long, short, env = "TALLYD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Data directory [default: /var/lib/tally].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Unix socket path [default: /run/tally/tally.sock].
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Socket file mode, octal [default: 0660].
    #[arg(long, global = true)]
    socket_mode: Option<String>,
    /// Also listen on this vsock port (guest VMs; peers need a grant by CID).
    #[arg(long, global = true)]
    vsock_port: Option<u32>,
    /// Group owning the socket file (name or gid).
    #[arg(long, global = true)]
    socket_group: Option<String>,
    /// Log filter, e.g. "info" or "tally_daemon=debug" [default: info].
    #[arg(long, global = true)]
    log: Option<String>,
    /// Run without a TPM: a hash chain only, not protected against a root
    /// attacker (a warning is logged).
    #[arg(long, env = "TALLYD_NO_TPM", global = true)]
    no_tpm: bool,
    /// TPM TCTI [default: TCTI, then TPM2TOOLS_TCTI, then device:/dev/tpmrm0].
    #[arg(long, global = true)]
    tcti: Option<String>,
    /// Anchoring interval in seconds [default: 10].
    #[arg(long, global = true)]
    anchor_interval_secs: Option<u64>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run {
        /// Start even though the TPM counter is ahead of the store's newest
        /// anchor (a detected rollback): anchor at once at the TPM's value.
        /// Logged loudly; verifiers report the gap until it is reviewed
        /// (tally gap-ack).
        #[arg(long)]
        accept_rollback: bool,
    },
    /// Provision the TPM (idempotent): define the NV counter, derive the
    /// attestation key and the owner key, write ak.pem / ak.pub /
    /// owner-key.pem / EK certificates to <data_dir>/tpm/, and print both
    /// public keys.
    Provision,
    /// Print the log's identity (JSON, what verifiers pin: tally verify
    /// --identity) from the store. Works while the daemon runs; fails before
    /// the log's first start with a TPM.
    Identity,
    /// Check the store offline (the daemon must be stopped): the chain, the
    /// head, the Merkle tree and the receive-time index that --since reads
    /// seek with; print the head.
    Check {
        /// First drop the receive-time index and rebuild it from the
        /// records (the repair when check finds it unsound), then check.
        #[arg(long)]
        rebuild_times: bool,
    },
    /// Print the effective configuration as TOML and exit.
    Config,
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The error chain, without a backtrace even under RUST_BACKTRACE:
            // operators need the reason, not our stack.
            eprintln!("tallyd: error: {}", tally_client::error_text(err.as_ref()));
            exit_code(&err)
        }
    }
}

/// Exit status 3: refused to start because the store and the TPM disagree (a
/// rollback or a restored backup, a cleared or other TPM, a counter owned by
/// another log, deleted anchors: each a decision for an operator, see
/// docs/OPERATIONS.md), because the store is of the old anchoring format or damaged, or
/// because the ack journal holds acked events it cannot give back intact;
/// never for a restart loop (systemd:
/// RestartPreventExitStatus=3 78). 78 (sysexits EX_CONFIG): the
/// configuration is invalid; retrying cannot help either. 2: usage errors
/// (clap). 1: anything else.
pub const EXIT_REFUSED: u8 = 3;
pub const EXIT_CONFIG: u8 = 78;

fn exit_code(err: &anyhow::Error) -> ExitCode {
    use tally_daemon::config::ConfigError;
    use tally_daemon::journal::JournalError;
    use tally_daemon::socket::SocketError;
    use tally_daemon::store::StoreError;
    use tally_daemon::DaemonError;
    if err.downcast_ref::<ConfigError>().is_some() {
        return ExitCode::from(EXIT_CONFIG);
    }
    match err.downcast_ref::<DaemonError>() {
        Some(DaemonError::Startup(refusal)) if refusal.is_refusal() => ExitCode::from(EXIT_REFUSED),
        // Written by the anchoring v1 tallyd: export it with that one.
        Some(DaemonError::Store(StoreError::AnchoringV1 { .. })) => ExitCode::from(EXIT_REFUSED),
        // data.mdb is damaged: restoring it is an operator's decision.
        Some(DaemonError::Store(StoreError::Damaged { .. })) => ExitCode::from(EXIT_REFUSED),
        // A times key tallyd cannot read at open: the repair is named
        // (tallyd check --rebuild-times); a restart cannot help.
        Some(DaemonError::Store(StoreError::TimesUnsound(_))) => ExitCode::from(EXIT_REFUSED),
        // Acked events the store lacks and the journal cannot give back
        // intact: an operator looks before anything is served.
        Some(DaemonError::Journal(
            JournalError::Damaged { .. } | JournalError::Mismatch { .. },
        )) => ExitCode::from(EXIT_REFUSED),
        Some(DaemonError::Config(_)) => ExitCode::from(EXIT_CONFIG),
        // tallyd.socket and tallyd.toml disagree: a restart cannot help.
        Some(DaemonError::Socket(
            SocketError::ActivationCount(_)
            | SocketError::ActivationNotUnixStream
            | SocketError::ActivationMismatch { .. },
        )) => ExitCode::from(EXIT_CONFIG),
        _ => ExitCode::FAILURE,
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (mut config, env_warnings) =
        tally_daemon::config_env::load(cli.config.as_deref(), std::env::vars_os())?;
    if let Some(value) = cli.data_dir {
        config.data_dir = value;
    }
    if let Some(value) = cli.socket {
        config.socket = value;
    }
    if let Some(value) = cli.socket_mode {
        config.socket_mode = value;
    }
    if let Some(value) = cli.vsock_port {
        config.vsock_port = Some(value);
    }
    if let Some(value) = cli.socket_group {
        config.socket_group = Some(value);
    }
    if let Some(value) = cli.log {
        config.log = value;
    }
    if cli.no_tpm {
        config.tpm.enabled = false;
    }
    if let Some(value) = cli.tcti {
        config.tpm.tcti = Some(value);
    }
    if let Some(value) = cli.anchor_interval_secs {
        config.tpm.anchor_interval_secs = value;
    }
    config.validate()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&config.log).context("invalid log filter")?,
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    for warning in env_warnings {
        tracing::warn!("{warning}");
    }

    // libtss2 prints its own errors to stderr; tallyd reports them through tracing.
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+NONE");
    }
    match cli.command.unwrap_or(Command::Run {
        accept_rollback: false,
    }) {
        Command::Run { accept_rollback } => run(
            config,
            RunOptions {
                accept_rollback,
                config_path: cli.config,
            },
        ),
        Command::Provision => provision(&config),
        Command::Identity => {
            print!("{}", tally_daemon::read_identity(&config)?);
            Ok(())
        }
        Command::Check { rebuild_times } => check(&config, rebuild_times),
        Command::Config => {
            print!("{}", config.to_toml()?);
            Ok(())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tallyd")
        .build()
        .context("cannot start the async runtime")
}

fn provision(config: &Config) -> anyhow::Result<()> {
    let (_, provisioned) = runtime()?.block_on(tally_daemon::provision(config))?;
    let dir = config.data_dir.join("tpm");
    eprintln!(
        "TPM {} {}: counter {:#010x} = {}{}; AK public key written to {}, owner key to {}",
        provisioned.vendor.manufacturer,
        provisioned.vendor.vendor,
        provisioned.counter_index,
        provisioned.counter,
        if provisioned.counter_defined_now {
            " (defined now)"
        } else {
            ""
        },
        dir.join("ak.pem").display(),
        dir.join("owner-key.pem").display()
    );
    print!("{}{}", provisioned.ak.pem, provisioned.owner_key.pem);
    Ok(())
}

fn run(config: Config, options: RunOptions) -> anyhow::Result<()> {
    let runtime = runtime()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            if let Err(err) = wait_for_signal().await {
                tracing::error!(%err, "cannot listen for signals");
                return;
            }
            tracing::info!("shutting down: draining connections");
            tally_daemon::notify_systemd(sd_notify::NotifyState::Stopping);
            signals.cancel();
        });
        tally_daemon::run(&config, options, shutdown).await
    })?;
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}

fn check(config: &Config, rebuild_times: bool) -> anyhow::Result<()> {
    let _lock = DataDirLock::acquire(&config.data_dir)?;
    // Acked events still in the ack journal are committed first, as a start
    // would: the check covers every acked event. (The index is rebuilt at
    // open, before the journal's events are committed and indexed.)
    let (store, _journal) = tally_daemon::open_store_with(config, rebuild_times)?;
    let head = store.verify()?;
    println!(
        "ok: {} records, head {}, log id {}",
        head.size,
        hex::encode(head.hash),
        hex::encode(store.log_id())
    );
    Ok(())
}
