#!/usr/bin/env bash
# Regenerate coral/proto/*_pb2.py(i) from proto/ with the protoc bundled in
# grpcio-tools (a dev dependency), so the output does not depend on the host.
# Usage: scripts/genproto.sh [OUTDIR]   (default: the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
PY=${PYTHON:-.venv/bin/python}
"$PY" -m grpc_tools.protoc -Iproto --python_out="$out" --pyi_out="$out" proto/coral/proto/coral.proto
