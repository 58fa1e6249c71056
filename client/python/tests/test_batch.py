"""BatchWriter against a real tallyd: flush, close, atexit, overflow, restart, errors."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import tally
from tally.errors import EventTooLarge


def read_all(sock: str) -> list[tally.Record]:
    with tally.Client(sock) as client:
        size = client.status().size
        records: list[tally.Record] = []
        while len(records) < size:
            records += client.read(len(records))
    return records


def test_flush_returns_once_everything_logged_before_it_is_acked(daemon):
    writer = tally.BatchWriter(daemon.socket, linger=0.05)
    for i in range(1000):
        writer.log("batch.event", subject=str(i), attributes={"i": i})
    writer.flush(timeout=30)
    assert writer.acked == 1000
    with tally.Client(daemon.socket) as client:
        assert client.status().size == 1000
    writer.close()
    records = read_all(daemon.socket)
    assert [r.subject for r in records] == [str(i) for i in range(1000)]
    assert [r.attributes["i"] for r in records] == list(range(1000))


def test_context_manager_flushes_on_exit_and_log_after_close_fails(daemon):
    with tally.BatchWriter(daemon.socket) as writer:
        writer.log_event(tally.Event("ctx", payload="x"))
        writer.log("ctx")
    assert writer.acked == 2 and len(read_all(daemon.socket)) == 2
    with pytest.raises(tally.TallyError, match="closed"):
        writer.log("late")
    with pytest.raises(tally.TallyError, match="closed"):
        writer.flush(1)
    writer.close()  # a second close is a no-op


def test_interpreter_exit_flushes_what_was_logged(daemon):
    script = textwrap.dedent(
        """
        import sys, tally
        writer = tally.BatchWriter(sys.argv[1], linger=1.0)
        for i in range(500):
            writer.log("atexit.event", subject=str(i))
        # No flush, no close: the atexit hook must send them.
        """
    )
    subprocess.run([sys.executable, "-c", script, daemon.socket], check=True, timeout=60)
    records = read_all(daemon.socket)
    assert [r.subject for r in records] == [str(i) for i in range(500)]


def test_batches_respect_max_events(daemon):
    with tally.BatchWriter(daemon.socket, max_events=7, linger=0.2) as writer:
        for i in range(50):
            writer.log("small.batch", subject=str(i))
    records = read_all(daemon.socket)
    # Records of one batch share one receive time; a batch of at most 7
    # events means at least ceil(50 / 7) = 8 distinct receive times.
    by_time: dict[int, int] = {}
    for r in records:
        by_time[r.receive_time_ns] = by_time.get(r.receive_time_ns, 0) + 1
    assert len(records) == 50 and max(by_time.values()) <= 7
    assert writer.requests == len(by_time) >= 8


class NeverReads:
    """A Unix socket that accepts connections, answers hello, then never reads again.

    The honest stand-in for a stalled daemon: the writer's batch waits for an
    ack that never comes, so its queue fills.
    """

    def __init__(self, path: str):
        from tally._encode import frame
        from tally.v1 import tally_pb2 as pb

        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen()
        self.conns: list[socket.socket] = []
        hello = pb.Response(id=1, hello=pb.HelloReply(protocol_version=1, server_name="never-reads"))
        self._hello = frame(hello.SerializeToString())
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(self._hello)
            self.conns.append(conn)

    def close(self) -> None:
        self.listener.close()
        for c in self.conns:
            c.close()


def test_overflow_drop_counts_the_dropped_events(tmp_path):
    server = NeverReads(str(tmp_path / "s.sock"))
    writer = tally.BatchWriter(server.path, queue_size=10, overflow="drop", linger=0, timeout=60)
    try:
        writer.log("first")  # taken into a batch that is never acked
        deadline = time.monotonic() + 10
        while writer.queued or not server.conns:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        start = time.monotonic()
        for _ in range(100):
            writer.log("x")
        assert time.monotonic() - start < 1.0  # dropping never waits
        assert writer.queued == 10
        assert writer.dropped == 90
        with pytest.raises(tally.Timeout):
            writer.close(timeout=0.1)
    finally:
        server.close()
    assert writer.failed == 11  # the batch in flight and the ten queued, abandoned


def test_overflow_block_waits_for_space(daemon):
    writer = tally.BatchWriter(daemon.socket, queue_size=4, overflow="block", linger=0)
    writer.flush(10)  # connected
    daemon.pause()
    try:
        done = threading.Event()

        def producer():
            for i in range(30):
                writer.log("blocked", subject=str(i))
            done.set()

        thread = threading.Thread(target=producer, daemon=True)
        thread.start()
        # The daemon is stopped: one batch in flight, four queued, and the
        # producer blocked on the fifth or so.
        assert not done.wait(1.0)
        assert writer.queued == 4 and writer.dropped == 0
    finally:
        daemon.resume()
    assert done.wait(30)
    writer.close(30)
    assert [r.subject for r in read_all(daemon.socket)] == [str(i) for i in range(30)]


@pytest.mark.parametrize("stop", ["terminate", "kill"])
@pytest.mark.parametrize("window", [1, 2, 4])
def test_writer_survives_a_daemon_restart_and_delivers_every_event_at_least_once(daemon, window, stop):
    writer = tally.BatchWriter(daemon.socket, linger=0.001, window=window, max_events=500)
    n = 6000
    for i in range(n):
        writer.log("restart.event", subject=str(i))
        if i % 100 == 0:
            time.sleep(0.001)  # let the writer send while the caller logs
        if i == 1000:
            writer.flush(10)  # connected and acking
        if i == 2000:
            # SIGTERM or SIGKILL mid-stream; the writer keeps queueing.
            if stop == "terminate":
                daemon.terminate()
            else:
                daemon.kill()
        if i == 4000:
            daemon.start()
    writer.flush(timeout=60)
    writer.close()
    subjects = [r.subject for r in read_all(daemon.socket)]
    assert set(subjects) == {str(i) for i in range(n)}
    # At least once, in order: the first occurrences come in logging order.
    first = list(dict.fromkeys(subjects))
    assert first == [str(i) for i in range(n)]
    assert writer.reconnects >= 1
    # Only a batch in flight when the daemon stopped can be stored twice.
    assert len(subjects) - n <= 2000


def test_event_too_large_raises_in_log(daemon):
    with tally.BatchWriter(daemon.socket) as writer:
        with pytest.raises(EventTooLarge):
            writer.log("big", payload=bytes(5 * 1024 * 1024))
        with pytest.raises(TypeError, match="'k'"):
            writer.log("bad", attributes={"k": object()})
        with pytest.raises(ValueError, match="kind"):
            writer.log("")
        writer.log("fine")
    # Refused on the caller's thread: nothing of them was queued or sent.
    assert (writer.acked, writer.failed) == (1, 0)
    assert [r.kind for r in read_all(daemon.socket)] == ["fine"]


def test_an_event_over_the_daemons_smaller_limit_fails_at_send_then_in_log(daemon_factory):
    daemon = daemon_factory("max_frame_bytes = 4096")
    writer = tally.BatchWriter(daemon.socket, linger=0)
    # Before its first connection the writer knows only the default limit
    # (4 MiB): this event passes log() and is refused once hello says 4096.
    writer.log("big", payload=bytes(5000))
    writer.log("small", payload=bytes(100))
    with pytest.raises(EventTooLarge) as info:
        writer.flush(10)
    assert info.value.limit == 4096
    assert (writer.failed, writer.acked) == (1, 1)
    # Now the writer knows: log() refuses it on the caller's thread.
    with pytest.raises(EventTooLarge):
        writer.log("big", payload=bytes(5000))
    writer.close(10)
    assert [r.kind for r in read_all(daemon.socket)] == ["small"]
