"""Daemons stop cleanly on SIGTERM: exit 0, no probes, sockets or locks left;
the agent enforces a session's expiry without the colony."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.harness import REPO, CoralEnv, NativeService, Process, coralctl, kernel_probes, start_agent, start_attach, tool
from tests.test_native_e2e import wait_for_service


def test_sigterm_with_a_live_session_leaves_nothing_behind(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService
) -> None:
    wait_for_service(coral_env, "payments")
    attach, first = start_attach(coral_env, "payments", "validate_card", "--duration", "10m")
    session_id = first["session_id"]
    probe_path = f"/proc/{payments.child_pid}/exe"
    assert probe_path in kernel_probes()

    assert agent.stop() == 0
    assert probe_path not in kernel_probes()
    attach.kill()
    attach.wait()
    assert colony.stop() == 0
    # No socket or lock of either daemon; their directories stay (as systemd keeps them), and procs/
    # still has the running service's socket.
    run = coral_env.runtime_dir
    leftovers = sorted(str(p.relative_to(run)) for p in run.rglob("*") if not p.is_dir() and p.parent != run / "procs")
    assert leftovers == [], leftovers
    assert "stopping (SIGTERM): detaching 1 session(s)" in agent.output()

    # The session ended as the agent stopped, and says so after a restart.
    restarted = start_agent(coral_env)
    try:
        out = coralctl(coral_env, "--local", "--output", "json", "debug", "sessions")
        (session,) = [json.loads(line) for line in out.stdout.splitlines()]
        assert (session["session_id"], session["status"], session["status_reason"]) == (session_id, "failed", "agent stopped")
    finally:
        assert restarted.stop() == 0


def test_agent_expires_sessions_with_no_colony(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService
) -> None:
    colony.stop()
    out = coralctl(
        coral_env, "--local", "--output", "json", "debug", "attach", "payments", "--function", "validate_card", "--duration", "1s"
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["status"] == "expired"
    assert f"/proc/{payments.child_pid}/exe" not in kernel_probes()


def test_a_second_agent_on_the_same_runtime_dir_refuses_to_start(coral_env: CoralEnv, colony: Process, agent: Process) -> None:
    out = subprocess.run([tool("coral-agentd")], env=coral_env.env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stderr.strip() == f"coral-agentd: another instance (pid {agent.pid}) holds {coral_env.runtime_dir / 'agent.lock'}"


def test_ops_client_lists_services_and_sessions_with_pyzmq_alone(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService
) -> None:
    wait_for_service(coral_env, "payments")
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "ops_client.py")], env=coral_env.env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    assert [s["service"] for s in listing["services"]] == ["payments"]
    assert listing["sessions"] == []


def test_coral_run_exits_with_the_childs_status(coral_env: CoralEnv, agent: Process) -> None:
    out = subprocess.run(
        [tool("coral-run"), "--service", "shell", "--", "sh", "-c", "exit 7"],
        env=coral_env.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 7
    missing = subprocess.run(
        [tool("coral-run"), "--service", "x", "--", "/nonexistent"], env=coral_env.env, capture_output=True, text=True, timeout=30
    )
    assert missing.returncode == 127 and "cannot start /nonexistent" in missing.stderr
