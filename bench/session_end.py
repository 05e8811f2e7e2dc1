"""A session's end while its ring buffer is full: how long the agent keeps
another socket waiting. Prints a markdown table.

    .venv/bin/python bench/session_end.py [--repeats 3] [--calls 300000]

bench/threads.c on 2 threads under coral-run, one session on bench_work
(timing only, or with arguments and the result captured). The agent is
stopped (SIGSTOP) while the target makes CALLS calls, so the ring buffer
fills (the rest are shed and counted); then it is continued and the session
detached, while another client sends Pings one after another on the
agent's socket. The slowest of those Pings is how long the agent's loop
went without serving its sockets during the end; the baseline is the
slowest Ping over the same time with no session."""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ingest import ThreadsTarget
from bench.report import full_speed_env, table
from coral.daemon.client import Client
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, Process, build_c, tool

HERE = Path(__file__).resolve().parent


def slowest_ping_while(env: CoralEnv, work: threading.Thread) -> float:
    """Pings one after another until `work` is done; the slowest, in seconds."""
    worst = 0.0
    with Client(env.endpoint("agent.sock"), 60) as pinger:
        work.start()
        while work.is_alive():
            t = time.monotonic()
            pinger.call("Ping", pb.PingRequest())
            worst = max(worst, time.monotonic() - t)
    work.join()
    return worst


def one_end(env: CoralEnv, agent: Client, agent_pid: int, target: ThreadsTarget, values: bool,
            calls: int) -> tuple[float, float, pb.DebugSession]:
    """(detach answered after, slowest Ping meanwhile, the session)."""
    config = pb.UprobeConfig(capture_args=values, capture_return=values, max_events=10_000_000)
    sid = cast(pb.AttachUprobeResponse, agent.call("AttachUprobe", pb.AttachUprobeRequest(
        service="bench-threads", function="bench_work", duration_ms=600_000, config=config))).session.session_id
    os.kill(agent_pid, signal.SIGSTOP)
    try:
        target.calls_per_second(calls)
    finally:
        os.kill(agent_pid, signal.SIGCONT)
    ended: list[pb.DebugSession] = []
    took: list[float] = []

    def detach() -> None:
        t = time.monotonic()
        ended.append(cast(pb.DetachUprobeResponse, agent.call("DetachUprobe", pb.DetachUprobeRequest(
            session_id=sid))).session)
        took.append(time.monotonic() - t)

    worst = slowest_ping_while(env, threading.Thread(target=detach))
    return took[0], worst, ended[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calls", type=int, default=300_000)
    args = ap.parse_args()
    env = full_speed_env()
    agent_proc = Process("agentd", [tool("coral-agentd")], env).wait_ready()
    target = ThreadsTarget(env, build_c(HERE / "threads.c", env.root / "bin" / "threads"), 2)
    try:
        with Client(env.endpoint("agent.sock"), 120) as agent:
            while not cast(pb.ListServicesResponse, agent.call("ListServices", pb.ListServicesRequest())).services:
                time.sleep(0.1)  # until coral-run has registered
            rows = []
            for values in (False, True):
                detaches, pings, baselines, stored = [], [], [], []
                for _ in range(args.repeats):
                    took, worst, session = one_end(env, agent, agent_proc.proc.pid, target, values, args.calls)
                    detaches.append(took)
                    pings.append(worst)
                    stored.append(session.calls)
                    baselines.append(slowest_ping_while(env, threading.Thread(target=time.sleep, args=(took,))))
                rows.append(["arguments and result" if values else "timing only", f"{statistics.median(stored):,.0f}",
                             f"{1000 * statistics.median(detaches):.0f} ms", f"{1000 * statistics.median(pings):.0f} ms",
                             f"{1000 * statistics.median(baselines):.1f} ms"])
        table(f"A session's end with a full ring buffer ({args.calls:,} calls made while the agent was stopped), "
              f"medians of {args.repeats}",
              ["captured", "calls stored", "detach answered after", "slowest Ping meanwhile",
               "slowest Ping, no session, as long (baseline)"], rows)
    finally:
        target.stop()
        agent_proc.stop()
        env.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
