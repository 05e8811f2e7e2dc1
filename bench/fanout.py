"""Sessions across agents: one colony, two agents, the same C service on
each. Measures how late a call becomes visible through the colony (its
pulls; calls made at random moments), to a follower and to a one-off
question, and how long the colony takes to hold every call of a large
session after it ends. Prints markdown tables.

    .venv/bin/python bench/fanout.py [--calls 20000] [--probes 50]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import table
from coral.daemon.client import Client
from coral.proto import coral_pb2 as pb
from tests.harness import REPO, CoralEnv, NativeService, build_c, start_agent, start_colony


def calls_held(c: Client, session_id: str) -> int:
    """How many calls of the session the colony holds now (paging through them)."""
    cursor, n = 0, 0
    while True:
        q = cast(
            pb.QueryUprobeEventsResponse,
            c.call("QueryUprobeEvents", pb.QueryUprobeEventsRequest(session_id=session_id, cursor=cursor, max_events=5000)),
        )
        n += len(q.calls)
        cursor = q.next_cursor
        if len(q.calls) < 5000:
            return n


class Follower(threading.Thread):
    """A client following the session as `coralctl debug events --follow`
    does; for each call, how long after it returned it was in hand (the
    call's end is the agent's wall clock, on this host)."""

    def __init__(self, endpoint: str, session_id: str) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.session_id = endpoint, session_id
        self.lags: list[float] = []
        self.stopping = False

    def run(self) -> None:
        cursor = 0
        with Client(self.endpoint, 30) as c:
            while not self.stopping:
                q = cast(pb.QueryUprobeEventsResponse, c.call("QueryUprobeEvents", pb.QueryUprobeEventsRequest(
                    session_id=self.session_id, cursor=cursor, max_events=1000, wait_ms=500)))
                now = time.time_ns()
                self.lags.extend((now - c.end_unix_ns) / 1e9 for c in q.calls)
                cursor = q.next_cursor

    def stop(self) -> None:
        self.stopping = True
        self.join()


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
            follower = Follower(env.endpoint("colony/colony.sock"), sid)
            follower.start()
            rng = random.Random(1)
            for i in range(args.probes):  # the follower alone
                time.sleep(rng.uniform(0, pull_interval))  # not a wait: calls land anywhere between two pulls
                (svc_a if i % 2 else svc_b).call(1)
                while len(follower.lags) <= i:
                    time.sleep(0.001)
            follower.stop()
            asked = []
            held = calls_held(c, sid)
            for i in range(args.probes):  # then one-off questions, asked in a loop
                time.sleep(rng.uniform(0, pull_interval))
                (svc_a if i % 2 else svc_b).call(1)
                t = time.monotonic()
                while calls_held(c, sid) < held + 1:  # read-your-calls: a call made before the question is in it
                    pass
                asked.append(time.monotonic() - t)
                held += 1
            rows = []
            for name, lags in (("a follower (wait_ms), from the call's return to the call in hand", follower.lags),
                               ("a one-off question after the call returned, until the call is in the answer",
                                asked)):
                q = statistics.quantiles(lags, n=100)
                rows.append([name, f"{statistics.median(lags) * 1000:.1f} ms", f"{q[89] * 1000:.1f} ms",
                             f"{q[98] * 1000:.1f} ms", f"{max(lags) * 1000:.1f} ms"])
            table(
                f"Visibility through the colony: {args.probes} single calls, alternately on two agents, at random "
                f"moments (pull_interval {pull_interval} s)",
                ["how the client reads", "P50", "P90", "P99", "max"],
                rows,
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
            total = calls_held(c, sid)
            q0 = time.monotonic()
            for _ in range(20):
                c.call("QueryUprobeEvents", pb.QueryUprobeEventsRequest(session_id=sid, max_events=1000))
            page = (time.monotonic() - q0) / 20
            ping = cast(pb.PingResponse, c.call("Ping", pb.PingRequest()))
        table(
            f"Drain: {args.calls:,} calls on each of two agents, then detach",
            [
                "calls made in",
                "detach → every call in colony.duckdb",
                "calls held",
                "expected",
                "kernel-counted calls",
                "pulled_calls counter",
                "one 1000-call page from the colony",
            ],
            [
                [
                    f"{calls_took:.1f} s",
                    f"{drained:.2f} s",
                    f"{total:,}",
                    f"{2 * args.calls + held:,}",
                    f"{s.total_calls:,}",
                    f"{ping.counters['pulled_calls']:,}",
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
