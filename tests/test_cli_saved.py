"""coralctl writes nothing to the working directory: attach saves the
session under $XDG_STATE_HOME/coral/sessions (owner-only), `debug show`
reopens it with no daemon running, and a session of no calls says so."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

from tests.harness import CoralEnv, NativeService, Process, coralctl, tool
from tests.test_native_e2e import wait_for_service


def attach_text(env: CoralEnv, cwd: Path, *flags: str, calls: NativeService | None = None, n: int = 0) -> str:
    proc = subprocess.Popen([tool("coralctl"), "debug", "attach", "payments", "--function", "validate_card",
                             "--duration", "2s", *flags], env=env.env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("Debug session ")
    if calls is not None:
        assert calls.call(n).startswith(f"done {n} ")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out


def test_attach_saves_under_the_state_directory_and_show_reopens_it(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService, tmp_path: Path
) -> None:
    wait_for_service(coral_env, "payments")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = attach_text(coral_env, cwd, "--capture-args", "--capture-return", calls=payments, n=7)
    assert list(cwd.iterdir()) == []  # nothing in the working directory
    saved_line = out.splitlines()[-1]
    assert saved_line.startswith("Saved to "), out
    session_id = saved_line.rsplit(" ", 1)[1].rstrip(")")
    path = Path(coral_env.env["XDG_STATE_HOME"]) / "coral" / "sessions" / f"{session_id}.jsonl"
    assert saved_line == f"Saved to {path} (coralctl debug show {session_id})"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds captured values
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    kinds = [json.loads(line)["kind"] for line in path.read_text().splitlines()]
    assert kinds == ["session"] + ["call"] * 7 + ["session", "summary"]

    # Reopened with no daemon at all: the same calls and summary as the attach printed.
    colony.stop()
    agent.stop()
    shown = coralctl(coral_env, "debug", "show", session_id)
    assert shown.returncode == 0, shown.stderr
    call_lines = [line for line in out.splitlines() if line.startswith(("[", "  args:", "  └─"))]
    assert [line for line in shown.stdout.splitlines() if line.startswith(("[", "  args:", "  └─"))] == call_lines
    assert f"Session {session_id} expired. 7 calls saved." in shown.stdout
    assert "  Total calls:  7" in shown.stdout
    by_path = coralctl(coral_env, "--output", "json", "debug", "show", str(path))
    assert by_path.stdout == path.read_text()
    missing = coralctl(coral_env, "debug", "show", "dbg-000000000000")
    assert missing.returncode == 1
    assert missing.stderr.startswith(f"coralctl: no saved session 'dbg-000000000000' in {path.parent} (saved there: ")


def test_save_writes_where_asked_and_no_save_nowhere(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService, tmp_path: Path
) -> None:
    wait_for_service(coral_env, "payments")
    target = tmp_path / "incident" / "calls.jsonl"
    out = attach_text(coral_env, tmp_path, "--save", str(target), calls=payments, n=2)
    assert out.splitlines()[-1].startswith(f"Saved to {target} ")
    assert [json.loads(line)["kind"] for line in target.read_text().splitlines()].count("call") == 2
    state = Path(coral_env.env["XDG_STATE_HOME"])
    before = sorted(state.rglob("*.jsonl")) if state.exists() else []
    out = attach_text(coral_env, tmp_path, "--no-save", calls=payments, n=1)
    assert "Saved to" not in out
    assert (sorted(state.rglob("*.jsonl")) if state.exists() else []) == before


def test_a_session_with_no_calls_says_so(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService, tmp_path: Path
) -> None:
    wait_for_service(coral_env, "payments")
    out = attach_text(coral_env, tmp_path, "--no-save")
    assert "  Total calls:  0 (the function was not called while the session ran)" in out
    assert "P50" not in out and "Avg duration" not in out


def test_a_file_that_is_not_a_saved_session_is_refused(coral_env: CoralEnv, tmp_path: Path) -> None:
    junk = tmp_path / "junk.jsonl"
    junk.write_text("not json\n")
    out = coralctl(coral_env, "debug", "show", str(junk))
    assert out.returncode == 1
    assert out.stderr == f"coralctl: {junk} is not a saved session (JSON Lines from coralctl debug attach)\n"
    os.chmod(junk, 0)
