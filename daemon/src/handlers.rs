//! Request handlers: each turns one decoded request into the response the
//! connection's writer owes the client.

use std::sync::atomic::Ordering;

use prost::Message;
use tally_attest::entry_hash;
use tally_client::proto::{self, response, ErrorCode, Peer, Response};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::anchor::AnchorCommand;
use crate::sequencer::{AppendJob, QueuedEvents};
use crate::server::{error, now_unix_nanos, Outgoing, Shared};
use crate::store::FORMAT_VERSION;

/// Largest nonce accepted for a fresh attestation.
pub const MAX_NONCE_BYTES: usize = 64;

/// Validates an append, reserves its queue budget (waiting under overload)
/// and hands it to the sequencer. `None`: the daemon is shutting down.
pub(crate) async fn submit_append(
    id: u64,
    append: proto::AppendRequest,
    frame_len: usize,
    peer: &Peer,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Option<Outgoing> {
    let count = append.events.len();
    if count == 0 {
        return Some(error(
            id,
            ErrorCode::BadRequest,
            "append without events".into(),
        ));
    }
    if count > shared.limits.max_events_per_append {
        let message = format!(
            "{count} events in one append; the maximum is {}",
            shared.limits.max_events_per_append
        );
        return Some(error(id, ErrorCode::TooManyEvents, message));
    }
    if !shared.append_rate.try_take(peer, count) {
        let message = format!(
            "{} exceeded its append rate of {} events/s; retry later",
            crate::server::describe(peer),
            shared.append_rate.rate()
        );
        return Some(error(id, ErrorCode::RateLimited, message));
    }
    let receive_time_unix_nanos = now_unix_nanos();
    // A frame larger than the whole budget takes all of it rather than
    // waiting forever.
    let budget = u32::try_from(frame_len.min(shared.limits.queue_bytes).max(1)).unwrap_or(u32::MAX);
    let permit = tokio::select! {
        _ = shutdown.cancelled() => return None,
        permit = shared.queue_budget.clone().acquire_many_owned(budget) => permit.ok()?,
    };
    let (reply, ack) = oneshot::channel();
    let job = AppendJob::new(
        append.events,
        frame_len,
        *peer,
        receive_time_unix_nanos,
        reply,
        Some(permit),
        QueuedEvents::new(&shared.queued_events, count as u64),
    );
    if shared.sequencer.submit(job).await.is_err() {
        return Some(error(
            id,
            ErrorCode::ShuttingDown,
            "the sequencer has stopped".into(),
        ));
    }
    Some(Outgoing::Append { id, ack })
}

pub(crate) async fn read_page(id: u64, from: u64, max_records: u32, shared: &Shared) -> Outgoing {
    let size = shared.sequencer.head.borrow().size;
    if from > size {
        let message = format!("seq {from} is beyond the log (size {size})");
        return error(id, ErrorCode::OutOfRange, message);
    }
    let max = match max_records as usize {
        0 => shared.limits.read_page_records,
        n => n.min(shared.limits.read_page_records),
    };
    match load_page(shared, from, max, size).await {
        Ok(records) => Outgoing::Ready(Response {
            id,
            body: Some(response::Body::Records(records)),
        }),
        Err(message) => error(id, ErrorCode::Storage, message),
    }
}

/// Reads committed records `[from, min(from + max, size))` off the runtime.
pub(crate) async fn load_page(
    shared: &Shared,
    from: u64,
    max: usize,
    size: u64,
) -> Result<proto::Records, String> {
    let store = shared.store.clone();
    let max_bytes = shared.limits.max_frame;
    let max = max.min(usize::try_from(size.saturating_sub(from)).unwrap_or(usize::MAX));
    let page = tokio::task::spawn_blocking(move || store.read(from, max, max_bytes))
        .await
        .map_err(|err| err.to_string())?
        .map_err(|err| err.to_string())?;
    Ok(proto::Records {
        records: page
            .into_iter()
            .map(|record| proto::StoredRecord {
                seq: record.seq,
                entry_hash: entry_hash(&record.bytes).to_vec().into(),
                record: record.bytes.into(),
            })
            .collect(),
    })
}

/// A fresh attestation for the caller's nonce, made by the anchoring task (so no
/// anchor interleaves): the current checkpoint certified at the open counter value,
/// never incremented; with `since_size`, the anchors made since the caller's.
pub(crate) async fn fresh_attestation(
    id: u64,
    request: proto::AttestRequest,
    shared: &Shared,
) -> Outgoing {
    use crate::anchor::{FreshError, FreshRequest};
    let Some(anchoring) = &shared.anchoring else {
        return error(
            id,
            ErrorCode::TpmUnavailable,
            "this daemon runs without a TPM".into(),
        );
    };
    let nonce = request.nonce;
    if nonce.is_empty() || nonce.len() > MAX_NONCE_BYTES {
        let message = format!(
            "the nonce must be 1 to {MAX_NONCE_BYTES} bytes, not {}",
            nonce.len()
        );
        return error(id, ErrorCode::BadRequest, message);
    }
    let fresh = FreshRequest {
        nonce: nonce.to_vec(),
        since_size: request.since_size,
        max_reply_bytes: shared.limits.max_frame,
    };
    let (reply, done) = oneshot::channel();
    if anchoring
        .commands
        .send(AnchorCommand::Fresh(fresh, reply))
        .await
        .is_err()
    {
        return error(id, ErrorCode::ShuttingDown, "anchoring has stopped".into());
    }
    match done.await {
        Ok(Ok(attestation)) => Outgoing::Ready(Response {
            id,
            body: Some(response::Body::Attest(proto::AttestReply {
                attestation: attestation.encode_to_vec(),
            })),
        }),
        Ok(Err(FreshError::OutOfRange(message))) => error(id, ErrorCode::OutOfRange, message),
        Ok(Err(FreshError::Anchor(err))) => error(id, ErrorCode::TpmUnavailable, err.to_string()),
        Err(_) => error(id, ErrorCode::ShuttingDown, "anchoring has stopped".into()),
    }
}

pub(crate) async fn anchor_now(id: u64, shared: &Shared) -> Outgoing {
    let Some(anchoring) = &shared.anchoring else {
        return error(
            id,
            ErrorCode::TpmUnavailable,
            "this daemon runs without a TPM".into(),
        );
    };
    let (reply, done) = oneshot::channel();
    if anchoring
        .commands
        .send(AnchorCommand::Now(reply))
        .await
        .is_err()
    {
        return error(id, ErrorCode::ShuttingDown, "anchoring has stopped".into());
    }
    match done.await {
        Ok(Ok((counter, anchor))) => Outgoing::Ready(Response {
            id,
            body: Some(response::Body::Anchor(proto::AnchorReply {
                counter,
                anchor,
            })),
        }),
        Ok(Err(message)) => error(id, ErrorCode::TpmUnavailable, message),
        Err(_) => error(id, ErrorCode::ShuttingDown, "anchoring has stopped".into()),
    }
}

pub(crate) async fn read_anchors(id: u64, from: u64, max: u32, shared: &Shared) -> Outgoing {
    let store = shared.store.clone();
    let max = match max as usize {
        0 => shared.limits.read_page_records,
        n => n.min(shared.limits.read_page_records),
    };
    match tokio::task::spawn_blocking(move || store.anchors(from, max)).await {
        Ok(Ok(anchors)) => Outgoing::Ready(Response {
            id,
            body: Some(response::Body::Anchors(proto::Anchors {
                anchors: anchors
                    .into_iter()
                    .map(|(counter, anchor)| proto::StoredAnchor { counter, anchor })
                    .collect(),
            })),
        }),
        Ok(Err(err)) => error(id, ErrorCode::Storage, err.to_string()),
        Err(err) => error(id, ErrorCode::Internal, err.to_string()),
    }
}

pub(crate) fn status(id: u64, shared: &Shared) -> Outgoing {
    let head = *shared.sequencer.head.borrow();
    let anchor = shared
        .anchoring
        .as_ref()
        .and_then(|anchoring| anchoring.status.lock().ok().map(|status| status.clone()));
    // Acked events no closed anchor covers, and since when (the exposure window).
    let exposure = shared
        .anchoring
        .as_ref()
        .map(|anchoring| anchoring.ack_times.exposure());
    let disk_free_bytes = nix::sys::statvfs::statvfs(&shared.data_dir)
        .map(|stat| stat.blocks_available().saturating_mul(stat.fragment_size()))
        .unwrap_or(0);
    Outgoing::Ready(Response {
        id,
        body: Some(response::Body::Status(proto::StatusReply {
            size: head.size,
            head_hash: head.hash.to_vec(),
            root_hash: head.root.to_vec(),
            log_id: shared.store.log_id().to_vec(),
            server_name: shared.server_name.clone(),
            store_used_bytes: shared.store.used_bytes(),
            store_map_bytes: shared.store.map_bytes(),
            disk_free_bytes,
            queued_events: shared.queued_events.load(Ordering::Relaxed),
            format_version: FORMAT_VERSION,
            tpm_enabled: shared.anchoring.is_some(),
            last_anchor_counter: anchor.as_ref().map_or(0, |a| a.last_counter),
            last_anchor_size: anchor.as_ref().map_or(0, |a| a.last_size),
            last_anchor_age_millis: anchor
                .as_ref()
                .filter(|a| a.last_created_unix_nanos > 0)
                .map_or(0, |a| {
                    let age_nanos = now_unix_nanos()
                        .saturating_sub(a.last_created_unix_nanos)
                        .max(0);
                    (age_nanos / 1_000_000) as u64
                }),
            unanchored_events: exposure.map_or(0, |e| e.unanchored),
            oldest_unanchored_age_millis: exposure.and_then(|e| e.oldest_acked_unix_nanos).map_or(
                0,
                |acked| {
                    let age_nanos = now_unix_nanos().saturating_sub(acked).max(0);
                    (age_nanos / 1_000_000) as u64
                },
            ),
            last_anchor_error: anchor
                .as_ref()
                .and_then(|a| a.last_error.clone())
                .unwrap_or_default(),
            anchor_interval_millis: anchor.as_ref().map_or(0, |a| a.interval.as_millis() as u64),
        })),
    })
}

/// An inclusion proof of record `seq` against the anchor at `size` (0: the
/// newest anchor), as a protobuf `ProofFile`.
pub(crate) async fn prove_inclusion(id: u64, seq: u64, size: u64, shared: &Shared) -> Outgoing {
    use tally_attest::proof::{InclusionProofFile, ProofFile};
    let store = shared.store.clone();
    let built = tokio::task::spawn_blocking(
        move || -> Result<Result<Vec<u8>, (ErrorCode, String)>, String> {
            let Some((_, anchor, covered)) =
                store.anchor_for_size(size).map_err(|err| err.to_string())?
            else {
                return Ok(Err(no_anchor(size)));
            };
            if seq >= covered {
                return Ok(Err((
                    ErrorCode::OutOfRange,
                    format!("seq {seq} is not in the anchored log of {covered} records"),
                )));
            }
            let path = store
                .inclusion_proof(seq, covered)
                .map_err(|err| err.to_string())?;
            let record = store
                .read(seq, 1, usize::MAX)
                .map_err(|err| err.to_string())?
                .into_iter()
                .next()
                .ok_or_else(|| format!("record {seq} is missing"))?;
            let inclusion = InclusionProofFile {
                seq,
                record: record.bytes,
                path: path.iter().map(|hash| hash.to_vec()).collect(),
                anchor,
            };
            Ok(Ok(ProofFile {
                inclusion: Some(inclusion),
                consistency: None,
            }
            .encode_to_vec()))
        },
    )
    .await;
    proof_reply(id, built)
}

/// A consistency proof from the anchor at `from` records to the anchor at
/// `to` (0: the newest), as a protobuf `ProofFile`.
pub(crate) async fn prove_consistency(id: u64, from: u64, to: u64, shared: &Shared) -> Outgoing {
    use tally_attest::proof::{ConsistencyProofFile, ProofFile};
    let store = shared.store.clone();
    let built = tokio::task::spawn_blocking(
        move || -> Result<Result<Vec<u8>, (ErrorCode, String)>, String> {
            let Some((_, new_anchor, new_size)) =
                store.anchor_for_size(to).map_err(|err| err.to_string())?
            else {
                return Ok(Err(no_anchor(to)));
            };
            if from == 0 || from > new_size {
                return Ok(Err((
                    ErrorCode::OutOfRange,
                    format!("the old size must be an anchored size between 1 and {new_size}"),
                )));
            }
            let Some((_, old_anchor, _)) =
                store.anchor_for_size(from).map_err(|err| err.to_string())?
            else {
                return Ok(Err(no_anchor(from)));
            };
            let path = store
                .consistency_proof(from, new_size)
                .map_err(|err| err.to_string())?;
            let consistency = ConsistencyProofFile {
                path: path.iter().map(|hash| hash.to_vec()).collect(),
                old_anchor,
                new_anchor,
            };
            Ok(Ok(ProofFile {
                inclusion: None,
                consistency: Some(consistency),
            }
            .encode_to_vec()))
        },
    )
    .await;
    proof_reply(id, built)
}

/// A proof built off the runtime: a storage failure (outer `Err`), a
/// refusal for the client (inner `Err`), or the encoded proof.
type BuiltProof = Result<Result<Vec<u8>, (ErrorCode, String)>, String>;

fn no_anchor(size: u64) -> (ErrorCode, String) {
    let message = if size == 0 {
        "the log has no anchor yet: proofs are checked against TPM-anchored checkpoints (tally anchor)".to_owned()
    } else {
        format!("no anchor covers exactly {size} records: proofs are made against anchored sizes (see tally export / status)")
    };
    (ErrorCode::OutOfRange, message)
}

fn proof_reply(id: u64, built: Result<BuiltProof, tokio::task::JoinError>) -> Outgoing {
    match built {
        Ok(Ok(Ok(proof))) => Outgoing::Ready(Response {
            id,
            body: Some(response::Body::Proof(proto::ProofReply { proof })),
        }),
        Ok(Ok(Err((code, message)))) => error(id, code, message),
        Ok(Err(message)) => error(id, ErrorCode::Storage, message),
        Err(err) => error(id, ErrorCode::Internal, err.to_string()),
    }
}
