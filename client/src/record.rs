//! Decoding stored records for display. Verification never needs this: the
//! chain is checked over the raw bytes (see `tally_attest::record`).

use prost::Message;
use serde_json::{json, Map, Value};
use tally_attest::{entry_hash, RecordHeader};

use crate::proto::{peer, RecordBody};

/// Why stored bytes could not be shown as an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error(transparent)]
    Header(#[from] tally_attest::record::RecordError),
    #[error("record body is not a valid RecordBody: {0}")]
    Body(#[from] prost::DecodeError),
}

/// A stored record, split into its header and decoded body.
#[derive(Debug, Clone)]
pub struct DecodedRecord {
    pub header: RecordHeader,
    pub body: RecordBody,
    pub entry_hash: [u8; 32],
}

/// Parses the header and decodes the protobuf body of a stored record.
pub fn decode(record: &[u8]) -> Result<DecodedRecord, DecodeError> {
    let (header, body) = RecordHeader::parse(record)?;
    Ok(DecodedRecord {
        header,
        body: RecordBody::decode(body)?,
        entry_hash: entry_hash(record),
    })
}

impl DecodedRecord {
    /// A JSON object with every field; the payload as UTF-8 text when it is
    /// valid UTF-8, else base64 under `payload_b64`.
    pub fn to_json(&self) -> Value {
        let event = self.body.event.clone().unwrap_or_default();
        let mut out = Map::new();
        out.insert("seq".into(), json!(self.header.seq));
        out.insert("entry_hash".into(), json!(hex::encode(self.entry_hash)));
        out.insert(
            "prev_hash".into(),
            json!(hex::encode(self.header.prev_hash)),
        );
        out.insert(
            "receive_time_unix_nanos".into(),
            json!(self.body.receive_time_unix_nanos),
        );
        out.insert("peer".into(), peer_json(&self.body));
        out.insert("kind".into(), json!(event.kind));
        out.insert("actor".into(), json!(event.actor));
        out.insert("subject".into(), json!(event.subject));
        out.insert("attributes".into(), json!(event.attributes));
        out.insert("content_type".into(), json!(event.content_type));
        out.insert(
            "client_time_unix_nanos".into(),
            json!(event.client_time_unix_nanos),
        );
        match String::from_utf8(event.payload) {
            Ok(text) => out.insert("payload".into(), json!(text)),
            Err(err) => {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD.encode(err.into_bytes());
                out.insert("payload_b64".into(), json!(b64))
            }
        };
        Value::Object(out)
    }

    /// One human-readable line.
    pub fn to_line(&self) -> String {
        let event = self.body.event.clone().unwrap_or_default();
        let attributes: Vec<String> = event
            .attributes
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        format!(
            "{seq:>8} {hash} {peer} {kind} actor={actor} subject={subject}{sep}{attrs} ({len} payload bytes)",
            seq = self.header.seq,
            hash = &hex::encode(self.entry_hash)[..16],
            peer = peer_text(&self.body),
            kind = event.kind,
            actor = event.actor,
            subject = event.subject,
            sep = if attributes.is_empty() { "" } else { " " },
            attrs = attributes.join(" "),
            len = event.payload.len(),
        )
    }
}

fn peer_json(body: &RecordBody) -> Value {
    match body.peer.as_ref().and_then(|peer| peer.kind.as_ref()) {
        Some(peer::Kind::Unix(unix)) => {
            json!({"unix": {"uid": unix.uid, "gid": unix.gid, "pid": unix.pid}})
        }
        Some(peer::Kind::Vsock(vsock)) => json!({"vsock": {"cid": vsock.cid, "port": vsock.port}}),
        None => Value::Null,
    }
}

fn peer_text(body: &RecordBody) -> String {
    match body.peer.as_ref().and_then(|peer| peer.kind.as_ref()) {
        Some(peer::Kind::Unix(unix)) => format!("uid={} pid={}", unix.uid, unix.pid),
        Some(peer::Kind::Vsock(vsock)) => format!("cid={} port={}", vsock.cid, vsock.port),
        None => "peer=?".into(),
    }
}
