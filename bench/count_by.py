"""Added cost per call of --count-by on a native function, against the same
session reporting every call (timing only), same run, same target process
(bench/conditions.c: `charge(const char *ref, struct order *order, long
amount)`, amount = i & 7). Prints a markdown table.

    .venv/bin/python bench/count_by.py [--calls 200000] [--repeats 7]

Modes are interleaved round by round (no probe, a timing-only session, the
same function counted by an integer argument, by a string argument, by a
field through a pointer); each figure is the median of the rounds of a loop
that times itself. A counted call sends no record: the difference is the
key's reading and its row's update (coral_count, tail-called at the return)
against a record per call. These VMs are noisy: compare within one run."""

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
KEYS = {"by amount (integer)": "amount", "by ref (string)": "ref", "by order->cents (field)": "order->cents"}


def probed(agent: Client, target: Target, key: str, calls: int) -> float:
    cfg = pb.UprobeConfig(count_by=key)
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
    target = Target(env, "bench-count-by", [str(binary)])
    modes: dict[str, list[float]] = {"unprobed": [], "every call reported": [], **{m: [] for m in KEYS}}
    try:
        for _ in range(args.repeats):
            target.ns_per_call(args.calls // 10)
            modes["unprobed"].append(target.ns_per_call(args.calls))
            modes["every call reported"].append(probed(agent, target, "", args.calls))
            for mode, key in KEYS.items():
                modes[mode].append(probed(agent, target, key, args.calls))
    finally:
        agent.close()
        target.stop()
        agent_proc.stop()
        env.remove()
    median = {m: statistics.median(v) for m, v in modes.items()}
    base = median["every call reported"]
    rows = [[m, f"{v:.0f}", "—" if m == "unprobed" else f"{v - median['unprobed']:.0f}",
             "—" if m in ("unprobed", "every call reported") else f"{v - base:+.0f}"] for m, v in median.items()]
    table(f"--count-by on a native function (C; median of {args.repeats} rounds of {args.calls} calls)",
          ["mode", "ns per call", "added by the probe", "against reporting every call"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
