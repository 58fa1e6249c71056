//! Request handlers: each turns one decoded request into the body of its
//! response, or the [`RequestError`] that refuses it. They see only
//! [`Shared`] and the request; framing, ordering and the connection's state
//! are the connection's and the dispatcher's.

use std::sync::atomic::Ordering;
use std::time::Instant;

use prost::Message;
use tally_client::attributes::check_client_event;
use tally_client::proto::{self, response};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::error::{RequestError, MAX_NONCE_BYTES};
use super::page::{records_of, SCAN_MAX_RECORDS, SCAN_MAX_TIME};
use super::shared::Shared;
use crate::anchor::AnchorCommand;
use crate::peer::PeerId;
use crate::sequencer::{Ack, AppendError, AppendJob, QueuedEvents};
use crate::store::{Scan, FORMAT_VERSION};
use tally_client::clock::now_unix_nanos;

/// Where the sequencer answers a submitted append.
pub(crate) type AckReceiver = oneshot::Receiver<Result<Vec<Ack>, AppendError>>;

/// Validates an append (its size, then every event against the protocol's
/// rules), reserves its queue budget (waiting under overload)
/// and hands it to the sequencer. `Ok(None)`: the daemon is shutting down.
pub(crate) async fn submit_append(
    append: proto::AppendRequest,
    frame_len: usize,
    peer: &PeerId,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Result<Option<AckReceiver>, RequestError> {
    let count = append.events.len();
    if count == 0 {
        return Err(RequestError::NoEvents);
    }
    if count > shared.limits.max_events_per_append {
        return Err(RequestError::TooManyEvents {
            count,
            max: shared.limits.max_events_per_append,
        });
    }
    // Before the rate limit takes its tokens and before anything is queued:
    // a request with one invalid event stores nothing and costs nothing.
    for (index, event) in append.events.iter().enumerate() {
        check_client_event(event).map_err(|source| RequestError::InvalidEvent { index, source })?;
    }
    if !shared.append_rate.try_take(peer, count) {
        return Err(RequestError::RateLimited {
            peer: *peer,
            rate: shared.append_rate.rate(),
        });
    }
    let receive_time_unix_nanos = now_unix_nanos();
    // A frame larger than the whole budget takes all of it rather than
    // waiting forever.
    let budget = u32::try_from(frame_len.min(shared.limits.queue_bytes).max(1)).unwrap_or(u32::MAX);
    let permit = tokio::select! {
        _ = shutdown.cancelled() => return Ok(None),
        permit = shared.queue_budget.clone().acquire_many_owned(budget) => match permit {
            Ok(permit) => permit,
            Err(_) => return Ok(None),
        },
    };
    let (reply, ack) = oneshot::channel();
    let job = AppendJob::new(
        append.events,
        frame_len,
        peer.to_proto(),
        receive_time_unix_nanos,
        reply,
        Some(permit),
        QueuedEvents::new(&shared.queued_events, count as u64),
        &shared.personal,
    );
    if shared.sequencer.submit(job).await.is_err() {
        return Err(RequestError::SequencerStopped);
    }
    Ok(Some(ack))
}

/// An erase request (role admin, checked by the dispatcher).
pub(crate) async fn erase(
    request: proto::EraseRequest,
    peer: &PeerId,
    shared: &Shared,
) -> Result<response::Body, RequestError> {
    let selection = crate::erasure::Selection::from_request(&request)?;
    let reply = super::erase::erase(shared, &selection, &request.reason, peer).await?;
    Ok(response::Body::Erase(reply))
}

/// A read: a page of the records of `[from_seq, to_seq)` (0: the log's size
/// now) that match its filter, the oldest (or with `newest` the newest) at
/// most `max_records` (0: the page limit), with where the scan stopped.
pub(crate) async fn read_page(
    read: proto::ReadRequest,
    shared: &Shared,
) -> Result<response::Body, RequestError> {
    let size = shared.sequencer.head.borrow().size;
    let from = read.from_seq;
    if from > size {
        return Err(RequestError::BeyondLog { from, size });
    }
    let to = match read.to_seq {
        0 => size,
        to => to.min(size),
    };
    let max = match read.max_records as usize {
        0 => shared.limits.read_page_records,
        n => n.min(shared.limits.read_page_records),
    };
    let page = PageRequest {
        from,
        to,
        newest: read.newest,
        filter: read.filter.unwrap_or_default(),
        max_records: max,
    };
    let records = load_page(shared, page).await?;
    Ok(response::Body::Records(records))
}

/// What [`load_page`] reads.
pub(crate) struct PageRequest {
    pub(crate) from: u64,
    /// The end of the range, exclusive (at most the committed size).
    pub(crate) to: u64,
    pub(crate) newest: bool,
    pub(crate) filter: proto::Filter,
    pub(crate) max_records: usize,
}

/// Scans committed records off the runtime, bounded by the page limits and
/// [`SCAN_MAX_RECORDS`] / [`SCAN_MAX_TIME`]; `resume_seq` says where it stopped.
pub(crate) async fn load_page(
    shared: &Shared,
    page: PageRequest,
) -> Result<proto::Records, RequestError> {
    let store = shared.store.clone();
    let max_bytes = shared.limits.max_frame;
    let scanned = tokio::task::spawn_blocking(move || {
        store.scan(&Scan {
            from: page.from,
            to: page.to,
            newest: page.newest,
            filter: &page.filter,
            max_records: page.max_records,
            max_bytes,
            max_examined: SCAN_MAX_RECORDS,
            deadline: Some(Instant::now() + SCAN_MAX_TIME),
        })
    })
    .await
    .map_err(RequestError::PageTask)??;
    Ok(records_of(scanned))
}

/// A fresh attestation for the caller's nonce, made by the anchoring task (so no
/// anchor interleaves): the current checkpoint certified at the open counter value,
/// never incremented; with `since_size`, the anchors made since the caller's.
pub(crate) async fn fresh_attestation(
    request: proto::AttestRequest,
    shared: &Shared,
) -> Result<response::Body, RequestError> {
    use crate::anchor::FreshRequest;
    let anchoring = shared.anchoring.as_ref().ok_or(RequestError::NoTpm)?;
    let nonce = request.nonce;
    if nonce.is_empty() || nonce.len() > MAX_NONCE_BYTES {
        return Err(RequestError::BadNonce { len: nonce.len() });
    }
    let fresh = FreshRequest {
        nonce,
        since_size: request.since_size,
        max_reply_bytes: shared.limits.max_frame,
    };
    let (reply, done) = oneshot::channel();
    anchoring
        .commands
        .send(AnchorCommand::Fresh(fresh, reply))
        .await
        .map_err(|_| RequestError::AnchoringStopped)?;
    let attestation = done.await.map_err(|_| RequestError::AnchoringStopped)??;
    Ok(response::Body::Attest(proto::AttestReply {
        attestation: attestation.encode_to_vec(),
    }))
}

/// Asks the anchoring task for an anchor of the settled head now.
pub(crate) async fn anchor_now(shared: &Shared) -> Result<response::Body, RequestError> {
    let anchoring = shared.anchoring.as_ref().ok_or(RequestError::NoTpm)?;
    let (reply, done) = oneshot::channel();
    anchoring
        .commands
        .send(AnchorCommand::Now(reply))
        .await
        .map_err(|_| RequestError::AnchoringStopped)?;
    let (counter, anchor) = done.await.map_err(|_| RequestError::AnchoringStopped)??;
    Ok(response::Body::Anchor(proto::AnchorReply {
        counter,
        anchor,
    }))
}

/// Stored anchors from counter value `from`, at most `max` (0: the page limit).
pub(crate) async fn read_anchors(
    from: u64,
    max: u32,
    shared: &Shared,
) -> Result<response::Body, RequestError> {
    let store = shared.store.clone();
    let max = match max as usize {
        0 => shared.limits.read_page_records,
        n => n.min(shared.limits.read_page_records),
    };
    let anchors = tokio::task::spawn_blocking(move || store.anchors(from, max))
        .await
        .map_err(RequestError::Task)??;
    Ok(response::Body::Anchors(proto::Anchors {
        anchors: anchors
            .into_iter()
            .map(|(counter, anchor)| proto::StoredAnchor { counter, anchor })
            .collect(),
    }))
}

/// The daemon's state: the head, the store, the queue and the anchoring.
pub(crate) fn status(shared: &Shared) -> response::Body {
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
    let space = shared.disk_space.check();
    let age_millis = |since_unix_nanos: i64| {
        let age_nanos = now_unix_nanos().saturating_sub(since_unix_nanos).max(0);
        (age_nanos / 1_000_000) as u64
    };
    response::Body::Status(proto::StatusReply {
        size: head.size,
        head_hash: head.hash.to_vec(),
        root_hash: head.root.to_vec(),
        log_id: shared.store.log_id().to_vec(),
        server_name: shared.server_name.clone(),
        store_used_bytes: shared.store.used_bytes(),
        store_map_bytes: shared.store.map_bytes(),
        disk_free_bytes: space.free_bytes,
        disk_warn_below_bytes: shared.disk_space.warn_below(),
        disk_warning: space.warning.unwrap_or_default(),
        queued_events: shared.queued_events.load(Ordering::Relaxed),
        format_version: FORMAT_VERSION,
        tpm_enabled: shared.anchoring.is_some(),
        last_anchor_counter: anchor.as_ref().map_or(0, |a| a.last_counter),
        last_anchor_size: anchor.as_ref().map_or(0, |a| a.last_size),
        last_anchor_age_millis: anchor
            .as_ref()
            .filter(|a| a.last_created_unix_nanos > 0)
            .map_or(0, |a| age_millis(a.last_created_unix_nanos)),
        unanchored_events: exposure.map_or(0, |e| e.unanchored),
        oldest_unanchored_age_millis: exposure
            .and_then(|e| e.oldest_acked_unix_nanos)
            .map_or(0, age_millis),
        anchoring: match (&shared.anchoring, &anchor) {
            (None, _) => "off",
            (Some(_), Some(a)) if a.last_error.is_none() => "ok",
            (Some(_), _) => "failing",
        }
        .into(),
        last_anchor_error: anchor
            .as_ref()
            .and_then(|a| a.last_error.clone())
            .unwrap_or_default(),
        anchor_interval_millis: anchor.as_ref().map_or(0, |a| a.interval.as_millis() as u64),
    })
}

/// An inclusion proof of record `seq` against the anchor at `size` (0: the
/// newest anchor), as a protobuf `ProofFile`.
pub(crate) async fn prove_inclusion(
    seq: u64,
    size: u64,
    shared: &Shared,
) -> Result<response::Body, RequestError> {
    use tally_attest::proof::{InclusionProofFile, ProofFile};
    let store = shared.store.clone();
    let proof = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, RequestError> {
        let (_, anchor, covered) = store
            .anchor_for_size(size)?
            .ok_or(RequestError::no_anchor(size))?;
        if seq >= covered {
            return Err(RequestError::NotInAnchoredLog { seq, covered });
        }
        let path = store.inclusion_proof(seq, covered)?;
        let record = store
            .read(seq, 1, usize::MAX)?
            .into_iter()
            .next()
            .ok_or(RequestError::RecordMissing { seq })?;
        let inclusion = InclusionProofFile {
            seq,
            record: record.bytes,
            path: path.iter().map(|hash| hash.to_vec()).collect(),
            anchor,
        };
        Ok(ProofFile {
            inclusion: Some(inclusion),
            consistency: None,
        }
        .encode_to_vec())
    })
    .await
    .map_err(RequestError::Task)??;
    Ok(response::Body::Proof(proto::ProofReply { proof }))
}

/// A consistency proof from the anchor at `from` records to the anchor at
/// `to` (0: the newest), as a protobuf `ProofFile`.
pub(crate) async fn prove_consistency(
    from: u64,
    to: u64,
    shared: &Shared,
) -> Result<response::Body, RequestError> {
    use tally_attest::proof::{ConsistencyProofFile, ProofFile};
    let store = shared.store.clone();
    let proof = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, RequestError> {
        let (_, new_anchor, new_size) = store
            .anchor_for_size(to)?
            .ok_or(RequestError::no_anchor(to))?;
        if from == 0 || from > new_size {
            return Err(RequestError::OldSizeOutOfRange { new_size });
        }
        let (_, old_anchor, _) = store
            .anchor_for_size(from)?
            .ok_or(RequestError::no_anchor(from))?;
        let path = store.consistency_proof(from, new_size)?;
        let consistency = ConsistencyProofFile {
            path: path.iter().map(|hash| hash.to_vec()).collect(),
            old_anchor,
            new_anchor,
        };
        Ok(ProofFile {
            inclusion: None,
            consistency: Some(consistency),
        }
        .encode_to_vec())
    })
    .await
    .map_err(RequestError::Task)??;
    Ok(response::Body::Proof(proto::ProofReply { proof }))
}
