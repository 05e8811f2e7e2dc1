"""Python SDK costs with a real agent session attached (BPF on the SDK's
probe site), against the same loop with no session, in the same run.

    .venv/bin/python bench/python_attached.py [--calls 200000] [--repeats 7]

Per-call figures are medians of repeats, modes interleaved within each
repeat; the added cost is (attached - unattached)."""

from __future__ import annotations

import argparse
import functools
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import SUSTAINED_HEADER, sustained_row, table
from coral.daemon.client import Client
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, Process, tool

HERE = Path(__file__).resolve().parent
FUNCTION = "__main__.work"


class PyTarget:
    def __init__(self, env: CoralEnv) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HERE / "py_target.py")], env=env.env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def ns_per_call(self, calls: int, rate: int = 0) -> float:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None  # created with pipes
        stdin.write(f"{calls} {rate}\n")
        stdin.flush()
        return float(stdout.readline())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def session(agent: Client, capture: bool) -> str:
    cfg = pb.UprobeConfig(capture_args=capture, capture_return=capture)
    reply = agent.call("AttachUprobe", pb.AttachUprobeRequest(service="bench-py", function=FUNCTION, duration_ms=600_000,
                                                              config=cfg))
    return str(reply.session.session_id)  # type: ignore[attr-defined]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    env = CoralEnv.create()
    config = env.root / "bench.toml"
    env.root.mkdir(parents=True, exist_ok=True)
    config.write_text("[sessions]\nmax_events_per_session = 100000000\ncpu_budget_percent = 0\n"
                      "[agent]\ningest_cpu_percent = 0\n")  # full speed: measured, not cut
    env.env["CORAL_CONFIG"] = str(config)
    agent_proc = Process("agentd", [tool("coral-agentd")], env).wait_ready()
    agent = Client(env.endpoint("agent.sock"), 60)
    target = PyTarget(env)
    try:
        deadline = time.monotonic() + 30
        while not agent.call("ListServices", pb.ListServicesRequest()).services:  # type: ignore[attr-defined]
            if time.monotonic() > deadline:
                raise SystemExit("the target never registered")
        n = args.calls
        measure = functools.partial(target.ns_per_call, n)
        measure()  # warm up
        samples: dict[str, list[float]] = {"base": [], "timing": [], "capture": []}
        for _ in range(args.repeats):
            samples["base"].append(measure())
            for mode, capture in (("timing", False), ("capture", True)):
                sid = session(agent, capture)
                samples[mode].append(measure())
                agent.call("DetachUprobe", pb.DetachUprobeRequest(session_id=sid))
        base, timing, captured = (statistics.median(samples[k]) for k in ("base", "timing", "capture"))
        print(f"Python {sys.version.split()[0]}, {n} calls per run, median of {args.repeats} runs")
        table("Added cost per call of a Python function with a Coral session attached",
              ["mode", "ns/call", "added ns/call"],
              [["no session (armed functions are disarmed)", f"{base:.0f}", "-"],
               ["session, timing only", f"{timing:.0f}", f"{timing - base:.0f}"],
               ["session, arguments and return value", f"{captured:.0f}", f"{captured - base:.0f}"]])
        rows = []
        for rate in (50_000, 100_000, 200_000):
            calls = rate * 5  # five seconds: sustained, not a burst the ring buffer absorbs
            sid = session(agent, False)
            ns = target.ns_per_call(calls, rate)
            s = agent.call("DetachUprobe", pb.DetachUprobeRequest(session_id=sid)).session  # type: ignore[attr-defined]
            rows.append(sustained_row(f"{rate:,}", ns, calls, s))
        table("Sustained rate on one Python thread (session, timing only)", SUSTAINED_HEADER, rows)
    finally:
        target.stop()
        agent.close()
        agent_proc.stop()
        env.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
