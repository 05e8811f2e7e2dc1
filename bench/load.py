"""Load: many concurrent clients against a colony with a live session, and
registration churn against one agent. Prints markdown tables.

    .venv/bin/python bench/load.py [--clients 100] [--seconds 60] [--registrations 10000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zmq

from bench.report import table
from coral.daemon.client import Client
from coral.daemon.errors import CoralError
from coral.proto import coral_pb2 as pb
from tests.harness import REPO, CoralEnv, NativeService, build_c, start_agent, start_colony


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def client_load(endpoint: str, session_id: str, clients: int, seconds: float) -> tuple[list[float], int, int]:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop_at = time.monotonic() + seconds
    requests = [("ListServices", pb.ListServicesRequest()), ("ListDebugSessions", pb.ListDebugSessionsRequest()),
                ("QueryUprobeEvents", pb.QueryUprobeEventsRequest(session_id=session_id, max_events=100))]

    def run(i: int) -> None:
        with Client(endpoint, 30, zmq.Context.instance()) as c:
            n = 0
            while time.monotonic() < stop_at:
                method, body = requests[n % len(requests)]
                t = time.monotonic()
                try:
                    c.call(method, body)
                    latencies[i].append(time.monotonic() - t)
                except CoralError:
                    errors[i] += 1
                n += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [x for per in latencies for x in per]
    return flat, sum(errors), len(flat) + sum(errors)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--registrations", type=int, default=10_000)
    args = ap.parse_args()
    env = CoralEnv.create()
    env.root.mkdir(parents=True, exist_ok=True)
    env = env.with_config("[sessions]\ncpu_budget_percent = 0\n[agent]\ningest_cpu_percent = 0\n")  # full speed: measured
    colony, agent = start_colony(env), start_agent(env)
    service = NativeService(env, build_c(REPO / "examples" / "native" / "payments.c", env.root / "payments"))
    try:
        with Client(env.endpoint("colony/colony.sock"), 30) as c:
            while not c.call("ListServices", pb.ListServicesRequest()).services:  # type: ignore[attr-defined]
                pass
            session = c.call("AttachUprobe", pb.AttachUprobeRequest(service="payments", function="validate_card",
                                                                    duration_ms=600_000)).session  # type: ignore[attr-defined]
        service.call(200)
        lat, errors, total = client_load(env.endpoint("colony/colony.sock"), session.session_id, args.clients, args.seconds)
        lat.sort()
        q = statistics.quantiles(lat, n=100)
        table(f"{args.clients} concurrent clients for {args.seconds:g} s against a colony with a live session",
              ["requests", "errors", "requests/s", "P50", "P99", "max"],
              [[f"{total:,}", str(errors), f"{total / args.seconds:,.0f}", f"{q[49] * 1000:.1f} ms", f"{q[98] * 1000:.1f} ms",
                f"{lat[-1] * 1000:.1f} ms"]])

        before_rss, before_fds = rss_kb(agent.pid), fds(agent.pid)
        address = f"ipc://{env.runtime_dir / 'procs' / 'churn.sock'}"
        t0 = time.monotonic()
        with Client(env.endpoint("agent.sock"), 10) as c:
            for _ in range(args.registrations):
                reg = c.call("RegisterProcess", pb.RegisterProcessRequest(service="churn", pid=os.getpid(),
                                                                          address=address, kind="python"))
                c.call("UnregisterProcess", pb.UnregisterProcessRequest(
                    registration_id=reg.registration_id))  # type: ignore[attr-defined]
            remaining = [s.service for s in c.call("ListServices", pb.ListServicesRequest()).services]  # type: ignore[attr-defined]
        took = time.monotonic() - t0
        table(f"{args.registrations:,} registrations and unregistrations against one agent",
              ["took", "agent RSS before", "after", "agent fds before", "after", "still registered"],
              [[f"{took:.1f} s", f"{before_rss / 1024:.1f} MiB", f"{rss_kb(agent.pid) / 1024:.1f} MiB", str(before_fds),
                str(fds(agent.pid)), str(remaining.count("churn"))]])
    finally:
        service.stop()
        agent.stop()
        colony.stop()
        env.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
