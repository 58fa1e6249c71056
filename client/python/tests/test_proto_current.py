"""The committed generated code is what gen_proto.sh writes from client/proto now."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1]
COMMITTED = HERE / "src" / "tally" / "v1" / "tally_pb2.py"


def test_generated_code_is_current(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is not installed (pip install -r requirements-dev.txt)")
    subprocess.run(
        ["bash", str(HERE / "gen_proto.sh"), str(tmp_path)],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    fresh = (tmp_path / "tally" / "v1" / "tally_pb2.py").read_bytes()
    assert fresh == COMMITTED.read_bytes(), (
        "src/tally/v1/tally_pb2.py is stale: run client/python/gen_proto.sh and commit the result"
    )
