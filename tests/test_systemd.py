"""The systemd units are valid (systemd-analyze verify, with ExecStart
pointing where `pip install` put the daemons) and their hardening is
measured (systemd-analyze security --offline)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness import BIN, REPO

UNITS = ("coral-agentd.service", "coral-colonyd.service")


def installed_units(tmp_path: Path) -> list[Path]:
    out = []
    for name in UNITS:
        text = (REPO / "systemd" / name).read_text().replace("/usr/bin/", f"{BIN}/")
        path = tmp_path / name
        path.write_text(text)
        out.append(path)
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (Debian: systemd)")
def test_units_verify_and_are_hardened(tmp_path: Path) -> None:
    units = installed_units(tmp_path)
    verify = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True)
    problems = [line for line in verify.stderr.splitlines() if "coral" in line]
    assert verify.returncode == 0 and problems == [], verify.stderr
    scores = {}
    for unit in units:
        sec = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True)
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", sec.stdout + sec.stderr)
        assert m, sec.stdout + sec.stderr
        scores[unit.name] = float(m.group(1))
    # docs/security.md records these; the colony needs no privilege at all.
    assert scores["coral-colonyd.service"] <= 1.5, scores
    assert scores["coral-agentd.service"] <= 5.5, scores
