"""The values the client API takes and returns: Event, Ack, Record, Status."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import _encode
from .errors import IntegrityError

# Record header: format version (1), seq (8, big-endian), prev_hash (32);
# the RecordBody protobuf follows (docs/DESIGN.md section 3).
RECORD_HEADER_BYTES = 41
RECORD_VERSION = 1


@dataclass
class Event:
    """One event as the client supplies it.

    ``attributes`` maps keys to str, bool, int (int64), float, bytes, or a flat
    list/tuple of one of those; every value is sent as a typed attribute
    (``Event.typed_attributes``), none in the legacy string map. ``payload``
    may be str (sent UTF-8 encoded). ``client_time_ns`` None means "now":
    stamped when the event is appended (or logged, for a BatchWriter).
    """

    kind: str
    actor: str = ""
    subject: str = ""
    attributes: Mapping[str, Any] | None = None
    payload: bytes | str | None = None
    content_type: str = ""
    client_time_ns: int | None = None

    def encode(self) -> bytes:
        """The ``tally.v1.Event`` protobuf bytes (ValueError/TypeError if invalid)."""
        return _encode.event(
            self.kind,
            self.actor,
            self.subject,
            self.attributes,
            self.payload,
            self.content_type,
            time.time_ns() if self.client_time_ns is None else self.client_time_ns,
        )


@dataclass(frozen=True)
class Ack:
    """The daemon's receipt for one durable event."""

    seq: int
    entry_hash: str  # hex


@dataclass(frozen=True)
class Record:
    """One stored record, decoded, its entry hash checked.

    ``attributes`` holds both the string map (str values) and the typed list
    (Python values: arrays as lists). ``raw`` is the exact stored record, the
    bytes the entry hash covers. ``peer`` is the kernel-reported sender:
    ``{"uid", "gid", "pid"}`` or ``{"cid", "port"}`` (empty if none).
    ``content`` says where ``payload`` and the personal attributes came from
    (docs/DESIGN.md section 3b): ``"present"`` (the opening the daemon
    served, checked against the record's commitment), ``"erased"`` (the
    record has a commitment and its content is gone: ``payload`` is empty),
    or ``"none"`` (the record has no commitment).
    """

    seq: int
    entry_hash: str
    prev_hash: str
    receive_time_ns: int
    peer: dict[str, int]
    kind: str
    actor: str
    subject: str
    attributes: dict[str, Any]
    payload: bytes
    content_type: str
    client_time_ns: int
    raw: bytes = field(repr=False)
    content: str = "none"


@dataclass(frozen=True)
class Status:
    """The daemon's StatusReply; hashes and the log id as hex strings."""

    size: int
    head_hash: str
    log_id: str
    server_name: str
    store_used_bytes: int
    store_map_bytes: int
    disk_free_bytes: int
    queued_events: int
    format_version: int
    tpm_enabled: bool
    last_anchor_counter: int
    last_anchor_size: int
    last_anchor_age_millis: int
    unanchored_events: int
    last_anchor_error: str
    anchor_interval_millis: int
    root_hash: str
    oldest_unanchored_age_millis: int
    disk_warn_below_bytes: int
    disk_warning: str
    anchoring: str


_BYTES_FIELDS = ("head_hash", "log_id", "root_hash")


def status_from_pb(reply: Any) -> Status:
    values = {}
    for f in dataclasses.fields(Status):
        value = getattr(reply, f.name)
        values[f.name] = value.hex() if f.name in _BYTES_FIELDS else value
    return Status(**values)


def attribute_to_python(value: Any) -> Any:
    """A ``tally.v1.AttributeValue`` as a Python value (None if unset)."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [attribute_to_python(v) for v in value.array_value.values]
    return getattr(value, which)


def entry_hash(record: bytes) -> bytes:
    """SHA-256(0x00 || record): the record's RFC 6962 leaf hash."""
    return hashlib.sha256(b"\x00" + record).digest()


#: Domain prefix of a content commitment (docs/DESIGN.md section 3b).
CONTENT_DOMAIN = b"tally.content.v1\x00"
#: Bytes of salt at the start of an opening.
SALT_BYTES = 32


def record_from_pb(stored: Any, record_body_cls: Any, content_cls: Any = None) -> Record:
    """Decodes a ``StoredRecord``, checking its header seq and entry hash,
    and joins its content back in (checked against its commitment)."""
    raw = stored.record
    if len(raw) < RECORD_HEADER_BYTES or raw[0] != RECORD_VERSION:
        raise IntegrityError(f"record {stored.seq}: not a version-{RECORD_VERSION} record")
    seq = int.from_bytes(raw[1:9], "big")
    if seq != stored.seq:
        raise IntegrityError(f"record {stored.seq}: its header says seq {seq}")
    digest = entry_hash(raw)
    if digest != stored.entry_hash:
        raise IntegrityError(
            f"record {seq}: entry hash {stored.entry_hash.hex()} does not match its "
            f"bytes (SHA-256 gives {digest.hex()})"
        )
    body = record_body_cls.FromString(raw[RECORD_HEADER_BYTES:])
    ev = body.event
    attributes: dict[str, Any] = dict(ev.attributes)
    for attr in ev.typed_attributes:
        attributes[attr.key] = attribute_to_python(attr.value)
    payload = ev.payload
    content_state = "none"
    if body.content_commitment:
        opening = getattr(stored, "content", b"")
        if not opening:
            content_state = "erased"
        else:
            if (
                len(opening) < SALT_BYTES
                or hashlib.sha256(CONTENT_DOMAIN + opening).digest() != body.content_commitment
            ):
                raise IntegrityError(f"record {seq}: its content does not open the record's commitment")
            if content_cls is None:
                raise TypeError("record_from_pb needs content_cls for a record with content")
            content = content_cls.FromString(opening[SALT_BYTES:])
            payload = content.payload
            attributes.update(content.attributes)
            for attr in content.typed_attributes:
                attributes[attr.key] = attribute_to_python(attr.value)
            content_state = "present"
    peer_kind = body.peer.WhichOneof("kind")
    if peer_kind == "unix":
        peer = {"uid": body.peer.unix.uid, "gid": body.peer.unix.gid, "pid": body.peer.unix.pid}
    elif peer_kind == "vsock":
        peer = {"cid": body.peer.vsock.cid, "port": body.peer.vsock.port}
    else:
        peer = {}
    return Record(
        seq=seq,
        entry_hash=digest.hex(),
        prev_hash=raw[9:41].hex(),
        receive_time_ns=body.receive_time_unix_nanos,
        peer=peer,
        kind=ev.kind,
        actor=ev.actor,
        subject=ev.subject,
        attributes=attributes,
        payload=payload,
        content_type=ev.content_type,
        client_time_ns=ev.client_time_unix_nanos,
        raw=raw,
        content=content_state,
    )


def check_chain(records: list[Record], previous: Record | None = None) -> None:
    """Each record's prev_hash is the entry hash of the record before it."""
    for record in records:
        if previous is not None and previous.seq + 1 == record.seq and record.prev_hash != previous.entry_hash:
            raise IntegrityError(
                f"record {record.seq}: prev_hash {record.prev_hash} is not the entry hash "
                f"of record {previous.seq} ({previous.entry_hash})"
            )
        previous = record
