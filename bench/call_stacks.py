"""Added cost per call of --stack on a native function, against the same
session without it, same run, same target process; built with frame
pointers (-O0: the kernel walks them) and at -O2 without them (the probe
copies 4096 bytes of stack for the agent to unwind with .eh_frame). Prints
a markdown table.

    .venv/bin/python bench/call_stacks.py [--calls 1500] [--repeats 21]

Target: bench/conditions.c (`charge`, called from main's loop). Modes are
interleaved round by round within each build (no probe, a timing-only
session, the same session with --stack); each figure is the median of the
rounds of a loop that times itself. The agent's CPU per call is counted
from the loop's start until the detach has read every call: it symbolizes
every stack it is sent, on the same two CPUs. A round's calls fit in the
ring buffer, so that none is lost while the agent catches up (the last
column says if one was). These VMs are noisy: compare within one run."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.native_overhead import Target
from bench.report import cpu_seconds, full_speed_env, table
from coral.daemon.client import Client
from coral.proto import coral_pb2 as pb
from tests.harness import Process, tool

HERE = Path(__file__).resolve().parent
# The third build's entry is five NOPs, which the kernel emulates (DESIGN.md: 0.57 us
# against 9.2 us single-stepped): the same unwinding, under less of the probe's own noise.
BUILDS = {"frame pointers (-O0)": ["-O0", "-fno-omit-frame-pointer"],
          "unwind tables (-O2, no frame pointers)": ["-O2", "-fomit-frame-pointer"],
          "unwind tables (-O2, no frame pointers, NOP entry)": ["-O2", "-fomit-frame-pointer",
                                                                "-fpatchable-function-entry=5"]}


def probed(agent: Client, agent_pid: int, target: Target, cfg: pb.UprobeConfig,
           calls: int) -> tuple[float, float, str, int]:
    """The target's ns per call; the agent's CPU ns per call, from the loop's
    start until the detach has read every call; how stacks were taken; and
    the calls lost or without a stack (the ring buffer was full)."""
    r = agent.call("AttachUprobe", pb.AttachUprobeRequest(service=target.service, function="charge",
                                                          duration_ms=600_000, config=cfg))
    session_id = r.session.session_id  # type: ignore[attr-defined]
    detached = False
    try:
        target.ns_per_call(calls // 10)  # warm up
        before = cpu_seconds(agent_pid)
        ns = target.ns_per_call(calls)
        d = agent.call("DetachUprobe", pb.DetachUprobeRequest(session_id=session_id))
        detached = True
        spent = (cpu_seconds(agent_pid) - before) * 1e9 / calls
        lost = d.session.lost  # type: ignore[attr-defined]
        return ns, spent, r.session.stack_unwind, lost.get("stack_missing", 0) + lost.get("ringbuf_full", 0)  # type: ignore[attr-defined]
    finally:
        if not detached:
            agent.call("DetachUprobe", pb.DetachUprobeRequest(session_id=session_id))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Few enough that every stack fits in the ring buffer (16 MiB; a copied one takes 8 KiB) before the agent reads.
    ap.add_argument("--calls", type=int, default=1500)
    ap.add_argument("--repeats", type=int, default=21)
    args = ap.parse_args()
    env = full_speed_env()
    agent_proc = Process("agentd", [tool("coral-agentd")], env).wait_ready()
    agent = Client(env.endpoint("agent.sock"), 60)
    rows: list[list[str]] = []
    try:
        for build, flags in BUILDS.items():
            binary = env.root / "bin" / f"stacks{len(rows)}"
            binary.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["gcc", "-g", *flags, "-o", str(binary), str(HERE / "conditions.c")], check=True)
            target = Target(env, f"bench-stack-{len(rows)}", [str(binary)])
            configs = {"no --stack": pb.UprobeConfig(), "--stack": pb.UprobeConfig(stack=True)}
            if "NOP" in build:
                configs["--stack --stack-bytes 1024"] = pb.UprobeConfig(stack=True, stack_bytes=1024)
            modes: dict[str, list[float]] = {"unprobed": [], **{m: [] for m in configs}}
            agent_ns: dict[str, list[float]] = {m: [] for m in configs}
            unwinds: dict[str, str] = {}
            missing: dict[str, int] = {m: 0 for m in configs}
            try:
                for _ in range(args.repeats):
                    target.ns_per_call(args.calls // 10)
                    modes["unprobed"].append(target.ns_per_call(args.calls))
                    for mode, cfg in configs.items():
                        ns, spent, unwinds[mode], lost = probed(agent, agent_proc.pid, target, cfg, args.calls)
                        missing[mode] += lost
                        modes[mode].append(ns)
                        agent_ns[mode].append(spent)
            finally:
                target.stop()
            median = {m: statistics.median(v) for m, v in modes.items()}
            for mode in configs:
                rows.append([build, mode, unwinds[mode] or "—", f"{median['unprobed']:.0f}", f"{median[mode]:.0f}",
                             "—" if mode == "no --stack" else f"{median[mode] - median['no --stack']:+.0f}",
                             f"{statistics.median(agent_ns[mode]):.0f}", str(missing[mode])])
    finally:
        agent.close()
        agent_proc.stop()
        env.remove()
    table(f"--stack on a native function (C; median of {args.repeats} rounds of {args.calls} calls)",
          ["build", "session", "stack_unwind", "unprobed ns", "probed ns", "added by --stack", "agent CPU ns per call",
           "calls lost or without a stack"],
          rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
