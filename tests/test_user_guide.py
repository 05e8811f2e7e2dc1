"""Every `$ coralctl ...` command in docs/user-guide.md, run as written
against real daemons, the C demo under coral-run and the Python demo
service: it must exit as the guide implies, and its first line must have
the shape the guide shows (ids, pids, numbers, times and paths vary; the
words and columns may not). Section 5b needs two hosts and is covered by
tests/test_multihost.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.harness import REPO, CoralEnv, NativeService, Process, start_attach, tool
from tests.test_native_e2e import wait_for_service
from tests.test_profile import build, busy_service
from tests.test_python_e2e import PythonService

GUIDE = REPO / "docs" / "user-guide.md"
MULTIHOST = re.compile(r"web-\d")  # section 5b's agents


def commands(text: str) -> list[tuple[str, str]]:
    """(command line, the first line the guide shows after it, or "")."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith("$ coralctl "):
            after = lines[i + 1] if i + 1 < len(lines) else ""
            shown = "" if after.startswith(("$ ", "```")) else after
            found.append((line[2:], shown))
    return found


def shape(line: str, agent_id: str) -> str:
    line = line.replace(agent_id, "AGENT") if agent_id else line
    line = re.sub(r"\b(vm|web-\d)\b", "AGENT", line)
    line = re.sub(r"dbg-[0-9a-f]+", "ID", line)
    line = re.sub(r"(ipc://)?/\S+", "PATH", line)
    line = re.sub(r"\d+(\.\d+)?", "N", line)
    return " ".join(line.split())


def test_every_command_of_the_user_guide_runs_as_shown(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService, tmp_path: Path
) -> None:
    python = PythonService(coral_env)
    busy = busy_service(coral_env, build(tmp_path, "busy", "-O0", "-fno-omit-frame-pointer"), "busy")  # to profile
    try:
        wait_for_service(coral_env, "payments")
        wait_for_service(coral_env, "payments-api")
        agent_id = json.loads(subprocess.run([tool("coralctl"), "--local", "--output", "json", "ping"], env=coral_env.env,
                                             capture_output=True, text=True, timeout=30).stdout)["agent_id"]
        # A session to read back, show and (while active) detach, as the guide's ids stand for.
        proc, ended = start_attach(coral_env, "payments", "validate_card", "--duration", "2s", "--capture-args",
                                   "--capture-return", "--save",
                                   str(Path(coral_env.env["XDG_STATE_HOME"]) / "coral" / "sessions" / "saved.jsonl"))
        assert payments.call(3) == "done 3 declined 0"
        proc.communicate(timeout=30)
        active, live = start_attach(coral_env, "payments", "validate_card", "--duration", "60s", "--no-save")
        problems = []
        for command, shown in commands(GUIDE.read_text()):
            if MULTIHOST.search(command + shown):
                continue
            argv = [tool("coralctl"), *re.findall(r"'[^']*'|\S+", command)[1:]]
            argv = [a[1:-1] if a.startswith("'") else a for a in argv]
            if "detach" in argv:
                argv[-1] = live["session_id"]
            elif "show" in argv:
                argv[-1] = "saved"
            else:
                argv = [ended["session_id"] if a.startswith("dbg-") else a for a in argv]
            argv = ["--duration" if a == "--duration" else ("2s" if a == "30s" else a) for a in argv]
            if "attach" in argv and "--print" not in argv and "--where" not in argv:
                argv.append("--no-save")
            out = subprocess.run(argv, env=coral_env.env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
            failing = "&& x" in command
            if out.returncode != (2 if failing else 0):
                problems.append(f"{command}: exit {out.returncode}: {out.stderr.strip()}")
                continue
            first = out.stderr.splitlines()[-1:] if failing else out.stdout.splitlines()[:1]  # after argparse's usage
            if shown and (not first or shape(first[0], agent_id) != shape(shown, agent_id)):
                problems.append(f"{command}:\n  guide: {shown}\n  ran:   {first[0] if first else '(nothing)'}")
        active.communicate(timeout=30)
        assert problems == [], "\n".join(problems)
    finally:
        busy.stop()
        python.stop()
