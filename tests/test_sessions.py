"""Many sessions on one loaded program: several on the same function, each
with its own sampling, filters and limits decided in the kernel; the
summary exact for every call; every call not shown counted by cause."""

from __future__ import annotations

import json
import subprocess

from coral.daemon.client import Client
from coral.daemon.errors import LimitExceeded
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, NativeService, Process, coralctl, kernel_probes, tool

N = 40  # calls; validate_card(card, 500 + i): amounts 500..539, cards ...000..039


def attach(env: CoralEnv, *flags: str) -> subprocess.Popen[str]:
    duration = [] if "--duration" in flags else ["--duration", "4s"]
    p = subprocess.Popen([tool("coralctl"), "--local", "--output", "json", "debug", "attach", "payments", "--function",
                          "validate_card", *duration, "--capture-args", *flags],
                         env=env.env, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert json.loads(p.stdout.readline())["kind"] == "session"  # probes live
    return p


def finish(p: subprocess.Popen[str]) -> tuple[list[dict], dict]:
    out, _ = p.communicate(timeout=60)
    lines = [json.loads(line) for line in out.splitlines()]
    return [e for e in lines if e["kind"] == "call"], lines[-1]


def test_concurrent_sessions_on_one_function_each_get_what_they_asked(coral_env: CoralEnv, agent: Process,
                                                                       payments: NativeService) -> None:
    everything = attach(coral_env)
    sampled = attach(coral_env, "--sample-rate", "4")
    big = attach(coral_env, "--where", "amount_cents>=530")
    slow = attach(coral_env, "--min-duration", "1s")
    capped = attach(coral_env, "--max-calls", "5")
    # Five sessions, one function: the uprobe pair is attached once.
    assert kernel_probes().count(f"/proc/{payments.child_pid}/exe") == 2
    assert payments.call(N) == f"done {N} declined 4"

    events, summary = finish(everything)
    assert len(events) == N and summary["calls"] == N and summary["lost"] == {}

    events, summary = finish(sampled)
    assert len(events) == N // 4 and summary["calls"] == N and summary["lost"] == {"sampled": N - N // 4}

    events, summary = finish(big)
    amounts = sorted(int(e["args"][1]["value"]) for e in events)
    assert amounts == list(range(530, 540)) and summary["lost"] == {"filtered": 30}

    events, summary = finish(slow)
    assert events == [] and summary["calls"] == N and summary["lost"] == {"filtered": N}
    assert summary["p50_ns"] >= 5_000_000 * 15 // 16  # the exact summary covers calls nobody saw

    events, summary = finish(capped)  # --max-calls 5
    assert len(events) == 5 and summary["calls"] == N and summary["lost"] == {"max_events": N - 5}
    assert f"/proc/{payments.child_pid}/exe" not in kernel_probes()


def test_sixty_four_sessions_then_a_clear_refusal(coral_env: CoralEnv, agent: Process, payments: NativeService) -> None:
    with Client(coral_env.endpoint("agent.sock"), 30) as c:
        ids = []
        for _ in range(64):
            r = c.call("AttachUprobe", pb.AttachUprobeRequest(service="payments", function="validate_card",
                                                              duration_ms=60_000))
            ids.append(r.session.session_id)  # type: ignore[attr-defined]
        try:
            c.call("AttachUprobe", pb.AttachUprobeRequest(service="payments", function="validate_card"))
            raise AssertionError("the 65th session was accepted")
        except LimitExceeded as exc:
            assert exc.message.endswith("already runs 64 sessions (limit 64)")
        assert payments.call(5) == "done 5 declined 0"
        for sid in ids:
            c.call("DetachUprobe", pb.DetachUprobeRequest(session_id=sid))
        sessions = c.call("ListDebugSessions", pb.ListDebugSessionsRequest()).sessions  # type: ignore[attr-defined]
    assert len(sessions) == 64 and all(s.status == "detached" and s.total_calls == 5 for s in sessions)
    assert f"/proc/{payments.child_pid}/exe" not in kernel_probes()


def test_bad_filters_are_refused_clearly(coral_env: CoralEnv, agent: Process, payments: NativeService) -> None:
    out = coralctl(coral_env, "--local", "debug", "attach", "payments", "--function", "validate_card", "--where", "x>1")
    assert out.returncode == 1
    assert out.stderr.strip() == ("coralctl: --where 'x>1', column 1: validate_card has no argument 'x'; its "
                                  "arguments are: card_number, amount_cents")
    out = coralctl(coral_env, "--local", "debug", "attach", "payments", "--function", "validate_card", "--where",
                   "amount_cents > 5000000000")
    assert out.returncode == 1 and "5000000000 is out of range of amount_cents (int: 32-bit signed)" in out.stderr
    # Refused requests left no session behind.
    assert coralctl(coral_env, "--local", "--output", "json", "debug", "sessions").stdout == ""
    negative = attach(coral_env, "--where", "amount_cents<0", "--duration", "2s")  # an int: 32 bits decide, not 64
    assert payments.call(5) == "done 5 declined 0"
    events, summary = finish(negative)
    assert events == [] and summary["lost"] == {"filtered": 5}
