//! Anchoring the chain head in the TPM.
//!
//! Contract: anchoring never blocks appends (it runs on its own task and
//! talks to the TPM worker thread); an anchor is committed only with TPM
//! evidence for exactly the counter value it names.
//!
//! Commit order of one anchor (docs/DESIGN.md, "Anchoring"):
//!
//! 1. read the TPM counter T; it must equal the newest anchor A (else see below);
//! 2. durably write the intent "incrementing to A+1" (LMDB, fsynced);
//! 3. TPM2_NV_Increment: T = A+1;
//! 4. TPM2_NV_Certify(counter) + TPM2_Quote, qualifying data = H(checkpoint of
//!    the committed head);
//! 5. commit the anchor record under key A+1 and clear the intent, in one
//!    transaction.
//!
//! Recovery is the same code path: a crash after 2 leaves T = A with an
//! intent (it is cleared: the increment never happened); a crash after 3 or 4
//! leaves T = A+1 with the intent A+1, so step 4 is redone for the current
//! head and committed (`recovered`). Any other T at start-up means the store
//! is behind (or ahead of) the TPM, and the daemon refuses to start.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use tally_attest::anchor::{anchor_qualifying_data, AnchorRecord, Checkpoint, EvidenceRecord};
use tally_attest::note::Signer;
use tally_attest::tpm::error::TpmError;
use tally_attest::tpm::worker::TpmHandle;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::store::{Head, Store, StoreError};

/// Why an anchor could not be made. Nothing half-done is committed; an
/// increment without a committed anchor is completed by the next attempt.
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
}

/// Why the daemon refuses to start on this store and TPM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    #[error(
        "rollback detected: the store is behind the TPM: the TPM counter is {tpm} but the newest anchor in the store is {store}, \
         so {missing} anchor(s) are missing. An older copy of the data directory was restored or its tail was cut \
         (an unclean TPM reset, e.g. power loss, also moves an orderly counter forward by up to 256). \
         Refusing to start; to continue from this store anyway, start with --accept-rollback (logged, and verifiers will still report the gap)"
    )]
    StoreBehindTpm { tpm: u64, store: u64, missing: u64 },
    #[error(
        "the TPM counter ({tpm}) is behind the store's newest anchor ({store}): this is not the TPM that anchored this log, \
         or its counter index was redefined. Refusing to start; --accept-rollback continues anyway (logged)"
    )]
    TpmBehindStore { tpm: u64, store: u64 },
    #[error(transparent)]
    Anchor(#[from] AnchorError),
}

/// What status reports about anchoring.
#[derive(Debug, Clone, Default)]
pub struct AnchorStatus {
    pub last_counter: u64,
    pub last_size: u64,
    /// When the newest anchor was made (daemon clock, Unix nanoseconds; 0: none yet).
    pub last_created_unix_nanos: i64,
    pub last_error: Option<String>,
    pub interval: Duration,
}

/// A request to the anchoring task.
#[derive(Debug)]
pub enum AnchorCommand {
    /// Anchor the committed head now; reply with (counter, AnchorRecord bytes).
    Now(oneshot::Sender<Result<(u64, Vec<u8>), String>>),
}

/// Makes anchors. Owned by the anchoring task; `status` is shared.
#[derive(Debug)]
pub struct Anchorer {
    store: Arc<Store>,
    tpm: TpmHandle,
    /// Signs each checkpoint (C2SP signed note) before the TPM binds it.
    signer: Arc<Signer>,
    head: watch::Receiver<Head>,
    /// Newest anchor's counter, or the base the log started anchoring at.
    last_counter: Option<u64>,
    /// Log size the newest anchor covers.
    last_size: u64,
    timeout: Duration,
    pub status: Arc<Mutex<AnchorStatus>>,
}

/// Test hook: abort the process at a named point of the anchor commit order,
/// to test recovery. Debug builds only.
fn crash_point(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("TALLYD_CRASH_POINT").is_ok_and(|point| point == name) {
        eprintln!("TALLYD_CRASH_POINT={name}: aborting");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

fn now_unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Anchorer {
    pub fn new(
        store: Arc<Store>,
        tpm: TpmHandle,
        signer: Arc<Signer>,
        head: watch::Receiver<Head>,
        interval: Duration,
        timeout: Duration,
    ) -> Result<Anchorer, StoreError> {
        let last = store.last_anchor()?;
        let base = store.tpm_counter_base()?;
        let last_counter = match (last.as_ref().map(|(counter, _)| *counter), base) {
            (Some(anchor), Some(base)) => Some(anchor.max(base)),
            (anchor, base) => anchor.or(base),
        };
        let last_record = last
            .as_ref()
            .and_then(|(_, bytes)| AnchorRecord::decode(bytes.as_slice()).ok());
        let last_size = last_record
            .as_ref()
            .and_then(|record| Checkpoint::parse(&record.checkpoint).ok())
            .map_or(0, |checkpoint| checkpoint.size);
        let status = AnchorStatus {
            last_counter: last_counter.unwrap_or(0),
            last_size,
            last_created_unix_nanos: last_record.map_or(0, |record| record.created_unix_nanos),
            interval,
            ..AnchorStatus::default()
        };
        Ok(Anchorer {
            store,
            tpm,
            signer,
            head,
            last_counter,
            last_size,
            timeout,
            status: Arc::new(Mutex::new(status)),
        })
    }

    async fn tpm_call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, TpmError>>,
    ) -> Result<T, AnchorError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(AnchorError::Timeout(self.timeout)),
        }
    }

    /// Start-up check: compare the TPM counter with the store's newest anchor,
    /// complete an interrupted anchor, or refuse. `accept_rollback` is the
    /// operator's explicit override.
    pub async fn startup_check(&mut self, accept_rollback: bool) -> Result<(), StartupError> {
        let tpm_now = self.tpm_call(self.tpm.read_counter()).await?;
        let intent = self.store.anchor_intent().map_err(AnchorError::from)?;
        let Some(expected) = self.last_counter else {
            // A log that has never been anchored binds itself to this TPM now.
            self.continue_from(tpm_now)?;
            tracing::info!(
                counter = tpm_now,
                "anchoring starts for this log at the TPM's current counter"
            );
            return Ok(());
        };
        if tpm_now == expected {
            if intent.is_some() {
                tracing::info!(
                    counter = expected,
                    "clearing an anchor intent whose increment never happened"
                );
                self.store
                    .clear_anchor_intent()
                    .map_err(AnchorError::from)?;
            }
            tracing::info!(counter = tpm_now, "TPM counter matches the newest anchor");
            return Ok(());
        }
        if tpm_now == expected + 1 && intent == Some(tpm_now) {
            tracing::warn!(
                counter = tpm_now,
                "completing an anchor interrupted after its counter increment"
            );
            self.anchor_once(true).await?;
            return Ok(());
        }
        if accept_rollback {
            tracing::error!(
                tpm = tpm_now,
                store = expected,
                "OPERATOR OVERRIDE (--accept-rollback): continuing although the TPM counter does not match the store; verifiers will report the gap"
            );
            self.continue_from(tpm_now)?;
            return Ok(());
        }
        if tpm_now > expected {
            Err(StartupError::StoreBehindTpm {
                tpm: tpm_now,
                store: expected,
                missing: tpm_now - expected,
            })
        } else {
            Err(StartupError::TpmBehindStore {
                tpm: tpm_now,
                store: expected,
            })
        }
    }

    /// Makes `tpm_now` the counter this log continues from (a new log, or an
    /// operator override): durable base, no pending intent.
    fn continue_from(&mut self, tpm_now: u64) -> Result<(), AnchorError> {
        self.store.set_tpm_counter_base(tpm_now)?;
        self.store.clear_anchor_intent()?;
        self.last_counter = Some(tpm_now);
        self.set_status_counter(tpm_now);
        Ok(())
    }

    fn set_status_counter(&self, counter: u64) {
        if let Ok(mut status) = self.status.lock() {
            status.last_counter = counter;
        }
    }

    /// True when records were appended since the newest anchor.
    pub fn has_new_events(&self) -> bool {
        self.head.borrow().size > self.last_size
    }

    /// Makes one anchor following the commit order in the module docs.
    pub async fn anchor_once(&mut self, recovered: bool) -> Result<(u64, Vec<u8>), AnchorError> {
        let started = Instant::now();
        let last = self.last_counter.unwrap_or(0);
        let target = last + 1;
        let tpm_now = self.tpm_call(self.tpm.read_counter()).await?;
        let intent = self.store.anchor_intent()?;
        let counter = if tpm_now == target && intent == Some(target) {
            // The increment happened (before a crash, or its reply was lost).
            target
        } else if tpm_now < last {
            return Err(AnchorError::CounterWentBack {
                tpm: tpm_now,
                anchor: last,
            });
        } else {
            if tpm_now != last {
                tracing::error!(
                    tpm = tpm_now,
                    newest_anchor = last,
                    "the TPM counter moved without an anchor from this daemon; the gap will show in verification"
                );
            }
            let next = tpm_now + 1;
            self.store.put_anchor_intent(next)?;
            crash_point("after-intent");
            let incremented = self.tpm_call(self.tpm.increment()).await?;
            crash_point("after-increment");
            if incremented != next {
                return Err(AnchorError::CounterMoved {
                    expected: next,
                    certified: incremented,
                });
            }
            next
        };

        let head = *self.head.borrow();
        let text = Checkpoint {
            log_id: self.store.log_id(),
            size: head.size,
            root: head.root,
        }
        .to_text();
        // The TPM binds the signed note: one object carries both the
        // portable Ed25519 signature and the TPM counter and quote.
        let checkpoint = tally_attest::note::sign(&text, &self.signer)?;
        let evidence = self
            .tpm_call(
                self.tpm
                    .attest_fresh(anchor_qualifying_data(checkpoint.as_bytes())),
            )
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
            checkpoint: checkpoint.into_bytes(),
            evidence: Some(EvidenceRecord::from_evidence(&evidence)),
            created_unix_nanos,
            recovered,
        }
        .encode_to_vec();
        self.store.commit_anchor(counter, &record)?;
        self.last_counter = Some(counter);
        self.last_size = head.size;
        if let Ok(mut status) = self.status.lock() {
            status.last_counter = counter;
            status.last_size = head.size;
            status.last_created_unix_nanos = created_unix_nanos;
            status.last_error = None;
        }
        tracing::info!(
            counter,
            size = head.size,
            millis = started.elapsed().as_millis() as u64,
            recovered,
            "anchored"
        );
        Ok((counter, record))
    }

    async fn anchor_logged(&mut self) -> Result<(u64, Vec<u8>), String> {
        match self.anchor_once(false).await {
            Ok(done) => Ok(done),
            Err(err) => {
                tracing::warn!(%err, "anchoring failed; appends continue, will retry");
                let message = err.to_string();
                if let Ok(mut status) = self.status.lock() {
                    status.last_error = Some(message.clone());
                }
                Err(message)
            }
        }
    }

    /// Anchors every `interval` when the log grew, and on request, until
    /// `shutdown`. Returns itself so the caller can make the final anchor
    /// once the sequencer has drained.
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
                    }
                }
                command = commands.recv() => match command {
                    Some(AnchorCommand::Now(reply)) => {
                        let result = self.anchor_logged().await;
                        let _ = reply.send(result);
                    }
                    None => break,
                },
            }
        }
        self
    }

    /// The anchor made at clean shutdown, after the last append committed.
    pub async fn final_anchor(&mut self) {
        if self.has_new_events() && self.anchor_logged().await.is_ok() {
            tracing::info!("final anchor made at shutdown");
        }
    }
}
