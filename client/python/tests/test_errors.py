"""Every failure surfaces as its own exception: connection errors, client-side
refusals, and each daemon error code that can be provoked for real."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

import tally
from tally import _encode, errors
from tally._conn import Connection
from tally.v1 import tally_pb2 as pb

NOBODY = 65534


def test_every_error_code_maps_to_its_own_exception_class():
    classes = {}
    for name, code in pb.ErrorCode.items():
        err = errors.error_for_code(code, "m")
        assert isinstance(err, tally.ProtocolError) and err.code == code and err.message == "m"
        assert name in str(err)
        classes[code] = type(err)
    assert classes.pop(0) is tally.ProtocolError
    assert len(set(classes.values())) == len(classes) == 13
    for code, cls in classes.items():
        assert cls is not tally.ProtocolError and cls.code == code
        assert getattr(tally, cls.__name__) is cls  # importable from tally
    assert isinstance(errors.error_for_code(99, "future"), tally.ProtocolError)


def test_missing_socket_is_daemon_unavailable(tmp_path):
    path = str(tmp_path / "nothing.sock")
    with pytest.raises(tally.DaemonUnavailable) as info:
        tally.Client(path).status()
    assert "is tallyd running?" in str(info.value) and path in str(info.value)
    assert isinstance(info.value, ConnectionError)


def test_refused_connection_is_daemon_unavailable(tmp_path):
    path = str(tmp_path / "dead.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens: ECONNREFUSED
    with pytest.raises(tally.DaemonUnavailable, match="is tallyd running"):
        tally.Client(path).append("x")


def run_as_nobody(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` in a Python that imports tally as this user, then drops to uid nobody."""
    prelude = f"import os, sys, tally\nif os.getuid() == 0:\n    os.setgid({NOBODY}); os.setuid({NOBODY})\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_socket_without_permission_is_forbidden(daemon):
    # Root bypasses file permissions: the client drops to nobody (a non-root
    # run is unprivileged already, and mode 000 refuses the owner too).
    os.chmod(daemon.dir, 0o755)
    os.chmod(daemon.socket, 0o000)
    result = run_as_nobody(
        """
        try:
            tally.Client(sys.argv[1]).status()
        except tally.Forbidden as err:
            print("FORBIDDEN", isinstance(err, PermissionError), err)
        """,
        daemon.socket,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("FORBIDDEN True"), result.stdout
    assert "permission denied" in result.stdout and "is tallyd running" not in result.stdout


def test_anchor_as_a_non_admin_is_permission_denied(daemon_factory):
    if os.getuid() != 0:
        pytest.skip(
            "the tests and tallyd run as the same non-root uid, which has every role; needs root to drop to nobody"
        )
    daemon = daemon_factory('socket_mode = "0666"')
    os.chmod(daemon.dir, 0o755)
    result = run_as_nobody(
        """
        client = tally.Client(sys.argv[1])
        client.append("allowed")  # unix_default has append
        try:
            client.anchor()
        except tally.PermissionDenied as err:
            print("DENIED", err.code)
        """,
        daemon.socket,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "DENIED 12"


def test_attest_without_a_tpm_is_tpm_unavailable(daemon):
    with tally.Client(daemon.socket) as client, pytest.raises(tally.TpmUnavailable) as info:
        client.attest(b"nonce")
    assert info.value.code == 11


def test_append_without_events_is_bad_request(daemon):
    conn = Connection(daemon.socket, 10)
    with pytest.raises(tally.BadRequest, match="without events"):
        conn.append_encoded([])
    conn.close()


def test_a_kind_reserved_for_the_daemon_is_bad_request(daemon):
    # "tally." kinds are tallyd's own (tally.access_denied): a client's is refused.
    with tally.Client(daemon.socket) as client:
        with pytest.raises(tally.BadRequest, match="reserved"):
            client.append("tally.access_denied", subject="append")
        client.append("tallyx.lookalike")
        assert client.status().size == 1


def test_more_events_than_the_limit_is_too_many_events(daemon_factory):
    daemon = daemon_factory("max_events_per_append = 2")
    conn = Connection(daemon.socket, 10)
    event = _encode.event("x", None, None, None, None, None, 1)
    with pytest.raises(tally.TooManyEvents, match="maximum is 2"):
        conn.append_encoded([event] * 3)
    conn.close()


def test_a_frame_over_the_limit_is_frame_too_large(daemon_factory):
    daemon = daemon_factory("max_frame_bytes = 1024")
    conn = Connection(daemon.socket, 10)
    event = _encode.event("x", None, None, None, bytes(2000), None, 1)
    with pytest.raises(tally.FrameTooLarge, match="1024"):
        conn.append_encoded([event])
    conn.close()


def test_a_second_hello_is_protocol_mismatch(daemon):
    conn = Connection(daemon.socket, 10)
    with pytest.raises(tally.ProtocolMismatch):
        conn.call(pb.Request(hello=pb.Hello(protocol_version=1, client_name="again")))
    conn.close()


def test_over_the_connection_limit_is_busy(daemon_factory):
    daemon = daemon_factory("max_connections_per_peer = 1")
    with tally.Client(daemon.socket) as first:
        first.status()
        with pytest.raises(tally.Busy):
            tally.Client(daemon.socket).status()


def test_over_the_append_rate_is_rate_limited(daemon_factory):
    daemon = daemon_factory("append_rate_per_peer = 1\nappend_burst_per_peer = 1")
    with tally.Client(daemon.socket) as client:
        client.append("first")
        with pytest.raises(tally.RateLimited):
            client.append("second")
        assert client.status().size == 1


def test_batch_writer_surfaces_a_refusal_through_flush_and_last_error(daemon_factory):
    daemon = daemon_factory("max_events_per_append = 2")
    # The writer learns the daemon's limit from hello and splits under it:
    # three events, two requests, no error.
    with tally.BatchWriter(daemon.socket, linger=0.05) as writer:
        for i in range(3):
            writer.log("e", subject=str(i))
        writer.flush(10)
        assert writer.acked == 3 and writer.last_error is None
    # A refusal the writer cannot avoid: appends over the rate.
    daemon = daemon_factory("append_rate_per_peer = 1\nappend_burst_per_peer = 1")
    writer = tally.BatchWriter(daemon.socket, linger=0)
    writer.log("first")
    writer.flush(10)
    writer.log("second")
    # RATE_LIMITED is retryable: the writer retries until the bucket refills.
    writer.flush(30)
    assert writer.acked == 2 and isinstance(writer.last_error, tally.RateLimited)
    writer.close()


def test_batch_writer_raises_a_non_retryable_refusal_from_flush(daemon_factory):
    if os.getuid() != 0:
        pytest.skip(
            "the tests and tallyd run as the same non-root uid, which has every role; needs root to drop to nobody"
        )
    daemon = daemon_factory('socket_mode = "0666"\n[access]\nunix_default = ["read"]')
    os.chmod(daemon.dir, 0o755)
    result = run_as_nobody(
        """
        writer = tally.BatchWriter(sys.argv[1], linger=0)
        for i in range(5):
            writer.log("denied", subject=str(i))
        try:
            writer.flush(10)
        except tally.PermissionDenied as err:
            print("RAISED", type(writer.last_error).__name__, writer.failed, writer.acked)
        writer.flush(10)  # reported once: the next flush is clean
        writer.close()
        """,
        daemon.socket,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "RAISED PermissionDenied 5 0"
