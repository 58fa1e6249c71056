"""Tally's Python client: append to, read and follow a tallyd audit log.

    import tally
    tally.Client().append("model.load", subject="llama-3-8b",
                          attributes={"gen_ai.request.model": "llama-3-8b"})

:class:`Client` is blocking, :class:`AsyncClient` is for asyncio, and
:class:`BatchWriter` logs from hot paths without waiting for the daemon.
"""

from __future__ import annotations

from .aio import AsyncClient
from .batch import BatchWriter
from .client import Client
from .errors import (
    BadRequest,
    Busy,
    ConnectionLost,
    DaemonUnavailable,
    EventTooLarge,
    Forbidden,
    FrameTooLarge,
    IntegrityError,
    InternalError,
    OutOfRange,
    PermissionDenied,
    ProtocolError,
    ProtocolMismatch,
    RateLimited,
    ShuttingDown,
    StorageError,
    StorageFull,
    TallyError,
    Timeout,
    TooManyEvents,
    TpmUnavailable,
)
from .types import Ack, Event, Record, Status

__version__ = "0.1.0"

__all__ = [
    "Ack",
    "AsyncClient",
    "BadRequest",
    "BatchWriter",
    "Busy",
    "Client",
    "ConnectionLost",
    "DaemonUnavailable",
    "Event",
    "EventTooLarge",
    "Forbidden",
    "FrameTooLarge",
    "IntegrityError",
    "InternalError",
    "OutOfRange",
    "PermissionDenied",
    "ProtocolError",
    "ProtocolMismatch",
    "RateLimited",
    "Record",
    "ShuttingDown",
    "Status",
    "StorageError",
    "StorageFull",
    "TallyError",
    "Timeout",
    "TooManyEvents",
    "TpmUnavailable",
]
