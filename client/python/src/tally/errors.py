"""The exceptions of the Tally client, one class per failure a caller can act on.

Every exception derives from :class:`TallyError`. Errors the daemon answers with
(``tally.v1.Error``) are :class:`ProtocolError` subclasses, exactly one per
``tally.v1.ErrorCode`` (:func:`error_for_code` is the one mapping); connection
failures are found before any request is sent (:class:`DaemonUnavailable`,
:class:`Forbidden`) or while one is in flight (:class:`ConnectionLost`).
"""

from __future__ import annotations

import errno as _errno


class TallyError(Exception):
    """Base class of every error this package raises."""


class DaemonUnavailable(TallyError, ConnectionError):
    """The socket is missing or refuses connections: tallyd is not running there."""

    def __init__(self, socket: str, cause: OSError | None = None):
        self.socket = socket
        why = f" ({cause.strerror})" if cause is not None and cause.strerror else ""
        super().__init__(f"cannot connect to tallyd{why}: is tallyd running? socket {socket}")


class Forbidden(TallyError, PermissionError):
    """The socket exists but this process may not connect to it (EACCES/EPERM).

    Tally's socket is mode 0660 for its group: add the user to the socket's
    group (``socket_group`` in tallyd.toml) or run as a user who has it.
    """

    def __init__(self, socket: str):
        self.socket = socket
        super().__init__(
            f"permission denied connecting to {socket}: this user may not use the "
            "socket (it is usually mode 0660; join its group)"
        )


class ConnectionLost(TallyError, ConnectionError):
    """The daemon closed the connection (or it broke) before answering."""


class Timeout(TallyError, TimeoutError):
    """The daemon did not take a request or answer it within the client's timeout."""


class EventTooLarge(TallyError, ValueError):
    """One event is too large for one request frame; found before sending."""

    def __init__(self, size: int, limit: int):
        self.size = size
        self.limit = limit
        super().__init__(
            f"event too large: its append request would be {size} bytes, the daemon's "
            f"limit (max_frame_bytes) is {limit} bytes"
        )


class IntegrityError(TallyError):
    """A record read from the daemon does not match its entry hash, seq or chain."""


class ProtocolError(TallyError):
    """The daemon answered a request with an error.

    ``code`` is the ``tally.v1.ErrorCode`` value (an int) and ``message`` the
    daemon's text. Raised as itself for codes this client does not know
    (including 0, unspecified); every known code has its own subclass.
    """

    code = 0

    def __init__(self, code: int, message: str):
        self.code = code
        self.message = message
        super().__init__(f"tallyd refused the request ({_code_name(code)}): {message}")


class BadRequest(ProtocolError):
    """ERROR_CODE_BAD_REQUEST: the request or one of its events is not valid."""

    code = 1


class FrameTooLarge(ProtocolError):
    """ERROR_CODE_FRAME_TOO_LARGE: the request frame exceeds max_frame_bytes."""

    code = 2


class TooManyEvents(ProtocolError):
    """ERROR_CODE_TOO_MANY_EVENTS: more events in one append than max_events_per_append."""

    code = 3


class ProtocolMismatch(ProtocolError):
    """ERROR_CODE_PROTOCOL: no hello first, or the protocol versions do not match."""

    code = 4


class Busy(ProtocolError):
    """ERROR_CODE_BUSY: the daemon is overloaded or refuses the connection; retry later."""

    code = 5


class StorageFull(ProtocolError):
    """ERROR_CODE_STORAGE_FULL: disk or LMDB map full; nothing was committed."""

    code = 6


class StorageError(ProtocolError):
    """ERROR_CODE_STORAGE: the store failed; nothing of the request was committed."""

    code = 7


class ShuttingDown(ProtocolError):
    """ERROR_CODE_SHUTTING_DOWN: the daemon is stopping; the request was not performed."""

    code = 8


class OutOfRange(ProtocolError):
    """ERROR_CODE_OUT_OF_RANGE: the requested seq is beyond the log."""

    code = 9


class InternalError(ProtocolError):
    """ERROR_CODE_INTERNAL: a bug or unexpected failure in the daemon."""

    code = 10


class TpmUnavailable(ProtocolError):
    """ERROR_CODE_TPM_UNAVAILABLE: no TPM (``--no-tpm``), or the TPM failed."""

    code = 11


class PermissionDenied(ProtocolError):
    """ERROR_CODE_PERMISSION_DENIED: this peer's uid/gid lacks the role the request needs.

    Not :class:`Forbidden`: the connection was allowed, the request was not
    (and the daemon recorded the denial in the log).
    """

    code = 12


class RateLimited(ProtocolError):
    """ERROR_CODE_RATE_LIMITED: over append_rate_per_peer; nothing was stored; retry later."""

    code = 13


_BY_CODE: dict[int, type[ProtocolError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        FrameTooLarge,
        TooManyEvents,
        ProtocolMismatch,
        Busy,
        StorageFull,
        StorageError,
        ShuttingDown,
        OutOfRange,
        InternalError,
        TpmUnavailable,
        PermissionDenied,
        RateLimited,
    )
}

# Codes after which the same request may succeed if sent again later; the
# BatchWriter retries these and fails a batch on any other.
RETRYABLE_CODES = frozenset({Busy.code, StorageFull.code, ShuttingDown.code, RateLimited.code})


def error_for_code(code: int, message: str) -> ProtocolError:
    """The exception for a daemon ``Error{code, message}``."""
    return _BY_CODE.get(code, ProtocolError)(code, message)


def connect_error(socket: str, err: OSError) -> TallyError:
    """The exception for a failed connect() to ``socket``."""
    if err.errno in (_errno.EACCES, _errno.EPERM):
        return Forbidden(socket)
    return DaemonUnavailable(socket, err)


def _code_name(code: int) -> str:
    # Lazy: errors.py must import without the generated code's runtime check.
    from .v1 import tally_pb2

    try:
        return tally_pb2.ErrorCode.Name(code)
    except ValueError:
        return f"error code {code}"


__all__ = [name for name, value in globals().items() if isinstance(value, type) and issubclass(value, TallyError)] + [
    "error_for_code",
    "RETRYABLE_CODES",
]
