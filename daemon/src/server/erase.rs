//! Erasure requests and retention passes, run against the store and the
//! sequencer (docs/DESIGN.md section 3b; the selection and the records are
//! built in `crate::erasure`).
//!
//! One erasure at a time (`Shared::erase_lock`, held from the selection to
//! the reply): two concurrent requests would otherwise both select, and both
//! name, the same seqs. The reply comes once the keys are destroyed.

use std::time::Duration;

use tally_client::clock::now_unix_nanos;
use tally_client::proto;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::error::RequestError;
use super::shared::Shared;
use crate::erasure::retention::{RetentionConfig, Rule, RETENTION_REASON};
use crate::erasure::{check_reason, erasure_bodies, Selection};
use crate::peer::PeerId;
use crate::sequencer::{AppendJob, QueuedEvents};
use crate::store::{Erasable, Selected};

/// Erases the content `selection` selects, on behalf of `peer`, for
/// `reason`; returns what the reply reports.
pub async fn erase(
    shared: &Shared,
    selection: &Selection,
    reason: &str,
    peer: &PeerId,
) -> Result<proto::EraseReply, RequestError> {
    check_reason(reason)?;
    let _one_at_a_time = shared.erase_lock.lock().await;
    let size = shared.sequencer.head.borrow().size;
    if selection.from > size {
        return Err(RequestError::BeyondLog {
            from: selection.from,
            size,
        });
    }
    let to = selection.to.map_or(size, |to| to.min(size));
    let store = shared.store.clone();
    let what = selection.clone();
    let selected = tokio::task::spawn_blocking(move || {
        store.erasable(&Erasable {
            from: what.from,
            to,
            filter: &what.filter,
            except_kinds: &what.except_kinds,
        })
    })
    .await
    .map_err(RequestError::Task)??;
    let Selected {
        erase,
        already_erased,
        without_content,
    } = selected;
    let mut reply = proto::EraseReply {
        erased: erase.count(),
        already_erased,
        without_content,
        erasure_seqs: Vec::new(),
    };
    if erase.is_empty() {
        return Ok(reply);
    }
    let time = now_unix_nanos();
    let bodies = erasure_bodies(&erase, reason, &selection.describe(), peer, time);
    let (tx, rx) = oneshot::channel();
    let queued = QueuedEvents::new(&shared.queued_events, bodies.len() as u64);
    let job = AppendJob::erasure(bodies, erase, time, tx, queued);
    if shared.sequencer.submit(job).await.is_err() {
        return Err(RequestError::SequencerStopped);
    }
    let acks = rx.await.map_err(|_| RequestError::SequencerDropped)??;
    reply.erasure_seqs = acks.iter().map(|ack| ack.seq).collect();
    // The keys are destroyed; pages the fan-out encoded before may still
    // hold the erased content in memory (DESIGN 3b).
    shared.fanout.forget_pages();
    tracing::info!(
        %peer,
        erased = reply.erased,
        records = ?reply.erasure_seqs,
        selection = %selection.describe(),
        %reason,
        "content erased"
    );
    Ok(reply)
}

/// The daemon's own identity, which retention's erasure records name.
fn daemon_peer() -> PeerId {
    PeerId::Unix {
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        pid: std::process::id().try_into().unwrap_or(0),
    }
}

/// Runs retention passes every `interval_secs` until `shutdown`; returns at
/// once when no rule erases anything.
pub(crate) async fn retention(
    shared: std::sync::Arc<Shared>,
    config: RetentionConfig,
    shutdown: CancellationToken,
) {
    let mut rules = config.rules();
    if rules.is_empty() {
        return;
    }
    let interval = Duration::from_secs(config.interval_secs.max(1));
    let peer = daemon_peer();
    loop {
        for rule in &mut rules {
            if shutdown.is_cancelled() {
                return;
            }
            pass(&shared, rule, &peer).await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// One rule's pass: erases what expired, then moves its watermark.
async fn pass(shared: &Shared, rule: &mut Rule, peer: &PeerId) {
    let (selection, cutoff) = rule.selection(now_unix_nanos());
    match erase(shared, &selection, RETENTION_REASON, peer).await {
        Ok(reply) => {
            if reply.erased > 0 {
                tracing::info!(
                    erased = reply.erased,
                    selection = %selection.describe(),
                    "retention erased content"
                );
            }
            let store = shared.store.clone();
            let watermark =
                tokio::task::spawn_blocking(move || store.first_seq_received_from(cutoff)).await;
            match watermark {
                Ok(Ok(seq)) => rule.watermark = rule.watermark.max(seq),
                Ok(Err(err)) => tracing::warn!(%err, "retention: cannot read the times index"),
                Err(err) => tracing::warn!(%err, "retention: the times lookup failed"),
            }
        }
        Err(err) => {
            tracing::warn!(%err, selection = %selection.describe(), "retention could not erase; retrying next pass");
        }
    }
}
