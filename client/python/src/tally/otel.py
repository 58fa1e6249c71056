"""OpenTelemetry exporters: spans and log records as Tally events.

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(TallySpanExporter()))

The mapping is docs/EVENTS.md's section "OpenTelemetry": a span whose
``gen_ai.operation.name`` is ``chat`` becomes an event of kind ``gen_ai.chat``,
any other span ``otel.span``; span events become events of their own; a log
record becomes an event of its event name's kind, or ``otel.log``.

``export()`` sends synchronously through a :class:`tally.Client` and returns
SUCCESS only once the daemon has acked every event of the batch (acked means
durable and chained). A retryable failure (no daemon, connection lost, busy)
is retried for up to ``retry_for`` seconds, so delivery is at least once; any
other error, or one that outlasts ``retry_for``, returns FAILURE. Wrap the
exporter in the SDK's batch processor so that the application's threads never
wait for the daemon.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

try:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from opentelemetry.trace import StatusCode
except ImportError as error:  # pragma: no cover - depends on the install
    raise ImportError(
        "tally.otel needs the OpenTelemetry SDK: pip install 'tally-client[otel]' (or pip install opentelemetry-sdk)"
    ) from error

try:  # SDK 1.36+ names; older SDKs only have the LogExporter names
    from opentelemetry.sdk._logs.export import LogRecordExporter as _LogExporterBase
    from opentelemetry.sdk._logs.export import LogRecordExportResult as _LogResult
except ImportError:  # pragma: no cover - depends on the install
    from opentelemetry.sdk._logs.export import LogExporter as _LogExporterBase
    from opentelemetry.sdk._logs.export import LogExportResult as _LogResult

from . import Client, Event
from .errors import RETRYABLE_CODES, ConnectionLost, DaemonUnavailable, ProtocolError, Timeout
from .events import attributes_from, json_text, to_digest_only

__all__ = [
    "GENERIC_LOG_KIND",
    "GENERIC_SPAN_KIND",
    "TallyLogRecordExporter",
    "TallySpanExporter",
    "log_record_to_event",
    "span_to_events",
]

_log = logging.getLogger(__name__)

GENERIC_SPAN_KIND = "otel.span"
GENERIC_SPAN_EVENT_KIND = "otel.span_event"
EXCEPTION_KIND = "otel.exception"
GENERIC_LOG_KIND = "otel.log"

# Backoff between retries of a batch (seconds): doubling from the first.
_RETRY_FIRST = 0.05
_RETRY_MAX = 1.0

# The daemon's own kinds; an OpenTelemetry name never produces one.
_RESERVED_PREFIX = "tally."

# Which attribute names the event's subject, by operation: the model for model
# calls, the tool for tool calls, the agent for agent steps.
_SUBJECT_KEYS = {
    "execute_tool": ("gen_ai.tool.name",),
    "invoke_agent": ("gen_ai.agent.name", "gen_ai.agent.id"),
    "create_agent": ("gen_ai.agent.name", "gen_ai.agent.id"),
}
_MODEL_KEYS = ("gen_ai.request.model", "gen_ai.response.model")


def _hex_trace_id(trace_id: int) -> str:
    return f"{trace_id:032x}"


def _hex_span_id(span_id: int) -> str:
    return f"{span_id:016x}"


def _operation(attributes: Mapping[str, Any]) -> str | None:
    operation = attributes.get("gen_ai.operation.name")
    return operation if isinstance(operation, str) and operation else None


def _subject(attributes: Mapping[str, Any], operation: str | None, fallback: str) -> str:
    for key in _SUBJECT_KEYS.get(operation or "", _MODEL_KEYS):
        value = attributes.get(key)
        if isinstance(value, str) and value:
            return value
    return fallback


def _actor(resource: Any, actor: str | None) -> str:
    if actor is not None:
        return actor
    attributes = getattr(resource, "attributes", None) or {}
    name = attributes.get("service.name")
    return name if isinstance(name, str) else ""


def _scope_attributes(scope: Any, into: dict[str, Any]) -> None:
    if scope is None:
        return
    if scope.name:
        into["otel.scope.name"] = scope.name
    if scope.version:
        into["otel.scope.version"] = scope.version


def _resource_attributes(resource: Any, into: dict[str, Any]) -> None:
    attributes = getattr(resource, "attributes", None) or {}
    attributes_from({f"otel.resource.{key}": value for key, value in attributes.items()}, into)


def _finish(event: Event, digest_only: bool, content_keys: Iterable[str]) -> Event:
    return to_digest_only(event, content_keys) if digest_only else event


def span_to_events(
    span: ReadableSpan,
    *,
    actor: str | None = None,
    digest_only: bool = False,
    content_keys: Iterable[str] = (),
    include_resource: bool = True,
) -> list[Event]:
    """The events for one finished span: one per span event (in order), then
    the span's own. See docs/EVENTS.md section 7.1 and 7.2."""
    span_attributes = dict(span.attributes or {})
    operation = _operation(span_attributes)
    kind = f"gen_ai.{operation}" if operation else GENERIC_SPAN_KIND
    who = _actor(span.resource, actor)
    subject = _subject(span_attributes, operation, span.name)
    context = span.context
    ids: dict[str, Any] = {}
    if context is not None:
        ids["otel.trace_id"] = _hex_trace_id(context.trace_id)
        ids["otel.span_id"] = _hex_span_id(context.span_id)

    events = []
    for span_event in span.events:
        name = span_event.name
        if name.startswith("gen_ai."):
            event_kind = name
        elif name == "exception":
            event_kind = EXCEPTION_KIND
        else:
            event_kind = GENERIC_SPAN_EVENT_KIND
        attributes = attributes_from(span_event.attributes)
        attributes.update(ids)
        attributes["otel.event.name"] = name
        attributes["otel.span.name"] = span.name
        event = Event(
            event_kind,
            actor=who,
            subject=subject,
            attributes=attributes,
            client_time_ns=span_event.timestamp,
        )
        events.append(_finish(event, digest_only, content_keys))

    # The span's own attributes first, then the mapping's (which win a clash:
    # they are what this schema promises).
    attributes = attributes_from(span_attributes)
    attributes.update(ids)
    if span.parent is not None and span.parent.span_id:
        attributes["otel.parent_span_id"] = _hex_span_id(span.parent.span_id)
    attributes["otel.span.name"] = span.name
    attributes["otel.span.kind"] = span.kind.name.lower()
    start, end = span.start_time, span.end_time
    if start is not None:
        attributes["otel.start_time_unix_nano"] = start
    if end is not None:
        attributes["otel.end_time_unix_nano"] = end
    if start is not None and end is not None:
        attributes["otel.duration_ns"] = end - start
    status = span.status
    if status is not None and status.status_code is not StatusCode.UNSET:
        attributes["otel.status_code"] = status.status_code.name
        if status.description:
            attributes["otel.status_description"] = status.description
    links = [f"{_hex_trace_id(link.context.trace_id)}-{_hex_span_id(link.context.span_id)}" for link in span.links]
    if links:
        attributes["otel.links"] = links
    _scope_attributes(span.instrumentation_scope, attributes)
    if include_resource:
        _resource_attributes(span.resource, attributes)
    event = Event(
        kind,
        actor=who,
        subject=subject,
        attributes=attributes,
        client_time_ns=end if end is not None else start,
    )
    events.append(_finish(event, digest_only, content_keys))
    return events


def _body_payload(body: Any) -> tuple[bytes | None, str]:
    """A log record's body as (payload, content type)."""
    if body is None:
        return None, ""
    if isinstance(body, str):
        return body.encode("utf-8"), "text/plain; charset=utf-8"
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body), "application/octet-stream"
    # A map, a list, a number or a bool: its JSON text (a kvlist body has no
    # other faithful form in Tally).
    return json_text(body).encode("utf-8"), "application/json"


def log_record_to_event(
    item: Any,
    *,
    actor: str | None = None,
    digest_only: bool = False,
    content_keys: Iterable[str] = (),
    include_resource: bool = True,
) -> Event:
    """The event for one exported log record (a ``ReadableLogRecord``, or an
    older SDK's ``LogData``). See docs/EVENTS.md section 7.3."""
    record = item.log_record
    resource = getattr(item, "resource", None) or getattr(record, "resource", None)
    scope = getattr(item, "instrumentation_scope", None)
    record_attributes = dict(record.attributes or {})
    event_name = getattr(record, "event_name", None) or ""
    if event_name and not event_name.startswith(_RESERVED_PREFIX):
        kind = event_name
    else:
        kind = GENERIC_LOG_KIND
    attributes = attributes_from(record_attributes)
    if event_name:
        attributes["otel.event.name"] = event_name
    exception = getattr(record, "exception", None)
    if isinstance(exception, BaseException) and "exception.type" not in attributes:
        attributes["exception.type"] = type(exception).__qualname__
        attributes["exception.message"] = str(exception)
        attributes["exception.stacktrace"] = "".join(
            traceback.format_exception(type(exception), exception, exception.__traceback__)
        )
    if record.trace_id:
        attributes["otel.trace_id"] = _hex_trace_id(record.trace_id)
    if record.span_id:
        attributes["otel.span_id"] = _hex_span_id(record.span_id)
    if record.severity_number is not None:
        attributes["otel.severity_number"] = int(record.severity_number.value)
    if record.severity_text:
        attributes["otel.severity_text"] = record.severity_text
    if record.observed_timestamp:
        attributes["otel.observed_time_unix_nano"] = record.observed_timestamp
    _scope_attributes(scope, attributes)
    if include_resource:
        _resource_attributes(resource, attributes)
    payload, content_type = _body_payload(record.body)
    event = Event(
        kind,
        actor=_actor(resource, actor),
        subject=_subject(record_attributes, _operation(record_attributes), ""),
        attributes=attributes,
        payload=payload,
        content_type=content_type,
        client_time_ns=record.timestamp or record.observed_timestamp,
    )
    return _finish(event, digest_only, content_keys)


def _retryable(error: BaseException) -> bool:
    """Whether the same batch may be acked if sent again: the daemon was not
    there, went away, stalled, or answered a retryable code (busy, storage
    full, shutting down, rate limited)."""
    if isinstance(error, (DaemonUnavailable, ConnectionLost, Timeout)):
        return True
    return isinstance(error, ProtocolError) and getattr(error, "code", None) in RETRYABLE_CODES


class _Sender:
    """The exporters' way to the daemon: one :class:`tally.Client`, shared by
    the exporter's callers under a lock (a SimpleSpanProcessor exports from
    every application thread). The client reconnects by itself on the call
    after a broken one; a retryable failure is retried with backoff for up to
    ``retry_for`` seconds, as OTLP exporters do, so a daemon restart does not
    lose a batch (the SDK drops a batch that fails)."""

    def __init__(self, socket: str | None, client: Client | None, timeout: float, retry_for: float) -> None:
        self._owns_client = client is None
        self._client = client if client is not None else Client(socket, timeout=timeout)
        self._retry_for = retry_for
        self._lock = threading.Lock()
        # Set by shutdown() without the lock, so that it can cut a retry short.
        self._shutdown = threading.Event()
        # Set while this thread is inside send(). The warnings send() logs may
        # come straight back to it (an OpenTelemetry logging bridge on the
        # "tally.otel" logger feeding a SimpleLogRecordProcessor with this
        # exporter): such a nested call must not wait for the lock its own
        # thread holds. It is dropped instead.
        self._inside = threading.local()

    def send(self, events: Sequence[Event]) -> bool:
        if not events:
            return not self._shutdown.is_set()
        if getattr(self._inside, "active", False):
            return False
        self._inside.active = True
        try:
            return self._send(events)
        finally:
            self._inside.active = False

    def _send(self, events: Sequence[Event]) -> bool:
        with self._lock:
            deadline = time.monotonic() + self._retry_for
            delay = _RETRY_FIRST
            while not self._shutdown.is_set():
                try:
                    acks = self._client.append_many(events)
                except Exception as error:  # any failure: the batch is not acked
                    if not _retryable(error) or time.monotonic() + delay > deadline:
                        _log.warning("tally exporter: %d events not acked: %s", len(events), error)
                        return False
                    self._shutdown.wait(delay)
                    delay = min(delay * 2, _RETRY_MAX)
                    continue
                if len(acks) != len(events):
                    _log.warning("tally exporter: %d events sent, %d acked", len(events), len(acks))
                    return False
                return True
            _log.warning("tally exporter is shut down; %d events not sent", len(events))
            return False

    def shutdown(self) -> None:
        self._shutdown.set()
        with self._lock:
            if self._owns_client:
                self._client.close()


def _mapping_options(
    actor: str | None, digest_only: bool, content_keys: Iterable[str], include_resource: bool
) -> dict[str, Any]:
    """The keyword arguments both exporters pass to their mapping functions."""
    return {
        "actor": actor,
        "digest_only": digest_only,
        "content_keys": frozenset(content_keys),
        "include_resource": include_resource,
    }


class TallySpanExporter(SpanExporter):
    """Exports finished spans to tallyd (see the module's docstring).

    ``actor`` overrides the resource's ``service.name``; ``digest_only`` hashes
    content attributes (prompts, completions, tool arguments and results, and
    ``content_keys``) instead of sending them; ``include_resource=False`` leaves
    out the ``otel.resource.*`` attributes. ``client``: a :class:`tally.Client`
    to use (else one on ``socket`` with ``timeout``); ``retry_for``: seconds a
    batch is retried after a retryable failure (0: never).
    """

    def __init__(
        self,
        socket: str | None = None,
        *,
        client: Client | None = None,
        actor: str | None = None,
        digest_only: bool = False,
        content_keys: Iterable[str] = (),
        include_resource: bool = True,
        timeout: float = 30.0,
        retry_for: float = 10.0,
    ) -> None:
        self._sender = _Sender(socket, client, timeout, retry_for)
        self._options = _mapping_options(actor, digest_only, content_keys, include_resource)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            events = [event for span in spans for event in span_to_events(span, **self._options)]
        except Exception as error:  # a span this mapping cannot read
            _log.warning("tally exporter: cannot map spans: %s", error)
            return SpanExportResult.FAILURE
        ok = self._sender.send(events)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._sender.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        # Nothing is buffered here: export() returns only once acked.
        return True


class TallyLogRecordExporter(_LogExporterBase):
    """Exports log records to tallyd; options as for :class:`TallySpanExporter`."""

    def __init__(
        self,
        socket: str | None = None,
        *,
        client: Client | None = None,
        actor: str | None = None,
        digest_only: bool = False,
        content_keys: Iterable[str] = (),
        include_resource: bool = True,
        timeout: float = 30.0,
        retry_for: float = 10.0,
    ) -> None:
        self._sender = _Sender(socket, client, timeout, retry_for)
        self._options = _mapping_options(actor, digest_only, content_keys, include_resource)

    def export(self, batch: Sequence[Any]) -> Any:
        try:
            events = [log_record_to_event(item, **self._options) for item in batch]
        except Exception as error:  # a record this mapping cannot read
            _log.warning("tally exporter: cannot map log records: %s", error)
            return _LogResult.FAILURE
        ok = self._sender.send(events)
        return _LogResult.SUCCESS if ok else _LogResult.FAILURE

    def shutdown(self) -> None:
        self._sender.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
