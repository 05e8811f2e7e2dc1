#!/usr/bin/env bash
# Regenerate coral/proto/*_pb2.py(i) from proto/ with the protoc bundled in
# grpcio-tools, so the output does not depend on the host.
#
# The version is old on purpose: protoc 25 (grpcio-tools 1.62) writes gencode
# that calls no runtime version check, so the one coral_pb2.py loads on every
# protobuf major the SDK allows (4.25 to 7.x, sdk/pyproject.toml), not only on
# the runtime it was made with. It lives in .toolchains/ (scripts/setup.sh
# installs it there), apart from the venv, whose protobuf it would not accept.
# Usage: scripts/genproto.sh [OUTDIR]   (default: the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
PY=${PYTHON:-.venv/bin/python}
tools=.toolchains/grpcio-tools-1.62.3
if [ ! -d "$tools/grpc_tools" ]; then
  echo "genproto: $tools is missing: run scripts/setup.sh" >&2
  exit 1
fi
PYTHONPATH="$tools" "$PY" -m grpc_tools.protoc -Iproto --python_out="$out" --pyi_out="$out" proto/coral/proto/coral.proto
