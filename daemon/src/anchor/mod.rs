//! Anchoring the log in the TPM (anchoring v2, docs/DESIGN.md section 10).
//!
//! Contract: anchoring never blocks appends (it runs on its own task and talks to the
//! TPM worker thread); an anchor is committed only with TPM evidence for exactly the
//! counter value it names, and each counter value is *closed* (incremented past) once
//! an anchor used it, so nobody can certify that value again.
//!
//! Commit order of one anchor at counter value T (A = the newest anchor):
//!
//! 1. settle: the sequencer applies the ack journal, so the anchor covers every event
//!    acked before it started;
//! 2. read the TPM counter T. T == A: the increment after A never happened; increment
//!    first (T = A+1). Normally T == A+1; T > A+1 is a gap (the counter moved outside
//!    tallyd: verifiers will report it); T < A is an error;
//! 3. checkpoint of the settled head with the anchor line `anchor T <hash of A>`,
//!    signed by the log key, and recorded durably in `meta.pending_checkpoint`
//!    (a checkpoint an interrupted attempt recorded for T is reused byte for byte
//!    when it still fits, so T is never certified over two checkpoints);
//!    crash point `after-pending`
//! 4. `certify`: NV_Certify by the owner key + Quote by the AK over the anchor
//!    qualifying data; the certified value must be T;   crash point `after-evidence`
//! 5. commit `anchors[T]` (one LMDB transaction, fsynced);   `after-anchor-commit`
//! 6. `TPM2_NV_Increment` to T+1: T is closed.   `after-increment`
//!
//! No meta key authorizes anything: recovery is the same code path. A crash before 5
//! leaves T open and unanchored (the next anchor certifies T again, over the recorded
//! checkpoint if it still fits); a crash after 5 leaves T == A at the next start, which
//! closes A before anything else ([`startup`]).

pub mod fresh;
pub mod startup;

/// `call`, given up after `timeout` (a TPM that hangs must not hang tallyd).
async fn bounded<T, E: From<TpmError> + From<AnchorError>>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, TpmError>>,
) -> Result<T, E> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(AnchorError::Timeout(timeout).into()),
    }
}

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use tally_attest::anchor::{
    anchor_hash, anchor_qualifying_data, AnchorLine, AnchorRecord, Checkpoint, EvidenceRecord,
};
use tally_attest::note::Signer;
use tally_attest::tpm::error::TpmError;
use tally_attest::tpm::worker::TpmHandle;
use tally_attest::Hash;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::exposure::AckTimes;
use crate::sequencer::WeakSequencer;
use crate::store::{Head, Store, StoreError};
use tally_client::clock::now_unix_nanos;

pub use fresh::{FreshError, FreshRequest};
pub use startup::StartupError;

/// Why an anchor could not be made. Nothing half-done is committed; an anchor whose
/// counter value could not be closed is closed by the next attempt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnchorError {
    #[error("TPM: {0}")]
    Tpm(#[from] TpmError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("the TPM did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the TPM counter went back (TPM {tpm}, newest anchor {anchor}): was the TPM cleared or replaced?")]
    CounterWentBack { tpm: u64, anchor: u64 },
    #[error("the TPM certified counter {certified} for an anchor at {expected}: the counter moved under us")]
    CounterMoved { expected: u64, certified: u64 },
    #[error("cannot sign the checkpoint: {0}")]
    Sign(#[from] tally_attest::note::NoteError),
    #[error("cannot settle the acked events before anchoring: {0}")]
    Settle(#[from] crate::sequencer::SettleError),
    #[error("the log has no genesis anchor yet")]
    NoGenesis,
    #[error("cannot write the log identity: {0}")]
    Identity(#[from] tally_attest::identity::IdentityError),
}

/// What status reports about anchoring.
#[derive(Debug, Clone, Default)]
pub struct AnchorStatus {
    /// The newest committed anchor's counter value (0: none yet).
    pub last_counter: u64,
    /// Log size the newest committed anchor covers.
    pub last_size: u64,
    /// When the newest anchor was made (daemon clock, Unix nanoseconds; 0: none yet).
    pub last_created_unix_nanos: i64,
    /// Whether the newest anchor's counter value is closed (incremented past); until
    /// it is, the events it covers count as unanchored.
    pub last_closed: bool,
    pub last_error: Option<String>,
    pub interval: Duration,
}

/// A request to the anchoring task.
#[derive(Debug)]
pub enum AnchorCommand {
    /// Anchor the settled head now; reply with (counter, AnchorRecord bytes).
    Now(oneshot::Sender<Result<(u64, Vec<u8>), AnchorError>>),
    /// A fresh attestation (serialized with anchors: see [`fresh`]).
    Fresh(
        FreshRequest,
        oneshot::Sender<Result<tally_attest::anchor::FreshAttestation, FreshError>>,
    ),
}

/// The newest anchor in the store.
#[derive(Debug, Clone, Copy)]
struct Newest {
    counter: u64,
    /// [`anchor_hash`] of its stored bytes: the next anchor's `prev`.
    hash: Hash,
    size: u64,
    /// Whether the TPM counter is known to be past `counter`.
    closed: bool,
}

/// Makes anchors. Owned by the anchoring task; `status` is shared.
#[derive(Debug)]
pub struct Anchorer {
    store: Arc<Store>,
    tpm: TpmHandle,
    /// Signs each checkpoint (C2SP signed note) before the TPM binds it.
    signer: Arc<Signer>,
    /// To settle (apply the ack journal) before anchoring, and the store's head.
    /// Weak: the anchorer must not keep the sequencer running at shutdown.
    sequencer: WeakSequencer,
    /// Told when an anchor's value is closed (status' exposure window).
    ack_times: Arc<AckTimes>,
    newest: Option<Newest>,
    timeout: Duration,
    pub status: Arc<Mutex<AnchorStatus>>,
}

/// Test hook: abort the process at a named point of the anchor commit order, to test
/// recovery. Debug builds only.
fn crash_point(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("TALLYD_CRASH_POINT").is_ok_and(|point| point == name) {
        eprintln!("TALLYD_CRASH_POINT={name}: aborting");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

impl Anchorer {
    pub fn new(
        store: Arc<Store>,
        tpm: TpmHandle,
        signer: Arc<Signer>,
        sequencer: WeakSequencer,
        ack_times: Arc<AckTimes>,
        interval: Duration,
        timeout: Duration,
    ) -> Result<Anchorer, StoreError> {
        let newest = match store.last_anchor()? {
            None => None,
            Some((counter, bytes)) => {
                let record = tally_attest::anchor::decode_anchor(&bytes)
                    .map_err(|_| StoreError::CorruptMeta("the newest anchor does not decode"))?;
                let checkpoint = Checkpoint::parse(&record.checkpoint).map_err(|_| {
                    StoreError::CorruptMeta("the newest anchor's checkpoint does not parse")
                })?;
                Some((
                    Newest {
                        counter,
                        hash: anchor_hash(&bytes),
                        size: checkpoint.size,
                        closed: false,
                    },
                    record.created_unix_nanos,
                ))
            }
        };
        let status = AnchorStatus {
            last_counter: newest.map_or(0, |(newest, _)| newest.counter),
            last_size: newest.map_or(0, |(newest, _)| newest.size),
            last_created_unix_nanos: newest.map_or(0, |(_, created)| created),
            interval,
            ..AnchorStatus::default()
        };
        Ok(Anchorer {
            store,
            tpm,
            signer,
            sequencer,
            ack_times,
            newest: newest.map(|(newest, _)| newest),
            timeout,
            status: Arc::new(Mutex::new(status)),
        })
    }

    async fn tpm_call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, TpmError>>,
    ) -> Result<T, AnchorError> {
        bounded(self.timeout, call).await
    }

    fn head(&self) -> Head {
        *self.sequencer.head.borrow()
    }

    /// True when records were committed since the newest anchor.
    pub fn has_new_events(&self) -> bool {
        self.head().size > self.newest.map_or(0, |newest| newest.size)
    }

    /// Step 1: apply the ack journal, so that the head covers every acked event.
    async fn settle(&self) -> Result<Head, AnchorError> {
        self.sequencer.settle().await?;
        Ok(self.head())
    }

    /// Step 2: the open counter value the next anchor is certified at, closing the
    /// newest anchor first if its increment never happened.
    async fn open_value(&mut self, newest: Newest) -> Result<u64, AnchorError> {
        let mut tpm_now = self.tpm_call(self.tpm.read_counter()).await?;
        if tpm_now == newest.counter {
            if newest.closed {
                // Known closed, yet the TPM is back at it: it cannot go back by itself.
                return Err(AnchorError::CounterWentBack {
                    tpm: tpm_now,
                    anchor: newest.counter,
                });
            }
            tracing::info!(
                counter = newest.counter,
                "closing the newest anchor's counter value first (its increment did not happen)"
            );
            tpm_now = self.tpm_call(self.tpm.increment()).await?;
        }
        if tpm_now < newest.counter {
            return Err(AnchorError::CounterWentBack {
                tpm: tpm_now,
                anchor: newest.counter,
            });
        }
        self.closed(newest.counter);
        if tpm_now > newest.counter + 1 {
            tracing::error!(
                tpm = tpm_now,
                newest_anchor = newest.counter,
                missing = tpm_now - newest.counter - 1,
                "the TPM counter moved without an anchor from this tallyd (an unclean TPM reset moves an orderly \
                 counter forward; otherwise someone incremented it): anchoring at {tpm_now}, verifiers will report the gap"
            );
        }
        Ok(tpm_now)
    }

    /// Steps 3-4: the anchor record at `counter` over `head`, chained to `prev`,
    /// certified by the TPM (not yet committed).
    async fn certified_record(
        &self,
        counter: u64,
        prev: Option<Hash>,
        head: Head,
    ) -> Result<(Vec<u8>, i64, u64), AnchorError> {
        let (checkpoint, size) = match self.pending(counter, prev, head)? {
            Some(pending) => pending,
            None => {
                // The TPM binds the signed note: one object carries both the
                // portable Ed25519 signature and the TPM counter and quote.
                let checkpoint = Checkpoint {
                    log_id: self.store.log_id(),
                    size: head.size,
                    root: head.root,
                    anchor: Some(AnchorLine { counter, prev }),
                }
                .sign(&self.signer)?
                .into_bytes();
                self.store.put_pending_checkpoint(counter, &checkpoint)?;
                (checkpoint, head.size)
            }
        };
        crash_point("after-pending");
        let evidence = self
            .tpm_call(self.tpm.certify(anchor_qualifying_data(&checkpoint)))
            .await?;
        if evidence.counter != counter {
            return Err(AnchorError::CounterMoved {
                expected: counter,
                certified: evidence.counter,
            });
        }
        crash_point("after-evidence");
        let created_unix_nanos = now_unix_nanos();
        let record = AnchorRecord {
            checkpoint,
            evidence: Some(EvidenceRecord::from_evidence(&evidence)),
            created_unix_nanos,
        }
        .encode_to_vec();
        Ok((record, created_unix_nanos, size))
    }

    /// The checkpoint an earlier attempt recorded for `counter` and may have
    /// had certified before a crash: reused byte for byte when it still fits
    /// (same counter and predecessor, a size the store holds with that root),
    /// so one counter value is never certified over two checkpoints.
    fn pending(
        &self,
        counter: u64,
        prev: Option<Hash>,
        head: Head,
    ) -> Result<Option<(Vec<u8>, u64)>, AnchorError> {
        let Some((pending_counter, bytes)) = self.store.pending_checkpoint()? else {
            return Ok(None);
        };
        let fitting = Checkpoint::parse(&bytes).ok().filter(|checkpoint| {
            pending_counter == counter
                && checkpoint.log_id == self.store.log_id()
                && checkpoint.anchor == Some(AnchorLine { counter, prev })
                && checkpoint.size <= head.size
                && self
                    .store
                    .root_at(checkpoint.size)
                    .is_ok_and(|root| root == checkpoint.root)
        });
        let Some(checkpoint) = fitting else {
            tracing::info!(
                pending_counter,
                counter,
                "a recorded checkpoint no longer fits this anchor: making a new one"
            );
            return Ok(None);
        };
        tracing::info!(
            counter,
            "certifying the checkpoint recorded before an interrupted anchor again"
        );
        let size = checkpoint.size;
        Ok(Some((bytes, size)))
    }

    /// After step 5: `record` is the newest anchor.
    fn committed(&mut self, counter: u64, record: &[u8], size: u64, created_unix_nanos: i64) {
        self.newest = Some(Newest {
            counter,
            hash: anchor_hash(record),
            size,
            closed: false,
        });
        if let Ok(mut status) = self.status.lock() {
            status.last_counter = counter;
            status.last_size = size;
            status.last_created_unix_nanos = created_unix_nanos;
            status.last_closed = false;
            status.last_error = None;
        }
    }

    /// The TPM counter is past `counter`: if that is the newest anchor, it is closed.
    fn closed(&mut self, counter: u64) {
        let Some(newest) = self
            .newest
            .as_mut()
            .filter(|newest| newest.counter == counter)
        else {
            return;
        };
        newest.closed = true;
        self.ack_times.anchored(newest.size);
        if let Ok(mut status) = self.status.lock() {
            status.last_closed = true;
        }
    }

    /// Step 6: closes `counter` (the newest anchor's value).
    async fn close(&mut self, counter: u64) -> Result<(), AnchorError> {
        let incremented = self.tpm_call(self.tpm.increment()).await?;
        crash_point("after-increment");
        if incremented != counter + 1 {
            tracing::error!(
                expected = counter + 1,
                tpm = incremented,
                "the TPM counter moved under an anchor's increment; verifiers will report the gap"
            );
        }
        if incremented > counter {
            self.closed(counter);
        }
        Ok(())
    }

    /// Makes one anchor following the commit order in the module docs.
    pub async fn anchor_once(&mut self) -> Result<(u64, Vec<u8>), AnchorError> {
        let started = Instant::now();
        let head = self.settle().await?;
        let newest = self.newest.ok_or(AnchorError::NoGenesis)?;
        let counter = self.open_value(newest).await?;
        let (record, created, size) = self
            .certified_record(counter, Some(newest.hash), head)
            .await?;
        self.store.commit_anchor(counter, &record)?;
        self.committed(counter, &record, size, created);
        crash_point("after-anchor-commit");
        if let Err(err) = self.close(counter).await {
            // Committed but still open: the events count as unanchored until the
            // next attempt closes it (step 2).
            tracing::warn!(%err, counter, "the anchor is committed but its counter value is not closed yet; the next attempt closes it");
        }
        let elapsed = started.elapsed();
        tracing::info!(
            counter,
            size,
            millis = elapsed.as_millis() as u64,
            micros = elapsed.as_micros() as u64,
            "anchored"
        );
        Ok((counter, record))
    }

    /// Closes the newest anchor's value if its increment did not happen (nothing new
    /// to anchor, but its events count as unanchored until then).
    async fn close_pending(&mut self) -> Result<(), AnchorError> {
        let Some(newest) = self.newest.filter(|newest| !newest.closed) else {
            return Ok(());
        };
        let tpm_now = self.tpm_call(self.tpm.read_counter()).await?;
        if tpm_now == newest.counter {
            self.close(newest.counter).await
        } else {
            if tpm_now > newest.counter {
                self.closed(newest.counter);
            }
            Ok(())
        }
    }

    fn failed(&self, err: &AnchorError) {
        tracing::warn!(%err, "anchoring failed; appends continue, will retry");
        if let Ok(mut status) = self.status.lock() {
            status.last_error = Some(err.to_string());
        }
    }

    async fn anchor_logged(&mut self) -> Result<(u64, Vec<u8>), AnchorError> {
        self.anchor_once().await.inspect_err(|err| self.failed(err))
    }

    /// Anchors every `interval` when the log grew, and on request, until `shutdown`.
    /// Returns itself so the caller can make the final anchor once the sequencer has
    /// drained.
    pub async fn run(
        mut self,
        interval: Duration,
        mut commands: mpsc::Receiver<AnchorCommand>,
        shutdown: CancellationToken,
    ) -> Anchorer {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    if self.has_new_events() {
                        let _ = self.anchor_logged().await;
                    } else if let Err(err) = self.close_pending().await {
                        self.failed(&err);
                    }
                }
                command = commands.recv() => match command {
                    Some(AnchorCommand::Now(reply)) => {
                        let result = self.anchor_logged().await;
                        let _ = reply.send(result);
                    }
                    Some(AnchorCommand::Fresh(request, reply)) => {
                        let result = self.fresh(request).await;
                        let _ = reply.send(result);
                    }
                    None => break,
                },
            }
        }
        self
    }

    /// The anchor made at clean shutdown, after the drain: the sequencer has stopped
    /// and applied the ack journal, so this covers every acked event.
    pub async fn final_anchor(&mut self) {
        let result = if self.has_new_events() {
            self.anchor_logged().await.map(|_| ())
        } else {
            self.close_pending()
                .await
                .inspect_err(|err| self.failed(err))
        };
        if result.is_ok() && self.newest.is_some_and(|newest| newest.closed) {
            tracing::info!("every acked event is anchored at shutdown");
        }
    }
}
