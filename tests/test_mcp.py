"""coral-mcp, driven by the MCP SDK's own client over stdio, against real
daemons and the C demo: an assistant lists services, attaches for 2 s while
the demo is called, and gets every call; capture needs the configuration's
grant (and the person, where the client can ask); the audit log names the
OS user, "via MCP" and the client's name; a user without a right is
refused through MCP exactly as through coralctl."""

from __future__ import annotations

import functools
import grp
import json
import os
import pwd
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from mcp import types
from mcp.client.session import ClientRequestContext, ClientSession, ElicitationFnT
from mcp.client.stdio import StdioServerParameters, stdio_client

from coral.colonyd.audit import client_label as audit_label
from coral.daemon import curve
from coral.mcp.colony import client_label
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, NativeService, Process, coralctl, running, tool
from tests.test_native_e2e import wait_for_service
from tests.test_profile import build, busy_service

TOOLS = {"list_services", "list_functions", "attach", "get_summary", "get_events", "list_sessions", "detach", "profile"}
Elicit = ElicitationFnT


@asynccontextmanager
async def assistant(env: CoralEnv, name: str = "test-assistant", elicit: Elicit | None = None,
                    user: pwd.struct_passwd | None = None, extra_args: tuple[str, ...] | list[str] = ()
                    ) -> AsyncIterator[ClientSession]:
    """coral-mcp started by the SDK's stdio client, as root or as `user`
    (in group coral, as an operator is), initialized under `name`."""
    argv = [sys.executable, "-m", "coral.mcp.server", *extra_args]
    if user is not None:
        argv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                f"--groups={grp.getgrnam('coral').gr_gid}", "--", *argv]
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=env.env, cwd=str(env.root))
    with open(env.root / f"coral-mcp-{name}.log", "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            session = ClientSession(read, write, client_info=types.Implementation(name=name, version="1.0"),
                                    elicitation_callback=elicit, read_timeout_seconds=120)
            async with session:
                await session.initialize()
                yield session


async def call(session: ClientSession, tool_name: str, **arguments: Any) -> dict[str, Any]:
    """A tool's answer (its JSON text); a tool error fails the test with its message."""
    result = await session.call_tool(tool_name, arguments)
    text = "".join(c.text for c in result.content if isinstance(c, types.TextContent))
    assert not result.is_error, f"{tool_name}: {text}"
    answer: dict[str, Any] = json.loads(text)
    return answer


async def refused(session: ClientSession, tool_name: str, **arguments: Any) -> str:
    """The message of a tool call that must fail."""
    result = await session.call_tool(tool_name, arguments)
    text = "".join(c.text for c in result.content if isinstance(c, types.TextContent))
    assert result.is_error, f"{tool_name} was not refused: {text}"
    return text.removeprefix(f"Error executing tool {tool_name}: ")  # the SDK's words before ours


async def attach_while_calling(session: ClientSession, payments: NativeService, n: int,
                               **arguments: Any) -> dict[str, Any]:
    """attach (which answers once its session has ended) while the demo makes
    n calls, as soon as list_sessions shows the session running."""
    answer: dict[str, Any] = {}

    async def attach() -> None:
        answer.update(await call(session, "attach", service="payments", function="validate_card", **arguments))

    async with anyio.create_task_group() as tg:
        tg.start_soon(attach)
        while not (await call(session, "list_sessions", service="payments", active_only=True))["sessions"]:
            await anyio.sleep(0.05)  # between two questions to the colony, not a wait for readiness
        done = await anyio.to_thread.run_sync(payments.call, n)
        assert done.startswith(f"done {n} "), done
    return answer


def audit(env: CoralEnv) -> list[dict[str, Any]]:
    out = coralctl(env, "--output", "json", "audit")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_an_assistant_attaches_for_2s_and_sees_every_call(coral_env: CoralEnv, payments: NativeService) -> None:
    wait_for_service(coral_env, "payments")

    async def story() -> None:
        async with assistant(coral_env) as s:
            assert {t.name for t in (await s.list_tools()).tools} == TOOLS
            services = (await call(s, "list_services"))["services"]
            assert [svc["service"] for svc in services] == ["payments"] and services[0]["kind"] == "native"
            functions = (await call(s, "list_functions", service="payments", pattern="validate_*"))["functions"]
            assert "validate_card" in [f["function"] for f in functions]

            answer = await attach_while_calling(s, payments, 25, duration_seconds=2)
            session_id = answer["session"]["session_id"]
            summary = answer["summary"]
            assert summary["calls"] == 25 and summary["calls_stored"] == 25, summary
            assert summary["status"] == "expired" and summary["p50_ns"] > 0 and summary["lost"] == {}

            first = await call(s, "get_events", session_id=session_id, max_calls=20)
            rest = await call(s, "get_events", session_id=session_id, cursor=first["next_cursor"], max_calls=200)
            assert (len(first["calls"]), first["has_more"], len(rest["calls"]), rest["has_more"]) == (20, True, 5, False)
            calls = first["calls"] + rest["calls"]
            assert {c["function"] for c in calls} == {"validate_card"} and all(c["duration_ns"] > 0 for c in calls)
            assert not any(a.get("value") for c in calls for a in c.get("args", [])), "timing only: no values"
            assert (await call(s, "get_summary", session_id=session_id))["calls"] == 25

            sessions = (await call(s, "list_sessions"))["sessions"]
            assert [(x["session_id"], x["status"], x["calls"]) for x in sessions] == [(session_id, "expired", 25)]

            # Every input is checked, each with its own one-line error.
            assert "exceeds coral-mcp's maximum of 30s" in await refused(
                s, "attach", service="payments", function="validate_card", duration_seconds=31)
            assert "max_calls must be between 1 and 200, got 500" in await refused(
                s, "get_events", session_id=session_id, max_calls=500)
            assert "service must be 1 to 200 printable characters" in await refused(s, "list_functions", service="")
            assert "where: " in await refused(s, "attach", service="payments", function="validate_card",
                                              where="amount >")
            assert "function 'validate_crad' not found in service 'payments'" in await refused(
                s, "attach", service="payments", function="validate_crad", duration_seconds=1)

            # Capture is refused by coral-mcp itself: etc/coral.toml grants it nothing.
            message = await refused(s, "attach", service="payments", function="validate_card", capture_args=True)
            assert message.startswith("coral-mcp may not capture values: [mcp] allow_capture is false in "), message

            # An assistant that stops waiting for its attach (the client cancels the call) ends the session.
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(call, s, "attach", service="payments", function="validate_card",
                                                duration_seconds=30))
                while not (running := (await call(s, "list_sessions", active_only=True))["sessions"]):
                    await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
            with anyio.fail_after(10):
                while (ended := await call(s, "list_sessions"))["sessions"][-1]["status"] == "active":
                    await anyio.sleep(0.05)
            assert ended["sessions"][-1]["session_id"] == running[0]["session_id"]
            assert ended["sessions"][-1]["status"] == "detached"

    anyio.run(story)

    # What coral-mcp refused itself (31 s, a bad filter, capture) never reached the colony.
    rows = [(r["who"], r["client_label"], r["outcome"]) for r in audit(coral_env) if r["method"] == "AttachUprobe"]
    assert rows == [("uid:0", "via MCP: test-assistant", "OK"), ("uid:0", "via MCP: test-assistant", "NOT_FOUND"),
                    ("uid:0", "via MCP: test-assistant", "OK")]
    detached = [(r["who"], r["client_label"], r["outcome"]) for r in audit(coral_env) if r["method"] == "DetachUprobe"]
    assert detached == [("uid:0", "via MCP: test-assistant", "OK")]
    assert "uid:0 (via MCP: test-assistant)" in coralctl(coral_env, "audit").stdout


def test_capture_needs_the_grant_and_the_person_when_the_client_can_ask(coral_env: CoralEnv,
                                                                        payments: NativeService) -> None:
    wait_for_service(coral_env, "payments")
    granted = coral_env.with_config("[mcp]\nallow_capture = true\n")  # coral-mcp's own configuration
    asked: list[str] = []

    def person(allows: bool) -> Elicit:
        async def answer(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
            asked.append(params.message)
            return types.ElicitResult(action="accept", content={"capture": allows})
        return answer

    async def story() -> None:
        async with assistant(granted, "says-no", elicit=person(False)) as s:
            message = await refused(s, "attach", service="payments", function="validate_card", capture_args=True)
            assert message.startswith("the person did not allow capturing values"), message
        assert len(asked) == 1 and "arguments of every call of payments validate_card" in asked[0]

        async def fails(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ErrorData:
            return types.ErrorData(code=-32603, message="no window to ask in")

        async with assistant(granted, "cannot-show-it", elicit=fails) as s:
            message = await refused(s, "attach", service="payments", function="validate_card", capture_return=True)
            assert message.startswith("the person could not be asked before capturing values (no window to ask in)")
        async with assistant(granted, "says-yes", elicit=person(True)) as s:
            answer = await attach_while_calling(s, payments, 3, duration_seconds=2, capture_args=True,
                                                capture_return=True)
            events = await call(s, "get_events", session_id=answer["session"]["session_id"])
            assert len(events["calls"]) == 3
            assert all(c["args"] and all(a["value"] for a in c["args"]) for c in events["calls"]), events
        async with assistant(granted, "cannot-ask") as s:  # no elicitation: the grant alone decides
            answer = await attach_while_calling(s, payments, 2, duration_seconds=1, capture_return=True)
            assert answer["summary"]["calls"] == 2

    anyio.run(story)
    assert len(asked) == 2
    labels = [r["client_label"] for r in audit(coral_env) if r["method"] == "AttachUprobe" and r["outcome"] == "OK"]
    assert labels == ["via MCP: says-yes", "via MCP: cannot-ask"]


def test_a_user_without_the_right_is_refused_through_mcp_as_through_coralctl(
        coral_env: CoralEnv, bpf: None, payments_binary: Path, member: pwd.struct_passwd) -> None:
    user = member.pw_name
    # The member may attach for timing, not capture; coral-mcp's own grant is
    # there, so only the colony's [access] stands between them.
    coral_env.open_to_members(f'[access]\nlist = ["{user}"]\nattach = ["{user}"]\ncapture = ["root"]\n'
                              '[mcp]\nallow_capture = true\n')
    with running(coral_env, payments_binary):
        wait_for_service(coral_env, "payments")
        by_coralctl = subprocess.run(
            [tool("coralctl"), "debug", "attach", "payments", "--function", "validate_card", "--capture-args"],
            env=coral_env.env, capture_output=True, text=True, timeout=60, user=member.pw_uid, group=member.pw_gid,
            extra_groups=["coral"])
        assert by_coralctl.returncode == 1
        expected = f"user {user} may not capture (needs [access] capture, which admits root)"
        assert by_coralctl.stderr.strip() == f"coralctl: {expected}"

        async def story() -> None:
            async with assistant(coral_env, "member-assistant", user=member) as s:
                assert [x["service"] for x in (await call(s, "list_services"))["services"]] == ["payments"]
                assert await refused(s, "attach", service="payments", function="validate_card",
                                     capture_args=True) == expected
                timing = await call(s, "attach", service="payments", function="validate_card", duration_seconds=1)
                assert timing["summary"]["status"] == "expired"

        anyio.run(story)
        uid = f"uid:{member.pw_uid}"
        rows = [(r["who"], r["client_label"], r["outcome"]) for r in audit(coral_env) if r["method"] == "AttachUprobe"]
        assert rows == [(uid, "", "PERMISSION_DENIED"), (uid, "via MCP: member-assistant", "PERMISSION_DENIED"),
                        (uid, "via MCP: member-assistant", "OK")]


def test_over_tcp_coral_mcp_is_its_own_curve_key_with_that_keys_rights(coral_env: CoralEnv, bpf: None,
                                                                       payments_binary: Path) -> None:
    """A colony frontend on tcp: coral-mcp comes with a key of its own,
    `assistant`, which may list and attach but not capture; root's coralctl
    has the key `ops`. The audit rows name key:assistant, via MCP."""
    keys = coral_env.root / "keys"
    for name in ("colony", "ops", "assistant"):
        curve.write_key_pair(keys, name)
    (keys / "clients").mkdir()
    for name in ("ops", "assistant"):
        (keys / "clients" / f"{name}.key").write_bytes((keys / f"{name}.key").read_bytes())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = coral_env.with_config(f"""
[colony]
frontend_endpoint = "tcp://127.0.0.1:{port}"
secret_key_file = "{keys / "colony.key_secret"}"
client_keys_dir = "{keys / "clients"}"

[client]
key_file = "{keys / "ops.key_secret"}"
colony_public_key_file = "{keys / "colony.key"}"

[access]
list = ["key:ops", "key:assistant"]
attach = ["key:ops", "key:assistant"]
capture = ["key:ops"]

[mcp]
allow_capture = true
""")
    with running(env, payments_binary) as payments:
        wait_for_service(env, "payments")

        async def story() -> None:
            async with assistant(env, "tcp-assistant", extra_args=["--key", str(keys / "assistant.key_secret")]) as s:
                assert [x["service"] for x in (await call(s, "list_services"))["services"]] == ["payments"]
                assert await refused(s, "attach", service="payments", function="validate_card", capture_args=True) == (
                    "key assistant may not capture (needs [access] capture, which admits key:ops)")
                answer = await attach_while_calling(s, payments, 4, duration_seconds=1)
                assert answer["summary"]["calls"] == 4

        anyio.run(story)
        rows = [(r["who"], r["client_label"], r["outcome"]) for r in audit(env) if r["method"] == "AttachUprobe"]
        assert rows == [("key:assistant", "via MCP: tcp-assistant", "PERMISSION_DENIED"),
                        ("key:assistant", "via MCP: tcp-assistant", "OK")]


def test_an_assistant_profiles_a_service_and_sees_where_its_cpu_goes(coral_env: CoralEnv, colony: Process,
                                                                     agent: Process, tmp_path: Path) -> None:
    """examples/native/busy.c spends about 70% of its CPU in hot_path and 30%
    in cold_path, both under serve: the profile tool says so within 5 points,
    with whole stacks, and the audit row says via MCP."""
    service = busy_service(coral_env, build(tmp_path, "busy", "-O0", "-fno-omit-frame-pointer"), "busy")
    try:
        async def story() -> dict[str, Any]:
            async with assistant(coral_env, "profiling-assistant") as s:
                assert "frequency_hz must be between 1 and 1000, got 5000" in await refused(
                    s, "profile", service="busy", frequency_hz=5000)
                assert "exceeds coral-mcp's maximum of 30s" in await refused(s, "profile", service="busy",
                                                                              duration_seconds=60)
                return await call(s, "profile", service="busy", duration_seconds=4, frequency_hz=997)

        answer = anyio.run(story)
    finally:
        service.stop()
    assert answer["status"] == "expired" and answer["samples"] > 100, answer
    assert len(answer["processes"]) == 1 and answer["processes"][0]["samples"] == answer["samples"]
    shares = {f["function"]: f["self_percent"] for f in answer["functions"]}
    assert abs(shares["hot_path"] - 70) <= 5 and abs(shares["cold_path"] - 30) <= 5, answer["functions"]
    assert any(line.startswith(("main;serve;hot_path ", "__libc_start_call_main;main;serve;hot_path "))
               or ";main;serve;hot_path " in line for line in answer["stacks"]), answer["stacks"]
    rows = [(r["who"], r["client_label"], r["outcome"], r["session_id"]) for r in audit(coral_env)
            if r["method"] == "ProfileCpu"]
    assert rows == [("uid:0", "via MCP: profiling-assistant", "OK", answer["profile_id"])]


def test_the_client_label_is_bounded_and_printable() -> None:
    assert client_label("claude-desktop") == "via MCP: claude-desktop"
    assert client_label(None) == "via MCP"
    assert client_label("a\nb\x00c" + "x" * 100) == ("via MCP: a?b?c" + "x" * 100)[:64]
    assert len(client_label("é" * 100)) == 64
    # The colony cuts whatever a client sends the same way: a label can neither grow a row nor break a line.
    assert audit_label(pb.PingRequest(client_label="via MCP: x\n" + "y" * 100)) == ("via MCP: x?" + "y" * 100)[:64]
    assert audit_label(pb.ListAuditRequest()) == "" and audit_label(None) == ""


def test_coral_mcp_says_what_is_wrong_with_its_configuration(tmp_path: Path) -> None:
    bad = tmp_path / "coral.toml"
    bad.write_text("[mcp]\nmax_duration = 0\n")
    out = subprocess.run([sys.executable, "-m", "coral.mcp.server", "--config", str(bad)], capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL, env={**os.environ})
    assert out.returncode == 2
    assert out.stderr.strip() == f"coral-mcp: {bad}: [mcp] max_duration: must be greater than 0, got 0.0"
