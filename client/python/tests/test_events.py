"""tally.events: the schema's constructors and the digest-only form, stored by
a real tallyd and read back (docs/EVENTS.md sections 2-6)."""

from __future__ import annotations

import hashlib
import json

import pytest

import tally
from tally import events


def read_all(socket: str) -> list[tally.Record]:
    return tally.Client(socket).read(0, 0)


def test_attribute_value_keeps_typed_values_and_json_encodes_the_rest():
    assert events.attribute_value("a") == ("a", False)
    assert events.attribute_value(812) == (812, False)
    assert events.attribute_value(True) == (True, False)
    assert events.attribute_value(0.5) == (0.5, False)
    assert events.attribute_value(bytearray(b"\x00")) == (b"\x00", False)
    assert events.attribute_value(("stop", "length")) == (["stop", "length"], False)
    assert events.attribute_value([]) == ([], False)
    # What Tally has no typed form for becomes JSON text.
    assert events.attribute_value(None) == ("null", True)
    assert events.attribute_value({"b": 1, "a": [1, 2]}) == ('{"a":[1,2],"b":1}', True)  # canonical
    assert events.attribute_value([1, "a", None]) == ('[1,"a",null]', True)
    assert events.attribute_value([1, 2.5]) == ("[1,2.5]", True)
    assert events.attribute_value([[1], [2]]) == ("[[1],[2]]", True)
    assert events.attribute_value(1 << 64) == (str(1 << 64), True)
    assert events.attribute_value(-(1 << 63)) == (-(1 << 63), False)
    assert events.attribute_value({"raw": b"\x01\x02"}) == ('{"raw":"AQI="}', True)


def test_content_bytes_are_what_the_schema_says():
    assert events.content_bytes("héllo") == "héllo".encode()
    assert events.content_bytes(b"\xff") == b"\xff"
    # Structures: canonical JSON (sorted keys, no spaces, UTF-8).
    assert events.content_bytes({"b": "é", "a": [1, None]}) == '{"a":[1,null],"b":"é"}'.encode()
    assert events.sha256_hex("abc") == hashlib.sha256(b"abc").hexdigest()
    assert events.digest_only("abc", "gen_ai.input.messages") == {
        "gen_ai.input.messages.sha256": hashlib.sha256(b"abc").hexdigest(),
        "gen_ai.input.messages.size": 3,
    }


def test_content_keys():
    assert events.is_content_key("gen_ai.input.messages")
    assert events.is_content_key("gen_ai.prompt.0.content")
    assert not events.is_content_key("gen_ai.prompt.0.role")
    assert not events.is_content_key("gen_ai.request.model")
    assert events.is_content_key("my.notes", extra={"my.notes"})


def test_every_kind_round_trips_with_typed_attributes(daemon):
    built = [
        events.model_call(
            "llama-3-8b",
            provider="vllm",
            actor="inference-1",
            response_model="llama-3-8b-q4",
            input_tokens=812,
            output_tokens=64,
            finish_reasons=["stop"],
            conversation_id="conv-5",
            attributes={"gen_ai.request.temperature": 0.2},
        ),
        events.model_call("bge-small", operation="embeddings", input_tokens=9),
        events.tool_call("get_weather", call_id="call-1", arguments={"city": "Oslo"}, result="4 C"),
        events.agent_step("planner", agent_id="agent-7", conversation_id="conv-5"),
        events.agent_step("planner", operation="create_agent"),
        events.model_load("llama-3-8b", source="/models/llama.gguf", sha256="ab" * 32, size_bytes=4_000_000_000),
        events.dataset_read("wiki-2026", records=1000, purpose="retrieval"),
        events.policy_decision("no-shell", "deny", subject="req-1", action="tool:shell", actor="guard"),
        events.access_denied("/models/secret", actor="user-9", action="model.load", policy="acl"),
    ]
    acks = tally.Client(daemon.socket).append_many(built)
    assert [a.seq for a in acks] == list(range(len(built)))
    records = read_all(daemon.socket)
    assert [r.kind for r in records] == [
        "gen_ai.chat",
        "gen_ai.embeddings",
        "gen_ai.execute_tool",
        "gen_ai.invoke_agent",
        "gen_ai.create_agent",
        "model.load",
        "dataset.read",
        "policy.decision",
        "access.denied",
    ]
    assert [r.subject for r in records] == [
        "llama-3-8b",
        "bge-small",
        "get_weather",
        "planner",
        "planner",
        "llama-3-8b",
        "wiki-2026",
        "req-1",
        "/models/secret",
    ]
    chat = records[0].attributes
    assert records[0].actor == "inference-1"
    assert chat["gen_ai.usage.input_tokens"] == 812 and type(chat["gen_ai.usage.input_tokens"]) is int
    assert chat["gen_ai.response.finish_reasons"] == ["stop"]
    assert chat["gen_ai.request.temperature"] == 0.2
    assert chat["gen_ai.operation.name"] == "chat"
    assert chat["gen_ai.provider.name"] == "vllm"
    # A None argument records nothing.
    assert "gen_ai.response.id" not in chat
    tool = records[2].attributes
    assert tool["gen_ai.tool.call.id"] == "call-1"
    assert json.loads(tool["gen_ai.tool.call.arguments"]) == {"city": "Oslo"}
    assert tool["gen_ai.tool.call.result"] == "4 C"
    assert records[5].attributes["model.size_bytes"] == 4_000_000_000
    assert records[6].attributes["dataset.records"] == 1000
    assert records[7].attributes["policy.decision"] == "deny"
    assert records[7].actor == "guard"
    assert records[8].actor == "user-9"


def test_values_without_a_typed_form_are_json_text_listed_in_json_keys(daemon):
    event = events.policy_decision(
        "p", "allow", subject="s", attributes={"ctx": {"user": "u", "n": 2}, "maybe": None, "mixed": [1, "a"]}
    )
    tally.Client(daemon.socket).append_many([event])
    (record,) = read_all(daemon.socket)
    attributes = record.attributes
    assert sorted(attributes[events.JSON_KEYS]) == ["ctx", "maybe", "mixed"]
    assert json.loads(attributes["ctx"]) == {"user": "u", "n": 2}
    assert json.loads(attributes["maybe"]) is None
    assert json.loads(attributes["mixed"]) == [1, "a"]


def test_digest_only_stores_no_content_and_the_digests_match(daemon):
    secret = "SECRET-PROMPT-7f3a: what is the launch code?"
    answer = "SECRET-ANSWER-91c2"
    messages = [{"role": "user", "parts": [{"type": "text", "content": secret}]}]
    call = events.model_call(
        "llama-3-8b", input_tokens=12, input_messages=messages, output_messages=answer, digest_only=True
    )
    note = tally.Event("note", payload=f"payload {secret}", content_type="text/plain")
    tally.Client(daemon.socket).append_many([call, events.to_digest_only(note)])
    records = read_all(daemon.socket)
    for record in records:
        assert secret.encode() not in record.raw
        assert answer.encode() not in record.raw
    chat, stored_note = records[0].attributes, records[1]
    assert "gen_ai.input.messages" not in chat and "gen_ai.output.messages" not in chat
    # The holder of the content recomputes the digests, from the structure or
    # from its canonical JSON text (sorted keys, no spaces).
    canonical = '[{"parts":[{"content":"' + secret + '","type":"text"}],"role":"user"}]'
    assert chat["gen_ai.input.messages.sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert chat["gen_ai.input.messages.sha256"] == events.sha256_hex(messages)
    assert chat["gen_ai.input.messages.size"] == len(canonical.encode())
    assert chat["gen_ai.output.messages.sha256"] == hashlib.sha256(answer.encode()).hexdigest()
    assert chat["gen_ai.usage.input_tokens"] == 12
    assert stored_note.payload == b""
    assert stored_note.content_type == "text/plain"
    assert stored_note.attributes["tally.payload.sha256"] == hashlib.sha256(f"payload {secret}".encode()).hexdigest()
    assert stored_note.attributes["tally.payload.size"] == len(f"payload {secret}".encode())


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        events.model_call("m", operation="")
    with pytest.raises(ValueError):
        events.agent_step("a", operation="chat")
