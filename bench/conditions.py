"""Added cost per call of a --where condition on a native function, against
the same session without one, same run, same target process. Prints a
markdown table.

    .venv/bin/python bench/conditions.py [--calls 200000] [--repeats 7]

Modes are interleaved round by round (no probe, a timing-only session, the
same session with a three-clause condition, with an integer one); each
figure is the median of the rounds of a loop that times itself. The
conditions hold for every call, so every mode reports the same calls and
the difference is the condition's own work (reading a string and a field at
the entry, a table lookup at the return). These VMs are noisy: compare
within one run."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.native_overhead import Target
from bench.report import full_speed_env, table
from coral.daemon.client import Client
from coral.proto import coral_pb2 as pb
from tests.harness import Process, build_c, tool

HERE = Path(__file__).resolve().parent
THREE = 'startswith(ref, "acme-") && (order->cents > 10 || duration > 1s) && !(ret < 0)'
INTEGER = "amount >= 0"


def probed(agent: Client, target: Target, where: str, calls: int) -> float:
    cfg = pb.UprobeConfig(predicate=where)
    sid = agent.call("AttachUprobe", pb.AttachUprobeRequest(service=target.service, function="charge",
                                                            duration_ms=600_000, config=cfg))
    try:
        target.ns_per_call(calls // 10)  # warm up
        return target.ns_per_call(calls)
    finally:
        agent.call("DetachUprobe", pb.DetachUprobeRequest(session_id=sid.session.session_id))  # type: ignore[attr-defined]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    env = full_speed_env()
    binary = build_c(HERE / "conditions.c", env.root / "bin" / "conditions")
    agent_proc = Process("agentd", [tool("coral-agentd")], env).wait_ready()
    agent = Client(env.endpoint("agent.sock"), 60)
    target = Target(env, "bench-where", [str(binary)])
    modes: dict[str, list[float]] = {"unprobed": [], "no condition": [], "three clauses": [], "one integer": []}
    try:
        for _ in range(args.repeats):
            target.ns_per_call(args.calls // 10)
            modes["unprobed"].append(target.ns_per_call(args.calls))
            modes["no condition"].append(probed(agent, target, "", args.calls))
            modes["three clauses"].append(probed(agent, target, THREE, args.calls))
            modes["one integer"].append(probed(agent, target, INTEGER, args.calls))
    finally:
        agent.close()
        target.stop()
        agent_proc.stop()
        env.remove()
    median = {m: statistics.median(v) for m, v in modes.items()}
    base = median["no condition"]
    rows = [[m, f"{v:.0f}", "—" if m == "unprobed" else f"{v - median['unprobed']:.0f}",
             "—" if m in ("unprobed", "no condition") else f"{v - base:+.0f}"] for m, v in median.items()]
    table(f"--where on a native function (C, timing only; median of {args.repeats} rounds of {args.calls} calls)",
          ["mode", "ns per call", "added by the probe", "added by the condition"], rows)
    print(f"\nthree clauses: `{THREE}`; one integer: `{INTEGER}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
