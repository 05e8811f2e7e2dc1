"""Routing's CPU per attach: bench/routing.py's colony, simulated agents and
clients for one run, with each process's threads' CPU read from /proc
before and after. CPU time per attach is steadier than throughput or P99 on
a shared VM: a run that waits for a CPU takes longer, not more CPU.

    .venv/bin/python bench/routing_cpu.py [--agents 1000] [--clients 8] [--seconds 10] [--profile FILE] [--pin]

--profile runs the colony under cProfile (the figures then include its cost)
and writes its stats to FILE when the colony stops. --pin: the colony on
one CPU, the bench on the others (as bench/routing.py --pin).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.routing import drive, pin, pinned_cpus, wait_for_agents
from tests.harness import CoralEnv, start_colony

TICKS = os.sysconf("SC_CLK_TCK")
# The colony under cProfile, timing its loop's thread in CPU time (not the
# wall time, which counts waits for a CPU and for the GIL as the code's).
PROFILED = """
import cProfile, sys, time
from coral.colonyd.main import main
out, sys.argv = sys.argv[1], sys.argv[2:]
p = cProfile.Profile(time.thread_time)
p.enable()
try:
    main()
finally:
    p.disable()
    p.dump_stats(out)
"""


def threads_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of `pid`: "main" (its first thread, and
    "main (system)": the part of it in the kernel), the
    other threads by name ("python" and "coral-colonyd" are Python's
    threads: the journal's and the writer's in the colony), and "total"
    (which keeps the time of threads that have ended, as the clients' do)."""
    out: dict[str, float] = defaultdict(float)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:
            continue  # ended meanwhile
        name = "main" if task.name == str(pid) else stat[stat.index("(") + 1: stat.rindex(")")]
        out[name] += _seconds(stat)
        if name == "main":
            out["main (system)"] = _seconds(stat, system_only=True)
    out["total"] = _seconds(Path(f"/proc/{pid}/stat").read_text())
    return out


def _seconds(stat: str, system_only: bool = False) -> float:
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[12]) + (0 if system_only else int(fields[11]))) / TICKS


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--profile", help="run the colony under cProfile; its stats go here")
    ap.add_argument("--simulator", default=str(Path(__file__).with_name("routing.py")),
                    help="the bench/routing.py whose simulated agents to run (another tree's, to compare)")
    ap.add_argument("--pin", action="store_true", help="the colony on one CPU, the bench on the others")
    args = ap.parse_args()
    colony_cpus, bench_cpus = pinned_cpus() if args.pin else (set(), set())  # before anything starts
    env = CoralEnv.create()
    wrap = (sys.executable, "-c", PROFILED, args.profile) if args.profile else ()
    colony = start_colony(env, wrap)
    if args.pin:
        pin(colony.pid, colony_cpus)
        pin(os.getpid(), bench_cpus)
    sim = subprocess.Popen(
        [sys.executable, args.simulator, "--simulate", str(args.agents),
         env.endpoint("colony/colony-backend.sock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_agents(sim, env, args.agents)
        load = os.getloadavg()[0]
        procs = {"colony": colony.pid, "agents": sim.pid, "clients": os.getpid()}
        before = {k: threads_cpu(p) for k, p in procs.items()}
        latencies, errors = drive(env.endpoint("colony/colony.sock"), args.agents, args.clients, args.seconds)
        after = {k: threads_cpu(p) for k, p in procs.items()}
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=30)
        colony.stop()
        env.remove()
    n = len(latencies)
    print(f"load {load:.2f}; {n:,} attaches in {args.seconds:g}s ({n / args.seconds:,.0f}/s, "
          f"{2 * n / args.seconds:,.0f} routed requests/s), {errors} errors; P50 "
          f"{statistics.median(latencies) * 1e3:.2f} ms, P99 {statistics.quantiles(latencies, n=100)[98] * 1e3:.2f} ms")
    for k in procs:
        used = {name: secs - before[k].get(name, 0.0) for name, secs in after[k].items()}
        total = used.pop("total", 0.0)
        per = {name: secs / n * 1e6 for name, secs in sorted(used.items(), key=lambda x: -x[1]) if secs > 0}
        print(f"{k}: {total / n * 1e6:,.0f} us/attach  "
              + ", ".join(f"{name} {us:,.0f}" for name, us in per.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
