#!/usr/bin/env bash
# Regenerates src/tally/v1/tally_pb2.py from client/proto/tally/v1/tally.proto
# with grpcio-tools' protoc (pinned in requirements-dev.txt, so the output is
# reproducible; tests/test_proto_current.py fails when the committed file is
# stale). Usage: gen_proto.sh [OUT_DIR] (default: src/); needs the dev
# requirements installed in the active Python.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/src}
python=${PYTHON:-python3}
"$python" -m grpc_tools.protoc -I "$here/../proto" --python_out="$out" "$here/../proto/tally/v1/tally.proto"
