"""What CURVE on tcp costs a client: Ping round trips to a colony over ipc
and over tcp://127.0.0.1 with CURVE, and the cost of a fresh connection
(connect, handshake with the colony's ZAP check, first reply). Prints
markdown tables.

    .venv/bin/python bench/curve.py [--pings 2000] [--connects 50]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import table
from coral.daemon import curve
from coral.daemon.client import Client
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, Process, tool


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port: int = s.getsockname()[1]
        return port


def measure(endpoint: str, keys: curve.ClientKeys | None, pings: int, connects: int) -> tuple[list[float], list[float]]:
    with Client(endpoint, 10, keys=keys) as c:
        c.call("Ping", pb.PingRequest())  # connected, handshake done
        rtts = []
        for _ in range(pings):
            t = time.perf_counter()
            c.call("Ping", pb.PingRequest())
            rtts.append((time.perf_counter() - t) * 1e6)
    fresh = []
    for _ in range(connects):
        t = time.perf_counter()
        with Client(endpoint, 10, keys=keys) as c:
            c.call("Ping", pb.PingRequest())
        fresh.append((time.perf_counter() - t) * 1e6)
    return rtts, fresh


def row(name: str, rtts: list[float], fresh: list[float]) -> list[str]:
    q = statistics.quantiles(rtts, n=100)
    return [name, f"{statistics.median(rtts):.0f}", f"{q[98]:.0f}", f"{statistics.median(fresh):.0f}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--connects", type=int, default=50)
    args = parser.parse_args()
    rows = []
    env = CoralEnv.create()
    try:
        keys_dir = env.root / "keys"
        for name in ("colony", "ops"):
            curve.write_key_pair(keys_dir, name)
        (keys_dir / "clients").mkdir()
        (keys_dir / "clients" / "ops.key").write_bytes((keys_dir / "ops.key").read_bytes())
        port = free_port()
        conf = env.root / "coral.toml"
        conf.write_text(f"""
[colony]
frontend_endpoint = "tcp://127.0.0.1:{port}"
secret_key_file = "{keys_dir / "colony.key_secret"}"
client_keys_dir = "{keys_dir / "clients"}"
""")
        colony = Process("colonyd", [tool("coral-colonyd")], env).wait_ready()  # ipc frontend (the test config)
        try:
            ipc = f"ipc://{env.runtime_dir / 'colony' / 'colony.sock'}"
            rows.append(row("ipc (peer credentials)", *measure(ipc, None, args.pings, args.connects)))
        finally:
            colony.stop()
        env.env["CORAL_CONFIG"] = str(conf)
        colony = Process("colonyd-tcp", [tool("coral-colonyd")], env).wait_ready()
        try:
            keys = curve.ClientKeys(
                curve.load_key_pair(str(keys_dir / "ops.key_secret"), "ops"),
                curve.load_public_key(str(keys_dir / "colony.key"), "colony"),
            )
            endpoint = f"tcp://127.0.0.1:{port}"
            rows.append(row("tcp://127.0.0.1 with CURVE", *measure(endpoint, keys, args.pings, args.connects)))
        finally:
            colony.stop()
    finally:
        env.remove()
    table(
        f"Ping to the colony, {args.pings} round trips and {args.connects} fresh connections each",
        ["link", "round trip p50 (µs)", "round trip p99 (µs)", "fresh connection + first reply, p50 (µs)"],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
