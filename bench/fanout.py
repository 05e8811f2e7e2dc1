"""Sessions across agents: one colony, two agents, the same C service on
each. Measures how late a call becomes visible through the colony (its
pulls; calls made at random moments between two pulls), and how long the colony takes to hold every event of a large
session after it ends. Prints markdown tables.

    .venv/bin/python bench/fanout.py [--calls 20000] [--probes 50]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import table
from coral.daemon.client import Client
from coral.proto import coral_pb2 as pb
from tests.harness import REPO, CoralEnv, NativeService, build_c, start_agent, start_colony


def events_held(c: Client, session_id: str) -> int:
    """How many events of the session the colony holds now (paging through them)."""
    cursor, n = 0, 0
    while True:
        q = cast(
            pb.QueryUprobeEventsResponse,
            c.call("QueryUprobeEvents", pb.QueryUprobeEventsRequest(session_id=session_id, cursor=cursor, max_events=5000)),
        )
        n += len(q.events)
        cursor = q.next_cursor
        if len(q.events) < 5000:
            return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20_000, help="calls on each agent for the drain measurement")
    ap.add_argument("--probes", type=int, default=50, help="single calls timed for visibility")
    args = ap.parse_args()
    env = CoralEnv.create()
    env.root.mkdir(parents=True, exist_ok=True)
    env = env.with_config('[agent]\nid = "agent-a"\n[sessions]\ncpu_budget_percent = 0\n')  # full speed: measured, not cut
    env_b = env.another_agent("agent-b")
    config_b = Path(env_b.env["CORAL_CONFIG"])
    config_b.write_text(config_b.read_text() + "[sessions]\ncpu_budget_percent = 0\n")
    binary = build_c(REPO / "examples" / "native" / "payments.c", env.root / "payments")
    colony, agent_a = start_colony(env), start_agent(env, "agentd-a")
    agent_b = start_agent(env_b, "agentd-b")
    svc_a = NativeService(env, binary, sleep_ms=0, name="run-a")
    svc_b = NativeService(env_b, binary, sleep_ms=0, name="run-b")
    pull_interval = 0.5
    try:
        with Client(env.endpoint("colony/colony.sock"), 30) as c:
            while len(cast(pb.ListServicesResponse, c.call("ListServices", pb.ListServicesRequest())).services) < 2:
                pass
            attach = pb.AttachUprobeRequest(service="payments", function="validate_card", duration_ms=600_000)
            sid = cast(pb.AttachUprobeResponse, c.call("AttachUprobe", attach)).session.session_id
            lags = []
            held = 0
            rng = random.Random(1)
            for i in range(args.probes):
                time.sleep(rng.uniform(0, pull_interval))  # not a wait: calls land anywhere between two pulls
                (svc_a if i % 2 else svc_b).call(1)
                t = time.monotonic()
                while events_held(c, sid) < held + 2:
                    pass
                lags.append(time.monotonic() - t)
                held += 2
            table(
                f"Visibility through the colony: {args.probes} single calls, alternately on two agents "
                f"(pull_interval {pull_interval} s)",
                ["P50", "P90", "max", "events held"],
                [
                    [
                        f"{statistics.median(lags) * 1000:.0f} ms",
                        f"{statistics.quantiles(lags, n=10)[8] * 1000:.0f} ms",
                        f"{max(lags) * 1000:.0f} ms",
                        str(held),
                    ]
                ],
            )

            t0 = time.monotonic()
            svc_a.call(args.calls)
            svc_b.call(args.calls)
            calls_took = time.monotonic() - t0
            t1 = time.monotonic()
            c.call("DetachUprobe", pb.DetachUprobeRequest(session_id=sid))
            while True:
                s = next(
                    s
                    for s in cast(
                        pb.ListDebugSessionsResponse, c.call("ListDebugSessions", pb.ListDebugSessionsRequest())
                    ).sessions
                    if s.session_id == sid
                )
                if all(p.complete for p in s.parts):
                    break
            drained = time.monotonic() - t1
            total = events_held(c, sid)
            q0 = time.monotonic()
            for _ in range(20):
                c.call("QueryUprobeEvents", pb.QueryUprobeEventsRequest(session_id=sid, max_events=1000))
            page = (time.monotonic() - q0) / 20
            ping = cast(pb.PingResponse, c.call("Ping", pb.PingRequest()))
        table(
            f"Drain: {args.calls:,} calls on each of two agents, then detach",
            [
                "calls made in",
                "detach → every event in colony.duckdb",
                "events held",
                "expected",
                "kernel-counted calls",
                "pulled_events counter",
                "one 1000-event page from the colony",
            ],
            [
                [
                    f"{calls_took:.1f} s",
                    f"{drained:.2f} s",
                    f"{total:,}",
                    f"{4 * args.calls + held:,}",
                    f"{s.total_calls:,}",
                    f"{ping.counters['pulled_events']:,}",
                    f"{page * 1000:.1f} ms",
                ]
            ],
        )
    finally:
        svc_a.stop()
        svc_b.stop()
        agent_a.stop()
        agent_b.stop()
        colony.stop()
        env.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
