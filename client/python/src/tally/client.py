"""The synchronous client: one connection, one request at a time."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from . import _encode
from ._conn import Connection, batches, resolve_socket
from .types import Ack, Event, Record, Status, check_chain, record_from_pb, status_from_pb
from .v1 import tally_pb2 as pb


class Client:
    """A blocking client of tallyd.

    ``socket``: the daemon's Unix socket; default ``$TALLY_SOCKET``, then
    ``/run/tally/tally.sock``. ``timeout`` bounds every connect, send and
    answer (seconds; None waits forever). The connection is made on first
    use and made again on the next call after it breaks (the call that saw
    it break raises). Not thread-safe: use one Client per thread, or a
    :class:`tally.BatchWriter` for hot paths.
    """

    def __init__(self, socket: str | os.PathLike[str] | None = None, *, timeout: float | None = 30.0):
        self.socket = resolve_socket(socket)
        self.timeout = timeout
        self._conn: Connection | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def connect(self) -> Connection:
        """Connects (and says hello) unless connected; returns the connection."""
        if self._conn is None:
            self._conn = Connection(self.socket, self.timeout)
        return self._conn

    def _use(self, fn: Any) -> Any:
        conn = self.connect()
        try:
            return fn(conn)
        except BaseException as err:
            # A daemon error leaves the connection usable; anything else
            # (lost, timed out, interrupted) may leave it mid-frame.
            from .errors import ProtocolError

            if not isinstance(err, ProtocolError):
                self.close()
            raise

    @property
    def max_frame_bytes(self) -> int:
        """The daemon's largest request frame (connects if needed)."""
        return self.connect().max_frame_bytes

    @property
    def max_events_per_append(self) -> int:
        return self.connect().max_events

    def append(
        self,
        kind: str,
        *,
        actor: str | None = None,
        subject: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        payload: bytes | str | None = None,
        content_type: str | None = None,
        client_time_ns: int | None = None,
    ) -> Ack:
        """Appends one event; returns once it is durable. See :class:`tally.Event`."""
        encoded = _encode.event(
            kind,
            actor,
            subject,
            attributes,
            payload,
            content_type,
            time.time_ns() if client_time_ns is None else client_time_ns,
        )
        return self._append_encoded([encoded])[0]

    def append_many(self, events: Iterable[Event]) -> list[Ack]:
        """Appends events in as few requests as the daemon's limits allow, in order.

        Each request is acked before the next is sent; if one fails, the
        requests before it are stored and the exception says nothing of
        which: read the log to find out.
        """
        return self._append_encoded([e.encode() for e in events])

    def _append_encoded(self, encoded: list[bytes]) -> list[Ack]:
        def run(conn: Connection) -> list[Ack]:
            acks: list[Ack] = []
            for batch in batches(encoded, conn.max_frame_bytes, conn.max_events):
                acks.extend(Ack(seq, digest.hex()) for seq, digest in conn.append_encoded(batch))
            return acks

        return self._use(run)

    def read(self, from_seq: int = 0, limit: int = 0) -> list[Record]:
        """Stored records from ``from_seq``: at most ``limit`` (0: one daemon page).

        Each record's entry hash and chain link are checked (IntegrityError).
        Raises OutOfRange past the end of the log.
        """

        def run(conn: Connection) -> list[Record]:
            reply = conn.call(pb.Request(read=pb.ReadRequest(from_seq=from_seq, max_records=limit)))
            records = [record_from_pb(r, pb.RecordBody, pb.Content) for r in reply.records.records]
            check_chain(records)
            return records

        return self._use(run)

    def follow(self, from_seq: int = 0, *, idle_timeout: float | None = None) -> Iterator[Record]:
        """Every record from ``from_seq`` on, then each new one as it is committed.

        Runs on a connection of its own (follow turns a connection into a
        stream), closed when the iterator is closed or garbage-collected.
        ``idle_timeout``: raise :class:`tally.errors.Timeout` after this many
        seconds without a record (None: wait forever).
        """
        conn = Connection(self.socket, self.timeout)
        try:
            request_id = conn.take_id()
            request = pb.Request(id=request_id, follow=pb.FollowRequest(from_seq=from_seq))
            conn.send(_encode.frame(request.SerializeToString()))
            conn.settimeout(idle_timeout)
            previous: Record | None = None
            while True:
                reply = conn.recv(request_id)
                for stored in reply.records.records:
                    record = record_from_pb(stored, pb.RecordBody, pb.Content)
                    check_chain([record], previous)
                    previous = record
                    yield record
        finally:
            conn.close()

    def status(self) -> Status:
        """The daemon's status (log size, head, storage, anchoring)."""
        return self._use(lambda conn: status_from_pb(conn.call(pb.Request(status=pb.StatusRequest())).status))

    def attest(self, nonce: bytes) -> bytes:
        """A fresh TPM attestation (protobuf FreshAttestation bytes); TpmUnavailable without a TPM."""
        return self._use(lambda conn: conn.call(pb.Request(attest=pb.AttestRequest(nonce=nonce))).attest.attestation)

    def anchor(self) -> tuple[int, bytes]:
        """Anchors the head now (admin role): (TPM counter, AnchorRecord bytes)."""

        def run(conn: Connection) -> tuple[int, bytes]:
            reply = conn.call(pb.Request(anchor=pb.AnchorRequest())).anchor
            return reply.counter, reply.anchor

        return self._use(run)
