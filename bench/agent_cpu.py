"""The agent's CPU under a hot function at full speed, through a colony
that pulls every call, with the calls budget ([agent] ingest_cpu_percent)
and without it, in the same run. Prints markdown tables.

    .venv/bin/python bench/agent_cpu.py [--seconds 10] [--threads 3] [--budget 50]

The service is bench/hot.c under coral-run (THREADS threads calling one
tiny function in a tight loop), probed timing-only with no per-session CPU
budget, attached through a real colony. Every second the bench reads the
agent's CPU time (/proc/PID/stat) and asks the agent for a Ping over its
local socket every 0.1 s: the slowest answer says how long the agent's
loop kept its sockets waiting, and the colony's view of the agent says
whether a heartbeat came late (the part is never `lost`)."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import cpu_seconds, table
from coral.daemon.client import Client
from coral.proto import coral_pb2 as pb
from tests.harness import REPO, CoralEnv, build_c, start_agent, start_colony
from tests.test_budget import HotService


def session(colony: Client, session_id: str) -> pb.DebugSession:
    listed = cast(pb.ListDebugSessionsResponse, colony.call("ListDebugSessions", pb.ListDebugSessionsRequest()))
    return next(s for s in listed.sessions if s.session_id == session_id)


def run(binary: Path, threads: int, budget: float, seconds: float) -> list[str]:
    env = CoralEnv.create().with_config(f"[sessions]\ncpu_budget_percent = 0\nmax_events_per_session = 100000000\n"
                                        f"[agent]\ningest_cpu_percent = {budget}\n")
    colony, agent = start_colony(env), start_agent(env)
    service = HotService(env, binary, threads)
    try:
        with Client(env.endpoint("colony/colony.sock"), 30) as c, Client(env.endpoint("agent.sock"), 30) as local:
            while not cast(pb.ListServicesResponse, c.call("ListServices", pb.ListServicesRequest())).services:
                pass  # until coral-run's registration has reached the colony
            sid = cast(pb.AttachUprobeResponse, c.call("AttachUprobe", pb.AttachUprobeRequest(
                service="hot", function="hot", duration_ms=int(seconds * 1000)))).session.session_id
            windows, pings, parts = [], [], set()
            start = time.monotonic()
            last_t, last_cpu = start, cpu_seconds(agent.proc.pid)
            while time.monotonic() - start < seconds:
                t = time.monotonic()
                local.call("Ping", pb.PingRequest())
                pings.append(time.monotonic() - t)
                if t - last_t >= 1.0:
                    cpu = cpu_seconds(agent.proc.pid)
                    windows.append((cpu - last_cpu) / (t - last_t))
                    last_t, last_cpu = t, cpu
                    s = session(c, sid)
                    parts |= {p.session.status for p in s.parts}
                time.sleep(0.1)  # workload: a Ping every 0.1 s while the function runs
            while True:  # the end: every part complete (every call the agent kept is in the colony)
                s = session(c, sid)
                parts |= {p.session.status for p in s.parts}
                if all(p.complete for p in s.parts):
                    break
                time.sleep(0.2)  # workload: the colony pulls the rest meanwhile
        lost = dict(s.lost)
        return [f"{budget:g}%" if budget else "none", f"{100 * statistics.median(windows):.0f}%",
                f"{100 * max(windows):.0f}%", f"{1000 * statistics.median(pings):.1f} ms", f"{1000 * max(pings):.0f} ms",
                f"{s.total_calls:,}", f"{s.calls:,}", ", ".join(f"{n:,} {c}" for c, n in sorted(lost.items())) or "0",
                "no" if "lost" not in parts else "YES"]
    finally:
        service.stop()
        agent.stop()
        colony.stop()
        env.remove()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--threads", type=int, default=3)
    ap.add_argument("--budget", type=float, default=50)
    args = ap.parse_args()
    tmp = CoralEnv.create()
    tmp.root.mkdir(parents=True, exist_ok=True)
    binary = build_c(REPO / "bench" / "hot.c", tmp.root / "hot")
    try:
        rows = [run(binary, args.threads, budget, args.seconds) for budget in (0, args.budget)]
    finally:
        tmp.remove()
    table(f"The agent under a hot function ({args.threads} threads, timing only, through a colony), {args.seconds:g} s",
          ["ingest_cpu_percent", "agent CPU, median second", "agent CPU, worst second", "local Ping, median",
           "local Ping, slowest", "calls in kernel", "stored", "not stored, by cause", "part ever lost"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
