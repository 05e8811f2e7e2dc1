"""coralctl as a person sees it (a real terminal, through tmux) and as a
script sees it (a pipe: no escape codes), and its bash completion."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from coral.daemon.client import Client
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, Process, tool
from tests.test_native_e2e import wait_for_service
from tests.test_python_e2e import PythonService

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (Debian: tmux)")


def wait_for_active_session(env: CoralEnv, deadline_s: float = 30.0) -> None:
    """Ask the agent until a session is live (round trips, no sleeping)."""
    end = time.monotonic() + deadline_s
    with Client(env.endpoint("agent.sock"), 5) as agent:
        while time.monotonic() < end:
            reply = agent.call("ListDebugSessions", pb.ListDebugSessionsRequest(active_only=True))
            if reply.sessions:  # type: ignore[attr-defined]
                return
    raise AssertionError("no session became active")


def tmux(server: Path, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """tmux on this test's own server, its socket in the test's directory (tmux
    leaves the socket file behind), no configuration file: never root's
    default server, and nothing of it outlives the test."""
    return subprocess.run(["tmux", "-S", str(server), "-f", "/dev/null", *args], text=True, **kwargs)


def test_attach_in_a_terminal_shows_colour_slow_calls_errors_and_the_histogram(
    coral_env: CoralEnv, colony: Process, agent: Process, tmp_path: Path
) -> None:
    svc = PythonService(coral_env)
    server = tmp_path / "tmux.sock"
    name, done, release = (f"{w}-{secrets.token_hex(4)}" for w in ("coral", "done", "release"))
    env = " ".join(f"{k}={coral_env.env[k]}" for k in ("CORAL_RUNTIME_DIR", "CORAL_STATE_DIR", "CORAL_CONFIG"))
    command = (f"env -u NO_COLOR {env} TERM=xterm-256color {tool('coralctl')} debug attach payments-api "
               "--function payments.validate_card --duration 3s --slow 1ms --capture-args --capture-return --no-save; "
               f"tmux -S {server} wait-for -S {done}; tmux -S {server} wait-for {release}")  # the pane stays until captured
    try:
        wait_for_service(coral_env, "payments-api")
        tmux(server, "new-session", "-d", "-s", name, "-x", "160", "-y", "50", command, check=True)
        wait_for_active_session(coral_env)
        for i in range(6):
            svc.charge("4111111111111117" if i % 3 == 0 else "4111111111111111", 600 + i)  # every third declined
        tmux(server, "wait-for", done, check=True, timeout=60)  # coralctl has finished
        plain = tmux(server, "capture-pane", "-p", "-S", "-", "-t", name, capture_output=True).stdout
        styled = tmux(server, "capture-pane", "-p", "-e", "-S", "-", "-t", name, capture_output=True).stdout
    finally:
        tmux(server, "wait-for", "-S", release, capture_output=True)
        tmux(server, "kill-server", capture_output=True)
        svc.stop()
    assert plain.count(" duration=") == 6 and "pid=" in plain
    assert plain.count("⚠ SLOW") == 6  # validate_card waits 2 ms: every call is over 1 ms
    assert plain.count("└─ error: ValueError: card declined") == 2
    assert "Summary:" in plain and "Total calls:  6" in plain
    assert "Errors:       2 (33.3%)" in plain and "Slow calls (>1.0ms): 6 (100.0%)" in plain
    assert "Latency (every call):" in plain and "█" in plain
    assert "\x1b[" in styled  # colour on a terminal


def test_piped_output_has_no_escape_codes(coral_env: CoralEnv, colony: Process, agent: Process) -> None:
    svc = PythonService(coral_env)
    try:
        wait_for_service(coral_env, "payments-api")
        p = subprocess.Popen([tool("coralctl"), "debug", "attach", "payments-api", "--function", "payments.validate_card",
                              "--duration", "2s", "--slow", "1ms", "--no-save"], env={**coral_env.env, "TERM": "xterm"},
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None
        assert p.stdout.readline().startswith("Debug session")
        svc.charge("4111111111111117", 10)
        out, _ = p.communicate(timeout=30)
    finally:
        svc.stop()
    assert "└─ error: ValueError: card declined" in out and "⚠ SLOW" in out and "█" in out
    assert "\x1b[" not in out
