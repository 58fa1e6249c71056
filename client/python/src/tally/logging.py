"""A handler for the standard ``logging`` module that writes records to Tally.

    logging.getLogger().addHandler(tally.logging.TallyHandler())

Each record becomes an event (docs/EVENTS.md, "Python logging"): kind
``log.<level name in lower case>`` unless ``kind`` says otherwise, the
formatted message (with its traceback, if any) as a ``text/plain`` payload,
and the logger, level, code location, thread and process as typed
attributes. ``extra={...}`` fields become attributes.

The handler enqueues on a :class:`tally.BatchWriter` and returns: a logging
call never waits for the daemon. The writer it makes itself drops events
when its queue is full (``dropped`` counts them) rather than stall the
application; pass your own writer for another policy.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

from . import BatchWriter, Event
from .events import attributes_from, to_digest_only

__all__ = ["TallyHandler"]

# The attributes every LogRecord has: anything else in its __dict__ came from
# `extra`. (Built from a blank record so that a new Python's fields count too.)
_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class TallyHandler(logging.Handler):
    """Writes log records to tallyd through a background batching writer.

    ``kind``: a fixed kind, or a function of the record; default
    ``log.<levelname lower>``. ``actor`` and ``subject`` are set on every event.
    ``writer``: a :class:`tally.BatchWriter` to share (the handler then flushes
    it but does not close it); by default the handler makes one on ``socket``.
    ``digest_only``: the message is hashed (``tally.payload.sha256``), not sent.
    """

    def __init__(
        self,
        socket: str | None = None,
        *,
        kind: str | Callable[[logging.LogRecord], str] | None = None,
        actor: str = "",
        subject: str = "",
        writer: BatchWriter | None = None,
        digest_only: bool = False,
        content_keys: Iterable[str] = (),
        level: int = logging.NOTSET,
        flush_timeout: float | None = 5.0,
    ) -> None:
        super().__init__(level)
        self._owns_writer = writer is None
        self._writer = writer if writer is not None else BatchWriter(socket, overflow="drop")
        self._kind = kind
        self._actor = actor
        self._subject = subject
        self._digest_only = digest_only
        self._content_keys = frozenset(content_keys)
        self._flush_timeout = flush_timeout
        self._closed = False
        #: The last error a flush or close met (they do not raise).
        self.last_error: BaseException | None = None

    @property
    def writer(self) -> BatchWriter:
        return self._writer

    @property
    def dropped(self) -> int:
        """Events the writer dropped (queue full)."""
        return self._writer.dropped

    def _event_kind(self, record: logging.LogRecord) -> str:
        if callable(self._kind):
            return self._kind(record)
        if self._kind:
            return self._kind
        return f"log.{record.levelname.lower()}"

    def to_event(self, record: logging.LogRecord) -> Event:
        """The event for one record (what :meth:`emit` enqueues)."""
        # self.format runs the formatter: message, then exc_info's traceback
        # and stack_info, as any other handler would print them.
        message = self.format(record)
        # The record's own fields have known types (str or int; None when
        # logging was told not to collect one): no conversion needed. The
        # process id is left out: the daemon records the sender's pid from
        # the kernel.
        fields = {
            "log.logger": record.name,
            "log.level": record.levelname,
            "log.level_number": record.levelno,
            "code.file.path": record.pathname,
            "code.line.number": record.lineno,
            "code.function.name": record.funcName,
            "code.module": record.module,
            "thread.id": record.thread,
            "thread.name": record.threadName,
        }
        attributes: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc_value = record.exc_info[0], record.exc_info[1]
            attributes["exception.type"] = exc_type.__qualname__
            attributes["exception.message"] = str(exc_value)
        # A set difference, not a scan of the record's ~25 fields in Python:
        # this runs on every logging call. Sorted, so that a record's
        # attributes come in one order.
        fields_now = record.__dict__
        extra_keys = fields_now.keys() - _RECORD_FIELDS
        if extra_keys:
            attributes_from({key: fields_now[key] for key in sorted(extra_keys)}, attributes)
        event = Event(
            self._event_kind(record),
            actor=self._actor,
            subject=self._subject,
            attributes=attributes,
            payload=message.encode("utf-8"),
            content_type="text/plain; charset=utf-8",
            client_time_ns=int(record.created * 1e9),
        )
        if self._digest_only:
            event = to_digest_only(event, self._content_keys)
        return event

    def emit(self, record: logging.LogRecord) -> None:
        # The client's own loggers ("tally", "tally.*") are not sent: a warning
        # from the writer about the daemon would otherwise feed the writer.
        if record.name == "tally" or record.name.startswith("tally."):
            return
        try:
            self._writer.log_event(self.to_event(record))
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Waits (at most ``flush_timeout`` seconds) until every record so far
        is acked. Like any handler's, it does not raise: a failure (daemon
        gone, events refused) is reported through ``handleError``'s channel
        (stderr, when ``logging.raiseExceptions``) and kept in
        ``last_error``."""
        # Not under the handler's lock: other threads keep logging meanwhile.
        # After close (logging.shutdown flushes closed handlers too) there is
        # nothing to wait for.
        if self._closed:
            return
        try:
            self._writer.flush(self._flush_timeout)
        except Exception as error:  # a handler's flush must not raise
            self._report(error)

    def close(self) -> None:
        """Flushes, and closes the writer if the handler made it (events
        still unacked after ``flush_timeout`` are abandoned)."""
        if self._closed:
            return
        try:
            if self._owns_writer:
                try:
                    self._writer.close(self._flush_timeout)
                except Exception as error:  # a handler's close must not raise
                    self._report(error)
            else:
                self.flush()
        finally:
            self._closed = True
            super().close()

    def _report(self, error: BaseException) -> None:
        self.last_error = error
        if logging.raiseExceptions:
            sys.stderr.write(f"tally.logging.TallyHandler: {error}\n")
