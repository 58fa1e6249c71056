"""The asyncio client: the same methods as :class:`tally.Client`, awaitable."""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from . import _encode
from ._conn import (
    CLIENT_NAME,
    CLOSING_ERROR_WAIT,
    DEFAULT_MAX_EVENTS,
    DEFAULT_MAX_FRAME_BYTES,
    MAX_RESPONSE_BYTES,
    PROTOCOL_VERSION,
    batches,
    resolve_socket,
)
from .errors import ConnectionLost, ProtocolError, TallyError, Timeout, connect_error, error_for_code
from .types import Ack, Event, Record, Status, check_chain, record_from_pb, status_from_pb
from .v1 import tally_pb2 as pb

_unpack_len = struct.Struct(">I").unpack


class _AsyncConnection:
    def __init__(self, path: str, timeout: float | None):
        self.path = path
        self.timeout = timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.next_id = 1
        self.max_frame_bytes = DEFAULT_MAX_FRAME_BYTES
        self.max_events = DEFAULT_MAX_EVENTS

    async def open(self) -> None:
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.path, limit=MAX_RESPONSE_BYTES), self.timeout
            )
        except asyncio.TimeoutError as err:
            raise Timeout(f"connecting to {self.path} timed out after {self.timeout} s") from err
        except OSError as err:
            raise connect_error(self.path, err) from err
        reply = await self.call(pb.Request(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, client_name=CLIENT_NAME)))
        self.max_frame_bytes = reply.hello.max_frame_bytes or DEFAULT_MAX_FRAME_BYTES
        self.max_events = reply.hello.max_events_per_append or DEFAULT_MAX_EVENTS

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def take_id(self) -> int:
        request_id = self.next_id
        self.next_id += 1
        return request_id

    async def send(self, data: bytes) -> None:
        assert self.writer is not None
        try:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), self.timeout)
        except asyncio.TimeoutError as err:
            raise Timeout(f"tallyd did not take the request within {self.timeout} s") from err
        except OSError as err:
            # The daemon's reason for closing (BUSY, FRAME_TOO_LARGE), if it
            # sent one, rather than the broken pipe (see Connection.send).
            try:
                await self.recv(0, CLOSING_ERROR_WAIT)
            except ProtocolError as refusal:
                raise refusal from err
            except TallyError:
                pass
            raise ConnectionLost(f"connection to {self.path} lost while sending: {err}") from err

    async def recv(self, request_id: int, timeout: float | None) -> Any:
        assert self.reader is not None
        try:
            header = await asyncio.wait_for(self.reader.readexactly(4), timeout)
            (n,) = _unpack_len(header)
            if n > MAX_RESPONSE_BYTES:
                raise TallyError(f"tallyd sent a {n}-byte frame; this is not a Tally response stream")
            data = await asyncio.wait_for(self.reader.readexactly(n), self.timeout)
        except asyncio.TimeoutError as err:
            raise Timeout(f"tallyd did not answer within {timeout} s") from err
        except asyncio.IncompleteReadError as err:
            raise ConnectionLost(f"tallyd closed the connection ({self.path})") from err
        except OSError as err:
            raise ConnectionLost(f"connection to {self.path} lost while reading: {err}") from err
        response = pb.Response.FromString(data)
        if response.WhichOneof("body") == "error":
            raise error_for_code(response.error.code, response.error.message)
        if response.id != request_id:
            raise TallyError(f"tallyd answered request {response.id}, expected {request_id}")
        return response

    async def call(self, request: Any) -> Any:
        request.id = self.take_id()
        await self.send(_encode.frame(request.SerializeToString()))
        return await self.recv(request.id, self.timeout)


class AsyncClient:
    """An asyncio client of tallyd; see :class:`tally.Client` for the arguments.

    Calls on one AsyncClient are serialised by a lock (one request in flight
    per connection); open several clients for concurrency.
    """

    def __init__(self, socket: str | os.PathLike[str] | None = None, *, timeout: float | None = 30.0):
        self.socket = resolve_socket(socket)
        self.timeout = timeout
        self._conn: _AsyncConnection | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def connect(self) -> _AsyncConnection:
        if self._conn is None:
            conn = _AsyncConnection(self.socket, self.timeout)
            await conn.open()
            self._conn = conn
        return self._conn

    async def _use(self, fn: Any) -> Any:
        async with self._lock:
            conn = await self.connect()
            try:
                return await fn(conn)
            except BaseException as err:
                if not isinstance(err, ProtocolError):
                    conn.close()
                    self._conn = None
                raise

    async def append(
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
        encoded = _encode.event(
            kind,
            actor,
            subject,
            attributes,
            payload,
            content_type,
            time.time_ns() if client_time_ns is None else client_time_ns,
        )
        return (await self._append_encoded([encoded]))[0]

    async def append_many(self, events: Iterable[Event]) -> list[Ack]:
        return await self._append_encoded([e.encode() for e in events])

    async def _append_encoded(self, encoded: list[bytes]) -> list[Ack]:
        async def run(conn: _AsyncConnection) -> list[Ack]:
            acks: list[Ack] = []
            for batch in batches(encoded, conn.max_frame_bytes, conn.max_events):
                request_id = conn.take_id()
                await conn.send(_encode.append_frame(request_id, batch))
                reply = await conn.recv(request_id, self.timeout)
                if len(reply.append.acks) != len(batch):
                    raise TallyError(f"tallyd acked {len(reply.append.acks)} events of {len(batch)}")
                acks.extend(Ack(a.seq, a.entry_hash.hex()) for a in reply.append.acks)
            return acks

        return await self._use(run)

    async def read(self, from_seq: int = 0, limit: int = 0) -> list[Record]:
        async def run(conn: _AsyncConnection) -> list[Record]:
            reply = await conn.call(pb.Request(read=pb.ReadRequest(from_seq=from_seq, max_records=limit)))
            records = [record_from_pb(r, pb.RecordBody, pb.Content) for r in reply.records.records]
            check_chain(records)
            return records

        return await self._use(run)

    async def follow(self, from_seq: int = 0, *, idle_timeout: float | None = None) -> AsyncIterator[Record]:
        """Every record from ``from_seq`` on, then new ones; on a connection of its own."""
        conn = _AsyncConnection(self.socket, self.timeout)
        await conn.open()
        try:
            request_id = conn.take_id()
            request = pb.Request(id=request_id, follow=pb.FollowRequest(from_seq=from_seq))
            await conn.send(_encode.frame(request.SerializeToString()))
            previous: Record | None = None
            while True:
                reply = await conn.recv(request_id, idle_timeout)
                for stored in reply.records.records:
                    record = record_from_pb(stored, pb.RecordBody, pb.Content)
                    check_chain([record], previous)
                    previous = record
                    yield record
        finally:
            conn.close()

    async def status(self) -> Status:
        async def run(conn: _AsyncConnection) -> Status:
            return status_from_pb((await conn.call(pb.Request(status=pb.StatusRequest()))).status)

        return await self._use(run)

    async def attest(self, nonce: bytes) -> bytes:
        async def run(conn: _AsyncConnection) -> bytes:
            return (await conn.call(pb.Request(attest=pb.AttestRequest(nonce=nonce)))).attest.attestation

        return await self._use(run)

    async def anchor(self) -> tuple[int, bytes]:
        async def run(conn: _AsyncConnection) -> tuple[int, bytes]:
            reply = (await conn.call(pb.Request(anchor=pb.AnchorRequest()))).anchor
            return reply.counter, reply.anchor

        return await self._use(run)
