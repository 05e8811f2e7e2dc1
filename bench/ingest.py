"""Ingest: a timing-only session on a function called as fast as its
service can, until 1,000,000 calls; how many the agent stores and serves,
and what that costs the agent. Prints markdown tables.

    .venv/bin/python bench/ingest.py [--calls 1000000] [--repeats 3] [--threads 4]

Two targets: a Python function in a tight loop (bench/py_target.py) and a C
function on THREADS threads (bench/threads.c) under coral-run. The agent
runs at full speed (no CPU budget, no ingest cap, room for every call),
local, without a colony. For each repeat, the same target first makes the
calls with no session (the baseline rate, same run), then with one; the
session's counts come from the kernel (every call) and the agent (stored),
and every stored call is then read back through QueryUprobeEvents."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.python_attached import PyTarget
from bench.report import cpu_seconds, full_speed_env, rss_mib, table
from coral.agentd.main import IDLE_RELEASE_AFTER
from coral.daemon.client import Client
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, Process, build_c, tool

HERE = Path(__file__).resolve().parent
PAGE = 5000


class ThreadsTarget:
    """bench/threads.c under coral-run: each run makes exactly K calls."""

    def __init__(self, env: CoralEnv, binary: Path, threads: int) -> None:
        self.run = Process("threads", [tool("coral-run"), "--service", "bench-threads", "--", str(binary), str(threads)],
                           env, stdin=subprocess.PIPE).wait_ready()

    def calls_per_second(self, calls: int) -> float:
        stdin, stdout = self.run.proc.stdin, self.run.proc.stdout
        if stdin is None or stdout is None:
            raise SystemExit("coral-run was started without pipes")
        stdin.write(f"{calls}\n".encode())
        stdin.flush()
        return float(stdout.readline())

    def stop(self) -> None:
        if self.run.proc.stdin:
            self.run.proc.stdin.close()
        self.run.stop()


def served(agent: Client, session_id: str) -> tuple[int, bool]:
    """Every stored call read back, a page at a time: how many, and whether
    each seq came once and in order."""
    cursor, count, ordered = 0, 0, True
    while True:
        reply = agent.call("QueryUprobeEvents", pb.QueryUprobeEventsRequest(session_id=session_id, cursor=cursor,
                                                                            max_events=PAGE))
        calls = reply.calls  # type: ignore[attr-defined]
        for call in calls:
            ordered = ordered and call.seq > cursor
            cursor = call.seq
        count += len(calls)
        if not reply.has_more:  # type: ignore[attr-defined]
            return count, ordered


@dataclass(frozen=True)
class Run:
    rate: float  # calls/s the service made with the session attached
    kernel: int  # calls the kernel counted
    stored: int
    lost: dict[str, int]
    served: int  # calls read back through QueryUprobeEvents
    ordered: bool  # each seq once, in order
    cpu: float  # the agent's CPU seconds from attach to detach
    wall: float

    @property
    def share(self) -> float:
        return self.stored / max(self.kernel, 1)


def one_run(agent: Client, agent_pid: int, service: str, function: str, make_calls: Callable[[int], float],
            calls: int) -> Run:
    reply = agent.call("AttachUprobe", pb.AttachUprobeRequest(service=service, function=function, duration_ms=600_000,
                                                              config=pb.UprobeConfig()))
    sid = reply.session.session_id  # type: ignore[attr-defined]
    cpu0, t0 = cpu_seconds(agent_pid), time.monotonic()
    rate = make_calls(calls)
    s = agent.call("DetachUprobe", pb.DetachUprobeRequest(session_id=sid)).session  # type: ignore[attr-defined]
    cpu, wall = cpu_seconds(agent_pid) - cpu0, time.monotonic() - t0
    count, ordered = served(agent, sid)
    return Run(rate, s.total_calls, s.calls, dict(s.lost), count, ordered, cpu, wall)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()
    env = full_speed_env()
    agent_proc = Process("agentd", [tool("coral-agentd")], env).wait_ready()
    agent = Client(env.endpoint("agent.sock"), 120)
    started_rss = rss_mib(agent_proc.proc.pid)
    py = PyTarget(env)
    native = ThreadsTarget(env, build_c(HERE / "threads.c", env.root / "bin" / "threads"), args.threads)
    try:
        deadline = time.monotonic() + 30
        while len(agent.call("ListServices", pb.ListServicesRequest()).services) < 2:  # type: ignore[attr-defined]
            if time.monotonic() > deadline:
                raise SystemExit("the targets never registered")
        targets: list[tuple[str, str, str, Callable[[int], float]]] = [
            ("Python function, one thread", "bench-py", "__main__.work", lambda k: 1e9 / py.ns_per_call(k)),
            (f"C function, {args.threads} threads", "bench-threads", "bench_work", native.calls_per_second),
        ]
        rows = []
        for name, service, function, make_calls in targets:
            base: list[float] = []
            runs: list[Run] = []
            for _ in range(args.repeats):
                base.append(make_calls(args.calls))
                runs.append(one_run(agent, agent_proc.proc.pid, service, function, make_calls, args.calls))
            for i, r in enumerate(runs):
                rows.append([name if i == 0 else "", f"{base[i]:,.0f}", f"{r.rate:,.0f}", f"{r.kernel:,}",
                             f"{r.stored:,}", f"{r.served:,}" + ("" if r.ordered else " (out of order)"),
                             ", ".join(f"{n:,} {c}" for c, n in sorted(r.lost.items())) or "0",
                             f"{100 * r.share:.3f}%", f"{100 * r.cpu / r.wall:.0f}%"])
            rows.append(["", "median", "", "", "", "", "", f"{100 * statistics.median(r.share for r in runs):.3f}%", ""])
        table(f"Ingest: a timing-only session, {args.calls:,} calls as fast as the service makes them",
              ["target", "calls/s, no session", "calls/s, session", "calls in kernel", "stored", "served",
               "not stored, by cause", "stored share", "agent CPU (of one)"], rows)
        served_rss = rss_mib(agent_proc.proc.pid)
        time.sleep(IDLE_RELEASE_AFTER + 2)  # the agent gives back its libraries' pages once idle
        table("The agent's RSS", ["when", "MiB"], [
            ["after start", f"{started_rss:.1f}"],
            ["after the sessions above, their calls just served", f"{served_rss:.1f}"],
            [f"idle: {IDLE_RELEASE_AFTER + 2:g} s after that", f"{rss_mib(agent_proc.proc.pid):.1f}"]])
    finally:
        py.stop()
        native.stop()
        agent.close()
        agent_proc.stop()
        env.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
