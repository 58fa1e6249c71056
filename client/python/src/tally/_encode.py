"""Hand-written protobuf encoding of ``tally.v1.Event`` and of append requests.

Why by hand: building a generated ``Event`` message and serializing it costs
several microseconds per event in Python, and the BatchWriter's whole budget
is 5 microseconds per event on one GIL. This module emits the bytes the
generated code's ``SerializeToString`` emits for the same event (fields in
number order, proto3 defaults omitted, oneof members always written);
tests/test_encode.py checks that on thousands of random events.

The Python-to-protobuf mapping of attribute values (every value goes to
``typed_attributes``, none to the string map):

    str -> string_value; bool -> bool_value (checked before int: bool is an int);
    int -> int_value (outside int64: ValueError); float -> double_value (NaN and
    infinities kept); bytes/bytearray/memoryview -> bytes_value;
    list/tuple of one of those, flat and of one kind -> array_value;
    anything else: TypeError naming the key.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_pack_double = struct.Struct("<d").pack
_pack_len = struct.Struct(">I").pack

# Varints of every length a small field has, looked up instead of computed.
_SMALL = 1 << 14


def _varint_slow(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_VARINT = [_varint_slow(i) for i in range(_SMALL)]


# Two continuation bytes per 14-bit group: a large varint (a Unix time in
# nanoseconds has 9 bytes) is four or five table lookups, not nine shifts.
_GROUP = [bytes(((c & 0x7F) | 0x80, (c >> 7) | 0x80)) for c in range(_SMALL)]


def varint(value: int) -> bytes:
    """Unsigned varint; a negative int64 is written as its 10-byte two's complement."""
    if 0 <= value < _SMALL:
        return _VARINT[value]
    if value < 0:
        value += 1 << 64
    parts = []
    while value >= _SMALL:
        parts.append(_GROUP[value & 0x3FFF])
        value >>= 14
    # value >= 1 here (it was >= 2**14 before the last shift): no zero group.
    parts.append(_VARINT[value])
    return b"".join(parts)


def _ld(tag: bytes, data: bytes) -> bytes:
    """A length-delimited field: tag, length, data."""
    n = len(data)
    return tag + (_VARINT[n] if n < _SMALL else _varint_slow(n)) + data


def _scalar(key: str, value: Any) -> tuple[int, bytes]:
    """(kind, encoded AttributeValue body) of one scalar; kind is the oneof field number."""
    # bool before int: True is an int too.
    if isinstance(value, str):
        return 1, _ld(b"\x0a", value.encode())
    if isinstance(value, bool):
        return 2, b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        if not _I64_MIN <= value <= _I64_MAX:
            raise ValueError(f"attribute {key!r}: {value} is outside the int64 range")
        return 3, b"\x18" + varint(value)
    if isinstance(value, float):
        return 4, b"\x21" + _pack_double(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return 7, _ld(b"\x3a", bytes(value))
    raise TypeError(
        f"attribute {key!r}: a value of type {type(value).__name__} cannot be stored "
        "(str, bool, int, float, bytes, or a list/tuple of one of those)"
    )


def attribute_value(key: str, value: Any) -> bytes:
    """The encoded ``AttributeValue`` of one Python value (see the module doc)."""
    if isinstance(value, (list, tuple)):
        kind = 0
        parts = []
        for element in value:
            if isinstance(element, (list, tuple)):
                raise TypeError(f"attribute {key!r}: arrays must be flat (an element is a {type(element).__name__})")
            element_kind, body = _scalar(key, element)
            if kind and element_kind != kind:
                raise TypeError(f"attribute {key!r}: array elements must all be of one kind")
            kind = element_kind
            parts.append(_ld(b"\x0a", body))
        return _ld(b"\x2a", b"".join(parts))
    return _scalar(key, value)[1]


# Encoded fields of strings that repeat from event to event (kinds, actors,
# content types, attribute keys), so the hot path looks them up instead of
# encoding them again. Each cache is emptied when it reaches _CACHE_MAX
# entries, which bounds it when a caller puts unbounded values there.
_CACHE_MAX = 4096
_KIND: dict[str, bytes] = {}
_ACTOR: dict[str, bytes] = {}
_CONTENT_TYPE: dict[str, bytes] = {}
_KEY: dict[str, bytes] = {}


# The last large client time's bits above 28, and their varint bytes (the
# varint's bytes 4 on: groups 4.. of 7 bits), for event()'s time field.
_time_high: tuple[int, bytes] = (-1, b"")


def _cached(cache: dict[str, bytes], tag: bytes, text: str) -> bytes:
    field = cache.get(text)
    if field is None:
        if not isinstance(text, str):
            raise TypeError(f"expected str, not {type(text).__name__} ({text!r})")
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        field = cache[text] = _ld(tag, text.encode())
    return field


def typed_attributes(attributes: Mapping[str, Any]) -> bytes:
    """The ``typed_attributes`` fields (number 8) of an Event, in the mapping's order."""
    parts = []
    for key, value in attributes.items():
        field = _KEY.get(key)
        if field is None:
            if not isinstance(key, str):
                raise TypeError(f"attribute keys must be str, not {type(key).__name__} ({key!r})")
            if not key:
                raise ValueError("attribute keys must not be empty")
            field = _cached(_KEY, b"\x0a", key)
        # The common scalars inline (exact types; subclasses, arrays and
        # errors take attribute_value's general path).
        t = type(value)
        if t is str:
            data = value.encode()
            n = len(data)
            body = b"\x0a" + (_VARINT[n] if n < _SMALL else varint(n)) + data
        elif t is int and 0 <= value < _SMALL:
            body = b"\x18" + _VARINT[value]
        elif t is float:
            body = b"\x21" + _pack_double(value)
        else:
            body = attribute_value(key, value)
        n = len(body)
        value_field = b"\x12" + (_VARINT[n] if n < _SMALL else varint(n)) + body
        entry = field + value_field
        n = len(entry)
        parts.append(b"\x42" + (_VARINT[n] if n < _SMALL else varint(n)) + entry)
    return b"".join(parts)


def event(
    kind: str,
    actor: str | None,
    subject: str | None,
    attributes: Mapping[str, Any] | None,
    payload: bytes | str | None,
    content_type: str | None,
    client_time_ns: int,
) -> bytes:
    """The encoded ``tally.v1.Event``; raises ValueError/TypeError on an invalid event."""
    out = _KIND.get(kind)
    if out is None:
        if not isinstance(kind, str):
            raise TypeError(f"kind must be str, not {type(kind).__name__}")
        if not kind:
            raise ValueError("kind must not be empty")
        out = _cached(_KIND, b"\x0a", kind)
    if actor:
        out += _ACTOR.get(actor) or _cached(_ACTOR, b"\x12", actor)
    if subject:
        out += _ld(b"\x1a", subject.encode())
    if payload:
        if type(payload) is not bytes:
            if isinstance(payload, str):
                payload = payload.encode()
            elif isinstance(payload, (bytes, bytearray, memoryview)):
                payload = bytes(payload)
            else:
                raise TypeError(f"payload must be bytes or str, not {type(payload).__name__}")
        out += _ld(b"\x2a", payload)
    if content_type:
        out += _CONTENT_TYPE.get(content_type) or _cached(_CONTENT_TYPE, b"\x32", content_type)
    if client_time_ns:
        global _time_high
        high = client_time_ns >> 28
        cached = _time_high  # one read: another thread may replace it
        if high == cached[0] and client_time_ns > 0:
            # The same 2**28 ns (0.27 s) as the last event: only the low 28
            # bits (two 14-bit groups) are new.
            out += b"\x38" + _GROUP[client_time_ns & 0x3FFF] + _GROUP[(client_time_ns >> 14) & 0x3FFF] + cached[1]
        else:
            if not _I64_MIN <= client_time_ns <= _I64_MAX:
                raise ValueError(f"client_time_ns {client_time_ns} is outside the int64 range")
            encoded = varint(client_time_ns)
            if client_time_ns >= 1 << 42:
                # Varint groups are little-endian: bytes 4.. encode bits 28..
                _time_high = (high, encoded[4:])
            out += b"\x38" + encoded
    if attributes:
        out += typed_attributes(attributes)
    return out


# Bytes an event adds to an AppendRequest besides its own encoding: the tag
# of `events` (1) and its length (at most 5 bytes for a frame under 4 GiB).
EVENT_OVERHEAD = 6
# Bytes of a Request around the AppendRequest: id (tag + up to 10) and the
# `append` tag and length (1 + up to 5).
REQUEST_OVERHEAD = 17


def append_frame(request_id: int, events: list[bytes]) -> bytes:
    """One framed ``Request{id, append{events}}``: 4-byte big-endian length + protobuf."""
    body = b"".join([_ld(b"\x0a", e) for e in events])
    # proto3 omits a zero id; written the same way, the bytes equal the generated code's.
    request = (b"\x08" + varint(request_id) if request_id else b"") + _ld(b"\x1a", body)
    return _pack_len(len(request)) + request


def event_field(event: bytes) -> bytes:
    """``event`` as one ``AppendRequest.events`` field (tag and length in front).

    The BatchWriter queues events in this form, so a batch becomes a request
    by one join (append_frame_of_fields) instead of a Python call per event.
    """
    n = len(event)
    return b"\x0a" + (_VARINT[n] if n < _SMALL else varint(n)) + event


def append_frame_of_fields(request_id: int, fields: list[bytes]) -> bytes:
    """``append_frame`` of events already in ``event_field`` form."""
    size = sum(map(len, fields))
    head = (b"\x08" + varint(request_id) if request_id else b"") + b"\x1a" + varint(size)
    return _pack_len(len(head) + size) + head + b"".join(fields)


def frame(message: bytes) -> bytes:
    """A frame around ``message``."""
    return _pack_len(len(message)) + message
