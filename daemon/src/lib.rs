//! `tallyd`: receives events over a Unix socket, chains them into an
//! append-only log in LMDB, and acknowledges each only once it is durable.
//!
//! Pipeline: [`server`] (framing, limits, dispatch) -> [`sequencer`] (the
//! single writer: group commit, acks) -> [`store`] (LMDB). [`run`] wires them
//! together; tests call it with a temporary data directory and socket.

pub mod access;
pub mod anchor;
pub mod config;
pub mod datadir;
mod handlers;
pub mod journal;
pub mod limits;
pub mod log_key;
pub mod sequencer;
pub mod server;
pub mod socket;
pub mod store;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tally_attest::tpm::error::TpmError;
use tally_attest::tpm::ops::PcrSpec;
use tally_attest::tpm::worker::{Provisioned, TpmConfig, TpmHandle};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::anchor::{Anchorer, StartupError};
use crate::config::{Config, ConfigError};
use crate::datadir::{DataDirError, DataDirLock};
use crate::journal::{Journal, JournalError};
use crate::server::{Anchoring, Shared};
use crate::socket::SocketError;
use crate::store::Head;
use crate::store::{Store, StoreError};

/// e.g. "tallyd/0.1.0".
pub const SERVER_NAME: &str = concat!("tallyd/", env!("CARGO_PKG_VERSION"));

/// Why the daemon could not start (or stopped abnormally).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("TPM: {0}")]
    Tpm(#[from] TpmError),
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error(transparent)]
    LogKey(#[from] log_key::LogKeyError),
    #[error("cannot write {path}: {source}")]
    WriteFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Choices made on the command line for one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The config file, re-read for `[access]` on SIGHUP.
    pub config_path: Option<std::path::PathBuf>,
    /// Operator override: start although the TPM counter does not match the
    /// store (logged; verifiers still report the gap).
    pub accept_rollback: bool,
}

/// Reloads the `[access]` table from `path` on every SIGHUP. Other settings
/// need a restart (they size queues and maps already in use).
fn reload_access_on_sighup(
    path: std::path::PathBuf,
    access: Arc<access::Access>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut hangups = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::hangup(),
        ) {
            Ok(signal) => signal,
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGHUP; access grants will not reload");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                received = hangups.recv() => if received.is_none() { return },
            }
            match Config::from_file(&path).and_then(|config| config.validate().map(|_| config)) {
                Ok(config) => {
                    access.replace(config.access);
                    tracing::info!(config = %path.display(), "SIGHUP: access grants reloaded");
                }
                Err(err) => tracing::error!(%err, "SIGHUP: keeping the current access grants"),
            }
        }
    });
}

/// Starts the TPM worker and provisions idempotently: the counter index and
/// the attestation key. Writes the AK public key (PEM and TPM2B_PUBLIC) and
/// any EK certificates to `<data_dir>/tpm/`.
pub async fn provision(config: &Config) -> Result<(TpmHandle, Provisioned), DaemonError> {
    // Hierarchy passwords come from the environment only, never from the
    // config file (which is often world-readable).
    let auth = |name: &str| std::env::var(name).unwrap_or_default().into_bytes();
    let tpm = TpmHandle::spawn(TpmConfig {
        tcti: config.tpm.tcti.clone(),
        counter_index: config.tpm.counter_index()?,
        pcrs: PcrSpec::parse(&config.tpm.pcrs)?,
        owner_auth: auth("TALLYD_TPM_OWNER_AUTH"),
        endorsement_auth: auth("TALLYD_TPM_ENDORSEMENT_AUTH"),
        ..TpmConfig::default()
    })?;
    let provisioned = tpm.provision().await?;
    let dir = config.data_dir.join("tpm");
    write_file(&dir, "ak.pem", provisioned.ak.pem.as_bytes())?;
    write_file(&dir, "ak.pub", &provisioned.ak.tpm2b_public)?;
    for cert in &provisioned.ek_certificates {
        write_file(&dir, &format!("ek-{:08x}.der", cert.index), &cert.der)?;
    }
    if provisioned.vendor.is_software_tpm() {
        tracing::warn!(
            manufacturer = %provisioned.vendor.manufacturer,
            vendor = %provisioned.vendor.vendor,
            "THIS IS A SOFTWARE TPM: its keys and counter live in files a root attacker can change; anchors prove nothing against root here"
        );
    }
    tracing::info!(
        counter_index = format_args!("{:#010x}", provisioned.counter_index),
        counter = provisioned.counter,
        defined_now = provisioned.counter_defined_now,
        ak = %dir.join("ak.pem").display(),
        "TPM provisioned"
    );
    Ok((tpm, provisioned))
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), DaemonError> {
    let path = dir.join(name);
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&path, bytes))
        .map_err(|source| DaemonError::WriteFile { path, source })
}

/// Provisions, runs the start-up check (which completes an interrupted
/// anchor, or refuses a store that is behind the TPM), and starts the
/// anchoring task.
async fn start_anchoring(
    config: &Config,
    options: &RunOptions,
    store: &Arc<store::Store>,
    head: watch::Receiver<Head>,
    shutdown: &CancellationToken,
) -> Result<(Anchoring, tokio::task::JoinHandle<Anchorer>), DaemonError> {
    let (tpm, _) = provision(config).await?;
    let interval = Duration::from_secs(config.tpm.anchor_interval_secs);
    let origin = format!("tally/{}", hex::encode(store.log_id()));
    let signer =
        Arc::new(log_key::load_or_create(&tpm, &config.data_dir.join("tpm"), &origin).await?);
    let mut anchorer = Anchorer::new(
        store.clone(),
        tpm.clone(),
        signer.clone(),
        head,
        interval,
        Duration::from_secs(config.tpm.timeout_secs),
    )?;
    anchorer.startup_check(options.accept_rollback).await?;
    let status = anchorer.status.clone();
    let (commands, commands_rx) = mpsc::channel(16);
    let task = tokio::spawn(anchorer.run(interval, commands_rx, shutdown.clone()));
    Ok((
        Anchoring {
            tpm,
            signer,
            commands,
            status,
            timeout: Duration::from_secs(config.tpm.timeout_secs),
        },
        task,
    ))
}

/// Opens the store and commits to it what the ack journal holds past its
/// head (acked events whose LMDB commit a stop or crash cut off). The data
/// directory must be locked.
pub fn open_store(config: &Config) -> Result<(Store, Journal), DaemonError> {
    let dir = datadir::store_dir(&config.data_dir);
    let store = Store::open(&dir, config.map_sizing())?;
    let (journal, replayed) = Journal::recover(&dir, &store)?;
    if replayed > 0 {
        tracing::warn!(
            records = replayed,
            "the last run stopped with acked events not yet in LMDB; committed them from the ack journal"
        );
    }
    Ok((store, journal))
}

/// Runs the daemon until `shutdown` is cancelled, then drains: stops
/// accepting, answers every request already read (committing and acking its
/// events), stops the sequencer, removes the socket file.
pub async fn run(
    config: &Config,
    options: RunOptions,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let mode = config.validate()?;
    let lock = DataDirLock::acquire(&config.data_dir)?;
    let (store, journal) = open_store(config)?;
    let store = Arc::new(store);
    let head = store.head()?;
    let journal = (config.ack_journal_max_bytes > 0).then_some(journal);
    let (sequencer, sequencer_thread) =
        sequencer::start(store.clone(), journal, config.batch_policy())?;
    let (anchoring, anchor_task) = if config.tpm.enabled {
        let anchor_shutdown = CancellationToken::new();
        let (anchoring, task) = start_anchoring(
            config,
            &options,
            &store,
            sequencer.head.clone(),
            &anchor_shutdown,
        )
        .await?;
        (Some(anchoring), Some((task, anchor_shutdown)))
    } else {
        tracing::warn!("TPM anchoring is OFF: the log is a hash chain only, and a root attacker can rewrite it undetected");
        (None, None)
    };
    // vsock first: once the Unix socket accepts, every listener is up.
    let vsock = match config.vsock_port {
        Some(port) => {
            let listener = socket::bind_vsock(port)?;
            tracing::info!(port, "listening on vsock (peers need a grant by CID)");
            Some(listener)
        }
        None => None,
    };
    let (listener, activated) =
        socket::unix_listener(&config.socket, mode, config.socket_group.as_deref())?;
    if activated {
        tracing::info!(socket = %config.socket.display(), "using the socket systemd passed (socket activation); its mode and owner are systemd's");
    }
    let access = Arc::new(access::Access::new(config.access.clone()));
    if let Some(path) = options.config_path.clone() {
        reload_access_on_sighup(path, access.clone(), shutdown.clone());
    }
    tracing::info!(
        socket = %config.socket.display(),
        data_dir = %config.data_dir.display(),
        size = head.size,
        head = %hex::encode(head.hash),
        log_id = %hex::encode(store.log_id()),
        "{SERVER_NAME} ready"
    );
    // The listeners are bound: connections are accepted from here on.
    notify_systemd(sd_notify::NotifyState::Ready);
    let shared = Arc::new(Shared::new(
        config,
        store,
        sequencer,
        access.clone(),
        anchoring,
    ));
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let listeners = server::Listeners {
        unix: listener,
        vsock,
    };
    let drained = server::run(listeners, shared.clone(), shutdown, grace).await;
    // A passed socket is systemd's: it stays, to activate the next start.
    if !activated {
        if let Err(err) = std::fs::remove_file(&config.socket) {
            tracing::warn!(%err, socket = %config.socket.display(), "cannot remove the socket file");
        }
    }
    drop(shared);
    if drained {
        // Every sequencer handle is gone: the commit thread commits what is
        // waiting and stops.
        if sequencer_thread.join().is_err() {
            tracing::error!("the sequencer's commit thread panicked");
        }
    }
    if let Some((task, anchor_shutdown)) = anchor_task {
        // Stop periodic anchoring, then anchor what the drain committed.
        anchor_shutdown.cancel();
        match task.await {
            Ok(mut anchorer) => anchorer.final_anchor().await,
            Err(err) => tracing::error!(%err, "the anchoring task failed"),
        }
    }
    tracing::info!(lock = %lock.path().display(), "stopped");
    drop(lock);
    Ok(())
}

/// Tells systemd (`Type=notify`) about tallyd's state: `READY=1` once the
/// listeners accept connections, `STOPPING=1` when the drain begins. A no-op
/// unless systemd set `NOTIFY_SOCKET`.
pub fn notify_systemd(state: sd_notify::NotifyState<'_>) {
    if let Err(err) = sd_notify::notify(false, &[state]) {
        tracing::warn!(%err, "cannot notify systemd");
    }
}
