"""Faults mid-session, with real processes and real BPF: the probed
process exits, the agent is killed with SIGKILL. Nothing of a dead session
stays in the kernel; what was written stays written."""

from __future__ import annotations

import json
import os
import signal

import duckdb

from tests.harness import CoralEnv, NativeService, Process, coralctl, kernel_probes, probes_on, start_agent, start_attach


def test_target_exits_mid_session(coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService) -> None:
    attach, first = start_attach(coral_env, "payments", "validate_card", "--local", "--duration", "5m", "--no-save")
    assert payments.call(4) == "done 4 declined 0"
    child = payments.child_pid
    assert payments.stop() == 0  # end of input: the program exits, and coral-run with it
    out, _ = attach.communicate(timeout=30)
    summary = json.loads(out.splitlines()[-1])
    assert (summary["status"], summary["status_reason"], summary["calls"]) == ("failed", "target exited", 4)
    assert f"/proc/{child}/exe" not in kernel_probes()
    events = coralctl(coral_env, "--local", "--output", "json", "debug", "events", first["session_id"])
    assert sum(1 for line in events.stdout.splitlines() if '"kind":"call"' in line) == 4  # kept
    assert coralctl(coral_env, "--local", "ping").returncode == 0  # the agent is unharmed


def test_agent_killed_mid_session_leaves_no_probe_and_keeps_what_it_wrote(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService
) -> None:
    attach, first = start_attach(coral_env, "payments", "validate_card", "--local", "--duration", "5m", "--no-save")
    assert payments.call(5) == "done 5 declined 0"
    stored = coralctl(coral_env, "--local", "--output", "json", "debug", "events", first["session_id"])
    assert sum(1 for line in stored.stdout.splitlines() if '"kind":"call"' in line) == 5
    while True:  # until the agent has written them (within agent.flush_interval)
        ping = json.loads(coralctl(coral_env, "--local", "--output", "json", "ping").stdout)
        if ping["counters"]["storage.pending_calls"] == 0:
            break
    probes = [line for line in kernel_probes().splitlines() if f"/proc/{payments.child_pid}/exe" in line]
    assert len(probes) == 2
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(10)
    attach.kill()
    attach.wait()
    # The kernel dropped the probes with the agent's file descriptors.
    assert f"/proc/{payments.child_pid}/exe" not in kernel_probes()
    db = duckdb.connect(str(coral_env.state_dir / "agent" / "agent.duckdb"), read_only=True)
    assert db.execute("SELECT count(*) FROM calls WHERE session_id = ?", [first["session_id"]]).fetchone() == (5,)
    db.close()
    # A new agent marks the session failed, keeps its calls, and the service works on.
    restarted = start_agent(coral_env)
    try:
        sessions = coralctl(coral_env, "--local", "--output", "json", "debug", "sessions")
        (session,) = [json.loads(line) for line in sessions.stdout.splitlines()]
        assert (session["status"], session["status_reason"], session["calls"]) == ("failed", "agent restarted", 5)
        assert payments.call(2) == "done 2 declined 0"
    finally:
        restarted.stop()


def test_a_corrupted_database_is_moved_aside_and_the_agent_serves(coral_env: CoralEnv, bpf: None) -> None:
    (coral_env.state_dir / "agent").mkdir(parents=True, exist_ok=True)
    (coral_env.state_dir / "agent" / "agent.duckdb").write_bytes(b"this is not a database" * 1000)
    agent = start_agent(coral_env)
    try:
        assert coralctl(coral_env, "--local", "ping").returncode == 0
        aside = [p.name for p in (coral_env.state_dir / "agent").iterdir() if p.name.startswith("agent.duckdb.unreadable-")]
        assert len(aside) == 1
        assert (coral_env.state_dir / "agent" / aside[0]).read_bytes().startswith(b"this is not a database")  # kept, not deleted
    finally:
        agent.stop()
    assert "could not be opened" in agent.output()


def test_coral_run_killed_mid_session_fails_the_session_and_the_program_runs_on(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService
) -> None:
    attach, first = start_attach(coral_env, "payments", "validate_card", "--local", "--duration", "5m", "--no-save")
    assert payments.call(6) == "done 6 declined 0"
    child = payments.child_pid
    stored = coralctl(coral_env, "--local", "--output", "json", "debug", "events", first["session_id"])
    assert returns(stored.stdout) == 6  # written before the kill
    assert len(probes_on(child)) == 2
    payments.run.proc.send_signal(signal.SIGKILL)
    payments.run.proc.wait(10)
    try:
        out, _ = attach.communicate(timeout=30)
        summary = json.loads(out.splitlines()[-1])
        # Nothing answers for the child any more: the session ends, its probes go.
        assert (summary["status"], summary["status_reason"], summary["calls"]) == ("failed", "coral-run exited", 6)
        assert probes_on(child) == []
        events = coralctl(coral_env, "--local", "--output", "json", "debug", "events", first["session_id"])
        assert returns(events.stdout) == 6
        services = coralctl(coral_env, "--local", "--output", "json", "services")
        assert services.returncode == 0 and services.stdout == ""  # the registration is gone
        # The program runs on, undebugged (no PDEATHSIG: a launcher's death does not take the service down).
        assert payments.call(3) == "done 3 declined 0"
    finally:
        os.kill(child, signal.SIGKILL)


def test_sdk_service_killed_mid_session_fails_the_session_and_keeps_its_calls(
    coral_env: CoralEnv, colony: Process, agent: Process
) -> None:
    from tests.test_native_e2e import wait_for_service
    from tests.test_python_e2e import PythonService

    service = PythonService(coral_env)
    try:
        wait_for_service(coral_env, "payments-api")
        attach, first = start_attach(
            coral_env, "payments-api", "payments.validate_card", "--duration", "5m", "--capture-args", "--no-save"
        )
        for i in range(4):
            assert service.charge("4111111111111111", 100 + i)[0] == 200
        stored = coralctl(coral_env, "--output", "json", "debug", "events", first["session_id"])
        assert returns(stored.stdout) == 4
        assert len(probes_on(service.proc.pid)) == 1
        service.proc.send_signal(signal.SIGKILL)
        service.proc.wait(10)
        out, _ = attach.communicate(timeout=30)
        summary = json.loads(out.splitlines()[-1])
        assert (summary["status"], summary["status_reason"], summary["calls"]) == ("failed", "target exited", 4)
        assert probes_on(service.proc.pid) == []
        events = coralctl(coral_env, "--local", "--output", "json", "debug", "events", first["session_id"])
        assert returns(events.stdout) == 4
        assert coralctl(coral_env, "--local", "ping").returncode == 0
    finally:
        service.proc.kill()
        service.proc.wait(10)


def returns(json_lines: str) -> int:
    return sum(1 for line in json_lines.splitlines() if '"kind":"call"' in line)


def test_no_call_after_expiry_is_counted_even_while_the_agent_cannot_detach(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService
) -> None:
    """The agent is stopped (SIGSTOP) across its session's expiry, so the
    probes stay attached past it; the 7 calls made then are in no count,
    because the kernel keeps the session's end itself."""
    import time

    attach, first = start_attach(coral_env, "payments", "validate_card", "--local", "--duration", "2s", "--no-save")
    assert payments.call(5) == "done 5 declined 0"
    agent.proc.send_signal(signal.SIGSTOP)
    try:
        while time.time_ns() < first["expires_unix_ns"] + 200_000_000:  # wait for the expiry itself to pass
            time.sleep(0.05)  # the workload: time passing beyond the expiry, not readiness
        assert payments.call(7) == "done 7 declined 0"  # probed: nobody could detach them
        assert f"/proc/{payments.child_pid}/exe" in kernel_probes()
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    out, _ = attach.communicate(timeout=60)
    summary = json.loads(out.splitlines()[-1])
    assert (summary["status"], summary["calls"], summary["lost"]) == ("expired", 5, {}), summary
    assert f"session {first['session_id']}: 7 calls returned after its expiry" in agent.output()
    assert f"/proc/{payments.child_pid}/exe" not in kernel_probes()
