"""One service on two agents, one colony: an attach starts on both, the
events name their agent and pid, the summary adds both up; --agent picks
one. The colony pulls events on its own, so a finished session outlives
its agent; retention purges finished sessions and keeps running ones.
Real daemons, real BCC, real C programs under coral-run."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import CoralEnv, NativeService, Process, coralctl, start_agent, start_attach, start_colony, tool

N = 12
AGENT_B = "agent-b"


def records(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def wait_for_instances(env: CoralEnv, service: str, count: int, deadline_s: float = 15.0) -> list[dict[str, Any]]:
    """Ask the colony until it lists `count` instances of the service (each ask is a round trip)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        found = [s for s in records(coralctl(env, "--output", "json", "services").stdout) if s["service"] == service]
        if len(found) == count:
            return found
    raise AssertionError(f"colony never listed {count} instances of {service}")


def wait_for_session(env: CoralEnv, session_id: str, done: Any, deadline_s: float = 30.0) -> dict[str, Any]:
    """Ask the colony for its sessions until `done(session)` holds."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        for s in records(coralctl(env, "--output", "json", "debug", "sessions").stdout):
            if s["session_id"] == session_id and done(s):
                return dict(s)
    raise AssertionError(f"session {session_id} never reached the expected state")


@pytest.fixture
def agent_b(coral_env: CoralEnv, colony: Process, bpf: None) -> Iterator[tuple[CoralEnv, Process]]:
    env = coral_env.another_agent(AGENT_B)
    proc = start_agent(env, "agentd-b")
    yield env, proc
    proc.stop()


@pytest.fixture
def payments_b(agent_b: tuple[CoralEnv, Process], payments_binary: Path) -> Iterator[NativeService]:
    svc = NativeService(agent_b[0], payments_binary, name="run-payments-b")
    yield svc
    svc.stop()


def test_attach_runs_on_every_agent_and_the_summary_adds_them_up(
    coral_env: CoralEnv, agent: Process, payments: NativeService, payments_b: NativeService
) -> None:
    instances = wait_for_instances(coral_env, "payments", 2)
    agent_a = next(i["agent_id"] for i in instances if i["agent_id"] != AGENT_B)
    attach, first = start_attach(coral_env, "payments", "validate_card", "--duration", "4s", "--capture-args")
    assert [(p["agent_id"], p["session"]["status"]) for p in first["parts"]] == [(agent_a, "active"), (AGENT_B, "active")]
    assert sorted(first["pids"]) == sorted([payments.child_pid, payments_b.child_pid]) and first["probes"] == 4

    assert payments.call(N) == f"done {N} declined 1"
    assert payments_b.call(N) == f"done {N} declined 1"
    rest, _ = attach.communicate(timeout=60)
    assert attach.returncode == 0
    lines = records(rest)
    returns = [e for e in lines if e["kind"] == "call"]
    assert sorted((e["agent_id"], e["pid"]) for e in returns) == sorted(
        [(agent_a, payments.child_pid)] * N + [(AGENT_B, payments_b.child_pid)] * N
    )
    summary = lines[-1]
    assert summary["kind"] == "summary" and summary["status"] == "expired" and summary["calls"] == 2 * N
    assert sum(summary["histogram"].values()) == 2 * N  # the two kernels' histograms, bucket by bucket
    assert [(a["agent_id"], a["calls"], a["status"]) for a in summary["agents"]] == [
        (agent_a, N, "expired"),
        (AGENT_B, N, "expired"),
    ]

    # The text view names the agent of each call, and the summary each agent.
    text = coralctl(coral_env, "debug", "events", first["session_id"], "--slow", "1ms")
    assert text.returncode == 0, text.stderr
    assert text.stdout.count(f"agent={agent_a} pid={payments.child_pid}") == N
    assert text.stdout.count(f"agent={AGENT_B} pid={payments_b.child_pid}") == N
    assert f"Total calls:  {2 * N}" in text.stdout and "Agents:" in text.stdout
    sessions = coralctl(coral_env, "debug", "sessions")
    assert "2 agents" in sessions.stdout and f"agent {AGENT_B}" in sessions.stdout


def test_agent_option_narrows_the_session_to_one_agent(
    coral_env: CoralEnv, agent: Process, payments: NativeService, payments_b: NativeService
) -> None:
    instances = wait_for_instances(coral_env, "payments", 2)
    agent_a = next(i["agent_id"] for i in instances if i["agent_id"] != AGENT_B)
    unknown = coralctl(coral_env, "debug", "attach", "payments", "--function", "validate_card", "--agent", "nosuch")
    assert unknown.returncode == 1
    assert f"no agent 'nosuch' is connected (known agents: {', '.join(sorted([agent_a, AGENT_B]))})" in unknown.stderr

    attach, first = start_attach(coral_env, "payments", "validate_card", "--duration", "3s", "--agent", AGENT_B)
    assert [p["agent_id"] for p in first["parts"]] == [AGENT_B] and first["pids"] == [payments_b.child_pid]
    assert payments.call(N) == f"done {N} declined 1"
    assert payments_b.call(N) == f"done {N} declined 1"
    rest, _ = attach.communicate(timeout=60)
    lines = records(rest)
    assert {(e["agent_id"], e["pid"]) for e in lines if e["kind"] == "call"} == {(AGENT_B, payments_b.child_pid)}
    assert lines[-1]["calls"] == N


def test_an_agent_that_refuses_is_named_and_the_others_run(
    coral_env: CoralEnv, agent: Process, payments: NativeService, agent_b: tuple[CoralEnv, Process]
) -> None:
    # On agent-b, "payments" is a program without validate_card.
    other = Process("run-sleep-b", [tool("coral-run"), "--service", "payments", "--", "sleep", "300"], agent_b[0]).wait_ready()
    try:
        wait_for_instances(coral_env, "payments", 2)
        attach, first = start_attach(coral_env, "payments", "validate_card", "--duration", "2s")
        refused = next(p for p in first["parts"] if p["agent_id"] == AGENT_B)
        reason = refused["session"]["status_reason"]  # sleep has no validate_card (nor any symbol table)
        assert refused["session"]["status"] == "failed" and reason
        assert first["status"] == "active" and first["status_reason"] == f"{AGENT_B}: {reason}"
        assert payments.call(N) == f"done {N} declined 1"
        rest, _ = attach.communicate(timeout=60)
        summary = records(rest)[-1]
        assert summary["calls"] == N and summary["status"] == "expired"
        assert [a["status"] for a in summary["agents"] if a["agent_id"] == AGENT_B] == ["failed"]
    finally:
        other.stop()


def test_an_agent_lost_mid_session_is_named_and_the_others_run_on(
    coral_env: CoralEnv, agent: Process, payments: NativeService, agent_b: tuple[CoralEnv, Process], payments_b: NativeService
) -> None:
    wait_for_instances(coral_env, "payments", 2)
    attach, first = start_attach(coral_env, "payments", "validate_card", "--duration", "5m", "--no-save")
    assert payments_b.call(N) == f"done {N} declined 1"
    # The colony pulls agent-b's calls (and its counts) while the session runs.
    wait_for_session(
        coral_env, first["session_id"], lambda s: [p["session"]["calls"] for p in s["parts"] if p["agent_id"] == AGENT_B] == [N]
    )
    agent_b[1].proc.send_signal(signal.SIGKILL)
    agent_b[1].proc.wait(10)
    lost = wait_for_session(coral_env, first["session_id"], lambda s: any(p["session"]["status"] == "lost" for p in s["parts"]))
    assert lost["status"] == "active" and lost["status_reason"] == f"{AGENT_B}: agent lost"
    assert payments.call(N) == f"done {N} declined 1"  # agent a runs on
    assert coralctl(coral_env, "debug", "detach", first["session_id"]).returncode == 0
    rest, _ = attach.communicate(timeout=60)
    lines = records(rest)
    summary = lines[-1]
    assert summary["status"] == "detached" and summary["status_reason"] == f"{AGENT_B}: agent lost"
    assert sorted((a["agent_id"] == AGENT_B, a["status"]) for a in summary["agents"]) == [(False, "detached"), (True, "lost")]
    assert sum(e["kind"] == "call" for e in lines) == 2 * N  # b's calls were pulled


def test_the_colony_pulls_a_finished_session_before_its_agent_dies(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService
) -> None:
    wait_for_instances(coral_env, "payments", 1)
    attach, first = start_attach(coral_env, "payments", "validate_card", "--duration", "2s", "--no-save")
    attach.kill()  # no client reads a single event
    attach.wait()
    assert payments.call(N) == f"done {N} declined 1"
    # The colony pulls on its own, and once more at the end.
    wait_for_session(
        coral_env, first["session_id"], lambda s: s["status"] == "expired" and all(p["complete"] for p in s["parts"])
    )
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(10)

    out = coralctl(coral_env, "--output", "json", "debug", "events", first["session_id"])
    assert out.returncode == 0, out.stderr
    lines = records(out.stdout)
    calls = [e for e in lines if e["kind"] == "call"]
    assert len({e["seq"] for e in calls}) == len(calls) == N  # each once
    assert lines[-1]["calls"] == N and lines[-1]["status"] == "expired"


RETENTION = """
[colony]
retention = "1s"
purge_interval = 0.2
[agent]
retention = "1s"
purge_interval = 0.2
"""


def test_retention_purges_finished_sessions_and_keeps_running_ones(coral_env: CoralEnv, payments_binary: Path, bpf: None) -> None:
    env = coral_env.with_config(RETENTION)
    colony = start_colony(env)
    agent = start_agent(env)
    payments = NativeService(env, payments_binary)
    try:
        wait_for_instances(env, "payments", 1)
        done = records(
            coralctl(
                env, "--output", "json", "debug", "attach", "payments", "--function", "validate_card", "--duration", "1s"
            ).stdout
        )[-1]
        running, first = start_attach(env, "payments", "validate_card", "--duration", "5m", "--no-save")
        end = time.monotonic() + 30
        while time.monotonic() < end:
            ids = [s["session_id"] for s in records(coralctl(env, "--output", "json", "debug", "sessions").stdout)]
            local = [s["session_id"] for s in records(coralctl(env, "--local", "--output", "json", "debug", "sessions").stdout)]
            if done["session_id"] not in ids and done["session_id"] not in local:
                break
        assert (ids, local) == ([first["session_id"]], [first["session_id"]])  # the running one stays
        gone = coralctl(env, "debug", "events", done["session_id"])
        assert gone.returncode == 1 and f"no session '{done['session_id']}'" in gone.stderr
        audit = records(coralctl(env, "--output", "json", "audit").stdout)
        assert any(a["session_id"] == done["session_id"] and a["method"] == "AttachUprobe" for a in audit)
        running.kill()
        running.wait()
    finally:
        payments.stop()
        agent.stop()
        colony.stop()
    assert "retention: purged 1 session(s)" in colony.output()
    assert "retention: purged 1 session(s)" in agent.output()
