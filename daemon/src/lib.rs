//! `tallyd`: receives events over a Unix socket (and vsock), chains them
//! into an append-only log in LMDB, and acknowledges each only once it is
//! durable.
//!
//! Pipeline: [`server`] (framing, limits, dispatch) -> [`sequencer`] (the
//! single writer: group commit, acks) -> [`store`] (LMDB) -> [`anchor`] (the
//! TPM). [`run`] wires them together for the `tallyd` binary, which the
//! end-to-end tests start; [`testing`] wires the same parts in-process
//! (without sockets and TPM) for the server's tests and the fuzz target.

pub mod access;
pub mod anchor;
pub mod batch;
pub mod config;
pub mod config_env;
pub mod content;
pub mod datadir;
pub mod erasure;
pub mod exposure;
pub mod journal;
pub mod limits;
pub mod log_key;
pub mod peer;
pub mod sequencer;
pub mod server;
pub mod socket;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tally_attest::tpm::error::TpmError;
use tally_attest::tpm::ops::PcrSpec;
use tally_attest::tpm::worker::{Provisioned, TpmConfig, TpmHandle};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::anchor::{startup, Anchorer, StartupError};
use crate::config::{Config, ConfigError};
use crate::datadir::{DataDirError, DataDirLock};
use crate::journal::{Journal, JournalError};
use crate::sequencer::SequencerHandle;
use crate::server::{Anchoring, Shared};
use crate::socket::SocketError;
use crate::store::{Store, StoreError};

pub use crate::server::SERVER_NAME;

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
    Sequencer(#[from] sequencer::StartError),
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
    #[error("this log has no identity yet: it is born with the log's genesis anchor, at the first start with a TPM")]
    NoIdentity,
}

/// Choices made on the command line for one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The config file, re-read for `[access]` on SIGHUP.
    pub config_path: Option<std::path::PathBuf>,
    /// Operator override: start although the TPM counter is ahead of the store's
    /// newest anchor (a rollback): anchor at once at the TPM's value (logged;
    /// verifiers report the gap until it is reviewed).
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
            // Through the same layers as the start (file, then TALLYD_*), so
            // that access settings given by the environment survive a
            // reload; its unknown-variable warnings were logged at start.
            let reloaded = crate::config_env::load(Some(&path), std::env::vars_os())
                .and_then(|(config, _)| config.validate().map(|_| config));
            match reloaded {
                Ok(config) => {
                    access.replace(config.access);
                    tracing::info!(config = %path.display(), "SIGHUP: access grants reloaded");
                }
                Err(err) => tracing::error!(%err, "SIGHUP: keeping the current access grants"),
            }
        }
    });
}

/// Starts the TPM worker (it connects on its first request).
pub fn spawn_tpm(config: &Config) -> Result<TpmHandle, DaemonError> {
    // Hierarchy passwords come from the environment only, never from the
    // config file (which is often world-readable).
    let auth = |name: &str| std::env::var(name).unwrap_or_default().into_bytes();
    Ok(TpmHandle::spawn(TpmConfig {
        tcti: config.tpm.tcti.clone(),
        counter_index: config.tpm.counter_index()?,
        pcrs: PcrSpec::parse(&config.tpm.pcrs)?,
        owner_auth: auth("TALLYD_TPM_OWNER_AUTH"),
        endorsement_auth: auth("TALLYD_TPM_ENDORSEMENT_AUTH"),
        ..TpmConfig::default()
    })?)
}

/// Starts the TPM worker and provisions idempotently (see [`provision_with`]).
pub async fn provision(config: &Config) -> Result<(TpmHandle, Provisioned), DaemonError> {
    let tpm = spawn_tpm(config)?;
    let provisioned = provision_with(&tpm, config).await?;
    Ok((tpm, provisioned))
}

/// Provisions idempotently: the counter index, the attestation key and the
/// owner key. Writes their public keys (`ak.pem`, `ak.pub` as TPM2B_PUBLIC,
/// `owner-key.pem`) and any EK certificates to `<data_dir>/tpm/`.
pub async fn provision_with(tpm: &TpmHandle, config: &Config) -> Result<Provisioned, DaemonError> {
    let provisioned = tpm.provision().await?;
    // `tallyd provision` may be the first to touch the data directory: it is
    // created 0700 here too, not by `write_file`'s create_dir_all (0755).
    crate::datadir::create(&config.data_dir)?;
    let dir = config.data_dir.join("tpm");
    write_file(&dir, "ak.pem", provisioned.ak.pem.as_bytes())?;
    write_file(&dir, "ak.pub", &provisioned.ak.tpm2b_public)?;
    write_file(&dir, "owner-key.pem", provisioned.owner_key.pem.as_bytes())?;
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
        owner_key = %dir.join("owner-key.pem").display(),
        "TPM provisioned"
    );
    Ok(provisioned)
}

/// Where the identity file is written: `<data_dir>/tpm/identity.json`.
pub fn identity_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("tpm").join("identity.json")
}

/// Writes the store's identity to `<data_dir>/tpm/identity.json` (when it is
/// missing or differs: the store is the source) and logs where it is.
fn write_identity_file(config: &Config, store: &Store) -> Result<(), DaemonError> {
    let Some(json) = store.identity()? else {
        return Ok(());
    };
    let path = identity_path(&config.data_dir);
    match std::fs::read_to_string(&path) {
        Ok(found) if found == json => {}
        Ok(_) => {
            tracing::warn!(path = %path.display(), "the identity file differs from the store's identity: rewriting it from the store");
            write_file(
                &config.data_dir.join("tpm"),
                "identity.json",
                json.as_bytes(),
            )?;
        }
        Err(_) => write_file(
            &config.data_dir.join("tpm"),
            "identity.json",
            json.as_bytes(),
        )?,
    }
    tracing::info!(
        identity = %path.display(),
        "this log's identity: give verifiers a copy over a channel they trust (tally verify --identity)"
    );
    Ok(())
}

/// The log identity JSON from the store at `config.data_dir` (read-only: the
/// daemon may be running).
pub fn read_identity(config: &Config) -> Result<String, DaemonError> {
    let dir = datadir::store_dir(&config.data_dir);
    Store::read_identity(&dir)?.ok_or(DaemonError::NoIdentity)
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), DaemonError> {
    let path = dir.join(name);
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&path, bytes))
        .map_err(|source| DaemonError::WriteFile { path, source })
}

/// Checks the TPM against the store, provisions, loads the log key, runs the
/// start-up table (genesis, closing an interrupted anchor, or a refusal), and
/// starts the anchoring task.
async fn start_anchoring(
    config: &Config,
    options: &RunOptions,
    store: &Arc<store::Store>,
    sequencer: &SequencerHandle,
    shutdown: &CancellationToken,
) -> Result<(Anchoring, tokio::task::JoinHandle<Anchorer>), DaemonError> {
    let tpm = spawn_tpm(config)?;
    let timeout = Duration::from_secs(config.tpm.timeout_secs);
    // Before provisioning, which would define a counter a TPM2_Clear deleted.
    startup::check_before_provisioning(&tpm, store, config.tpm.counter_index()?, timeout).await?;
    let provisioned = provision_with(&tpm, config).await?;
    let interval = Duration::from_secs(config.tpm.anchor_interval_secs);
    let origin = format!("tally/{}", hex::encode(store.log_id()));
    let signer =
        Arc::new(log_key::load_or_create(&tpm, &config.data_dir.join("tpm"), &origin).await?);
    let ack_times = sequencer.ack_times();
    let mut anchorer = Anchorer::new(
        store.clone(),
        tpm,
        signer,
        sequencer.downgrade(),
        ack_times.clone(),
        interval,
        timeout,
    )?;
    anchorer
        .start_up(options.accept_rollback, &provisioned)
        .await?;
    write_identity_file(config, store)?;
    let status = anchorer.status.clone();
    let (commands, commands_rx) = mpsc::channel(16);
    let task = tokio::spawn(anchorer.run(interval, commands_rx, shutdown.clone()));
    Ok((
        Anchoring {
            commands,
            status,
            ack_times,
        },
        task,
    ))
}

/// Opens the store and commits to it what the ack journal holds past its
/// head (acked events whose LMDB commit a stop or crash cut off). The data
/// directory must be locked.
pub fn open_store(config: &Config) -> Result<(Store, Journal), DaemonError> {
    open_store_with(config, false)
}

/// [`open_store`], rebuilding the `times` index from the records first when
/// `rebuild_times` (`tallyd check --rebuild-times`; see `Store::open_with`).
pub fn open_store_with(
    config: &Config,
    rebuild_times: bool,
) -> Result<(Store, Journal), DaemonError> {
    let dir = datadir::store_dir(&config.data_dir);
    let store = Store::open_with(&dir, config.map_sizing(), rebuild_times)?;
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
        let (anchoring, task) =
            start_anchoring(config, &options, &store, &sequencer, &anchor_shutdown).await?;
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
    tokio::spawn(store::watch_space(
        shared.disk_space.clone(),
        shutdown.clone(),
    ));
    if config.retention.is_active() {
        tracing::info!(retention = ?config.retention, "retention erases content on a schedule");
        tokio::spawn(server::retention(
            shared.clone(),
            config.retention.clone(),
            shutdown.clone(),
        ));
    }
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
        // Stop periodic anchoring, then anchor what the drain committed (the
        // stopped sequencer applied the ack journal: this is every acked event).
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
