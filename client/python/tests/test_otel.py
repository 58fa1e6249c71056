"""tally.otel: a real opentelemetry-sdk TracerProvider and LoggerProvider
exporting to a real tallyd, read back with tally.Client (docs/EVENTS.md
section 7)."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest

import tally
from tally import events

otel_sdk = pytest.importorskip(
    "opentelemetry.sdk.trace", reason="opentelemetry-sdk is not installed: pip install 'tally-client[otel]'"
)

from opentelemetry import trace  # noqa: E402
from opentelemetry._logs import LogRecord, SeverityNumber  # noqa: E402
from opentelemetry.sdk._logs import LoggerProvider  # noqa: E402
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, Status, StatusCode  # noqa: E402

from tally.otel import TallyLogRecordExporter, TallySpanExporter  # noqa: E402

PROMPT = "PROMPT-d41d8: summarise the quarterly report"
COMPLETION = "COMPLETION-77ab: revenue grew"
RESOURCE = Resource.create({"service.name": "agent-runtime", "deployment.environment": "test"})


def stub_llm_call(tracer: trace.Tracer, prompt: str) -> str:
    """Pretends to be an instrumented agent: an invoke_agent span around a
    chat call (with its content as a span event) and a tool call, attributes
    per the GenAI semantic conventions."""
    with tracer.start_as_current_span("invoke_agent planner", kind=SpanKind.INTERNAL) as agent:
        agent.set_attribute("gen_ai.operation.name", "invoke_agent")
        agent.set_attribute("gen_ai.agent.name", "planner")
        agent.set_attribute("gen_ai.agent.id", "agent-7")
        agent.set_attribute("gen_ai.conversation.id", "conv-5")
        with tracer.start_as_current_span("chat llama-3-8b", kind=SpanKind.CLIENT) as chat:
            chat.set_attribute("gen_ai.operation.name", "chat")
            chat.set_attribute("gen_ai.provider.name", "vllm")
            chat.set_attribute("gen_ai.request.model", "llama-3-8b")
            chat.set_attribute("gen_ai.request.temperature", 0.2)
            chat.set_attribute("gen_ai.request.max_tokens", 256)
            messages = [{"role": "user", "parts": [{"type": "text", "content": prompt}]}]
            chat.set_attribute("gen_ai.input.messages", json.dumps(messages))
            chat.add_event("gen_ai.content.prompt", {"gen_ai.prompt": prompt})
            chat.set_attribute("gen_ai.response.model", "llama-3-8b-q4")
            chat.set_attribute("gen_ai.response.id", "chatcmpl-1")
            chat.set_attribute("gen_ai.usage.input_tokens", 812)
            chat.set_attribute("gen_ai.usage.output_tokens", 64)
            chat.set_attribute("gen_ai.response.finish_reasons", ("tool_calls",))
        with tracer.start_as_current_span("execute_tool get_weather", kind=SpanKind.INTERNAL) as tool:
            tool.set_attribute("gen_ai.operation.name", "execute_tool")
            tool.set_attribute("gen_ai.tool.name", "get_weather")
            tool.set_attribute("gen_ai.tool.call.id", "call-1")
            tool.set_attribute("gen_ai.tool.call.arguments", '{"city":"Oslo"}')
            tool.set_attribute("gen_ai.tool.call.result", COMPLETION)
        return COMPLETION


def read_all(socket: str) -> list[tally.Record]:
    return tally.Client(socket).read(0, 0)


def by_span_name(records: list[tally.Record]) -> dict[str, tally.Record]:
    return {r.attributes["otel.span.name"]: r for r in records if "otel.event.name" not in r.attributes}


def make_tracer(processor) -> tuple[TracerProvider, trace.Tracer]:
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(processor)
    return provider, provider.get_tracer("stub.instrumentation", "1.2.3")


def test_genai_spans_map_to_typed_events_with_links(daemon):
    provider, tracer = make_tracer(SimpleSpanProcessor(TallySpanExporter(daemon.socket)))
    assert stub_llm_call(tracer, PROMPT) == COMPLETION
    provider.shutdown()

    records = read_all(daemon.socket)
    # Span events come before their span; children end before their parent.
    assert [r.kind for r in records] == [
        "gen_ai.content.prompt",
        "gen_ai.chat",
        "gen_ai.execute_tool",
        "gen_ai.invoke_agent",
    ]
    spans = by_span_name(records)
    agent, chat, tool = spans["invoke_agent planner"], spans["chat llama-3-8b"], spans["execute_tool get_weather"]
    assert {r.actor for r in records} == {"agent-runtime"}
    assert (chat.subject, tool.subject, agent.subject) == ("llama-3-8b", "get_weather", "planner")

    a = chat.attributes
    assert a["gen_ai.usage.input_tokens"] == 812 and type(a["gen_ai.usage.input_tokens"]) is int
    assert a["gen_ai.usage.output_tokens"] == 64
    assert a["gen_ai.request.temperature"] == 0.2
    assert a["gen_ai.response.finish_reasons"] == ["tool_calls"]
    assert json.loads(a["gen_ai.input.messages"])[0]["parts"][0]["content"] == PROMPT
    assert a["otel.span.kind"] == "client"
    assert a["otel.scope.name"] == "stub.instrumentation" and a["otel.scope.version"] == "1.2.3"
    assert a["otel.resource.service.name"] == "agent-runtime"
    assert a["otel.resource.deployment.environment"] == "test"

    # One trace; the chat and tool spans are children of the agent span.
    trace_ids = {r.attributes["otel.trace_id"] for r in records}
    assert len(trace_ids) == 1 and len(trace_ids.pop()) == 32
    agent_id = agent.attributes["otel.span_id"]
    assert len(agent_id) == 16
    assert "otel.parent_span_id" not in agent.attributes
    assert chat.attributes["otel.parent_span_id"] == agent_id
    assert tool.attributes["otel.parent_span_id"] == agent_id

    # Times: client time is the end; the agent span encloses its children.
    for span in (agent, chat, tool):
        start, end = span.attributes["otel.start_time_unix_nano"], span.attributes["otel.end_time_unix_nano"]
        assert 0 < start <= end == span.client_time_ns
        assert span.attributes["otel.duration_ns"] == end - start
    assert agent.attributes["otel.start_time_unix_nano"] <= chat.attributes["otel.start_time_unix_nano"]
    assert agent.attributes["otel.end_time_unix_nano"] >= tool.attributes["otel.end_time_unix_nano"]

    # The span event: its own record, linked to the chat span.
    prompt_event = records[0]
    assert prompt_event.attributes["gen_ai.prompt"] == PROMPT
    assert prompt_event.attributes["otel.span_id"] == chat.attributes["otel.span_id"]
    assert prompt_event.subject == "llama-3-8b"
    assert chat.attributes["otel.start_time_unix_nano"] <= prompt_event.client_time_ns


def test_other_spans_map_generically_with_status_and_exceptions(daemon):
    provider, tracer = make_tracer(SimpleSpanProcessor(TallySpanExporter(daemon.socket, actor="batch-job")))
    with tracer.start_as_current_span("db.query", kind=SpanKind.CLIENT) as span:
        span.set_attribute("db.system", "sqlite")
        span.set_attribute("rows", 3)
        span.set_attribute("odd", ["a", None])  # the SDK allows None in arrays; Tally does not
        try:
            raise ValueError("disk on fire")
        except ValueError as error:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, "query failed"))
    provider.shutdown()

    exception, query = read_all(daemon.socket)
    assert query.kind == "otel.span"
    assert query.actor == "batch-job"
    assert query.subject == "db.query"
    assert query.attributes["rows"] == 3
    assert query.attributes["db.system"] == "sqlite"
    assert query.attributes["otel.status_code"] == "ERROR"
    assert query.attributes["otel.status_description"] == "query failed"
    assert query.attributes["odd"] == '["a",null]'
    assert query.attributes[events.JSON_KEYS] == ["odd"]
    assert exception.kind == "otel.exception"
    assert exception.attributes["exception.type"] == "ValueError"
    assert exception.attributes["exception.message"] == "disk on fire"
    assert "raise ValueError" in exception.attributes["exception.stacktrace"]


def test_batch_span_processor_delivers_every_span(daemon):
    provider, tracer = make_tracer(BatchSpanProcessor(TallySpanExporter(daemon.socket), schedule_delay_millis=50))
    for i in range(300):
        with tracer.start_as_current_span(f"step {i}") as span:
            span.set_attribute("i", i)
    assert provider.force_flush(30_000)
    provider.shutdown()
    records = read_all(daemon.socket)
    assert sorted(r.attributes["i"] for r in records) == list(range(300))
    assert {r.kind for r in records} == {"otel.span"}


def test_simple_processor_from_many_threads(daemon):
    # One exporter, one connection, spans ending on four threads at once.
    provider, tracer = make_tracer(SimpleSpanProcessor(TallySpanExporter(daemon.socket)))

    def work(thread: int) -> None:
        for i in range(25):
            with tracer.start_as_current_span(f"t{thread}") as span:
                span.set_attribute("i", i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    provider.shutdown()
    records = read_all(daemon.socket)
    for t in range(4):
        assert [r.attributes["i"] for r in records if r.subject == f"t{t}"] == list(range(25))


def test_digest_only_sends_no_content(daemon):
    provider, tracer = make_tracer(SimpleSpanProcessor(TallySpanExporter(daemon.socket, digest_only=True)))
    stub_llm_call(tracer, PROMPT)
    provider.shutdown()

    records = read_all(daemon.socket)
    assert len(records) == 4
    for record in records:
        assert PROMPT.encode() not in record.raw
        assert COMPLETION.encode() not in record.raw
    spans = by_span_name(records)
    chat, tool = spans["chat llama-3-8b"].attributes, spans["execute_tool get_weather"].attributes
    assert "gen_ai.input.messages" not in chat
    messages = json.dumps([{"role": "user", "parts": [{"type": "text", "content": PROMPT}]}])
    assert chat["gen_ai.input.messages.sha256"] == hashlib.sha256(messages.encode()).hexdigest()
    assert chat["gen_ai.input.messages.size"] == len(messages.encode())
    assert chat["gen_ai.usage.input_tokens"] == 812  # metadata is kept
    assert tool["gen_ai.tool.call.result.sha256"] == hashlib.sha256(COMPLETION.encode()).hexdigest()
    assert tool["gen_ai.tool.call.arguments.sha256"] == hashlib.sha256(b'{"city":"Oslo"}').hexdigest()
    prompt_event = records[0].attributes
    assert prompt_event["gen_ai.prompt.sha256"] == hashlib.sha256(PROMPT.encode()).hexdigest()


def finished_spans(count: int = 2):
    memory = InMemorySpanExporter()
    provider, tracer = make_tracer(SimpleSpanProcessor(memory))
    for i in range(count):
        with tracer.start_as_current_span(f"span {i}"):
            pass
    provider.shutdown()
    return memory.get_finished_spans()


def test_export_fails_when_the_daemon_is_down_and_recovers(daemon):
    spans = finished_spans()
    exporter = TallySpanExporter(daemon.socket, timeout=5.0, retry_for=0)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    daemon.terminate()
    assert exporter.export(spans) is SpanExportResult.FAILURE
    daemon.start()
    # The next export reconnects.
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert len(read_all(daemon.socket)) == 4
    exporter.shutdown()
    assert exporter.export(spans) is SpanExportResult.FAILURE
    assert exporter.force_flush()


def test_export_fails_with_no_daemon_once_retries_run_out(tmp_path):
    exporter = TallySpanExporter(str(tmp_path / "nobody.sock"), timeout=2.0, retry_for=0.3)
    started = time.monotonic()
    assert exporter.export(finished_spans()) is SpanExportResult.FAILURE
    # Attempts at 0, 0.05 and 0.15 s; the next (0.35 s) would be past 0.3.
    assert 0.1 <= time.monotonic() - started < 5.0


def test_export_retries_across_a_daemon_restart(daemon):
    spans = finished_spans()
    exporter = TallySpanExporter(daemon.socket, timeout=5.0, retry_for=20.0)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    daemon.terminate()
    restart = threading.Timer(0.5, daemon.start)
    restart.start()
    try:
        # Sent while the daemon is down: retried until it is back, then acked.
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        restart.join()
    assert [r.attributes["otel.span.name"] for r in read_all(daemon.socket)] == ["span 0", "span 1"] * 2


def test_an_event_over_the_frame_limit_fails_at_once(daemon):
    memory = InMemorySpanExporter()
    provider, tracer = make_tracer(SimpleSpanProcessor(memory))
    with tracer.start_as_current_span("huge") as span:
        span.set_attribute("blob", "x" * (5 << 20))  # over the 4 MiB frame limit
    provider.shutdown()
    exporter = TallySpanExporter(daemon.socket, retry_for=30.0)
    started = time.monotonic()
    assert exporter.export(memory.get_finished_spans()) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 10.0  # not retryable: no 30 s of retries
    assert tally.Client(daemon.socket).status().size == 0
    assert exporter.export(finished_spans(1)) is SpanExportResult.SUCCESS  # the exporter still works


def test_shutdown_cuts_a_retry_short(tmp_path):
    exporter = TallySpanExporter(str(tmp_path / "nobody.sock"), timeout=2.0, retry_for=60.0)
    threading.Timer(0.3, exporter.shutdown).start()
    started = time.monotonic()
    assert exporter.export(finished_spans()) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 10.0


def test_log_records_map_to_events(daemon):
    provider = LoggerProvider(resource=RESOURCE)
    provider.add_log_record_processor(SimpleLogRecordProcessor(TallyLogRecordExporter(daemon.socket)))
    logger = provider.get_logger("stub.logs", "0.1")
    _, tracer = make_tracer(SimpleSpanProcessor(InMemorySpanExporter()))
    with tracer.start_as_current_span("around") as span:
        logger.emit(
            LogRecord(
                event_name="gen_ai.client.inference.operation.details",
                severity_number=SeverityNumber.INFO,
                severity_text="INFO",
                body={"answer": COMPLETION, "n": 1},
                attributes={"gen_ai.request.model": "llama-3-8b", "gen_ai.usage.input_tokens": 812},
            )
        )
        span_id = f"{span.get_span_context().span_id:016x}"
    logger.emit(LogRecord(severity_number=SeverityNumber.WARN, body="plain text", attributes={"m": {"k": [1]}}))
    logger.emit(LogRecord(event_name="tally.access_denied", body=b"\x00\x01"))
    provider.shutdown()

    details, plain, reserved = read_all(daemon.socket)
    assert details.kind == "gen_ai.client.inference.operation.details"
    assert details.actor == "agent-runtime"
    assert details.subject == "llama-3-8b"
    assert details.content_type == "application/json"
    assert json.loads(details.payload) == {"answer": COMPLETION, "n": 1}
    assert details.attributes["gen_ai.usage.input_tokens"] == 812
    assert details.attributes["otel.severity_number"] == 9
    assert details.attributes["otel.severity_text"] == "INFO"
    assert details.attributes["otel.span_id"] == span_id
    assert details.attributes["otel.scope.name"] == "stub.logs"
    assert plain.kind == "otel.log"
    assert plain.payload == b"plain text"
    assert plain.content_type.startswith("text/plain")
    assert plain.attributes["otel.severity_number"] == 13
    assert json.loads(plain.attributes["m"]) == {"k": [1]}
    assert plain.attributes[events.JSON_KEYS] == ["m"]
    assert "otel.span_id" not in plain.attributes
    # A reserved kind is never produced from an OTel name.
    assert reserved.kind == "otel.log"
    assert reserved.attributes["otel.event.name"] == "tally.access_denied"
    assert reserved.payload == b"\x00\x01"
    assert reserved.content_type == "application/octet-stream"


def test_log_exporter_digest_only_and_failure(daemon, tmp_path):
    provider = LoggerProvider(resource=RESOURCE)
    provider.add_log_record_processor(SimpleLogRecordProcessor(TallyLogRecordExporter(daemon.socket, digest_only=True)))
    # A structured content attribute (OTel log attributes may hold maps) and a
    # map body: stored as canonical JSON, hashed as such, so the holder of
    # the structure checks the digest with sha256_hex.
    messages = [{"role": "user", "parts": [{"type": "text", "content": PROMPT}]}]
    body = {"output": COMPLETION, "index": 0}
    logger = provider.get_logger("stub.logs")
    logger.emit(LogRecord(body=PROMPT))
    attributes = {"gen_ai.input.messages": messages}
    logger.emit(LogRecord(event_name="gen_ai.client.inference.operation.details", body=body, attributes=attributes))
    provider.shutdown()
    text, details = read_all(daemon.socket)
    for record in (text, details):
        assert PROMPT.encode() not in record.raw and COMPLETION.encode() not in record.raw
        assert record.payload == b""
    assert text.attributes["tally.payload.sha256"] == hashlib.sha256(PROMPT.encode()).hexdigest()
    assert details.attributes["gen_ai.input.messages.sha256"] == events.sha256_hex(messages)
    assert details.attributes["tally.payload.sha256"] == events.sha256_hex(body)
    assert details.content_type == "application/json"
    assert events.JSON_KEYS not in details.attributes  # the JSON-encoded key was hashed away

    down = TallyLogRecordExporter(str(tmp_path / "nobody.sock"), timeout=2.0, retry_for=0)
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter

    memory = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=RESOURCE)
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    provider.get_logger("x").emit(LogRecord(body="hello"))
    result = down.export(memory.get_finished_logs())
    assert result.name == "FAILURE"


def test_batch_log_record_processor_delivers_every_record(daemon):
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    provider = LoggerProvider(resource=RESOURCE)
    provider.add_log_record_processor(
        BatchLogRecordProcessor(TallyLogRecordExporter(daemon.socket), schedule_delay_millis=50)
    )
    logger = provider.get_logger("stub.logs")
    for i in range(200):
        logger.emit(LogRecord(body=f"line {i}", attributes={"i": i}))
    assert provider.force_flush(30_000)
    provider.shutdown()
    assert sorted(r.attributes["i"] for r in read_all(daemon.socket)) == list(range(200))


def test_a_missing_sdk_names_the_extra(monkeypatch):
    import importlib
    import sys

    monkeypatch.delitem(sys.modules, "tally.otel")
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # import fails
    with pytest.raises(ImportError, match=r"pip install 'tally-client\[otel\]'"):
        importlib.import_module("tally.otel")


# The SDK's bridge is deprecated in favour of opentelemetry-instrumentation-logging
# (same records); it is what existing deployments run.
@pytest.mark.filterwarnings("ignore:.*LoggingHandler.*:DeprecationWarning")
def test_stdlib_logging_through_the_sdks_logging_handler(daemon):
    import logging

    from opentelemetry.sdk._logs import LoggingHandler

    provider = LoggerProvider(resource=RESOURCE)
    provider.add_log_record_processor(SimpleLogRecordProcessor(TallyLogRecordExporter(daemon.socket)))
    logger = logging.getLogger("test.otel.bridge")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = LoggingHandler(logger_provider=provider)
    logger.addHandler(handler)
    try:
        try:
            raise KeyError("model-9")
        except KeyError:
            logger.exception("lookup %s failed", "model-9")
    finally:
        logger.removeHandler(handler)
        provider.shutdown()
    (record,) = read_all(daemon.socket)
    assert record.kind == "otel.log"
    assert record.actor == "agent-runtime"
    assert record.payload == b"lookup model-9 failed"
    assert record.attributes["otel.severity_text"] == "ERROR"
    assert record.attributes["exception.type"] == "KeyError"
    assert "raise KeyError" in record.attributes["exception.stacktrace"]


@pytest.mark.filterwarnings("ignore:.*LoggingHandler.*:DeprecationWarning")
def test_the_exporters_own_warning_through_an_otel_logging_bridge_does_not_deadlock(tmp_path):
    # A common setup: every Python log goes through the SDK's LoggingHandler to
    # this exporter. With the daemon gone, the exporter's warning is itself a
    # log record that reaches the same exporter, on the same thread, inside
    # its export.
    import logging

    from opentelemetry.sdk._logs import LoggingHandler

    provider = LoggerProvider(resource=RESOURCE)
    exporter = TallyLogRecordExporter(str(tmp_path / "nobody.sock"), timeout=2.0, retry_for=0)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    bridge = LoggingHandler(logger_provider=provider)
    own = logging.getLogger("tally.otel")
    own.addHandler(bridge)
    done = threading.Event()

    def emit() -> None:
        provider.get_logger("app").emit(LogRecord(body="hello"))
        done.set()

    worker = threading.Thread(target=emit, daemon=True)
    try:
        worker.start()
        assert done.wait(20.0), "export deadlocked on its own warning"
    finally:
        own.removeHandler(bridge)
