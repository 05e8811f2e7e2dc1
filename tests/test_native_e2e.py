"""Attach to a C function through colony and agent, call it N times, see
exactly N calls — live, then again from the stored events — and nothing
left in the kernel afterwards. Real daemons, real BCC, a real program."""

from __future__ import annotations

import json
import subprocess

from tests.harness import CoralEnv, NativeService, Process, coralctl, kernel_probes, start_attach, tool

N = 25
SLEEP_MS = 5


def wait_for_service(env: CoralEnv, service: str, deadline_s: float = 10.0) -> None:
    """Ask the colony until it lists the service (the agent announces it
    right after registering; each ask is a round trip, no sleeping)."""
    import time

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        out = coralctl(env, "--output", "json", "services")
        if any(json.loads(line)["service"] == service for line in out.stdout.splitlines()):
            return
    raise AssertionError(f"colony never listed {service}")


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_attach_sees_exactly_n_calls_live_and_afterwards(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService
) -> None:
    wait_for_service(coral_env, "payments")
    attach = subprocess.Popen(
        [
            tool("coralctl"),
            "--output",
            "json",
            "debug",
            "attach",
            "payments",
            "--function",
            "validate_card",
            "--duration",
            "4s",
            "--capture-args",
            "--capture-return",
        ],
        env=coral_env.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert attach.stdout is not None
    first = json.loads(attach.stdout.readline())
    assert first["kind"] == "session", first
    assert first["status"] == "active" and first["probes"] == 2
    session_id = first["session_id"]
    assert f"/proc/{payments.child_pid}/exe" in kernel_probes()

    assert payments.call(N) == f"done {N} declined 2"  # cards ending in 7: calls 7 and 17
    rest, err = attach.communicate(timeout=60)
    assert attach.returncode == 0, err
    lines = records(rest)
    calls = [r for r in lines if r["kind"] == "call"]
    entries = returns = calls  # a call has its arguments and its result
    assert len(calls) == N and [c["seq"] for c in calls] == sorted(c["seq"] for c in calls)
    assert all(c["pid"] == payments.child_pid for c in calls)
    assert all(c["end_unix_ns"] - c["start_unix_ns"] == c["duration_ns"] for c in calls)
    # validate_card sleeps SLEEP_MS: each call takes at least that, and not wildly more.
    assert all(SLEEP_MS * 1_000_000 <= e["duration_ns"] < SLEEP_MS * 1_000_000 * 20 for e in returns)
    # Arguments by their DWARF names, the return value by its type.
    assert entries[0]["args"][0] == {"name": "card_number", "type": "long int", "value": "<redacted>"}  # by its name
    assert entries[3]["args"][1] == {"name": "amount_cents", "type": "int", "value": "503"}
    assert returns[0]["return_value"] == {"type": "int", "value": "0", "is_error": False, "error_message": ""}
    assert [r["return_value"]["value"] for r in returns].count("-1") == 2
    summary = lines[-1]
    assert summary["kind"] == "summary" and summary["calls"] == N and summary["status"] == "expired"
    # Percentiles come from the kernel's histogram: bucket midpoints, within 1/16.
    assert summary["p50_ns"] >= SLEEP_MS * 1_000_000 * 15 / 16 and summary["lost"] == {}
    assert summary["max_ns"] == max(e["duration_ns"] for e in returns)

    stored = coralctl(coral_env, "--output", "json", "debug", "events", session_id)
    assert stored.returncode == 0, stored.stderr
    stored_calls = [r for r in records(stored.stdout) if r["kind"] == "call"]
    assert [c["seq"] for c in stored_calls] == [c["seq"] for c in calls]

    sessions = records(coralctl(coral_env, "--output", "json", "debug", "sessions").stdout)
    assert [(s["session_id"], s["status"]) for s in sessions] == [(session_id, "expired")]
    assert f"/proc/{payments.child_pid}/exe" not in kernel_probes()


def test_detach_ends_the_session_and_removes_probes(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService
) -> None:
    wait_for_service(coral_env, "payments")
    attach, first = start_attach(coral_env, "payments", "validate_card", "--duration", "5m")
    session_id = first["session_id"]
    assert payments.call(3) == "done 3 declined 0"
    detached = coralctl(coral_env, "debug", "detach", session_id)
    assert detached.returncode == 0 and "detached" in detached.stdout
    rest, _ = attach.communicate(timeout=30)
    summary = records(rest)[-1]
    assert summary["status"] == "detached" and summary["calls"] == 3
    assert f"/proc/{payments.child_pid}/exe" not in kernel_probes()
