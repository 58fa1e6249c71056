"""One blocking connection to tallyd: connect, hello, framed requests and responses.

Shared by :class:`tally.Client` and :class:`tally.BatchWriter`. Not thread-safe:
each owner uses its connection from one thread at a time.
"""

from __future__ import annotations

import os
import socket as _socket
import struct
from typing import Any

from . import _encode
from .errors import ConnectionLost, EventTooLarge, TallyError, Timeout, connect_error, error_for_code
from .v1 import tally_pb2 as pb

PROTOCOL_VERSION = 1
DEFAULT_SOCKET = "/run/tally/tally.sock"
# What a daemon that predates HelloReply's limits accepts (tallyd's defaults).
DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_EVENTS = 10_000
# Largest response frame this client takes: a read page of big records is
# far below it; anything above is a broken stream, not a response.
MAX_RESPONSE_BYTES = 1 << 30
CLIENT_NAME = "tally-python/0.1.0"
# SO_SNDBUF asked for (one default-sized frame); see Connection.__init__.
SEND_BUFFER_BYTES = 4 * 1024 * 1024

# How long a failed send waits for the daemon's closing error (it was sent
# before the close, so it is already in the socket's queue when there is one).
CLOSING_ERROR_WAIT = 0.5

_unpack_len = struct.Struct(">I").unpack


def resolve_socket(socket: str | os.PathLike[str] | None) -> str:
    """The socket path: the argument, then $TALLY_SOCKET, then /run/tally/tally.sock."""
    if socket is not None:
        return os.fspath(socket)
    return os.environ.get("TALLY_SOCKET") or DEFAULT_SOCKET


class Connection:
    """A connected, hello'd socket. ``max_frame_bytes`` and ``max_events`` are the daemon's limits."""

    def __init__(self, path: str, timeout: float | None, client_name: str = CLIENT_NAME):
        self.path = path
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        # A large send buffer lets sendall() hand a whole batch to the kernel
        # in a few calls: each call drops and retakes the GIL, and retaking
        # it while the caller's thread logs costs up to the switch interval
        # (5 ms). The kernel caps the value at net.core.wmem_max.
        try:
            self.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        except OSError:
            pass
        try:
            self.sock.connect(path)
        except OSError as err:
            self.sock.close()
            if isinstance(err, TimeoutError):
                raise Timeout(f"connecting to {path} timed out after {timeout} s") from err
            raise connect_error(path, err) from err
        self._buf = bytearray()
        self.next_id = 1
        try:
            reply = self.call(pb.Request(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, client_name=client_name)))
        except BaseException:
            self.close()
            raise
        self.server_name = reply.hello.server_name
        self.log_id = reply.hello.log_id
        self.max_frame_bytes = reply.hello.max_frame_bytes or DEFAULT_MAX_FRAME_BYTES
        self.max_events = reply.hello.max_events_per_append or DEFAULT_MAX_EVENTS

    def close(self) -> None:
        self.sock.close()

    def shutdown(self) -> None:
        """Ends the connection from another thread: a blocked send or recv returns."""
        try:
            self.sock.shutdown(_socket.SHUT_RDWR)
        except OSError:
            pass

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def take_id(self) -> int:
        request_id = self.next_id
        self.next_id += 1
        return request_id

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except TimeoutError as err:
            raise Timeout(f"tallyd did not take the request within {self.sock.gettimeout()} s") from err
        except OSError as err:
            # A daemon that refuses a connection (BUSY) or a frame
            # (FRAME_TOO_LARGE) says why, then closes: report its reason, not
            # the broken pipe that writing after the close gives.
            refusal = self._closing_error()
            if refusal is not None:
                raise refusal from err
            raise ConnectionLost(f"connection to {self.path} lost while sending: {err}") from err

    def _closing_error(self) -> TallyError | None:
        """The error response the daemon sent before it closed, if one is waiting."""
        timeout = self.sock.gettimeout()
        try:
            self.sock.settimeout(CLOSING_ERROR_WAIT)
            response = pb.Response.FromString(self.recv_frame())
        except (TallyError, OSError, ValueError):
            return None
        finally:
            try:
                self.sock.settimeout(timeout)
            except OSError:
                pass
        if response.WhichOneof("body") != "error":
            return None
        return error_for_code(response.error.code, response.error.message)

    def _fill(self, n: int) -> None:
        """Reads until the buffer holds at least n bytes."""
        while len(self._buf) < n:
            try:
                chunk = self.sock.recv(max(65536, n - len(self._buf)))
            except TimeoutError as err:
                raise Timeout(f"tallyd did not answer within {self.sock.gettimeout()} s") from err
            except OSError as err:
                raise ConnectionLost(f"connection to {self.path} lost while reading: {err}") from err
            if not chunk:
                raise ConnectionLost(f"tallyd closed the connection ({self.path})")
            self._buf += chunk

    def recv_frame(self) -> bytes:
        self._fill(4)
        (n,) = _unpack_len(self._buf[:4])
        if n > MAX_RESPONSE_BYTES:
            raise TallyError(f"tallyd sent a {n}-byte frame; this is not a Tally response stream")
        self._fill(4 + n)
        frame = bytes(self._buf[4 : 4 + n])
        del self._buf[: 4 + n]
        return frame

    def recv(self, request_id: int) -> Any:
        """The next response, which must answer ``request_id``; a daemon error is raised."""
        response = pb.Response.FromString(self.recv_frame())
        if response.WhichOneof("body") == "error":
            raise error_for_code(response.error.code, response.error.message)
        if response.id != request_id:
            raise TallyError(f"tallyd answered request {response.id}, expected {request_id}")
        return response

    def call(self, request: Any) -> Any:
        request.id = self.take_id()
        self.send(_encode.frame(request.SerializeToString()))
        return self.recv(request.id)

    def append_encoded(self, events: list[bytes]) -> list[tuple[int, bytes]]:
        """Appends pre-encoded events in one request; (seq, entry hash) per event."""
        request_id = self.take_id()
        self.send(_encode.append_frame(request_id, events))
        acks = self.recv(request_id).append.acks
        if len(acks) != len(events):
            raise TallyError(f"tallyd acked {len(acks)} events of {len(events)}")
        return [(ack.seq, ack.entry_hash) for ack in acks]

    def append_fields(self, fields: list[bytes]) -> int:
        """Appends events in ``_encode.event_field`` form in one request; the number acked."""
        request_id = self.take_id()
        self.send(_encode.append_frame_of_fields(request_id, fields))
        acked = len(self.recv(request_id).append.acks)
        if acked != len(fields):
            raise TallyError(f"tallyd acked {acked} events of {len(fields)}")
        return acked


def batches(
    encoded: list[bytes], max_frame_bytes: int, max_events: int, overhead: int = _encode.EVENT_OVERHEAD
) -> list[list[bytes]]:
    """Splits encoded events into append requests under the daemon's limits.

    ``overhead``: bytes each event adds to the request besides its own
    (0 for events already in ``_encode.event_field`` form). Raises
    EventTooLarge for an event no request can carry.
    """
    out: list[list[bytes]] = []
    current: list[bytes] = []
    size = _encode.REQUEST_OVERHEAD
    for event in encoded:
        cost = len(event) + overhead
        if _encode.REQUEST_OVERHEAD + cost > max_frame_bytes:
            raise EventTooLarge(_encode.REQUEST_OVERHEAD + cost, max_frame_bytes)
        if current and (size + cost > max_frame_bytes or len(current) >= max_events):
            out.append(current)
            current = []
            size = _encode.REQUEST_OVERHEAD
        current.append(event)
        size += cost
    if current:
        out.append(current)
    return out
