"""The hand-written encoder emits exactly the generated code's bytes (no daemon needed)."""

from __future__ import annotations

import math
import random
import struct

import pytest

from tally import _encode
from tally.v1 import tally_pb2 as pb


def pb_value(value):
    if isinstance(value, (list, tuple)):
        return pb.AttributeValue(array_value=pb.ArrayValue(values=[pb_value(v) for v in value]))
    if isinstance(value, str):
        return pb.AttributeValue(string_value=value)
    if isinstance(value, bool):
        return pb.AttributeValue(bool_value=value)
    if isinstance(value, int):
        return pb.AttributeValue(int_value=value)
    if isinstance(value, float):
        return pb.AttributeValue(double_value=value)
    return pb.AttributeValue(bytes_value=bytes(value))


def random_text(rng: random.Random) -> str:
    alphabet = "abcxyz.é€😀\x00 "
    return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 5, 200])))


def random_scalar(rng: random.Random, kind: int):
    if kind == 0:
        return random_text(rng)
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice(
            [0, 1, -1, 127, 128, 16383, 16384, 2**31, -(2**63), 2**63 - 1, rng.randint(-(2**63), 2**63 - 1)]
        )
    if kind == 3:
        return rng.choice([0.0, -0.0, 1.5, math.inf, -math.inf, math.nan, rng.uniform(-1e300, 1e300)])
    return bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 20, 20000])))


def random_event(rng: random.Random):
    attributes = {}
    for i in range(rng.choice([0, 0, 1, 3, 10])):
        kind = rng.randrange(6)
        if kind == 5:
            element = rng.randrange(5)
            value = [random_scalar(rng, element) for _ in range(rng.choice([0, 1, 4]))]
        else:
            value = random_scalar(rng, kind)
        attributes[f"k{i}.{random_text(rng)}"] = value
    return dict(
        kind=random_text(rng) or "k",
        actor=random_text(rng),
        subject=random_text(rng),
        attributes=attributes,
        payload=rng.choice([b"", b"x", bytes(256), bytes(70000), "text é"]),
        content_type=rng.choice(["", "application/json"]),
        client_time_ns=rng.choice([0, 1, -1, 1_700_000_000_000_000_000, -(2**63), 2**63 - 1]),
    )


def generated(ev) -> bytes:
    payload = ev["payload"].encode() if isinstance(ev["payload"], str) else ev["payload"]
    message = pb.Event(
        kind=ev["kind"],
        actor=ev["actor"],
        subject=ev["subject"],
        payload=payload,
        content_type=ev["content_type"],
        client_time_unix_nanos=ev["client_time_ns"],
        typed_attributes=[pb.Attribute(key=k, value=pb_value(v)) for k, v in ev["attributes"].items()],
    )
    return message.SerializeToString()


def test_hand_encoding_equals_serialize_to_string_on_random_events():
    rng = random.Random(13)
    for _ in range(3000):
        ev = random_event(rng)
        ours = _encode.event(
            ev["kind"],
            ev["actor"],
            ev["subject"],
            ev["attributes"],
            ev["payload"],
            ev["content_type"],
            ev["client_time_ns"],
        )
        assert ours == generated(ev), ev


def test_append_frame_equals_the_generated_request():
    rng = random.Random(7)
    events = [random_event(rng) for _ in range(50)]
    encoded = [_encode.event(**e) for e in events]
    for request_id in (0, 1, 300, 2**64 - 1):
        frame = _encode.append_frame(request_id, encoded)
        request = pb.Request(id=request_id, append=pb.AppendRequest(events=[pb.Event.FromString(e) for e in encoded]))
        body = request.SerializeToString()
        assert frame == struct.pack(">I", len(body)) + body
        fields = [_encode.event_field(e) for e in encoded]
        assert _encode.append_frame_of_fields(request_id, fields) == frame


def test_overheads_bound_the_real_request_size():
    # The batch bounds count EVENT_OVERHEAD per event and REQUEST_OVERHEAD once.
    for size in (0, 100, 20000, 3_000_000):
        events = [bytes(size)] * 3
        frame = _encode.append_frame(2**64 - 1, events)
        assert len(frame) - 4 <= _encode.REQUEST_OVERHEAD + sum(len(e) + _encode.EVENT_OVERHEAD for e in events)


@pytest.mark.parametrize(
    "value, error, match",
    [
        (2**63, ValueError, "int64"),
        (None, TypeError, "NoneType"),
        ([1, 2.0], TypeError, "one kind"),
        ([[1]], TypeError, "flat"),
        ([True, 1], TypeError, "one kind"),
        ({"x": 1}, TypeError, "dict"),
    ],
)
def test_attribute_mapping_refusals_name_the_key(value, error, match):
    with pytest.raises(error, match=match) as info:
        _encode.attribute_value("key", value)
    assert "'key'" in str(info.value)


def test_bool_maps_to_bool_value_not_int():
    assert pb.AttributeValue.FromString(_encode.attribute_value("k", True)).WhichOneof("value") == "bool_value"
    assert pb.AttributeValue.FromString(_encode.attribute_value("k", 1)).WhichOneof("value") == "int_value"


def test_client_times_in_sequence_encode_like_the_generated_code():
    # event() reuses the varint bytes of a time's bits above 28 from the
    # event before; walk times across those boundaries, and back and forth.
    rng = random.Random(3)
    t = 1_764_600_000_000_000_000
    times = []
    for _ in range(3000):
        t += rng.choice([1, 1000, 2**28 - 1, 2**28, 2**40, -(2**28), -5])
        times.append(t)
    times += [2**42, 2**42 - 1, 2**63 - 1, 2**42 + 5, -1, 1, 2**42 + 2**28]
    for t in times:
        want = pb.Event(kind="k", client_time_unix_nanos=t).SerializeToString()
        assert _encode.event("k", None, None, None, None, None, t) == want, t
