"""The colony as the agents' and clients' meeting point: audit rows for
every request, and agents that find it again after it restarts."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from typing import Any

import duckdb

from tests.harness import (
    CoralEnv,
    NativeService,
    Process,
    coralctl,
    kernel_probes,
    start_attach,
    start_colony,
    start_time,
    tool,
)
from tests.test_native_e2e import wait_for_service


def test_every_request_leaves_one_audit_row_with_who_and_outcome(coral_env: CoralEnv, colony: Process, agent: Process,
                                                                 payments: NativeService) -> None:
    wait_for_service(coral_env, "payments")
    coralctl(coral_env, "debug", "sessions")
    coralctl(coral_env, "debug", "attach", "payments", "--function", "nosuch")
    coralctl(coral_env, "debug", "attach", "payments", "--function", "validate_card", "--duration", "1s", "--no-save")
    assert colony.stop() == 0
    db = duckdb.connect(str(coral_env.state_dir / "colony" / "colony.duckdb"), read_only=True)
    rows = db.execute("SELECT who, method, function, outcome FROM audit WHERE method != 'ListServices' ORDER BY ts_ns").fetchall()
    counted = db.execute("SELECT who, method, outcome, detail FROM audit WHERE method = 'ListDebugSessions'").fetchall()
    db.close()
    attach_ok = [r for r in rows if r[1] == "AttachUprobe" and r[3] == "OK"]
    assert ("uid:0", "AttachUprobe", "nosuch", "NOT_FOUND") in rows
    assert len(attach_ok) == 1 and attach_ok[0][2] == "validate_card"
    assert all(r[1] in {"ListDebugSessions", "AttachUprobe", "QueryUprobeEvents"} for r in rows)
    # Reads without values are counted, one row per peer and method, written at the latest at shutdown.
    assert counted == [("uid:0", "ListDebugSessions", "OK", "answered")], counted


def test_coralctl_audit_reads_the_log(coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService) -> None:
    wait_for_service(coral_env, "payments")
    coralctl(coral_env, "debug", "attach", "payments", "--function", "nosuch")
    out = coralctl(coral_env, "--output", "json", "audit", "--since", "1h")
    assert out.returncode == 0, out.stderr
    entries = [json.loads(line) for line in out.stdout.splitlines()]
    refused = [e for e in entries if e["method"] == "AttachUprobe"]
    assert refused and refused[-1]["outcome"] == "NOT_FOUND" and refused[-1]["function"] == "nosuch"
    assert refused[-1]["service"] == "payments" and refused[-1]["who"] == "uid:0"
    text = coralctl(coral_env, "audit")
    assert "AttachUprobe" in text.stdout and "NOT_FOUND" in text.stdout


def test_agent_finds_a_restarted_colony_and_announces_its_services(coral_env: CoralEnv, colony: Process, agent: Process,
                                                                   payments: NativeService) -> None:
    wait_for_service(coral_env, "payments")
    assert colony.stop() == 0
    assert coralctl(coral_env, "--timeout", "1s", "services").returncode == 3
    restarted = start_colony(coral_env)
    try:
        wait_for_service(coral_env, "payments", deadline_s=40)  # the agent's back-off is at most a few seconds here
        out = coralctl(coral_env, "--output", "json", "debug", "attach", "payments", "--function", "validate_card",
                       "--duration", "1s")
        assert out.returncode == 0 and json.loads(out.stdout.splitlines()[-1])["status"] == "expired"
    finally:
        restarted.stop()


def test_coral_run_forwards_sigterm_to_the_program(coral_env: CoralEnv, agent: Process) -> None:
    run = Process("run-sleep", [tool("coral-run"), "--service", "sleeper", "--", "sleep", "300"], coral_env).wait_ready()
    child = run.child_pid
    started = start_time(child)
    assert started is not None
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(30) == 128 + signal.SIGTERM
    assert start_time(child) != started  # coral-run exited after its child, not before: that process is gone
    out = coralctl(coral_env, "--local", "--output", "json", "services")
    assert "sleeper" not in out.stdout
    run.stop()



def test_colony_killed_mid_session_comes_back_with_its_sessions_and_audit(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService
) -> None:
    wait_for_service(coral_env, "payments")
    attach, first = start_attach(coral_env, "payments", "validate_card", "--duration", "3s", "--no-save")
    attach.kill()
    attach.wait()
    before = [json.loads(line) for line in coralctl(coral_env, "--output", "json", "audit").stdout.splitlines()]
    colony.proc.send_signal(signal.SIGKILL)
    colony.proc.wait(10)
    restarted = start_colony(coral_env)
    try:
        after = [json.loads(line) for line in coralctl(coral_env, "--output", "json", "audit").stdout.splitlines()]
        assert after[: len(before)] == before  # nothing lost
        wait_for_service(coral_env, "payments", deadline_s=40)  # the agent found the new colony
        # The session is still known, and still ends on time (the agent's clock decides).
        events = coralctl(coral_env, "--output", "json", "debug", "events", first["session_id"])
        assert events.returncode == 0, events.stderr
        summary = json.loads(events.stdout.splitlines()[-1])
        assert summary["session_id"] == first["session_id"]
        assert summary["status"] in {"active", "expired"}
    finally:
        restarted.stop()


def test_agent_killed_mid_session_the_colony_says_so_and_keeps_the_events(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService
) -> None:
    wait_for_service(coral_env, "payments")
    attach, first = start_attach(coral_env, "payments", "validate_card", "--duration", "5m", "--no-save")
    assert payments.call(6) == "done 6 declined 0"
    assert attach.stdout is not None
    seen = [json.loads(attach.stdout.readline()) for _ in range(6)]  # the 6 calls streamed through the colony
    assert [e["kind"] for e in seen] == ["call"] * 6
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(10)
    attach.kill()
    attach.wait()
    # The colony notices the silence (heartbeat_liveness intervals), then reports the session lost
    # (not final: its calls would come if the agent came back).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sessions = [json.loads(line) for line in coralctl(coral_env, "--output", "json", "debug", "sessions").stdout.splitlines()]
        if sessions and sessions[0]["status"] == "lost":
            break
    assert (sessions[0]["status"], sessions[0]["status_reason"]) == ("lost", "agent lost")
    # Its events are still there, from the colony's own copy.
    events = coralctl(coral_env, "--output", "json", "debug", "events", first["session_id"])
    assert events.returncode == 0, events.stderr
    kept = [json.loads(line) for line in events.stdout.splitlines() if '"kind":"call"' in line]
    assert [e["seq"] for e in kept] == [e["seq"] for e in seen]


def colony_session_when(env: CoralEnv, session_id: str, wanted: Callable[[dict[str, Any]], bool],
                        within: float = 60.0) -> dict[str, Any]:
    """The colony's view of a session once it is as wanted; each ask is a round trip to the colony."""
    deadline = time.monotonic() + within
    while True:
        out = coralctl(env, "--output", "json", "debug", "sessions").stdout.splitlines()
        session: dict[str, Any] = next(s for s in map(json.loads, out) if s["session_id"] == session_id)
        if wanted(session):
            return session
        assert time.monotonic() < deadline, session


def test_an_agent_silent_longer_than_the_colony_waits_comes_back_with_every_call(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService
) -> None:
    """The agent is stopped (SIGSTOP) until the colony marks its part lost;
    100 calls are made meanwhile (the kernel records them). Resumed, the
    agent announces itself again and the colony pulls the part from where
    it stopped: the session ends with all 120 calls, none twice."""
    wait_for_service(coral_env, "payments")
    attach, first = start_attach(coral_env, "payments", "validate_card", "--duration", "15s", "--no-save")
    assert payments.call(20).startswith("done 20 ")

    agent.proc.send_signal(signal.SIGSTOP)
    try:
        colony_session_when(coral_env, first["session_id"], lambda s: s["status"] == "lost")
        assert payments.call(100).startswith("done 100 ")
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    s = colony_session_when(coral_env, first["session_id"], lambda s: s["parts"][0]["complete"])
    assert (s["status"], s["calls"], s["total_calls"], s["lost"]) == ("expired", 120, 120, {}), s
    events = coralctl(coral_env, "--output", "json", "debug", "events", first["session_id"]).stdout.splitlines()
    returns = [e["seq"] for e in map(json.loads, events) if e.get("kind") == "call"]
    assert len(returns) == len(set(returns)) == 120
    attach.kill()
    attach.wait()


def test_a_detach_while_the_agent_is_lost_reaches_it_when_it_is_back(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService
) -> None:
    """Detached while its agent was stopped (SIGSTOP) and marked lost: the
    colony keeps the detach and sends it when the agent announces itself
    again, long before the session's 10 minutes are up."""
    wait_for_service(coral_env, "payments")
    attach, first = start_attach(coral_env, "payments", "validate_card", "--duration", "10m", "--no-save")
    assert payments.call(8).startswith("done 8 ")
    probe = f"/proc/{payments.child_pid}/exe"

    agent.proc.send_signal(signal.SIGSTOP)
    try:
        colony_session_when(coral_env, first["session_id"], lambda s: s["status"] == "lost")
        detach = coralctl(coral_env, "debug", "detach", first["session_id"])
        assert detach.returncode == 0 and "lost" in detach.stdout, detach
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    s = colony_session_when(coral_env, first["session_id"], lambda s: s["parts"][0]["complete"])
    assert (s["status"], s["calls"]) == ("detached", 8), s
    assert probe not in kernel_probes()
    rows = [json.loads(line) for line in coralctl(coral_env, "--output", "json", "audit").stdout.splitlines()]
    sent = [r for r in rows if r["method"] == "DetachUprobe" and "when it came back" in r["detail"]]
    assert [(r["who"], r["session_id"]) for r in sent] == [("uid:0", first["session_id"])], sent
    attach.kill()
    attach.wait()


def test_a_kept_detach_survives_a_colony_restart(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService
) -> None:
    """Detached while its agent was stopped, then the colony restarts before
    the agent is back: the kept detach was saved with the session
    (`parts[].detach_by`), and the new colony sends it when the agent
    announces itself: the probes go long before the session's 10 minutes."""
    wait_for_service(coral_env, "payments")
    attach, first = start_attach(coral_env, "payments", "validate_card", "--duration", "10m", "--no-save")
    assert payments.call(8).startswith("done 8 ")
    probe = f"/proc/{payments.child_pid}/exe"
    sid = first["session_id"]
    restarted: Process | None = None
    agent.proc.send_signal(signal.SIGSTOP)
    try:
        colony_session_when(coral_env, sid, lambda s: s["status"] == "lost")
        detach = coralctl(coral_env, "debug", "detach", sid)
        assert detach.returncode == 0 and "lost" in detach.stdout, detach
        kept = colony_session_when(coral_env, sid, lambda s: s["parts"][0]["detach_by"] == "uid:0")
        assert kept["status"] == "lost"
        assert colony.stop() == 0
        restarted = start_colony(coral_env)
        after = colony_session_when(coral_env, sid, lambda s: True)
        assert (after["status"], after["parts"][0]["detach_by"]) == ("lost", "uid:0"), after
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    try:
        s = colony_session_when(coral_env, sid, lambda s: s["parts"][0]["complete"])
        assert (s["status"], s["calls"], s["parts"][0]["detach_by"]) == ("detached", 8, ""), s
        assert probe not in kernel_probes()
        rows = [json.loads(line) for line in coralctl(coral_env, "--output", "json", "audit").stdout.splitlines()]
        sent = [r for r in rows if r["method"] == "DetachUprobe" and "when it came back" in r["detail"]]
        assert [(r["who"], r["session_id"]) for r in sent] == [("uid:0", sid)], sent
    finally:
        assert restarted is not None
        restarted.stop()
        attach.kill()
        attach.wait()
