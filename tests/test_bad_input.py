"""Garbage on every socket and on the command line: a clear error, counted,
and the daemons keep serving."""

from __future__ import annotations

import json
import os
import re

import pytest
import zmq

from coral.daemon import wire
from coral.daemon.client import Client
from coral.daemon.errors import PermissionDenied
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, NativeService, Process, coralctl

NO_DELIMITER = [b"hello"]  # a REP socket's ZeroMQ layer drops this; the ROUTERs answer it
GARBAGE: list[list[bytes]] = [
    [b"", b"garbage"],  # wrong header
    [b"", b"CORAL/9", b"\x01", b"id", b"Ping", b""],  # other version
    [b"", wire.HEADER, b"\x7f"],  # unknown command
    [b"", wire.HEADER, b"\x01", b"id"],  # truncated REQUEST
    [b"", wire.HEADER, b"\x01", b"", b"Ping", b""],  # empty request id
    [b"", wire.HEADER, b"\x01", b"id", b"\xff\xfe", b""],  # non-ASCII method
    [b"", wire.HEADER, b"\x01", b"id", b"AttachUprobe", b"\xff\xff\xff"],  # body is not protobuf
    [b"", wire.HEADER, b"\x01", b"id", b"NoSuchMethod", b""],  # unknown method
]


def raw_exchange(endpoint: str, frames: list[bytes], timeout_ms: int = 3000) -> list[bytes] | None:
    s: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    try:
        s.send_multipart(frames)
        return s.recv_multipart() if s.poll(timeout_ms) else None
    finally:
        s.close()


def assert_error_reply(reply: list[bytes] | None, codes: set[str]) -> None:
    assert reply is not None, "no reply where one is owed"
    frame = wire.decode(reply)
    assert frame.command == wire.Command.REPLY and frame.name in codes, frame
    assert pb.Error.FromString(frame.body).message


def ping_counters(endpoint: str) -> dict[str, int]:
    with Client(endpoint, 5) as c:
        r = c.call("Ping", pb.PingRequest())
    return dict(r.counters)  # type: ignore[attr-defined]


@pytest.mark.parametrize("frames", GARBAGE)
def test_agent_local_socket_answers_garbage_and_keeps_serving(coral_env: CoralEnv, agent: Process, frames: list[bytes]) -> None:
    assert_error_reply(raw_exchange(coral_env.endpoint("agent.sock"), frames), {"BAD_REQUEST", "UNKNOWN_METHOD"})
    assert_error_reply(raw_exchange(coral_env.endpoint("agent.sock"), NO_DELIMITER), {"BAD_REQUEST"})
    counters = ping_counters(coral_env.endpoint("agent.sock"))
    assert (
        counters.get("local.bad_frames", 0)
        + counters.get("local.bad_requests", 0)
        + counters.get("local.errors.UNKNOWN_METHOD", 0)
        >= 1
    )


def test_every_socket_survives_the_whole_garbage_list(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService
) -> None:
    process_sock = f"ipc://{coral_env.runtime_dir / 'procs' / f'{payments.child_pid}.sock'}"
    assert_error_reply(raw_exchange(coral_env.endpoint("colony/colony.sock"), NO_DELIMITER), {"BAD_REQUEST"})
    for frames in GARBAGE:
        assert_error_reply(raw_exchange(coral_env.endpoint("colony/colony.sock"), frames), {"BAD_REQUEST", "UNKNOWN_METHOD"})
        assert_error_reply(raw_exchange(process_sock, frames), {"BAD_REQUEST", "UNKNOWN_METHOD"})
        # The backend owes garbage no reply: it is dropped and counted; a
        # well-framed message from an unknown agent is told DISCONNECT.
        reply = raw_exchange(coral_env.endpoint("colony/colony-backend.sock"), frames, timeout_ms=200)
        assert reply is None or wire.decode(reply).command == wire.Command.DISCONNECT
    counters = ping_counters(coral_env.endpoint("colony/colony.sock"))
    assert counters["bad_frames"] >= 6 and counters["bad_frames.backend"] >= 5
    with Client(process_sock, 5) as c:
        assert c.call("Ping", pb.PingRequest()).daemon == "coral-run"  # type: ignore[attr-defined]
    # And the real work still works after all that.
    out = coralctl(coral_env, "--output", "json", "functions", "payments", "--pattern", "validate_*")
    listed = json.loads(out.stdout)
    assert out.returncode == 0 and listed["function"] == "validate_card", out
    assert re.search(r"payments\.c:\d+$", listed["location"]), listed  # where DWARF says it is declared


def test_oversized_message_is_dropped_and_the_daemon_keeps_serving(coral_env: CoralEnv, colony: Process, agent: Process) -> None:
    huge = [b"", wire.HEADER, b"\x01", b"id", b"Ping", b"x" * (5 * 1024 * 1024)]
    for sock in ("colony/colony.sock", "agent.sock"):
        assert raw_exchange(coral_env.endpoint(sock), huge, timeout_ms=500) is None
        assert ping_counters(coral_env.endpoint(sock)) is not None


def test_a_process_cannot_register_another_pid(coral_env: CoralEnv, agent: Process) -> None:
    request = pb.RegisterProcessRequest(
        service="evil", pid=1, executable="/sbin/init", address=coral_env.endpoint("procs/evil.sock"), kind="native"
    )
    with Client(coral_env.endpoint("agent.sock"), 5) as c, pytest.raises(PermissionDenied, match="may not register process 1"):
        c.call("RegisterProcess", request)
    out = coralctl(coral_env, "--local", "--output", "json", "services")
    assert out.returncode == 0 and out.stdout == ""


def test_cli_errors_are_one_clear_line_with_a_stable_exit_code(
    coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService
) -> None:
    from tests.test_native_e2e import wait_for_service

    wait_for_service(coral_env, "payments")
    cases = [
        (["debug", "attach", "nosuch", "--function", "f"], 1, "coralctl: service 'nosuch' not found (known services: payments)"),
        (
            ["debug", "attach", "payments", "--function", "validate_crd"],
            1,
            f"coralctl: function 'validate_crd' not found in service 'payments' (pid {payments.child_pid}); "
            "closest: validate_card",
        ),
        (
            ["debug", "attach", "payments", "--function", "validate_card", "--duration", "11m"],
            1,
            "coralctl: duration 660s exceeds the maximum of 600s; ask for 600s or less",
        ),
        (["debug", "events", "dbg-nope"], 1, "coralctl: no session 'dbg-nope'"),
        (["debug", "detach", "dbg-nope"], 1, "coralctl: no session 'dbg-nope'"),
    ]
    for argv, code, message in cases:
        out = coralctl(coral_env, *argv)
        assert (out.returncode, out.stderr.strip()) == (code, message), argv
    bad = coralctl(coral_env, "debug", "attach", "payments", "--function", "f", "--duration", "5x")
    assert bad.returncode == 2 and "invalid duration '5x'" in bad.stderr
    bad = coralctl(coral_env, "debug", "attach", "payments", "--function", "f", "--sample-rate", "-3")
    assert bad.returncode == 2 and "expected a positive whole number" in bad.stderr
    # Every refusal above left an audit row; the colony still serves.
    assert coralctl(coral_env, "ping").returncode == 0


def test_colony_not_running_says_where_it_looked(coral_env: CoralEnv) -> None:
    out = coralctl(coral_env, "--timeout", "1s", "services")
    sock = coral_env.runtime_dir / "colony" / "colony.sock"
    assert out.returncode == 3
    assert out.stderr.strip() == (
        f"coralctl: cannot reach the colony: no reply from ipc://{sock} (no socket file there) within 1s; "
        "is coral-colonyd running? (use --local to talk to this host's agent directly)"
    )


def test_agentd_refuses_a_bad_config_in_one_line(coral_env: CoralEnv, tmp_path: os.PathLike[str]) -> None:
    import subprocess

    from tests.harness import tool

    bad = os.path.join(tmp_path, "bad.toml")
    with open(bad, "w") as f:
        f.write("[sessions]\nmax_duration = 'long'\n")
    for daemon in ("coral-agentd", "coral-colonyd"):
        out = subprocess.run([tool(daemon), "--config", bad], env=coral_env.env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 1
        assert out.stderr.strip() == f"{daemon}: {bad}: [sessions] max_duration: expected an integer, got 'long'"
