"""The systemd units are valid (systemd-analyze verify, with ExecStart
pointing where `pip install` put the daemons) and their hardening is
measured (systemd-analyze security --offline)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.harness import BIN, REPO, build_c

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
    assert scores["coral-agentd.service"] <= 4.6, scores


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv is not installed (Debian: util-linux)")
def test_the_agent_attaches_with_only_the_units_capabilities(bpf: None) -> None:
    """The unit's CapabilityBoundingSet= and SupplementaryGroups= are enough:
    a real agent bounded to them attaches, with argument capture, to a C
    service run by another user, and leaves no probe behind
    (bench/caps.py measures each capability's removal)."""
    from bench.caps import try_capabilities, unit_setting

    bin_dir = Path(tempfile.mkdtemp(prefix="coral-caps-", dir="/tmp"))
    try:
        os.chmod(bin_dir, 0o755)  # the service's user runs it
        binary = build_c(REPO / "examples" / "native" / "payments.c", bin_dir / "payments")
        outcome = try_capabilities(unit_setting("CapabilityBoundingSet"), binary)
    finally:
        shutil.rmtree(bin_dir, ignore_errors=True)
    assert outcome.works, outcome
