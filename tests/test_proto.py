"""The committed generated modules match proto/ (regenerated here with the
pinned protoc from grpcio-tools and compared byte for byte)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.harness import REPO


def test_generated_modules_match_the_proto_sources(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(REPO / "scripts" / "genproto.sh"), str(tmp_path)],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
        cwd=REPO,
    )
    for name in ("coral_pb2.py", "coral_pb2.pyi"):
        fresh = (tmp_path / "coral" / "proto" / name).read_text()
        committed = (REPO / "coral" / "proto" / name).read_text()
        assert fresh == committed, f"coral/proto/{name} is stale: run scripts/genproto.sh"
