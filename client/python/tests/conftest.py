"""Fixtures: a real tallyd per test, on a temporary data directory and socket.

The daemon binary is $TALLYD_BIN, else <repo>/target/debug/tallyd (built by
`cargo build --workspace`); without it every daemon test skips, saying why.
TPM anchoring is off (`[tpm] enabled = false`, as the Rust end-to-end tests
start their daemons), even where $TCTI names a TPM: each anchoring log needs
a TPM counter of its own, and these tests are about the client, not
anchoring (TpmUnavailable is tested against this). Readiness is systemd's:
the daemon sends READY=1 to $NOTIFY_SOCKET once its socket accepts
connections.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
START_TIMEOUT = 10.0
STOP_TIMEOUT = 20.0


def tallyd_bin() -> Path:
    return Path(os.environ.get("TALLYD_BIN") or REPO / "target" / "debug" / "tallyd")


class Daemon:
    """A running tallyd; ``restart()`` keeps its data directory, socket and config."""

    def __init__(self, config: str = ""):
        self.dir = Path(tempfile.mkdtemp(prefix="tally-py-"))
        self.socket = str(self.dir / "tally.sock")
        self.data_dir = self.dir / "data"
        self.config_path = self.dir / "tallyd.toml"
        self.config_path.write_text(f"{config}\n[tpm]\nenabled = false\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.start()

    def stderr_path(self) -> Path:
        return self.dir / f"tallyd-{self.runs}.stderr"

    def stderr(self) -> str:
        try:
            return self.stderr_path().read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        self.runs += 1
        notify_path = str(self.dir / f"notify-{self.runs}")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        notify.settimeout(0.05)
        args = [
            str(tallyd_bin()),
            "--data-dir", str(self.data_dir),
            "--socket", self.socket,
            "--log", "info",
            "--config", str(self.config_path),
        ]  # fmt: skip
        with open(self.stderr_path(), "wb") as stderr:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, "NOTIFY_SOCKET": notify_path},
            )
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                try:
                    if b"READY=1" in notify.recv(512).splitlines():
                        return
                except TimeoutError:
                    pass
                if self.proc.poll() is not None:
                    raise RuntimeError(f"tallyd exited during start-up ({self.proc.returncode}):\n{self.stderr()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"tallyd not ready within {START_TIMEOUT} s:\n{self.stderr()}")
        finally:
            notify.close()

    def terminate(self) -> int:
        """SIGTERM, then wait for the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(STOP_TIMEOUT)
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        if self.proc is not None:
            self.terminate()
        self.start()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _require_tallyd() -> None:
    if not tallyd_bin().is_file():
        pytest.skip(f"{tallyd_bin()} not found: run `cargo build --workspace` or set TALLYD_BIN")


@pytest.fixture
def daemon_factory():
    """Starts daemons with a given config; all are stopped after the test."""
    _require_tallyd()
    started: list[Daemon] = []

    def start(config: str = "") -> Daemon:
        d = Daemon(config)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def daemon(daemon_factory):
    """A tallyd with the default config (TPM off)."""
    return daemon_factory()
