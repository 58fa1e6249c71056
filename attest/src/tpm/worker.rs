//! One `tss_esapi::Context`, owned by one dedicated thread; a cheap cloneable async
//! [`TpmHandle`] sends it requests.
//!
//! Contract of the worker thread:
//! * requests are served one at a time, in arrival order (the TPM is single-threaded);
//! * a failed request returns its error to its caller and the thread goes on;
//! * after a transport failure (or a TPM restart under an open connection) the thread
//!   drops its connection; the next request reconnects, re-derives the AK and the owner
//!   key and re-opens the counter, so requests succeed again once the TPM is back;
//! * the AK and the owner key (the only transient objects kept) are loaded on first
//!   use and flushed whenever a connection is dropped, and before sealing or unsealing:
//!   a TPM without a resource manager (swtpm on a socket) has only 3 transient object
//!   slots, and sealing needs the storage primary plus one for the object;
//! * the thread exits when every [`TpmHandle`] is dropped, flushing and closing first.

use tokio::sync::{mpsc, oneshot};
use tss_esapi::handles::NvIndexHandle;
use tss_esapi::Context;

use crate::evidence::Evidence;
use crate::tpm::error::{classify, TpmError};
use crate::tpm::ops::{self, EvidenceKeys, PcrSpec};
use crate::tpm::owner::{self, OwnerRecord};
use crate::tpm::provision::{self, EkCertificate, KeyPublic, LoadedKey, DEFAULT_COUNTER_INDEX};
use crate::tpm::tcti::{self, TpmVendorInfo};

/// Default bound of the request queue: callers wait (backpressure) beyond it.
pub const DEFAULT_QUEUE_DEPTH: usize = 16;

/// Worker configuration.
#[derive(Debug, Clone)]
pub struct TpmConfig {
    /// Explicit TCTI; `None` falls back to `TCTI`, `TPM2TOOLS_TCTI`, `device:/dev/tpmrm0`.
    pub tcti: Option<String>,
    /// NV counter index handle (owner range 0x01xxxxxx).
    pub counter_index: u32,
    /// Owner hierarchy authorization value (empty on a fresh TPM).
    pub owner_auth: Vec<u8>,
    /// Endorsement hierarchy authorization value (the AK is an endorsement primary; the
    /// owner key is an owner primary and uses `owner_auth`).
    pub endorsement_auth: Vec<u8>,
    /// PCRs to quote.
    pub pcrs: PcrSpec,
    /// Bound of the request queue.
    pub queue_depth: usize,
}

impl Default for TpmConfig {
    fn default() -> Self {
        TpmConfig {
            tcti: None,
            counter_index: DEFAULT_COUNTER_INDEX,
            owner_auth: Vec::new(),
            endorsement_auth: Vec::new(),
            pcrs: PcrSpec::default(),
            queue_depth: DEFAULT_QUEUE_DEPTH,
        }
    }
}

/// The public parts of Tally's two signing keys in this TPM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmKeys {
    /// Signs quotes (endorsement hierarchy; survives TPM2_Clear).
    pub ak: KeyPublic,
    /// Signs the counter's NV_Certify (owner hierarchy; another key after TPM2_Clear).
    pub owner_key: KeyPublic,
}

/// Result of provisioning.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// The AK's public part (same on every call for a given TPM).
    pub ak: KeyPublic,
    /// The owner key's public part (same on every call until the owner hierarchy is
    /// cleared).
    pub owner_key: KeyPublic,
    /// Counter index handle.
    pub counter_index: u32,
    /// Counter value after provisioning.
    pub counter: u64,
    /// Whether this call defined the counter (false: it already existed).
    pub counter_defined_now: bool,
    /// EK certificates found in NV.
    pub ek_certificates: Vec<EkCertificate>,
    /// The TPM's self-description.
    pub vendor: TpmVendorInfo,
}

type Reply<T> = oneshot::Sender<Result<T, TpmError>>;

/// A request to the worker thread.
#[derive(Debug)]
enum Request {
    Provision(Reply<Provisioned>),
    ReadCounter(Reply<u64>),
    Increment(Reply<u64>),
    Seal(
        zeroize::Zeroizing<Vec<u8>>,
        Reply<crate::tpm::seal::SealedBlob>,
    ),
    Unseal(
        crate::tpm::seal::SealedBlob,
        Reply<zeroize::Zeroizing<Vec<u8>>>,
    ),
    Certify([u8; 32], Reply<Evidence>),
    Keys(Reply<TpmKeys>),
    ReadOwnerRecord(Reply<Option<OwnerRecord>>),
    WriteOwnerRecord(OwnerRecord, Reply<()>),
    VendorInfo(Reply<TpmVendorInfo>),
    Release(Reply<()>),
}

/// Cheap cloneable handle to the TPM worker thread.
#[derive(Debug, Clone)]
pub struct TpmHandle {
    tx: mpsc::Sender<Request>,
}

impl TpmHandle {
    /// Starts the worker thread. Does not touch the TPM: the first request connects (so
    /// a missing TPM is reported by that request as [`TpmError::NoTpm`]).
    pub fn spawn(config: TpmConfig) -> Result<TpmHandle, TpmError> {
        let (tx, rx) = mpsc::channel(config.queue_depth.max(1));
        let tcti = tcti::resolve_tcti(config.tcti.as_deref());
        std::thread::Builder::new()
            .name("tpm-worker".into())
            .spawn(move || {
                Worker {
                    config,
                    tcti,
                    conn: None,
                }
                .run(rx)
            })
            .map_err(TpmError::SpawnWorker)?;
        Ok(TpmHandle { tx })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, TpmError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| TpmError::WorkerGone)?;
        rx.await.map_err(|_| TpmError::WorkerGone)?
    }

    /// Provisions idempotently: counter index (defined + incremented once if absent, so
    /// that it reads; attributes checked if present), AK, owner key, EK certificates,
    /// vendor info. Does not touch the owner record.
    pub async fn provision(&self) -> Result<Provisioned, TpmError> {
        self.call(Request::Provision).await
    }

    /// Reads the counter's current value ([`TpmError::CounterNotDefined`] if the index
    /// is absent: never provisioned, or deleted by TPM2_Clear).
    pub async fn read_counter(&self) -> Result<u64, TpmError> {
        self.call(Request::ReadCounter).await
    }

    /// Seals `secret` to this TPM (see [`crate::tpm::seal`]).
    pub async fn seal(
        &self,
        secret: zeroize::Zeroizing<Vec<u8>>,
    ) -> Result<crate::tpm::seal::SealedBlob, TpmError> {
        self.call(|r| Request::Seal(secret, r)).await
    }

    /// Unseals a blob sealed by this TPM.
    pub async fn unseal(
        &self,
        blob: crate::tpm::seal::SealedBlob,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, TpmError> {
        self.call(|r| Request::Unseal(blob, r)).await
    }

    /// Increments the counter and returns its new value.
    pub async fn increment(&self) -> Result<u64, TpmError> {
        self.call(Request::Increment).await
    }

    /// Evidence at the counter's current value: NV_Certify by the owner key + Quote by
    /// the AK, both with `qualifying_data`. Never increments.
    pub async fn certify(&self, qualifying_data: [u8; 32]) -> Result<Evidence, TpmError> {
        self.call(|r| Request::Certify(qualifying_data, r)).await
    }

    /// The public parts of the AK and the owner key (derives them; changes nothing).
    pub async fn keys(&self) -> Result<TpmKeys, TpmError> {
        self.call(Request::Keys).await
    }

    /// The owner record at `counter_index + 1` (see [`crate::tpm::owner`]); `None` when
    /// absent or never written.
    pub async fn read_owner_record(&self) -> Result<Option<OwnerRecord>, TpmError> {
        self.call(Request::ReadOwnerRecord).await
    }

    /// Writes the owner record, defining its index if absent. Refuses an index of
    /// another shape, and one that already names another record.
    pub async fn write_owner_record(&self, record: &OwnerRecord) -> Result<(), TpmError> {
        let record = *record;
        self.call(|r| Request::WriteOwnerRecord(record, r)).await
    }

    /// Manufacturer / vendor strings (see [`TpmVendorInfo::is_software_tpm`]).
    pub async fn vendor_info(&self) -> Result<TpmVendorInfo, TpmError> {
        self.call(Request::VendorInfo).await
    }

    /// Drops the connection (flushing the keys); the next request reconnects. Lets another
    /// client use a TPM that serves one connection at a time (swtpm without a resource
    /// manager).
    pub async fn release(&self) -> Result<(), TpmError> {
        self.call(Request::Release).await
    }
}

/// One live TPM connection with what Tally keeps loaded in it.
struct Connection {
    ctx: Context,
    /// Loaded on first use (see the module docs).
    ak: Option<LoadedKey>,
    owner_key: Option<LoadedKey>,
    /// ESYS handle of the counter index, opened on first use.
    counter: Option<NvIndexHandle>,
}

impl Connection {
    /// Connects and sets hierarchy auths; the keys are derived on first use.
    fn open(config: &TpmConfig, tcti: &str) -> Result<Connection, TpmError> {
        let conf = tcti::parse_tcti(tcti)?;
        let mut ctx = Context::new(conf).map_err(|e| match classify("connect", e) {
            TpmError::Communication { rc, .. } => TpmError::NoTpm {
                tcti: tcti.to_owned(),
                rc,
            },
            other => other,
        })?;
        provision::set_hierarchy_auth(&mut ctx, &config.owner_auth, &config.endorsement_auth)?;
        match provision::flush_transients(&mut ctx) {
            Ok(0) => {}
            Ok(flushed) => tracing::info!(
                flushed,
                "flushed transient objects left in the TPM by an earlier connection"
            ),
            Err(e) => tracing::debug!(error = %e, "cannot list transient objects"),
        }
        Ok(Connection {
            ctx,
            ak: None,
            owner_key: None,
            counter: None,
        })
    }

    /// The counter's ESYS handle, opening it if needed; `CounterNotDefined` if absent.
    fn counter(&mut self, index: u32) -> Result<NvIndexHandle, TpmError> {
        if let Some(h) = self.counter {
            return Ok(h);
        }
        let h = provision::open_nv_index(&mut self.ctx, index)?
            .ok_or(TpmError::CounterNotDefined { index })?;
        self.counter = Some(h);
        Ok(h)
    }

    /// The AK, derived if not loaded.
    fn ak(&mut self) -> Result<&LoadedKey, TpmError> {
        let ak = match self.ak.take() {
            Some(ak) => ak,
            None => provision::load_ak(&mut self.ctx)?,
        };
        Ok(self.ak.insert(ak))
    }

    /// The owner key, derived if not loaded.
    fn owner_key(&mut self) -> Result<&LoadedKey, TpmError> {
        let key = match self.owner_key.take() {
            Some(key) => key,
            None => provision::load_owner_key(&mut self.ctx)?,
        };
        Ok(self.owner_key.insert(key))
    }

    /// Both keys' public parts.
    fn keys(&mut self) -> Result<TpmKeys, TpmError> {
        Ok(TpmKeys {
            ak: self.ak()?.public.clone(),
            owner_key: self.owner_key()?.public.clone(),
        })
    }

    /// Flushes the loaded keys (to free transient slots); they are derived again on
    /// next use.
    fn unload_keys(&mut self) {
        for key in [self.ak.take(), self.owner_key.take()]
            .into_iter()
            .flatten()
        {
            if let Err(e) = self.ctx.flush_context(key.handle.into()) {
                tracing::debug!(error = %e, "flushing a key failed");
            }
        }
    }

    fn evidence_keys(&mut self, index: u32) -> Result<EvidenceKeys, TpmError> {
        Ok(EvidenceKeys {
            ak: self.ak()?.handle,
            owner_key: self.owner_key()?.handle,
            counter: self.counter(index)?,
            counter_index: index,
        })
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Flush the keys explicitly (without a resource manager they would otherwise
        // occupy transient slots until TPM reset). Errors are moot if the TPM is gone.
        self.unload_keys();
    }
}

struct Worker {
    config: TpmConfig,
    tcti: String,
    conn: Option<Connection>,
}

impl Worker {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        while let Some(req) = rx.blocking_recv() {
            match req {
                Request::Provision(r) => {
                    let _ = r.send(self.with_conn(provision_all));
                }
                Request::ReadCounter(r) => {
                    let _ = r.send(self.with_conn(|c, cfg| {
                        let h = c.counter(cfg.counter_index)?;
                        provision::read_counter(&mut c.ctx, h)
                    }));
                }
                Request::Seal(secret, r) => {
                    let _ = r.send(self.with_conn(|c, _| {
                        c.unload_keys();
                        crate::tpm::seal::seal(&mut c.ctx, &secret)
                    }));
                }
                Request::Unseal(blob, r) => {
                    let _ = r.send(self.with_conn(|c, _| {
                        c.unload_keys();
                        crate::tpm::seal::unseal(&mut c.ctx, &blob)
                    }));
                }
                Request::Increment(r) => {
                    let _ = r.send(self.with_conn(|c, cfg| {
                        let h = c.counter(cfg.counter_index)?;
                        provision::increment_counter(&mut c.ctx, h)?;
                        provision::read_counter(&mut c.ctx, h)
                    }));
                }
                Request::Certify(qd, r) => {
                    let _ = r.send(self.with_conn(|c, cfg| {
                        let keys = c.evidence_keys(cfg.counter_index)?;
                        ops::certify(&mut c.ctx, &keys, &cfg.pcrs, &qd)
                    }));
                }
                Request::Keys(r) => {
                    let _ = r.send(self.with_conn(|c, _| c.keys()));
                }
                Request::ReadOwnerRecord(r) => {
                    let _ = r.send(self.with_conn(|c, cfg| {
                        let index = owner::owner_record_index(cfg.counter_index)?;
                        owner::read_owner_record(&mut c.ctx, index)
                    }));
                }
                Request::WriteOwnerRecord(record, r) => {
                    let _ = r.send(self.with_conn(|c, cfg| {
                        let index = owner::owner_record_index(cfg.counter_index)?;
                        owner::write_owner_record(&mut c.ctx, index, &record)
                    }));
                }
                Request::VendorInfo(r) => {
                    let _ = r.send(self.with_conn(|c, _| tcti::read_vendor_info(&mut c.ctx)));
                }
                Request::Release(r) => {
                    self.conn = None;
                    let _ = r.send(Ok(()));
                }
            }
        }
        tracing::debug!("all TPM handles dropped; worker exits");
    }

    /// Runs `op` on the live connection, connecting first if there is none; drops the
    /// connection when the error says it is unusable.
    fn with_conn<T>(
        &mut self,
        op: impl FnOnce(&mut Connection, &TpmConfig) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => self
                .conn
                .insert(Connection::open(&self.config, &self.tcti)?),
        };
        let result = op(conn, &self.config);
        if let Err(e) = &result {
            if e.needs_reconnect() {
                tracing::warn!(error = %e, "TPM connection dropped; will reconnect on next request");
                self.conn = None;
            }
        }
        result
    }
}

fn provision_all(c: &mut Connection, cfg: &TpmConfig) -> Result<Provisioned, TpmError> {
    let vendor = tcti::read_vendor_info(&mut c.ctx)?;
    let state = provision::ensure_counter(&mut c.ctx, cfg.counter_index, c.counter)?;
    c.counter = Some(state.handle);
    let ek_certificates = provision::read_ek_certificates(&mut c.ctx)?;
    let keys = c.keys()?;
    Ok(Provisioned {
        ak: keys.ak,
        owner_key: keys.owner_key,
        counter_index: cfg.counter_index,
        counter: state.value,
        counter_defined_now: state.defined_now,
        ek_certificates,
        vendor,
    })
}
