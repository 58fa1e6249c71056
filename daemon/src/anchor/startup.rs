//! Start-up: compare the store, the TPM counter and the owner record, then close,
//! continue, make the genesis anchor, or refuse (docs/DESIGN.md section 10, start-up table).
//!
//! A = the store's newest anchor's counter, T = the TPM counter, O = the owner record,
//! G = the genesis counter O names.
//!
//! | found | action |
//! |---|---|
//! | O names another log | refuse ([`StartupError::CounterOwnedByAnotherLog`]) |
//! | anchors, owner key != the identity's | refuse ([`StartupError::OwnerKeyChanged`]) |
//! | anchors, counter index missing | refuse ([`StartupError::CounterMissing`]) |
//! | T == A | increment (the close after A was lost), start |
//! | T == A+1 | start |
//! | T > A+1 | refuse ([`StartupError::StoreBehindTpm`]); `--accept-rollback`: gap anchor at T |
//! | T < A | refuse ([`StartupError::TpmBehindStore`]) |
//! | no anchors, O absent, or O = this log with G == T | genesis at T over the current size |
//! | no anchors, empty store, no identity, O = this log, T > G | genesis at T (a first start cut short) |
//! | no anchors, O = this log, T > G | refuse ([`StartupError::AnchorsDeleted`]) |
//!
//! The checks that need no counter run first ([`check_before_provisioning`]), so that
//! provisioning never defines a counter for a store whose counter a TPM2_Clear deleted.

use std::time::Duration;

use tally_attest::anchor::AnchorPolicy;
use tally_attest::evidence::verify::{AkPublicKey, EvidenceKeys};
use tally_attest::identity::{IdentityError, LogIdentity, TpmDescription};
use tally_attest::tpm::error::TpmError;
use tally_attest::tpm::owner::OwnerRecord;
use tally_attest::tpm::worker::{Provisioned, TpmHandle};

use super::{bounded, crash_point, AnchorError, Anchorer, Newest};
use crate::store::{Store, StoreError};
use tally_client::clock::now_unix_nanos;

/// Why the daemon refuses to start on this store and TPM. Every variant but
/// [`StartupError::Anchor`] is a decision for an operator (exit status 3).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    #[error(
        "TPM counter {counter_index:#010x} belongs to log {owner} (genesis at counter {genesis}), not to this log ({this}): \
         two logs cannot share one counter. Pick another tpm.counter_index for this log (its owner record goes at that index + 1)"
    )]
    CounterOwnedByAnotherLog {
        counter_index: u32,
        owner: String,
        genesis: u64,
        this: String,
    },
    #[error(
        "the TPM's owner key is not the one in this log's identity: the TPM's owner hierarchy was cleared (TPM2_Clear) \
         or this is another TPM. Evidence made now could not verify against the identity verifiers pinned. Refusing to start; \
         if the TPM was cleared or replaced, export this log (tally export) for the record and start a new log on a new data \
         directory (and disable TPM2_Clear, docs/OPERATIONS.md)"
    )]
    OwnerKeyChanged,
    #[error(
        "the TPM's AK is not the one in this log's identity: this is another TPM (the AK survives TPM2_Clear). \
         Refusing to start; use the TPM this log was anchored with, or export this log and start a new one"
    )]
    AkChanged,
    #[error(
        "the TPM has no counter at {counter_index:#010x}, but this log has anchors on it: the TPM's owner hierarchy was \
         cleared (TPM2_Clear deletes the counter) or this is another TPM. Refusing to start (a new counter would restart \
         low); export this log (tally export) and start a new log on a new data directory"
    )]
    CounterMissing { counter_index: u32 },
    #[error(
        "this log's identity names counter {identity:#010x} but tpm.counter_index is {configured:#010x}: \
         set tpm.counter_index back to {identity:#010x}"
    )]
    CounterIndexChanged { identity: u32, configured: u32 },
    #[error(
        "the store has anchors but no log identity (meta key `identity`): the store's metadata is damaged. \
         Refusing to start; restore the data directory from a backup"
    )]
    IdentityMissing,
    #[error("the store's log identity does not parse ({0}): the store's metadata is damaged; restore the data directory from a backup")]
    IdentityCorrupt(IdentityError),
    #[error(
        "rollback detected: the store is behind the TPM: the TPM counter is {tpm} but the newest anchor in the store is {store}, \
         so {missing} anchor(s) are missing. An older copy of the data directory was restored or its tail was cut \
         (an unclean TPM reset, e.g. power loss, also moves an orderly counter forward by up to 256). \
         Refusing to start; to continue from this store anyway, start with --accept-rollback: it anchors at once at {tpm} \
         (logged), and verifiers report the gap until someone reviews it (tally gap-ack)"
    )]
    StoreBehindTpm { tpm: u64, store: u64, missing: u64 },
    #[error(
        "the TPM counter ({tpm}) is behind the store's newest anchor ({store}): this is not the TPM that anchored this log, \
         or its counter index was redefined. Refusing to start (--accept-rollback cannot help: counter values are never reused); \
         export this log (tally export) and start a new log on a new data directory"
    )]
    TpmBehindStore { tpm: u64, store: u64 },
    #[error(
        "this log's anchors were deleted: the TPM's owner record says its genesis was at counter {genesis} and the counter is \
         now {tpm}, but the store has no anchor. Refusing to start; restore the data directory from a backup (verifiers \
         holding this log's identity would reject a new genesis)"
    )]
    AnchorsDeleted { genesis: u64, tpm: u64 },
    #[error(
        "the TPM counter ({tpm}) is behind this log's genesis (counter {genesis}, from the TPM's owner record): \
         the counter index was redefined. Refusing to start; pick another tpm.counter_index or restore the TPM"
    )]
    TpmBehindGenesis { genesis: u64, tpm: u64 },
    #[error("{0} Refusing to start.")]
    OwnerRecordUnusable(TpmError),
    #[error(transparent)]
    Anchor(#[from] AnchorError),
}

impl StartupError {
    /// Whether this is a refusal an operator must decide on (exit status 3), rather
    /// than a failure a retry may fix.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, StartupError::Anchor(_))
    }
}

impl From<TpmError> for StartupError {
    fn from(err: TpmError) -> StartupError {
        match err {
            TpmError::OwnerRecordWrongShape { .. }
            | TpmError::OwnerRecordMalformed { .. }
            | TpmError::OwnerRecordTaken { .. } => StartupError::OwnerRecordUnusable(err),
            other => StartupError::Anchor(AnchorError::Tpm(other)),
        }
    }
}

impl From<StoreError> for StartupError {
    fn from(err: StoreError) -> StartupError {
        StartupError::Anchor(AnchorError::Store(err))
    }
}

/// The store's identity, parsed; `None` for a log without anchors.
pub fn stored_identity(store: &Store) -> Result<Option<LogIdentity>, StartupError> {
    if store.last_anchor()?.is_none() {
        return Ok(None);
    }
    let json = store.identity()?.ok_or(StartupError::IdentityMissing)?;
    LogIdentity::from_json(&json)
        .map(Some)
        .map_err(StartupError::IdentityCorrupt)
}

/// The first rows of the table, which need no counter: run before provisioning (which
/// defines a missing counter) may change anything.
pub async fn check_before_provisioning(
    tpm: &TpmHandle,
    store: &Store,
    counter_index: u32,
    timeout: Duration,
) -> Result<(), StartupError> {
    if let Some(owner) = bounded::<_, StartupError>(timeout, tpm.read_owner_record()).await? {
        if owner.log_id != store.log_id() {
            return Err(StartupError::CounterOwnedByAnotherLog {
                counter_index,
                owner: hex::encode(owner.log_id),
                genesis: owner.genesis_counter,
                this: hex::encode(store.log_id()),
            });
        }
    }
    let Some(identity) = stored_identity(store)? else {
        return Ok(());
    };
    if identity.policy.counter_index != counter_index {
        return Err(StartupError::CounterIndexChanged {
            identity: identity.policy.counter_index,
            configured: counter_index,
        });
    }
    let keys = bounded::<_, StartupError>(timeout, tpm.keys()).await?;
    if pem_key(&keys.owner_key.pem)? != identity.policy.keys.owner_key {
        return Err(StartupError::OwnerKeyChanged);
    }
    if pem_key(&keys.ak.pem)? != identity.policy.keys.ak {
        return Err(StartupError::AkChanged);
    }
    match bounded::<_, StartupError>(timeout, tpm.read_counter()).await {
        Err(StartupError::Anchor(AnchorError::Tpm(TpmError::CounterNotDefined { .. }))) => {
            Err(StartupError::CounterMissing { counter_index })
        }
        other => other.map(|_| ()),
    }
}

fn pem_key(pem: &str) -> Result<AkPublicKey, StartupError> {
    AkPublicKey::from_pem(pem).map_err(|_| {
        StartupError::Anchor(AnchorError::Tpm(TpmError::UnexpectedOutput {
            op: "key export",
            what: "the TPM's public key does not parse",
        }))
    })
}

impl Anchorer {
    /// The rest of the table, once provisioning ensured the counter: closes, continues,
    /// makes the genesis (or, with `accept_rollback`, a gap) anchor, or refuses. Then
    /// anchors at once what the store holds past the newest anchor (a journal replay).
    pub async fn start_up(
        &mut self,
        accept_rollback: bool,
        provisioned: &Provisioned,
    ) -> Result<(), StartupError> {
        let timeout = self.timeout;
        let tpm_now = bounded::<_, StartupError>(timeout, self.tpm.read_counter()).await?;
        let owner = bounded::<_, StartupError>(timeout, self.tpm.read_owner_record()).await?;
        match self.newest {
            Some(newest) => {
                if owner.is_none() {
                    self.rewrite_owner_record().await?;
                }
                self.continue_after(newest, tpm_now, accept_rollback)
                    .await?;
            }
            None => {
                let size = self.head().size;
                let interrupted_genesis = size == 0 && self.store.identity()?.is_none();
                match owner {
                    // The owner record was written but the genesis never
                    // committed (its identity would be in the store), and the
                    // counter moved since: a power loss during the first start
                    // (an orderly counter jumps). No verifier holds an
                    // identity yet, so nothing can be lost: make the genesis now.
                    Some(owner) if tpm_now > owner.genesis_counter && interrupted_genesis => {
                        tracing::warn!(
                            recorded = owner.genesis_counter,
                            tpm = tpm_now,
                            "the first start was interrupted after the owner record was written and the counter moved \
                             (a power loss?): making the genesis anchor now"
                        );
                    }
                    Some(owner) if tpm_now > owner.genesis_counter => {
                        return Err(StartupError::AnchorsDeleted {
                            genesis: owner.genesis_counter,
                            tpm: tpm_now,
                        })
                    }
                    Some(owner) if tpm_now < owner.genesis_counter => {
                        return Err(StartupError::TpmBehindGenesis {
                            genesis: owner.genesis_counter,
                            tpm: tpm_now,
                        })
                    }
                    // Written before a genesis that did not commit: this log's, at T.
                    Some(_) => {}
                    None => {
                        let record = OwnerRecord {
                            log_id: self.store.log_id(),
                            genesis_counter: tpm_now,
                        };
                        bounded::<_, StartupError>(timeout, self.tpm.write_owner_record(&record))
                            .await?;
                    }
                }
                if size > 0 {
                    tracing::warn!(
                        size,
                        "this log has records but was never anchored (it ran without a TPM): its genesis anchor covers \
                         them as they are now, with no TPM evidence about their past"
                    );
                }
                self.genesis(tpm_now, provisioned).await?;
            }
        }
        self.seed_exposure();
        if self.has_new_events() {
            tracing::info!(
                size = self.head().size,
                anchored = self.newest.map_or(0, |newest| newest.size),
                "the store holds events no anchor covers (acked before the last stop): anchoring them now"
            );
            if let Err(err) = self.anchor_once().await {
                self.failed(&err);
            }
        }
        Ok(())
    }

    /// Rows T == A, T == A+1, T > A+1, T < A.
    async fn continue_after(
        &mut self,
        newest: Newest,
        tpm_now: u64,
        accept_rollback: bool,
    ) -> Result<(), StartupError> {
        let a = newest.counter;
        if tpm_now == a {
            tracing::info!(
                counter = a,
                "the newest anchor's counter value was not closed (a stop between commit and increment): closing it"
            );
            self.close(a).await?;
            return Ok(());
        }
        if tpm_now == a + 1 {
            self.closed(a);
            tracing::info!(counter = tpm_now, "TPM counter follows the newest anchor");
            return Ok(());
        }
        if tpm_now < a {
            return Err(StartupError::TpmBehindStore {
                tpm: tpm_now,
                store: a,
            });
        }
        let missing = tpm_now - a - 1;
        if !accept_rollback {
            return Err(StartupError::StoreBehindTpm {
                tpm: tpm_now,
                store: a,
                missing,
            });
        }
        tracing::error!(
            tpm = tpm_now,
            newest_anchor = a,
            missing,
            "OPERATOR OVERRIDE (--accept-rollback): continuing from a store {missing} anchor(s) behind the TPM; \
             anchoring now at counter {tpm_now}: verifiers will report the gap {a} -> {tpm_now} until it is reviewed"
        );
        let (counter, _) = self.anchor_once().await?;
        tracing::error!(counter, after = a, "gap anchor made (--accept-rollback)");
        Ok(())
    }

    /// An owner record lost while the counter stayed (deleted by hand): rewritten from
    /// the identity.
    async fn rewrite_owner_record(&mut self) -> Result<(), StartupError> {
        let Some(identity) = stored_identity(&self.store)? else {
            return Ok(());
        };
        tracing::warn!(
            "the TPM's owner record for this counter is missing (deleted by hand?): writing it again"
        );
        let record = OwnerRecord {
            log_id: identity.log_id,
            genesis_counter: identity.genesis_counter,
        };
        bounded(self.timeout, self.tpm.write_owner_record(&record)).await
    }

    /// The genesis anchor at `counter` over the settled head, committed together with
    /// the log identity, then closed.
    async fn genesis(
        &mut self,
        counter: u64,
        provisioned: &Provisioned,
    ) -> Result<(), StartupError> {
        let head = self.settle().await?;
        let (record, created, genesis_size) = self.certified_record(counter, None, head).await?;
        let identity = LogIdentity {
            log_id: self.store.log_id(),
            policy: AnchorPolicy {
                keys: EvidenceKeys {
                    ak: pem_key(&provisioned.ak.pem)?,
                    owner_key: pem_key(&provisioned.owner_key.pem)?,
                },
                counter_index: provisioned.counter_index,
                log_key: Some(self.signer.verifier().clone()),
                log_id: Some(self.store.log_id()),
            },
            genesis_counter: counter,
            genesis_size,
            genesis_anchor: tally_attest::anchor::anchor_hash(&record),
            tpm: TpmDescription {
                manufacturer: provisioned.vendor.manufacturer.clone(),
                vendor: provisioned.vendor.vendor.clone(),
                software: provisioned.vendor.is_software_tpm(),
            },
        }
        .to_json()
        .map_err(AnchorError::from)?;
        self.store.commit_genesis(counter, &record, &identity)?;
        self.committed(counter, &record, genesis_size, created);
        crash_point("after-anchor-commit");
        self.close(counter).await?;
        tracing::info!(
            counter,
            size = genesis_size,
            log_id = %hex::encode(self.store.log_id()),
            "genesis anchor made: this log's identity is fixed"
        );
        Ok(())
    }

    /// Tells the exposure tracker what the store holds past the newest closed anchor.
    fn seed_exposure(&self) {
        let anchored = self
            .newest
            .filter(|newest| newest.closed)
            .map_or(0, |newest| newest.size);
        let size = self.head().size;
        let since = if size > anchored {
            self.receive_time(anchored).unwrap_or_else(now_unix_nanos)
        } else {
            now_unix_nanos()
        };
        self.ack_times.seed(anchored, size, since);
    }

    /// When record `seq` was received (it was acked after that).
    fn receive_time(&self, seq: u64) -> Option<i64> {
        use prost::Message;
        let record = self
            .store
            .read(seq, 1, usize::MAX)
            .ok()?
            .into_iter()
            .next()?;
        let body = record.bytes.get(tally_attest::HEADER_LEN..)?;
        tally_client::proto::RecordBody::decode(body)
            .ok()
            .map(|body| body.receive_time_unix_nanos)
    }
}
