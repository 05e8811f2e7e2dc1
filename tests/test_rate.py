"""`--rate N/s`: at most N reported calls a second, decided in the kernel
after sampling and filters; the rest are in the summary's count and its
percentiles, and counted as `lost.rate`. A native target (C) and a Python
one each make far more calls than the limit as fast as they can; the
calls shown never exceed N in any one second of the kernel's clock, and
every call is accounted for."""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import CoralEnv, Process, tool
from tests.test_count_by import BUSY
from tests.test_native_capture import run_service
from tests.test_native_e2e import records
from tests.test_python_count_by import fast_shop
from tests.test_python_where import SERVICE, Call, Shop

__all__ = ["fast_shop"]

RATE = 100


@pytest.fixture
def busy(coral_env: CoralEnv, full_speed_agent: Process, tmp_path: Path) -> Iterator[Process]:
    """A C target that calls tally() N times as fast as it can for each line N."""
    (tmp_path / "busy.c").write_text(BUSY)
    subprocess.run(["gcc", "-g", "-O1", "-o", str(tmp_path / "busy"), str(tmp_path / "busy.c")], check=True)
    run = run_service(coral_env, "rate-busy", tmp_path / "busy")
    yield run
    run.stop()


def windows_spanned(seconds: float) -> int:
    """One-second windows of a clock that an interval this long can touch."""
    return math.ceil(seconds) + 1


def check_rate(shown: list[dict[str, Any]], summary: dict[str, Any], made: int, seconds: float) -> None:
    assert summary["calls"] == made  # every call counted, shown or not
    assert summary["lost"]["rate"] == made - len(shown) - summary["lost"].get("filtered", 0)
    assert 1 <= len(shown) <= RATE * windows_spanned(seconds), (len(shown), seconds)
    # No second of wall time holds more than two of the kernel's windows' worth.
    starts = sorted(c["start_unix_ns"] for c in shown)
    for i, t in enumerate(starts):
        within = sum(1 for u in starts[i:i + 2 * RATE + 1] if u - t < 1_000_000_000)
        assert within <= 2 * RATE, (i, within)


def test_native_calls_past_the_rate_are_counted_not_shown(coral_env: CoralEnv, busy: Process) -> None:
    made = 300_000
    p = subprocess.Popen([tool("coralctl"), "--local", "--output", "json", "debug", "attach", "rate-busy",
                          "--function", "tally", "--duration", "120s", "--no-save", "--capture-args",
                          "--rate", f"{RATE}/s"], env=coral_env.env, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    session = json.loads(p.stdout.readline())
    assert session["kind"] == "session" and session["config"]["rate_per_s"] == RATE
    proc = busy.proc
    assert proc.stdin is not None and proc.stdout is not None
    began = time.monotonic()
    proc.stdin.write(f"{made}\n".encode())
    proc.stdin.flush()
    own = proc.stdout.readline().decode().split()
    seconds = time.monotonic() - began
    assert sum(int(n) for n in own[1::2]) == made
    subprocess.run([tool("coralctl"), "--local", "debug", "detach", session["session_id"]], env=coral_env.env,
                   check=True, capture_output=True, timeout=60)
    out, _ = p.communicate(timeout=60)
    lines = [json.loads(x) for x in out.splitlines()]
    shown = [x for x in lines if x["kind"] == "call"]
    check_rate(shown, lines[-1], made, seconds)
    assert all(c["args"][0]["name"] == "kind" for c in shown)  # the calls shown are whole calls


def test_python_rate_comes_after_the_condition(coral_env: CoralEnv, fast_shop: Shop) -> None:
    """Half the calls fail --where: they are `filtered`, and the limit is
    spent only on calls the condition keeps."""
    calls = [Call(i % 2) for i in range(20_000)]
    p = subprocess.Popen([tool("coralctl"), "--output", "json", "debug", "attach", SERVICE, "--function", "shop.charge",
                          "--duration", "60s", "--capture-args", "--where", "amount == 1", "--rate", str(RATE)],
                         env=coral_env.env, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    session = json.loads(p.stdout.readline())
    assert session["config"]["rate_per_s"] == RATE
    began = time.monotonic()
    own = fast_shop.run(calls)
    seconds = time.monotonic() - began
    assert own["escaped"] == [] and own["made"] == len(calls), own
    subprocess.run([tool("coralctl"), "debug", "detach", session["session_id"]], env=coral_env.env, check=True,
                   capture_output=True, timeout=60)
    out, _ = p.communicate(timeout=60)
    lines = records(out)
    shown = [x for x in lines if x["kind"] == "call"]
    summary = lines[-1]
    assert summary["lost"]["filtered"] == len(calls) // 2
    check_rate(shown, summary, len(calls), seconds)
    assert {a["value"] for c in shown for a in c["args"] if a["name"] == "amount"} == {"1"}


@pytest.mark.parametrize("value, message", [
    ("0/s", "expected calls a second from 1 to 1000000, as 100/s; got '0/s'"),
    ("1000001", "expected calls a second from 1 to 1000000, as 100/s; got '1000001'"),
    ("ten/s", "expected calls a second from 1 to 1000000, as 100/s; got 'ten/s'"),
    ("5/m", "expected calls a second from 1 to 1000000, as 100/s; got '5/m'"),
])
def test_a_bad_rate_is_one_line(coral_env: CoralEnv, value: str, message: str) -> None:
    out = subprocess.run([tool("coralctl"), "debug", "attach", "svc", "--function", "f", "--rate", value],
                         env=coral_env.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == f"coralctl debug attach: error: argument --rate: {message}"


def test_count_by_reports_no_calls_so_a_rate_is_refused(coral_env: CoralEnv, busy: Process) -> None:
    out = subprocess.run([tool("coralctl"), "--local", "debug", "attach", "rate-busy", "--function", "tally",
                          "--count-by", "kind", "--rate", "10/s"], env=coral_env.env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().endswith("--count-by counts every call and reports none: leave out --rate"), out.stderr
