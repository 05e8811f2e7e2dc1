"""Checked against a peer: bpftrace on the same binary and function, at
the same time, sees the same calls with the same argument values."""

from __future__ import annotations

import json
import re
import signal
import subprocess

from tests.harness import CoralEnv, NativeService, Process, tool

N = 30


def test_same_calls_and_arguments_as_bpftrace(coral_env: CoralEnv, agent: Process, payments: NativeService,
                                              payments_binary: object) -> None:
    program = (f"uprobe:{payments_binary}:validate_card /pid == {payments.child_pid}/ "
               "{ @amounts[arg1] = count(); @calls = count(); }")
    peer = subprocess.Popen(["bpftrace", "-e", program], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert peer.stdout is not None
    assert peer.stdout.readline().startswith("Attaching 1 probe")  # bpftrace's own readiness line
    attach = subprocess.Popen([tool("coralctl"), "--local", "--output", "json", "debug", "attach", "payments",
                               "--function", "validate_card", "--duration", "3s", "--capture-args"],
                              env=coral_env.env, stdout=subprocess.PIPE, text=True)
    assert attach.stdout is not None and json.loads(attach.stdout.readline())["kind"] == "session"
    assert payments.call(N) == f"done {N} declined 3"
    out, _ = attach.communicate(timeout=60)
    peer.send_signal(signal.SIGINT)
    peer_out, peer_err = peer.communicate(timeout=30)
    assert peer.returncode == 0, peer_err

    ours = [json.loads(line) for line in out.splitlines()]
    our_amounts = sorted(int(e["args"][1]["value"]) for e in ours if e.get("kind") == "call")
    their_amounts = sorted(int(a) for a, n in re.findall(r"@amounts\[(\d+)\]: (\d+)", peer_out) for _ in range(int(n)))
    their_calls = int(re.search(r"@calls: (\d+)", peer_out).group(1))  # type: ignore[union-attr]
    assert ours[-1]["calls"] == their_calls == N
    assert our_amounts == their_amounts == list(range(500, 500 + N))
