"""What /metrics costs the agent: its CPU, its memory and how long its loop
keeps a local Ping waiting, with [agent] metrics_listen off, on and scraped
once a second (as Prometheus would), and on and scraped back to back (a
flood), modes interleaved in the same run. Prints a markdown table.

    .venv/bin/python bench/metrics_cost.py [--seconds 10] [--repeats 3]

The agent runs one session, timing only, through a real colony, on the C
demo (examples/native/payments.c) calling validate_card about every
millisecond; the bench asks the agent for a Ping every 0.1 s."""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import cpu_seconds, rss_mib, table
from coral.daemon.client import Client
from coral.proto import coral_pb2 as pb
from tests.harness import REPO, CoralEnv, Process, build_c, start_agent, start_colony, tool

MODES = ("off", "on, scraped every 1 s", "on, scraped back to back")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scraper(url: str, every: float, stop: threading.Event, took: list[float]) -> None:
    while not stop.is_set():
        t = time.monotonic()
        with urllib.request.urlopen(url, timeout=5) as r:
            r.read()
        took.append(time.monotonic() - t)
        if every:
            stop.wait(every)


def run(binary: Path, mode: str, seconds: float) -> dict[str, float]:
    port = free_port()
    listen = "" if mode == "off" else f"{port}"
    env = CoralEnv.create().with_config(f'[agent]\nmetrics_listen = "{listen}"\n')
    colony, agent = start_colony(env), start_agent(env)
    service = Process("run-payments", [tool("coral-run"), "--service", "payments", "--", str(binary),
                                       "--sleep-ms", "0", "--loop-ms", "1"], env).wait_ready()
    stop = threading.Event()
    took: list[float] = []
    try:
        with Client(env.endpoint("colony/colony.sock"), 30) as c, Client(env.endpoint("agent.sock"), 30) as local:
            while not cast(pb.ListServicesResponse, c.call("ListServices", pb.ListServicesRequest())).services:
                pass  # until coral-run's registration has reached the colony
            c.call("AttachUprobe", pb.AttachUprobeRequest(service="payments", function="validate_card",
                                                          duration_ms=int((seconds + 5) * 1000)))
            if mode != "off":
                every = 1.0 if "1 s" in mode else 0.0
                threading.Thread(target=scraper, args=(f"http://127.0.0.1:{port}/metrics", every, stop, took),
                                 daemon=True).start()
            pings = []
            start, cpu0 = time.monotonic(), cpu_seconds(agent.proc.pid)
            while time.monotonic() - start < seconds:
                t = time.monotonic()
                local.call("Ping", pb.PingRequest())
                pings.append(time.monotonic() - t)
                time.sleep(0.1)  # workload: a Ping every 0.1 s
            cpu = (cpu_seconds(agent.proc.pid) - cpu0) / (time.monotonic() - start)
            rss = rss_mib(agent.proc.pid)
        pings.sort()
        return {"cpu": cpu, "rss": rss, "ping_p50": statistics.median(pings),
                "ping_p99": pings[min(len(pings) - 1, int(0.99 * len(pings)))],
                "scrapes": len(took) / seconds, "scrape_ms": 1000 * statistics.median(took) if took else 0.0}
    finally:
        stop.set()
        service.stop()
        agent.stop()
        colony.stop()
        env.remove()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = CoralEnv.create()
    tmp.root.mkdir(parents=True, exist_ok=True)
    binary = build_c(REPO / "examples" / "native" / "payments.c", tmp.root / "payments")
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    try:
        for _ in range(args.repeats):
            for mode in MODES:  # interleaved: the VM's noise falls on every mode alike
                results[mode].append(run(binary, mode, args.seconds))
    finally:
        tmp.remove()
    base = statistics.median(r["cpu"] for r in results["off"])
    rows = []
    for mode in MODES:
        rs = results[mode]

        def med(key: str, rs: list[dict[str, float]] = rs) -> float:
            return statistics.median(r[key] for r in rs)

        rows.append([mode, f"{100 * med('cpu'):.1f}%", f"{med('cpu') / base:.2f}×", f"{med('rss'):.0f} MiB",
                     f"{1000 * med('ping_p50'):.2f} ms", f"{1000 * med('ping_p99'):.2f} ms",
                     f"{med('scrapes'):.1f}", f"{med('scrape_ms'):.1f} ms"])
    table(f"The agent with /metrics ({args.repeats} runs of {args.seconds:g} s per mode, medians; a session on "
          "validate_card, about 1,000 calls/s)",
          ["metrics_listen", "agent CPU", "vs off", "agent RSS", "local Ping, median", "local Ping, p99",
           "scrapes/s", "one scrape"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
