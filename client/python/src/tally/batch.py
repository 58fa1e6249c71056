"""BatchWriter: logging from hot paths, batched and sent by one background thread.

``log()`` encodes the event on the caller's thread (so a bad attribute raises
there, at the call site) and appends the bytes to a bounded in-memory queue;
it never waits for the daemon. One background thread takes what is queued,
closes a batch when it reaches ``max_events``, ``max_bytes`` (below the
daemon's frame limit) or ``linger`` seconds after its first event, and sends
it as one append request. Up to ``window`` requests are in flight at once
(the daemon works on one while the next arrives); a further one is sent only
once half a batch is waiting, so under light load there is one.

Order: events are stored in logging order, except that with ``window`` > 1
a batch refused with a retryable error (BUSY, RATE_LIMITED, STORAGE_FULL,
SHUTTING_DOWN) is sent again after the requests already in flight behind
it, so its events may be stored after theirs. ``window=1`` never reorders.

Delivery is at least once. A batch whose connection breaks before its ack
arrives (daemon restart, crash) is sent again on a new connection once the
daemon is back; if the daemon had stored it and only the ack was lost, its
events are stored twice. An event is lost only when it is dropped by
``overflow="drop"`` (counted in ``dropped``), refused by the daemon with a
non-retryable error (counted in ``failed``; the error is ``last_error`` and
raised by the next ``flush()``), or still queued when ``close()`` gives up.
"""

from __future__ import annotations

import atexit
import collections
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from . import _encode
from ._conn import DEFAULT_MAX_EVENTS, DEFAULT_MAX_FRAME_BYTES, Connection, batches, resolve_socket
from .errors import RETRYABLE_CODES, EventTooLarge, ProtocolError, TallyError, Timeout
from .types import Event

_event_field = _encode.event_field
_event = _encode.event
_time_ns = time.time_ns
_VARINT = _encode._VARINT
_SMALL = _encode._SMALL
_varint = _encode.varint
# An event's field tag and length (at most 1 + 5 bytes) and the request around it.
_FIELD_AND_REQUEST_OVERHEAD = _encode.EVENT_OVERHEAD + _encode.REQUEST_OVERHEAD

# Backoff between reconnect attempts and retries of a BUSY/RATE_LIMITED batch.
_RETRY_MIN = 0.01
_RETRY_MAX = 1.0
# How long log() with overflow="block" sleeps between looks at the queue
# (the writer also wakes it when it takes a batch).
_BLOCK_POLL = 0.05
# How long the writer sleeps between looks at the queue while a batch lingers.
_LINGER_POLL = 0.0005
# How long close() at interpreter exit waits for the daemon by default.
EXIT_TIMEOUT = 10.0

# Default events per batch, and default requests in flight (window): with
# 4,000-event batches and three in flight the daemon decodes and hashes one
# batch while it commits another and the GIL changes hands less often per
# event. One thread logging 256-byte events, quiet 2-core machine, three runs
# each: 203-208k events/s acked, against 188-195k with the daemon's maximum
# (10,000) and two in flight (docs/BENCHMARKS.md, "Python client").
BATCH_EVENTS = 4000


class _Marker:
    """A flush() request in the queue: set once everything before it is acked."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


class BatchWriter:
    """Logs events in the background; see the module doc for delivery.

    ``max_events`` / ``max_bytes``: batch bounds (defaults: ``BATCH_EVENTS``
    events and the daemon's ``max_frame_bytes``; ceilings: the daemon's
    ``max_events_per_append`` and ``max_frame_bytes``). ``linger``:
    seconds a batch waits for more events after its first. ``queue_size``:
    events queued at most; when full, ``overflow="block"`` makes ``log()``
    wait for space and ``"drop"`` drops the event and counts it in
    ``dropped``. ``timeout``: per-request bound of the writer's connection.
    ``exit_timeout``: how long the interpreter-exit flush waits. ``window``:
    append requests in flight at most (see the module doc on order).
    A writer lives until ``close()`` or interpreter exit (its atexit hook
    holds it); after ``os.fork()`` the child has no writer thread: make a
    new BatchWriter there.
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        max_events: int | None = None,
        max_bytes: int | None = None,
        linger: float = 0.005,
        queue_size: int = 65536,
        overflow: str = "block",
        timeout: float | None = 30.0,
        exit_timeout: float | None = EXIT_TIMEOUT,
        window: int = 3,
    ):
        if overflow not in ("block", "drop"):
            raise ValueError(f'overflow must be "block" or "drop", not {overflow!r}')
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.socket = resolve_socket(socket)
        self.timeout = timeout
        self.linger = linger
        self.exit_timeout = exit_timeout
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self._user_max_events = max_events
        self._user_max_bytes = max_bytes
        self._max_events = min(max_events or BATCH_EVENTS, DEFAULT_MAX_EVENTS)
        self._max_bytes = min(max_bytes or DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_FRAME_BYTES)
        self._queue_size = queue_size
        self._drop = overflow == "drop"
        self._queue: collections.deque[Any] = collections.deque()
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._space_waiters = 0
        self._wake = threading.Event()
        # Set by the writer just before it sleeps on _wake, so that log()
        # pays for Event.set() only when the writer is actually asleep.
        self._sleeping = False
        self._closing = False
        self._abandon = False
        self._conn: Connection | None = None
        # The first non-retryable failure not yet raised by a flush().
        self._unreported: BaseException | None = None
        self.dropped = 0
        self.acked = 0
        self.failed = 0
        self.reconnects = 0
        # Append requests acked (batches, once split under the daemon's limits).
        self.requests = 0
        self.last_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tally-batch-writer", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

    # -- the caller's side ------------------------------------------------

    def log(
        self,
        kind: str,
        *,
        actor: str | None = None,
        subject: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        payload: bytes | str | None = None,
        content_type: str | None = None,
        client_time_ns: int | None = None,
    ) -> None:
        """Queues one event (see :class:`tally.Event`); never waits for the daemon.

        Raises ValueError/TypeError for an invalid event and EventTooLarge for
        one over the frame limit, here on the caller's thread.
        """
        event = _event(
            kind,
            actor,
            subject,
            attributes,
            payload,
            content_type,
            _time_ns() if client_time_ns is None else client_time_ns,
        )
        # _put, inlined: this is the hot path (calling it instead raised the
        # median log() from 1.7-2.6 to 2.5-3.0 us, quiet machine, 200k calls).
        n = len(event)
        field = b"\x0a" + (_VARINT[n] if n < _SMALL else _varint(n)) + event
        if n + _FIELD_AND_REQUEST_OVERHEAD > self._max_bytes:
            raise EventTooLarge(n + _FIELD_AND_REQUEST_OVERHEAD, self._max_bytes)
        if self._closing:
            raise TallyError(f"this BatchWriter is closed (last error: {self.last_error!r})")
        queue = self._queue
        if len(queue) >= self._queue_size:
            if self._drop:
                with self._lock:
                    self.dropped += 1
                return
            self._wait_for_space()
        queue.append(field)
        if self._sleeping:
            self._wake.set()

    def log_event(self, event: Event) -> None:
        """Queues an :class:`tally.Event`."""
        self._put(_event_field(event.encode()))

    def _put(self, field: bytes) -> None:
        """Queues one event in ``_encode.event_field`` form."""
        if len(field) + _encode.REQUEST_OVERHEAD > self._max_bytes:
            raise EventTooLarge(len(field) + _encode.REQUEST_OVERHEAD, self._max_bytes)
        if self._closing:
            raise TallyError(f"this BatchWriter is closed (last error: {self.last_error!r})")
        queue = self._queue
        if len(queue) >= self._queue_size:
            if self._drop:
                with self._lock:
                    self.dropped += 1
                return
            self._wait_for_space()
        queue.append(field)
        if self._sleeping:
            self._wake.set()

    def _wait_for_space(self) -> None:
        with self._space:
            self._space_waiters += 1
            try:
                while len(self._queue) >= self._queue_size and not self._closing:
                    self._space.wait(_BLOCK_POLL)
            finally:
                self._space_waiters -= 1

    def flush(self, timeout: float | None = None) -> None:
        """Returns once every event logged before the call is acked.

        Raises the first non-retryable error since the last flush (those
        events are not stored), and :class:`tally.errors.Timeout` if the
        daemon did not ack everything within ``timeout`` seconds.
        """
        if self._abandon:
            # After close() the writer thread is gone: nothing would ever ack.
            raise TallyError(f"this BatchWriter is closed (last error: {self.last_error!r})")
        marker = _Marker()
        self._queue.append(marker)
        self._wake.set()
        if not marker.done.wait(timeout):
            raise Timeout(f"flush: events still unacked after {timeout} s (last error: {self.last_error})")
        if marker.error is not None:
            raise marker.error

    def close(self, timeout: float | None = None) -> None:
        """Flushes (waiting up to ``timeout``), then stops the writer thread.

        Events still queued when the timeout expires are abandoned (counted
        in ``failed``) and Timeout is raised.
        """
        if self._closing:
            return
        atexit.unregister(self._at_exit)
        try:
            self.flush(timeout)
        finally:
            self._closing = True
            self._abandon = True
            self._wake.set()
            with self._space:
                self._space.notify_all()
            conn = self._conn
            if conn is not None:
                # Wakes the writer if it waits for an ack that will not come.
                conn.shutdown()
            self._thread.join()
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _at_exit(self) -> None:
        try:
            self.close(self.exit_timeout)
        except TallyError:
            # Nothing to raise to at exit; the events are counted in failed.
            pass

    @property
    def queued(self) -> int:
        """Events waiting in the queue (not yet taken into a batch)."""
        return sum(1 for item in list(self._queue) if type(item) is bytes)

    # -- the writer thread ------------------------------------------------

    def _run(self) -> None:
        state = _WriterState()
        try:
            self._loop(state)
        except Exception as err:  # a bug here must not leave flush() waiting forever
            self._closing = True
            self._fail([], err)
            self._abandon_rest(state)
            raise

    def _loop(self, st: _WriterState) -> None:
        """Takes batches, keeps up to ``window`` requests in flight, reads acks in order."""
        delay = _RETRY_MIN
        while True:
            self._fire_markers(st)
            if self._abandon:
                break
            if len(st.inflight) < self.window:
                if st.pending:
                    if self._send_next(st):
                        delay = _RETRY_MIN
                        continue
                    time.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX)
                    continue
                # While a request is in flight, another is sent only once half
                # a batch is waiting: the next ack would make it bigger anyway.
                if not st.inflight or len(self._queue) >= max(1, self._max_events // 2):
                    batch, markers = self._take_batch(block=not st.inflight)
                    if batch:
                        st.next_seq += 1
                        st.pending.append((st.next_seq, batch))
                        st.unfinished[st.next_seq] += 1
                    # A marker waits for every batch taken so far (its own too).
                    st.markers.extend((st.next_seq, m) for m in markers)
                    if batch or markers or not st.inflight:
                        continue
            if st.inflight:
                if not self._receive_next(st):
                    time.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX)
                else:
                    delay = _RETRY_MIN
        self._abandon_rest(st)

    def _fire_markers(self, st: _WriterState) -> None:
        """Sets the flush markers whose batches (and all before them) are done."""
        if not st.markers:
            return
        oldest = min(st.unfinished) if st.unfinished else st.next_seq + 1
        keep = []
        for seq, marker in st.markers:
            if seq < oldest:
                marker.error, self._unreported = self._unreported, None
                marker.done.set()
            else:
                keep.append((seq, marker))
        st.markers = keep

    def _finish(self, st: _WriterState, seq: int) -> None:
        st.unfinished[seq] -= 1
        if st.unfinished[seq] <= 0:
            del st.unfinished[seq]

    def _send_next(self, st: _WriterState) -> bool:
        """Sends the oldest pending batch; False (and everything requeued) on a broken connection."""
        seq, batch = st.pending[0]
        try:
            conn = self._connect()
            kept = self._refit(batch)
            if kept is not None:
                batch = kept
            parts = _split(batch, self._max_bytes, self._max_events) if batch else []
            st.pending.popleft()
            if not parts:  # every event of it was too large for the new limit
                self._finish(st, seq)
                return True
            st.unfinished[seq] += len(parts) - 1
            for part in reversed(parts[1:]):
                st.pending.appendleft((seq, part))
            request_id = conn.take_id()
            st.inflight.append((seq, parts[0], request_id))
            conn.send(_encode.append_frame_of_fields(request_id, parts[0]))
            return True
        except (TallyError, OSError) as err:
            self.last_error = err
            self._requeue(st)
            return False

    def _receive_next(self, st: _WriterState) -> bool:
        """Reads the ack of the oldest request in flight; False when the connection broke."""
        seq, part, request_id = st.inflight[0]
        conn = self._conn
        try:
            if conn is None:
                raise TallyError("no connection")
            acked = len(conn.recv(request_id).append.acks)
            if acked != len(part):
                raise TallyError(f"tallyd acked {acked} events of {len(part)}")
        except ProtocolError as err:
            self.last_error = err
            st.inflight.popleft()
            if err.code in RETRYABLE_CODES:
                # Sent again after the requests already in flight behind it:
                # with window > 1 its events may be stored after theirs.
                st.pending.appendleft((seq, part))
                return False
            self._fail(part, err)
            self._finish(st, seq)
            return True
        except (TallyError, OSError) as err:
            self.last_error = err
            self._requeue(st)
            return False
        st.inflight.popleft()
        self.acked += acked
        self.requests += 1
        self._finish(st, seq)
        return True

    def _requeue(self, st: _WriterState) -> None:
        """After a broken connection: everything in flight is sent again, in order."""
        for seq, part, _ in reversed(st.inflight):
            st.pending.appendleft((seq, part))
        st.inflight.clear()
        self._drop_connection()

    def _take_batch(self, block: bool = True) -> tuple[list[bytes], list[_Marker]]:
        """The next batch and the flush markers queued among its events.

        ``block``: wait for a first event and linger after it; otherwise take
        only what is queued now.
        """
        queue = self._queue
        batch: list[bytes] = []
        markers: list[_Marker] = []
        size = _encode.REQUEST_OVERHEAD
        max_bytes = self._max_bytes
        max_events = self._max_events
        deadline = 0.0
        hurry = False
        while True:
            try:
                item = queue.popleft()
            except IndexError:
                if markers and not batch:
                    break
                if self._closing or not block:
                    break
                if not batch:
                    self._sleep()
                    continue
                if hurry:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                time.sleep(min(remaining, _LINGER_POLL))
                continue
            if type(item) is not bytes:
                markers.append(item)
                hurry = True
                continue
            cost = len(item)
            if batch and (size + cost > max_bytes or len(batch) >= max_events):
                queue.appendleft(item)
                break
            if not batch:
                deadline = time.monotonic() + self.linger
            batch.append(item)
            size += cost
        if self._space_waiters:
            with self._space:
                self._space.notify_all()
        return batch, markers

    def _sleep(self) -> None:
        self._sleeping = True
        # Look again after raising the flag: a log() that appended before it
        # saw the flag down and did not wake us.
        if not self._queue and not self._closing:
            self._wake.wait()
        self._wake.clear()
        self._sleeping = False

    def _connect(self) -> Connection:
        if self._conn is None:
            conn = Connection(self.socket, self.timeout)
            self._max_bytes = min(self._user_max_bytes or conn.max_frame_bytes, conn.max_frame_bytes)
            self._max_events = min(self._user_max_events or BATCH_EVENTS, conn.max_events)
            self._conn = conn
        return self._conn

    def _refit(self, batch: list[bytes]) -> list[bytes] | None:
        """Fails the events the daemon's (possibly new, smaller) limit cannot carry."""
        limit = self._max_bytes - _encode.REQUEST_OVERHEAD
        if all(len(e) <= limit for e in batch):
            return None
        kept = []
        for e in batch:
            if len(e) <= limit:
                kept.append(e)
            else:
                self._fail([e], EventTooLarge(len(e) + _encode.REQUEST_OVERHEAD, self._max_bytes))
        return kept

    def _fail(self, events: list[bytes], err: BaseException) -> None:
        self.failed += len(events)
        self.last_error = err
        if self._unreported is None:
            self._unreported = err

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self.reconnects += 1

    def _abandon_rest(self, st: _WriterState) -> None:
        abandoned = sum(len(part) for _, part, _ in st.inflight) + sum(len(b) for _, b in st.pending)
        markers = [m for _, m in st.markers]
        while self._queue:
            item = self._queue.popleft()
            if type(item) is bytes:
                abandoned += 1
            else:
                markers.append(item)
        if abandoned:
            self._fail([b""] * abandoned, TallyError(f"BatchWriter closed with {abandoned} events unsent"))
        for marker in markers:
            marker.error = marker.error or self._unreported
            marker.done.set()


class _WriterState:
    """What the writer thread tracks between loop turns."""

    def __init__(self) -> None:
        # Batches to send (again), oldest first: (batch number, event fields).
        self.pending: collections.deque[tuple[int, list[bytes]]] = collections.deque()
        # Requests sent on the current connection, oldest first.
        self.inflight: collections.deque[tuple[int, list[bytes], int]] = collections.deque()
        # Requests not yet acked or failed, per batch number (a batch split
        # under a smaller limit counts once per part).
        self.unfinished: collections.Counter[int] = collections.Counter()
        # Flush markers and the number of the last batch each waits for.
        self.markers: list[tuple[int, _Marker]] = []
        self.next_seq = 0


def _split(batch: list[bytes], max_bytes: int, max_events: int) -> list[list[bytes]]:
    """``batch`` as requests under the limits (one request unless the limits shrank)."""
    return batches(batch, max_bytes, max_events, overhead=0)
