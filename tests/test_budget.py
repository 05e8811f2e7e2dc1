"""A per-session CPU budget, enforced in the kernel: a C function called
in a tight loop on three threads, probed under the default budget (10% of
one CPU). The kernel stops recording at once, the agent detaches the
session as failed (budget exceeded) with every call it counted until then,
no probe stays, and the program runs on."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from coral.daemon.config import ConfigError, parse_config
from tests.harness import REPO, CoralEnv, Process, build_c, coralctl, probes_on, start_agent, start_attach, tool


def test_the_budget_is_a_percentage_of_one_cpu_per_second() -> None:
    assert parse_config({"sessions": {"cpu_budget_percent": 2}}, "t").sessions.cpu_budget_ns == 20_000_000
    assert parse_config({}, "t").sessions.cpu_budget_ns == 100_000_000  # 10% of one CPU by default
    assert parse_config({"sessions": {"cpu_budget_percent": 0}}, "t").sessions.cpu_budget_ns == 0  # no limit
    with pytest.raises(ConfigError, match=r"\[sessions\] cpu_budget_percent: must be between 0 and 100, got 150"):
        parse_config({"sessions": {"cpu_budget_percent": 150}}, "t")


class HotService:
    """bench/hot.c under coral-run: `rate(ms)` is the calls per second of
    hot() over all threads, measured by the program itself."""

    def __init__(self, env: CoralEnv, binary: Path, threads: int = 3) -> None:
        self.run = Process(
            "run-hot", [tool("coral-run"), "--service", "hot", "--", str(binary), str(threads)], env, stdin=subprocess.PIPE
        ).wait_ready()
        status = next(p for m in self.run.notify.messages for p in m.split("\n") if p.startswith("STATUS="))
        self.pid = int(status.split(" pid ")[1].split()[0])

    def rate(self, ms: int = 100) -> float:
        stdin, stdout = self.run.proc.stdin, self.run.proc.stdout
        if stdin is None or stdout is None:
            raise AssertionError("no pipe to the service")
        stdin.write(f"{ms}\n".encode())
        stdin.flush()
        return float(stdout.readline())

    def stop(self) -> None:
        if self.run.proc.stdin:
            self.run.proc.stdin.close()
        self.run.stop()


def test_a_hot_function_over_the_default_budget_is_detached_and_the_program_runs_on(
    coral_env: CoralEnv, bpf: None, tmp_path: Path
) -> None:
    agent = start_agent(coral_env)  # etc/coral.toml: the shipped configuration
    service = HotService(coral_env, build_c(REPO / "bench" / "hot.c", tmp_path / "hot"))
    try:
        assert service.rate() > 0
        attach, first = start_attach(coral_env, "hot", "hot", "--local", "--duration", "60s", "--no-save")
        out, _ = attach.communicate(timeout=60)
        summary = json.loads(out.splitlines()[-1])
        assert (summary["status"], summary["status_reason"]) == ("failed", "budget exceeded")
        assert summary["calls"] > 0  # what it saw before the cut is kept, every call of it
        events = coralctl(coral_env, "--local", "--output", "json", "debug", "events", first["session_id"]).stdout
        stored = sum(1 for line in events.splitlines() if '"kind":"call"' in line)
        assert stored + sum(summary["lost"].values()) == summary["calls"], summary
        assert probes_on(service.pid) == []
        sessions = coralctl(coral_env, "--local", "--output", "json", "debug", "sessions")
        (row,) = [json.loads(line) for line in sessions.stdout.splitlines()]
        assert (row["session_id"], row["status"], row["status_reason"]) == (first["session_id"], "failed", "budget exceeded")
        assert service.rate() > 0  # the program runs on, unprobed
        assert coralctl(coral_env, "--local", "ping").returncode == 0
    finally:
        service.stop()
        agent.stop()
    assert f"session {first['session_id']}: hot hot went over its CPU budget (10% of one CPU); detached" in agent.output()


def test_the_agent_measures_what_a_probe_hit_costs_here(coral_env: CoralEnv, agent: Process) -> None:
    """At start-up the agent times a session of its own on libc's getppid
    in its own process; budgets charge that per hit. The probes it used for
    this are gone (the kernel takes a moment to remove each)."""
    counters = json.loads(coralctl(coral_env, "--local", "--output", "json", "ping").stdout)["counters"]
    assert counters["kernel.trap_ns"] > 0
    assert counters["kernel.attached_probes"] == 0
    assert counters["kernel.unpaired_returns"] == 0  # the calibration's own returns are not counted
    def own_probes() -> list[str]:
        perf = subprocess.run(["bpftool", "perf"], capture_output=True, text=True, check=False).stdout
        return [line for line in perf.splitlines() if line.startswith(f"pid {agent.pid} ")]

    deadline = time.monotonic() + 30
    while own_probes() and time.monotonic() < deadline:
        time.sleep(0.2)  # a poll, not readiness: nothing tells when the kernel (about 175 ms a probe) is done
    assert not own_probes()
    logged = re.search(r"a uprobe hit costs (\d+) ns here, the trap and the BPF program; CPU budgets charge that", agent.output())
    assert logged is not None and int(logged.group(1)) == counters["kernel.trap_ns"]
