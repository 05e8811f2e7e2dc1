"""docs/json.md is what coralctl prints: every `--output json` line of every
command, run for real against a colony, an agent and a traced C process,
has exactly the fields (and JSON types) of its table in the doc. A field
printed but not documented, or documented but never printed, fails with
the difference."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import zmq

from tests.harness import REPO, CoralEnv, NativeService, Process, coralctl, start_attach, tool
from tests.test_native_e2e import wait_for_service
from tests.test_profile import build, busy_service

DOC = REPO / "docs" / "json.md"
JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "object": dict,
}


def documented_records(text: str) -> dict[str, dict[str, str]]:
    """Record name -> {field: type} from the `### Name` tables under
    "## Record fields"."""
    records: dict[str, dict[str, str]] = {}
    section = text.split("## Record fields", 1)[1].split("\n## ", 1)[0]
    name = ""
    for line in section.splitlines():
        if line.startswith("### "):
            name = line[4:].strip()
            records[name] = {}
        m = re.match(r"\| `([^`]+)` \| ([^|]+) \|", line)
        if m and name:
            records[name][m.group(1)] = m.group(2).strip()
    return records


def type_ok(doc_type: str, value: Any) -> bool:
    if doc_type.startswith("map"):
        return isinstance(value, dict)
    if doc_type.startswith("list"):
        return isinstance(value, list)
    if doc_type == "object":
        return value is None or isinstance(value, dict)
    expected = JSON_TYPES[doc_type]
    return isinstance(value, expected) and not (doc_type in ("integer", "number") and isinstance(value, bool))


def fields_of(record: dict[str, Any], doc: dict[str, str], prefix: str = "") -> dict[str, Any]:
    """Every field name in a printed record, nested objects and objects in
    lists included (as the doc names them: `config.x`, `args[].x`); maps
    are values, not fields."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = prefix + key
        out[name] = value
        kind = doc.get(name, "")
        if kind == "object" and isinstance(value, dict):
            out.update(fields_of(value, doc, name + "."))
        elif kind == "list of objects" and isinstance(value, list):
            for item in value:
                out.update(fields_of(item, doc, name + "[]."))
    return out


def json_lines(env: CoralEnv, *args: str) -> list[dict[str, Any]]:
    out = coralctl(env, "--output", "json", *args)
    assert out.returncode == 0, (args, out.stderr)
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_every_json_line_has_the_documented_fields(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService, tmp_path: Path
) -> None:
    env = coral_env
    wait_for_service(env, "payments")
    printed: dict[str, list[dict[str, Any]]] = {name: [] for name in documented_records(DOC.read_text())}
    printed["PingResponse"] += json_lines(env, "ping") + json_lines(env, "--local", "ping")
    printed["ServiceInstance"] += json_lines(env, "services")
    printed["Function"] += json_lines(env, "functions", "payments")

    proc, session_line = start_attach(
        env, "payments", "validate_card", "--duration", "1s", "--capture-args", "--capture-return", "--slow", "1ms", "--no-save"
    )
    payments.call(3)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    attach = [session_line] + [json.loads(line) for line in out.splitlines()]
    assert [r["kind"] for r in attach] == ["session"] + ["call"] * (len(attach) - 2) + ["summary"]
    assert len(attach) >= 2 + 3  # three calls at least, a line each
    session_id = session_line["session_id"]
    printed["DebugSession"].append(session_line)
    printed["Call"] += attach[1:-1]
    printed["Summary"].append(attach[-1])

    proc, templated = start_attach(env, "payments", "validate_card", "--duration", "1s", "--print", "{ret}", "--no-save")
    payments.call(1)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    printed["DebugSession"].append(templated)
    printed["Call"] += [r for r in map(json.loads, out.splitlines()) if r["kind"] == "call"]

    # --count-by: no call; a counts line while it runs (the follow answers every 2 s), the rows in the summary.
    proc, counted = start_attach(env, "payments", "validate_card", "--duration", "3s", "--count-by", "ret", "--no-save")
    payments.call(2)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert {r["kind"] for r in lines[:-1]} == {"counts"} and lines[-1]["kind"] == "summary", lines
    assert [r["calls"] for r in lines[-1]["counts"]] == [2]
    printed["DebugSession"].append(counted)
    printed["Counts"] += lines[:-1]
    printed["Summary"].append(lines[-1])

    # Several functions at once: a session, a summary and trees of each (validate_card calls nanosleep).
    grouped = subprocess.Popen([tool("coralctl"), "--output", "json", "debug", "attach", "payments", "--duration", "1s",
                                "--function", "validate_card", "--function", "libc.so.6:nanosleep", "--tree-every", "1"],
                               env=env.env, stdout=subprocess.PIPE, text=True)
    assert grouped.stdout is not None
    starts = [json.loads(grouped.stdout.readline()) for _ in range(2)]
    payments.call(2)
    out, _ = grouped.communicate(timeout=30)
    assert grouped.returncode == 0
    rest = starts + [json.loads(line) for line in out.splitlines()]
    assert sorted(r["kind"] for r in rest) == ["call"] * 4 + ["session"] * 2 + ["summary"] * 2 + ["tree"] * 2, rest
    printed["DebugSession"] += starts
    printed["Call"] += [r for r in rest if r["kind"] == "call"]
    printed["Summary"] += [r for r in rest if r["kind"] == "summary"]
    printed["Tree"] += [r for r in rest if r["kind"] == "tree"]

    proc, stacked = start_attach(env, "payments", "validate_card", "--duration", "1s", "--stack", "--no-save")
    payments.call(1)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    printed["DebugSession"].append(stacked)
    with_stack = [json.loads(line) for line in out.splitlines()]
    printed["Call"] += with_stack[:-1]
    printed["Summary"].append(with_stack[-1])
    printed["CallPath"] += json_lines(env, "debug", "stacks", stacked["session_id"])

    events = json_lines(env, "debug", "events", session_id)
    assert [r["kind"] for r in events][-1] == "summary"
    printed["Call"] += events[:-1]
    printed["Summary"].append(events[-1])
    printed["DebugSession"] += json_lines(env, "debug", "sessions")
    printed["DebugSession"] += json_lines(env, "debug", "detach", session_id)
    busy = busy_service(env, build(tmp_path, "busy", "-O0", "-fno-omit-frame-pointer"), "busy")  # on a CPU: stacks
    try:
        profile = json_lines(env, "profile", "busy", "--duration", "1s", "--frequency", "499")
    finally:
        busy.stop()
    assert [r["kind"] for r in profile] == ["session", "process"], profile
    printed["DebugSession"].append(profile[0])
    printed["ProcessProfile"] += profile[1:]
    printed["AuditEntry"] += json_lines(env, "audit")
    printed["KeyPair"] += json_lines(env, "keys", "generate", "alice", "--dir", str(env.root / "keys"))

    problems = []
    for name, doc in documented_records(DOC.read_text()).items():
        assert printed[name], f"no command printed a {name}"
        seen: dict[str, Any] = {}
        for record in printed[name]:
            for field, value in fields_of(record, doc).items():
                seen.setdefault(field, value)
                if field in doc and not type_ok(doc[field], value):
                    problems.append(f"{name}.{field}: documented as {doc[field]}, printed {value!r}")
        undocumented = sorted(set(seen) - set(doc))
        never_printed = sorted(set(doc) - set(seen))
        if undocumented:
            problems.append(f"{name}: printed but not in docs/json.md: {undocumented}")
        if never_printed:
            problems.append(f"{name}: in docs/json.md but never printed: {never_printed}")
    assert problems == [], "\n".join(problems)


def test_ctrl_c_while_waiting_for_a_reply_exits_130(coral_env: CoralEnv, tmp_path: Path) -> None:
    """Exit code 130: interrupted. A socket that takes the request and never
    answers; once it holds the request, coralctl is waiting for the reply."""
    endpoint = f"ipc://{tmp_path / 'silent.sock'}"
    silent: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    silent.setsockopt(zmq.LINGER, 0)
    silent.bind(endpoint)
    try:
        p = subprocess.Popen(
            [tool("coralctl"), "--endpoint", endpoint, "--timeout", "60s", "services"],
            env=coral_env.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # as from a shell: SIGINT as the default, even if this runner ignores it
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        assert silent.poll(10000), "coralctl never sent its request"
        silent.recv_multipart()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
        assert (p.returncode, out, err) == (130, "", "")
    finally:
        silent.close()


def test_the_documented_exit_codes_are_coralctls() -> None:
    from coral.ctl import main

    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", DOC.read_text().split("## Exit codes", 1)[1], re.M)}
    assert documented == {main.EXIT_OK, main.EXIT_FAILED, main.EXIT_USAGE, main.EXIT_UNREACHABLE, main.EXIT_INTERRUPTED}
