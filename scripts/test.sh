#!/usr/bin/env bash
# Set the machine up (idempotent) and run the whole test suite.
# CI runs this with CORAL_REQUIRE_BPF=1, which turns any BPF skip into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "tests: .venv/bin/python -m pytest tests (CORAL_REQUIRE_BPF=${CORAL_REQUIRE_BPF:-0})"
exec .venv/bin/python -m pytest -q tests "$@"
