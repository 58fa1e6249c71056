"""Client against a real tallyd: every method, typed attributes, status, follow."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import threading
from pathlib import Path

import pytest

import tally
from tally.errors import EventTooLarge, OutOfRange

REPO = Path(__file__).resolve().parents[3]


def test_append_returns_seq_and_entry_hash_of_the_stored_record(daemon):
    with tally.Client(daemon.socket) as client:
        first = client.append("model.load", actor="svc", subject="llama-3-8b", payload=b"hi", content_type="text/plain")
        second = client.append("prompt", payload="héllo")
        assert (first.seq, second.seq) == (0, 1)
        records = client.read(0)
    assert [r.seq for r in records] == [0, 1]
    assert records[0].entry_hash == first.entry_hash
    assert records[1].entry_hash == second.entry_hash
    assert hashlib.sha256(b"\x00" + records[1].raw).hexdigest() == second.entry_hash
    assert records[1].prev_hash == first.entry_hash
    r = records[0]
    assert (r.kind, r.actor, r.subject, r.payload, r.content_type) == (
        "model.load",
        "svc",
        "llama-3-8b",
        b"hi",
        "text/plain",
    )
    assert records[1].payload == "héllo".encode()
    assert r.client_time_ns > 0 and r.receive_time_ns > 0
    assert set(r.peer) == {"uid", "gid", "pid"}


def test_typed_attributes_round_trip_as_python_values(daemon):
    attrs = {
        "s": "text",
        "empty_s": "",
        "t": True,
        "f": False,
        "i": 812,
        "zero": 0,
        "neg": -5,
        "i64_min": -(2**63),
        "i64_max": 2**63 - 1,
        "d": 0.25,
        "inf": math.inf,
        "ninf": -math.inf,
        "nan": math.nan,
        "b": b"\x00\xff",
        "strs": ["a", "b"],
        "ints": (1, -2, 3),
        "bools": [True, False],
        "doubles": [1.5, -0.0],
        "bytes_list": [b"x", b""],
        "empty": [],
    }
    with tally.Client(daemon.socket) as client:
        client.append("gen_ai.chat", attributes=attrs)
        (record,) = client.read(0)
    got = record.attributes
    assert set(got) == set(attrs)
    assert math.isnan(got.pop("nan"))
    for key, value in got.items():
        want = attrs[key]
        want = list(want) if isinstance(want, tuple) else want
        assert value == want and type(value) is type(want), key
    assert got["t"] is True and got["zero"] == 0 and type(got["zero"]) is int


@pytest.mark.parametrize(
    "value, error",
    [
        (2**63, ValueError),
        (-(2**63) - 1, ValueError),
        (None, TypeError),
        ({"a": 1}, TypeError),
        ([1, "a"], TypeError),
        ([[1]], TypeError),
        ([1, True], TypeError),
        (object(), TypeError),
    ],
)
def test_invalid_attribute_values_are_refused_before_sending(daemon, value, error):
    with tally.Client(daemon.socket) as client:
        with pytest.raises(error, match="'bad'"):
            client.append("x", attributes={"bad": value})
        assert client.status().size == 0


def test_empty_kind_and_empty_key_are_refused_before_sending(daemon):
    with tally.Client(daemon.socket) as client:
        with pytest.raises(ValueError, match="kind"):
            client.append("")
        with pytest.raises(ValueError, match="empty"):
            client.append("x", attributes={"": 1})
        assert client.status().size == 0


def test_append_many_splits_under_the_daemons_limits(daemon_factory):
    daemon = daemon_factory("max_frame_bytes = 65536\nmax_events_per_append = 100")
    events = [tally.Event("bulk", subject=f"e{i}", payload=bytes(1000)) for i in range(250)]
    with tally.Client(daemon.socket) as client:
        assert (client.max_frame_bytes, client.max_events_per_append) == (65536, 100)
        acks = client.append_many(events)
        assert [a.seq for a in acks] == list(range(250))
        got = []
        while len(got) < 250:
            got += client.read(len(got))
    assert [r.subject for r in got] == [f"e{i}" for i in range(250)]
    assert [r.entry_hash for r in got] == [a.entry_hash for a in acks]
    # Small events: the count limit closes the requests, not the bytes.
    with tally.Client(daemon.socket) as client:
        acks = client.append_many(tally.Event("tiny") for _ in range(201))
    assert [a.seq for a in acks] == list(range(250, 451))


def test_event_too_large_is_refused_before_sending(daemon_factory):
    daemon = daemon_factory("max_frame_bytes = 65536")
    with tally.Client(daemon.socket) as client:
        with pytest.raises(EventTooLarge) as info:
            client.append("big", payload=bytes(65536))
        assert info.value.limit == 65536 and info.value.size > 65536
        assert "65536" in str(info.value)
        with pytest.raises(EventTooLarge):
            client.append_many([tally.Event("ok"), tally.Event("big", payload=bytes(70000))])
        # Nothing was sent: not even the valid event before it.
        assert client.status().size == 0
        client.append("fits", payload=bytes(60000))
        assert client.status().size == 1


def test_read_limit_and_out_of_range(daemon):
    with tally.Client(daemon.socket) as client:
        client.append_many(tally.Event("e", subject=str(i)) for i in range(5))
        assert [r.subject for r in client.read(1, 2)] == ["1", "2"]
        assert [r.seq for r in client.read(0)] == [0, 1, 2, 3, 4]
        with pytest.raises(OutOfRange) as info:
            client.read(6)
        assert info.value.code == 9
        # The connection stays usable after a daemon error.
        assert client.status().size == 5


def test_follow_yields_stored_then_new_records(daemon):
    with tally.Client(daemon.socket) as client:
        client.append("before")
        follow = client.follow(0, idle_timeout=10)
        assert next(follow).kind == "before"

        def later():
            with tally.Client(daemon.socket) as other:
                other.append("after", subject="1")
                other.append("after", subject="2")

        thread = threading.Thread(target=later)
        thread.start()
        first, second = next(follow), next(follow)
        thread.join()
        follow.close()
    assert [(first.seq, first.subject), (second.seq, second.subject)] == [(1, "1"), (2, "2")]
    assert second.prev_hash == first.entry_hash


def test_status_fields(daemon):
    with tally.Client(daemon.socket) as client:
        empty = client.status()
        ack = client.append("x")
        status = client.status()
    assert empty.size == 0 and empty.head_hash == "00" * 32
    assert status.size == 1 and status.head_hash == ack.entry_hash
    assert len(status.log_id) == 32 and status.log_id == empty.log_id
    assert status.server_name.startswith("tallyd/")
    assert status.tpm_enabled is False and status.anchoring == "off"
    assert status.format_version >= 1 and status.store_map_bytes > 0 and status.disk_free_bytes > 0
    # The Merkle root of one leaf is the leaf hash.
    assert status.root_hash == ack.entry_hash


def test_default_socket_comes_from_the_environment(daemon, monkeypatch):
    monkeypatch.setenv("TALLY_SOCKET", daemon.socket)
    assert tally.Client().append("env").seq == 0
    monkeypatch.delenv("TALLY_SOCKET")
    assert tally.Client().socket == "/run/tally/tally.sock"


def test_client_reconnects_on_the_next_call_after_a_daemon_restart(daemon):
    client = tally.Client(daemon.socket)
    client.append("one")
    daemon.restart()
    with pytest.raises(tally.ConnectionLost):
        client.append("two")
    assert client.append("three").seq == 1
    client.close()


def test_records_from_the_cli_string_map_read_back_as_str(daemon):
    # The legacy string map (Event.attributes, which this package never
    # writes) comes back in Record.attributes beside the typed list.
    tally_bin = Path(os.environ.get("TALLY_BIN") or REPO / "target" / "debug" / "tally")
    if not tally_bin.is_file():
        pytest.skip(f"{tally_bin} not found: run `cargo build --workspace` or set TALLY_BIN")
    subprocess.run(
        [str(tally_bin), "append", "--kind", "prompt", "--attr", "model_id=llama-3-8b", "--payload", "hi"],
        check=True,
        env={**os.environ, "TALLY_SOCKET": daemon.socket},
        capture_output=True,
        timeout=30,
    )
    with tally.Client(daemon.socket) as client:
        (record,) = client.read(0)
    assert (record.kind, record.payload, record.attributes) == ("prompt", b"hi", {"model_id": "llama-3-8b"})
