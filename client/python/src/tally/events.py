"""Constructors for the event schema of docs/EVENTS.md, and its digest-only form.

Each constructor returns a :class:`tally.Event` whose kind, actor, subject and
attribute names follow docs/EVENTS.md (OpenTelemetry GenAI names where they
exist), so an event built here and one exported from an OpenTelemetry span
read the same::

    client.append_many([events.model_call("llama-3-8b", input_tokens=812)])

The value helpers (:func:`attribute_value`, :func:`attributes_from`) are the one
place that decides what happens to a value Tally cannot hold as a typed
attribute (None, a dict, a mixed or nested list, an int beyond 64 bits): it is
stored as its JSON text and its key is listed in ``tally.json_keys``. The
logging handler and the OpenTelemetry exporters use them too.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from . import Event

__all__ = [
    "CONTENT_KEYS",
    "JSON_KEYS",
    "PAYLOAD_DIGEST",
    "access_denied",
    "agent_step",
    "attribute_value",
    "attributes_from",
    "content_bytes",
    "dataset_read",
    "digest_only",
    "is_content_key",
    "json_text",
    "model_call",
    "model_load",
    "policy_decision",
    "sha256_hex",
    "to_digest_only",
    "tool_call",
]

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1

#: Attribute listing the keys whose value is JSON text made by the client
#: (the original value had no typed form in Tally).
JSON_KEYS = "tally.json_keys"

#: The name the digest-only form uses for the payload: ``tally.payload.sha256``
#: and ``tally.payload.size``.
PAYLOAD_DIGEST = "tally.payload"

#: Attributes that carry content (prompts, completions, tool arguments and
#: results): hashed, not stored, in digest-only mode. OpenTelemetry GenAI names,
#: current and deprecated, and OpenInference's input/output values.
CONTENT_KEYS = frozenset(
    {
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.system_instructions",
        "gen_ai.tool.call.arguments",
        "gen_ai.tool.call.result",
        "gen_ai.prompt",
        "gen_ai.completion",
        "input.value",
        "output.value",
    }
)

# Indexed forms (OpenLLMetry's gen_ai.prompt.0.content, OpenInference's
# llm.input_messages.0.message.content): every key under these prefixes is
# content except a message's role.
_CONTENT_PREFIXES = (
    "gen_ai.prompt.",
    "gen_ai.completion.",
    "llm.input_messages.",
    "llm.output_messages.",
)


def is_content_key(key: str, extra: Iterable[str] = ()) -> bool:
    """Whether digest-only mode hashes this attribute instead of storing it."""
    if key in CONTENT_KEYS or key in extra:
        return True
    return key.startswith(_CONTENT_PREFIXES) and not key.endswith(".role")


def _json_default(value: Any) -> Any:
    # bytes inside a structure: base64 text (JSON has no bytes); anything else
    # (a datetime, an enum): its str().
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


def json_text(value: Any) -> str:
    """Canonical JSON text: keys sorted, no spaces, non-ASCII as is, bytes
    inside as base64. Every JSON text the writers make is this one, so the
    digest of a stored JSON text is the digest of the structure it came from
    (:func:`content_bytes`)."""
    return json.dumps(
        value,
        ensure_ascii=False,
        separators=(",", ":"),
        sort_keys=True,
        default=_json_default,
        allow_nan=True,
    )


def _scalar_kind(value: Any) -> type | None:
    """The typed kind a scalar has in Tally, or None if it has none."""
    if isinstance(value, bool):
        return bool
    if isinstance(value, int):
        return int if _INT64_MIN <= value <= _INT64_MAX else None
    if isinstance(value, float):
        return float
    if isinstance(value, str):
        return str
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes
    return None


def attribute_value(value: Any) -> tuple[Any, bool]:
    """``(value, as_json)``: the value as a Tally attribute value.

    str, bool, int (64-bit), float and bytes stay as they are; a list or tuple
    of one of those kinds (no None) becomes a list. Anything else becomes its
    JSON text, and ``as_json`` is True.
    """
    kind = _scalar_kind(value)
    if kind is bytes:
        return bytes(value), False
    if kind is not None:
        return value, False
    if isinstance(value, (list, tuple)):
        kinds = {_scalar_kind(element) for element in value}
        if len(kinds) <= 1 and None not in kinds:
            if kinds == {bytes}:
                return [bytes(element) for element in value], False
            return list(value), False
    return json_text(value), True


def attributes_from(values: Mapping[str, Any] | None, into: dict[str, Any] | None = None) -> dict[str, Any]:
    """Converts every value with :func:`attribute_value` into ``into`` (a new
    dict by default), extending ``tally.json_keys`` with the converted keys.
    Empty keys are skipped (Tally refuses them)."""
    out = {} if into is None else into
    json_keys = list(out.get(JSON_KEYS, []))
    for key, raw in (values or {}).items():
        if not isinstance(key, str) or not key:
            continue
        value, as_json = attribute_value(raw)
        out[key] = value
        if as_json and key not in json_keys:
            json_keys.append(key)
    if json_keys:
        out[JSON_KEYS] = json_keys
    return out


def content_bytes(content: Any) -> bytes:
    """The exact bytes the digest-only form hashes for a value: a str's UTF-8,
    bytes as they are, anything else (a list, a dict, a number) its canonical
    JSON text (sorted keys, no spaces, UTF-8)."""
    if isinstance(content, str):
        return content.encode("utf-8")
    if isinstance(content, (bytes, bytearray, memoryview)):
        return bytes(content)
    return json_text(content).encode("utf-8")


def sha256_hex(content: Any) -> str:
    """Lowercase hex SHA-256 of :func:`content_bytes`."""
    return hashlib.sha256(content_bytes(content)).hexdigest()


def digest_only(content: Any, key: str = PAYLOAD_DIGEST) -> dict[str, Any]:
    """The attributes that stand for ``content`` in digest-only mode:
    ``<key>.sha256`` (hex) and ``<key>.size`` (bytes hashed). ``key`` is the
    content attribute's name, or ``tally.payload`` for the payload."""
    data = content_bytes(content)
    return {
        f"{key}.sha256": hashlib.sha256(data).hexdigest(),
        f"{key}.size": len(data),
    }


def _digest_attributes(attributes: Mapping[str, Any], extra: Iterable[str]) -> dict[str, Any]:
    extra = frozenset(extra)
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if key != JSON_KEYS and is_content_key(key, extra):
            out.update(digest_only(value, key))
        else:
            out[key] = value
    json_keys = [key for key in out.get(JSON_KEYS, []) if key in out]
    if json_keys:
        out[JSON_KEYS] = json_keys
    else:
        out.pop(JSON_KEYS, None)
    return out


def to_digest_only(event: Event, content_keys: Iterable[str] = ()) -> Event:
    """A copy of ``event`` in the digest-only form: each content attribute
    (:func:`is_content_key`, plus ``content_keys``) replaced by its digest
    attributes, and a non-empty payload replaced by ``tally.payload.sha256``
    and ``tally.payload.size`` (the content type is kept: it says what was
    hashed)."""
    attributes = _digest_attributes(event.attributes or {}, content_keys)
    payload = event.payload
    if payload:
        # A str payload is sent as its UTF-8: content_bytes hashes the same.
        attributes.update(digest_only(payload))
        payload = None
    return Event(
        event.kind,
        actor=event.actor,
        subject=event.subject,
        attributes=attributes,
        payload=payload,
        content_type=event.content_type,
        client_time_ns=event.client_time_ns,
    )


def _event(
    kind: str,
    *,
    actor: str,
    subject: str,
    fields: Mapping[str, Any],
    attributes: Mapping[str, Any] | None,
    payload: bytes | str | None = None,
    content_type: str = "",
    client_time_ns: int | None = None,
    digest: bool = False,
) -> Event:
    # Fields left as None are not recorded; the caller's own attributes come
    # last and win.
    merged = attributes_from({key: value for key, value in fields.items() if value is not None})
    attributes_from(attributes, merged)
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
        content_type = content_type or "text/plain; charset=utf-8"
    event = Event(
        kind,
        actor=actor,
        subject=subject,
        attributes=merged,
        payload=payload or None,
        content_type=content_type,
        client_time_ns=client_time_ns,
    )
    return to_digest_only(event) if digest else event


def _messages(value: Any) -> Any:
    # Messages may be given as structures (OTel's message schema); they are
    # stored as JSON text, as Python instrumentations record them; canonical
    # JSON, so that in digest-only mode the digest of the stored text is
    # sha256_hex() of the structure too: a holder of either can check.
    if value is None or isinstance(value, str):
        return value
    return json_text(value)


def model_call(
    model: str,
    *,
    operation: str = "chat",
    provider: str | None = None,
    actor: str = "",
    response_model: str | None = None,
    response_id: str | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    finish_reasons: list[str] | None = None,
    conversation_id: str | None = None,
    input_messages: Any = None,
    output_messages: Any = None,
    system_instructions: Any = None,
    attributes: Mapping[str, Any] | None = None,
    client_time_ns: int | None = None,
    digest_only: bool = False,
) -> Event:
    """A model call (``gen_ai.chat``, ``gen_ai.text_completion``,
    ``gen_ai.embeddings``, ...): kind ``gen_ai.<operation>``, subject the model.
    Messages (str, or structures stored as JSON text) are content: with
    ``digest_only=True`` only their digests are recorded."""
    if not operation:
        raise ValueError("operation must not be empty")
    fields = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        "gen_ai.response.model": response_model,
        "gen_ai.response.id": response_id,
        "gen_ai.usage.input_tokens": input_tokens,
        "gen_ai.usage.output_tokens": output_tokens,
        "gen_ai.response.finish_reasons": finish_reasons,
        "gen_ai.conversation.id": conversation_id,
        "gen_ai.input.messages": _messages(input_messages),
        "gen_ai.output.messages": _messages(output_messages),
        "gen_ai.system_instructions": _messages(system_instructions),
    }
    return _event(
        f"gen_ai.{operation}",
        actor=actor,
        subject=model,
        fields=fields,
        attributes=attributes,
        client_time_ns=client_time_ns,
        digest=digest_only,
    )


def tool_call(
    tool: str,
    *,
    call_id: str | None = None,
    tool_type: str | None = None,
    actor: str = "",
    arguments: Any = None,
    result: Any = None,
    conversation_id: str | None = None,
    error_type: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    client_time_ns: int | None = None,
    digest_only: bool = False,
) -> Event:
    """A tool call (``gen_ai.execute_tool``), subject the tool's name.
    Arguments and result are content."""
    fields = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": tool,
        "gen_ai.tool.call.id": call_id,
        "gen_ai.tool.type": tool_type,
        "gen_ai.tool.call.arguments": _messages(arguments),
        "gen_ai.tool.call.result": _messages(result),
        "gen_ai.conversation.id": conversation_id,
        "error.type": error_type,
    }
    return _event(
        "gen_ai.execute_tool",
        actor=actor,
        subject=tool,
        fields=fields,
        attributes=attributes,
        client_time_ns=client_time_ns,
        digest=digest_only,
    )


def agent_step(
    agent: str,
    *,
    operation: str = "invoke_agent",
    agent_id: str | None = None,
    provider: str | None = None,
    model: str | None = None,
    conversation_id: str | None = None,
    actor: str = "",
    attributes: Mapping[str, Any] | None = None,
    client_time_ns: int | None = None,
) -> Event:
    """An agent step: ``gen_ai.invoke_agent`` (default) or
    ``gen_ai.create_agent``, subject the agent's name."""
    if operation not in ("invoke_agent", "create_agent"):
        raise ValueError(f"operation must be invoke_agent or create_agent, not {operation!r}")
    fields = {
        "gen_ai.operation.name": operation,
        "gen_ai.agent.name": agent,
        "gen_ai.agent.id": agent_id,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        "gen_ai.conversation.id": conversation_id,
    }
    return _event(
        f"gen_ai.{operation}",
        actor=actor,
        subject=agent,
        fields=fields,
        attributes=attributes,
        client_time_ns=client_time_ns,
    )


def model_load(
    model: str,
    *,
    source: str | None = None,
    sha256: str | None = None,
    size_bytes: int | None = None,
    format: str | None = None,
    provider: str | None = None,
    actor: str = "",
    attributes: Mapping[str, Any] | None = None,
    client_time_ns: int | None = None,
) -> Event:
    """A model load (``model.load``), subject the model id; ``sha256`` is the
    digest of the weights as loaded."""
    fields = {
        "model.id": model,
        "model.source": source,
        "model.sha256": sha256,
        "model.size_bytes": size_bytes,
        "model.format": format,
        "gen_ai.provider.name": provider,
    }
    return _event(
        "model.load",
        actor=actor,
        subject=model,
        fields=fields,
        attributes=attributes,
        client_time_ns=client_time_ns,
    )


def dataset_read(
    dataset: str,
    *,
    source: str | None = None,
    sha256: str | None = None,
    records: int | None = None,
    size_bytes: int | None = None,
    purpose: str | None = None,
    actor: str = "",
    attributes: Mapping[str, Any] | None = None,
    client_time_ns: int | None = None,
) -> Event:
    """A dataset read (``dataset.read``), subject the dataset id; ``purpose``
    is e.g. ``training``, ``evaluation``, ``retrieval``."""
    fields = {
        "dataset.id": dataset,
        "dataset.source": source,
        "dataset.sha256": sha256,
        "dataset.records": records,
        "dataset.size_bytes": size_bytes,
        "dataset.purpose": purpose,
    }
    return _event(
        "dataset.read",
        actor=actor,
        subject=dataset,
        fields=fields,
        attributes=attributes,
        client_time_ns=client_time_ns,
    )


def policy_decision(
    policy: str,
    decision: str,
    *,
    subject: str,
    action: str | None = None,
    rule: str | None = None,
    reason: str | None = None,
    actor: str = "",
    attributes: Mapping[str, Any] | None = None,
    client_time_ns: int | None = None,
) -> Event:
    """A policy decision (``policy.decision``): ``policy`` decided ``decision``
    (``allow``, ``deny``, ``redact``, ...) about ``subject`` (the request,
    resource or output the decision is about)."""
    fields = {
        "policy.name": policy,
        "policy.decision": decision,
        "policy.action": action,
        "policy.rule": rule,
        "policy.reason": reason,
    }
    return _event(
        "policy.decision",
        actor=actor,
        subject=subject,
        fields=fields,
        attributes=attributes,
        client_time_ns=client_time_ns,
    )


def access_denied(
    resource: str,
    *,
    actor: str,
    action: str,
    reason: str | None = None,
    policy: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    client_time_ns: int | None = None,
) -> Event:
    """An access denial by the application (``access.denied``): ``actor`` was
    refused ``action`` on ``resource``. The daemon's own denials are
    ``tally.access_denied`` (reserved)."""
    fields = {
        "access.action": action,
        "access.reason": reason,
        "policy.name": policy,
    }
    return _event(
        "access.denied",
        actor=actor,
        subject=resource,
        fields=fields,
        attributes=attributes,
        client_time_ns=client_time_ns,
    )
