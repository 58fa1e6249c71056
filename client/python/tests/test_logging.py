"""tally.logging.TallyHandler with the stdlib logging module, writing to a real
tallyd (docs/EVENTS.md section 8)."""

from __future__ import annotations

import hashlib
import json
import logging
import time

import pytest

import tally
from tally import events
from tally.logging import TallyHandler


@pytest.fixture
def logger():
    log = logging.getLogger(f"test.app.{time.monotonic_ns()}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


def read_all(socket: str) -> list[tally.Record]:
    return tally.Client(socket).read(0, 0)


def test_levels_attributes_extra_and_exc_info(daemon, logger):
    handler = TallyHandler(daemon.socket, actor="svc-1")
    logger.addHandler(handler)
    logger.debug("debug %d", 1)
    logger.info("model %s loaded", "llama-3-8b", extra={"request_id": "r-1", "tokens": 812, "tags": ["a", "b"]})
    logger.warning("odd extra", extra={"ctx": {"user": "u"}, "nothing": None})
    try:
        1 / 0  # noqa: B018 - the point is the exception
    except ZeroDivisionError:
        logger.exception("division failed")
    handler.flush()

    debug, info, warning, error = read_all(daemon.socket)
    assert [r.kind for r in (debug, info, warning, error)] == ["log.debug", "log.info", "log.warning", "log.error"]
    assert {r.actor for r in (debug, info, warning, error)} == {"svc-1"}
    assert debug.payload == b"debug 1"
    assert info.payload == b"model llama-3-8b loaded"
    assert info.content_type == "text/plain; charset=utf-8"
    a = info.attributes
    assert a["log.logger"] == logger.name
    assert a["log.level"] == "INFO"
    assert a["log.level_number"] == 20 and type(a["log.level_number"]) is int
    assert a["code.function.name"] == "test_levels_attributes_extra_and_exc_info"
    assert a["code.file.path"] == __file__
    assert type(a["code.line.number"]) is int and a["code.line.number"] > 0
    assert a["code.module"] == "test_logging"
    assert type(a["thread.id"]) is int and a["thread.name"] == "MainThread"
    assert "process.pid" not in a  # the daemon has the kernel's
    assert info.peer["pid"] > 0
    # extra fields: typed when they can be, JSON text when not.
    assert a["request_id"] == "r-1"
    assert a["tokens"] == 812
    assert a["tags"] == ["a", "b"]
    assert events.JSON_KEYS not in a
    w = warning.attributes
    assert json.loads(w["ctx"]) == {"user": "u"}
    assert w["nothing"] == "null"
    assert sorted(w[events.JSON_KEYS]) == ["ctx", "nothing"]
    # exc_info: the traceback is in the payload, the exception in attributes.
    text = error.payload.decode()
    assert text.startswith("division failed\nTraceback (most recent call last):")
    assert "ZeroDivisionError: division by zero" in text
    assert error.attributes["exception.type"] == "ZeroDivisionError"
    assert error.attributes["exception.message"] == "division by zero"
    assert "exception.type" not in info.attributes


def test_level_filter_and_custom_kind(daemon, logger):
    handler = TallyHandler(daemon.socket, kind="app.audit", level=logging.INFO)
    logger.addHandler(handler)
    logger.debug("filtered out")
    logger.info("kept")
    by_level = TallyHandler(daemon.socket, kind=lambda record: f"audit.{record.name.rsplit('.', 1)[-1]}")
    logger.addHandler(by_level)
    logger.warning("both")
    handler.flush()
    by_level.flush()
    records = read_all(daemon.socket)
    assert sorted((r.kind, r.payload) for r in records) == sorted(
        [
            ("app.audit", b"kept"),
            ("app.audit", b"both"),
            (f"audit.{logger.name.rsplit('.', 1)[-1]}", b"both"),
        ]
    )


def test_a_formatter_shapes_the_payload(daemon, logger):
    handler = TallyHandler(daemon.socket)
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    logger.addHandler(handler)
    logger.error("boom")
    handler.flush()
    (record,) = read_all(daemon.socket)
    assert record.payload == b"[ERROR] boom"


def test_digest_only_sends_no_message(daemon, logger):
    secret = "SECRET-LOG-5e1f user asked about salaries"
    handler = TallyHandler(daemon.socket, digest_only=True)
    logger.addHandler(handler)
    logger.info(secret)
    handler.flush()
    (record,) = read_all(daemon.socket)
    assert secret.encode() not in record.raw
    assert record.payload == b""
    assert record.attributes["tally.payload.sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert record.attributes["tally.payload.size"] == len(secret.encode())
    assert record.attributes["log.level"] == "INFO"


def test_the_clients_own_loggers_are_not_sent(daemon):
    handler = TallyHandler(daemon.socket)
    own = logging.getLogger("tally.otel")
    own.addHandler(handler)
    try:
        own.warning("about the daemon")
        handler.flush()
    finally:
        own.removeHandler(handler)
        handler.close()
    assert tally.Client(daemon.socket).status().size == 0


def test_logging_never_waits_for_a_stalled_daemon(daemon, logger):
    handler = TallyHandler(daemon.socket)
    logger.addHandler(handler)
    logger.info("connect first")
    handler.flush()
    daemon.pause()  # SIGSTOP: connections hang, nothing is acked
    try:
        started = time.monotonic()
        for i in range(1000):
            logger.info("event %d", i)
        elapsed = time.monotonic() - started
    finally:
        daemon.resume()
    # Each call only enqueues. The bound is loose (a loaded machine); a call
    # that waited for the stopped daemon would block for the client's 30 s
    # timeout.
    assert elapsed < 5.0
    handler.flush()
    assert len(read_all(daemon.socket)) == 1001
    assert handler.dropped == 0


def test_flush_gives_up_without_a_daemon_and_does_not_raise(tmp_path, logger):
    handler = TallyHandler(str(tmp_path / "nobody.sock"), flush_timeout=0.2)
    logger.addHandler(handler)
    logger.info("nobody listens")
    started = time.monotonic()
    handler.flush()
    assert time.monotonic() - started < 5.0
    assert isinstance(handler.last_error, tally.TallyError)
    assert handler.writer.acked == 0


def test_close_flushes_everything(daemon, logger):
    handler = TallyHandler(daemon.socket)
    logger.addHandler(handler)
    for i in range(500):
        logger.info("n=%d", i, extra={"n": i})
    logger.removeHandler(handler)
    handler.close()
    records = read_all(daemon.socket)
    assert [r.attributes["n"] for r in records] == list(range(500))
    # logging.shutdown() flushes closed handlers too: that must not wait on
    # the closed writer (it would, for flush_timeout, and report an error).
    started = time.monotonic()
    handler.flush()
    assert time.monotonic() - started < 1.0
    assert handler.last_error is None


def test_a_shared_writer_is_flushed_not_closed(daemon, logger):
    writer = tally.BatchWriter(daemon.socket)
    first, second = TallyHandler(writer=writer, kind="a"), TallyHandler(writer=writer, kind="b")
    logger.addHandler(first)
    logger.addHandler(second)
    logger.info("x")
    logger.removeHandler(first)
    first.close()  # flushes the shared writer
    assert [r.kind for r in read_all(daemon.socket)] == ["a", "b"]
    first.flush()  # after close: returns at once
    logger.info("y")  # the writer still works for the other handler
    logger.removeHandler(second)
    second.close()
    writer.close()
    assert [r.kind for r in read_all(daemon.socket)] == ["a", "b", "b"]
