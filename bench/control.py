"""Control-plane round trips: Ping and ListServices to one real colony over
ipc, one client, one request at a time. The colony holds 100 simulated
agents (one service each; bench/routing.py's simulator). The baseline, in
the same run, is a bare Python ROUTER on the same kind of socket that
answers each request with a fixed reply: what ZeroMQ and Python cost alone.

    .venv/bin/python bench/control.py [--requests 3000] [--repeats 5] [--agents 100] [--load 8]

With --load N, Ping is measured once more while N other clients (another
process) attach and detach as fast as the colony answers them: each of
those changes a session and writes an audit row."""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zmq
from google.protobuf.message import Message

from bench.report import table
from coral.daemon import wire
from coral.daemon.client import Client
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, start_colony

ROUTING = Path(__file__).with_name("routing.py")


def echo(endpoint: str) -> None:
    """The baseline server: decode nothing, answer every message at once."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(endpoint)
    reply = pb.PingResponse(daemon="echo").SerializeToString()
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        frames = router.recv_multipart()
        router.send_multipart([frames[0], b"", wire.HEADER, bytes([wire.Command.REPLY]), frames[4], b"OK", reply])


def round_trips(endpoint: str, method: str, request: Message, n: int) -> list[float]:
    with Client(endpoint, 10) as c:
        for _ in range(100):  # warm up
            c.call(method, request)
        out = []
        for _ in range(n):
            t = time.perf_counter()
            c.call(method, request)
            out.append((time.perf_counter() - t) * 1e3)
    return out


def row(name: str, runs: list[list[float]]) -> list[str]:
    p50 = statistics.median(statistics.median(r) for r in runs)
    p99 = statistics.median(statistics.quantiles(r, n=100)[98] for r in runs)
    return [name, f"{p50:.3f}", f"{p99:.3f}"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--load", type=int, default=8, help="clients attaching and detaching meanwhile (0: none)")
    ap.add_argument("--echo", metavar="ENDPOINT", help=argparse.SUPPRESS)
    ap.add_argument("--drive", nargs=3, metavar=("ENDPOINT", "AGENTS", "CLIENTS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo:
        echo(args.echo)
        return 0
    if args.drive:
        from bench.routing import drive

        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        drive(args.drive[0], int(args.drive[1]), int(args.drive[2]), 3600)
        return 0
    env = CoralEnv.create()
    colony = start_colony(env)
    base_endpoint = env.endpoint("echo.sock")
    base = subprocess.Popen([sys.executable, __file__, "--echo", base_endpoint], stdout=subprocess.PIPE, text=True)
    sim = subprocess.Popen([sys.executable, str(ROUTING), "--simulate", str(args.agents),
                            env.endpoint("colony/colony-backend.sock")], stdout=subprocess.PIPE, text=True)
    try:
        assert base.stdout is not None and base.stdout.readline().strip() == "ready"
        assert sim.stdout is not None and sim.stdout.readline().strip() == "ready"
        frontend = env.endpoint("colony/colony.sock")
        with Client(frontend, 30) as c:
            while len(c.call("ListServices", pb.ListServicesRequest()).services) < args.agents:  # type: ignore[attr-defined]
                pass  # their READY messages are still arriving
        rows = []
        for name, endpoint, method, request in [
            ("baseline: bare ROUTER, fixed reply", base_endpoint, "Ping", pb.PingRequest()),
            ("colony Ping", frontend, "Ping", pb.PingRequest()),
            (f"colony ListServices ({args.agents} services)", frontend, "ListServices", pb.ListServicesRequest()),
        ]:
            rows.append(row(name, [round_trips(endpoint, method, request, args.requests) for _ in range(args.repeats)]))
        if args.load:
            load = subprocess.Popen([sys.executable, __file__, "--drive", frontend, str(args.agents), str(args.load)])
            try:
                time.sleep(1)  # the load is under way
                runs = [round_trips(frontend, "Ping", pb.PingRequest(), args.requests) for _ in range(args.repeats)]
                rows.append(row(f"colony Ping while {args.load} clients attach and detach", runs))
            finally:
                load.send_signal(signal.SIGTERM)
                load.wait(timeout=30)
    finally:
        for p in (sim, base):
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=30)
        colony.stop()
        env.remove()
    print(f"\n{os.cpu_count()} CPUs; {args.requests:,} round trips a run, one at a time; median of {args.repeats} runs")
    table("Control-plane round trips over ipc, one client", ["server and request", "P50 ms", "P99 ms"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
