"""Added cost per call of a three-clause --where condition on a Python
function, against the same session without one, in the same run (a real
agent, BPF on the SDK's probe site).

    .venv/bin/python bench/conditions_python.py [--calls 200000] [--repeats 7]

Modes are interleaved within each repeat (a session is attached for each
mode and detached after it), in reverse order every other repeat;
ns/call is the median of the repeats, "added" the median of each repeat's
difference with the session without a condition. Every
session is timing only, so a call shown costs the same in each: what
differs is the condition."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import table
from coral.daemon.client import Client
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, Process, tool

HERE = Path(__file__).resolve().parent
SERVICE, FUNCTION = "bench-py-where", "__main__.charge"
# (label, condition or None for no session, calls it shows)
MODES: list[tuple[str, str | None]] = [
    ("no session", None),
    ("session, no condition", ""),
    ("three clauses read at the entry, every call matches",
     'amount >= 0 && currency == "EUR" && req.tier < 5'),
    ("three clauses, one at the return, every call matches",
     'amount >= 0 && req.tier < 5 && duration < 1s'),
    ("three clauses read at the entry, no call matches (filtered)",
     'amount < 0 && currency == "EUR" && req.tier < 5'),
]


class Target:
    def __init__(self, env: CoralEnv) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HERE / "py_conditions_target.py")], env=env.env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ns_per_call(self, calls: int) -> float:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None  # created with pipes
        stdin.write(f"{calls}\n")
        stdin.flush()
        return float(stdout.readline())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def measure(agent: Client, target: Target, calls: int, condition: str | None) -> tuple[float, pb.DebugSession | None]:
    if condition is None:
        return target.ns_per_call(calls), None
    cfg = pb.UprobeConfig(predicate=condition)
    reply = agent.call("AttachUprobe", pb.AttachUprobeRequest(service=SERVICE, function=FUNCTION, duration_ms=600_000,
                                                              config=cfg))
    sid = str(reply.session.session_id)  # type: ignore[attr-defined]
    ns = target.ns_per_call(calls)
    ended = agent.call("DetachUprobe", pb.DetachUprobeRequest(session_id=sid)).session  # type: ignore[attr-defined]
    return ns, ended


def in_process(calls: int, repeats: int) -> dict[str, float]:
    """The SDK's own share: the same function armed in this process with
    each condition, the probe site called with no kernel probe on it (the
    extension's test mode), modes interleaved."""
    import types

    from bench import py_conditions_target
    from coral.sdk import _probe
    from coral.sdk.arming import ARMS

    module = types.ModuleType("bench_where_inproc")
    module.charge = py_conditions_target.charge  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    req = py_conditions_target.Request(500, 3)
    _probe._set_test_mode(semaphore=1, capture=False)
    samples: dict[str, list[float]] = {label: [] for label, c in MODES if c is not None}
    try:
        for repeat in range(repeats):
            for label, condition in MODES if repeat % 2 == 0 else MODES[::-1]:
                if condition is None:
                    continue
                ARMS.arm(f"{module.__name__}.charge", 1, capture_args=False, capture_return=False, condition=condition)
                start = time.perf_counter_ns()
                for i in range(calls):
                    module.charge(i, "EUR", req)
                samples[label].append((time.perf_counter_ns() - start) / calls)
                ARMS.disarm_all()
    finally:
        _probe._set_test_mode(semaphore=0, capture=False)
    plain = samples["session, no condition"]
    return {label: statistics.median(v) for label, v in samples.items()} | {
        "added " + label: statistics.median(a - b for a, b in zip(v, plain, strict=True)) for label, v in samples.items()}


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
    target = Target(env)
    try:
        deadline = time.monotonic() + 30
        while not agent.call("ListServices", pb.ListServicesRequest()).services:  # type: ignore[attr-defined]
            if time.monotonic() > deadline:
                raise SystemExit("the target never registered")
        target.ns_per_call(args.calls)  # warm up
        samples: dict[str, list[float]] = {label: [] for label, _ in MODES}
        for repeat in range(args.repeats):
            for label, condition in MODES if repeat % 2 == 0 else MODES[::-1]:  # no mode always first
                ns, ended = measure(agent, target, args.calls, condition)
                if ended is not None and ended.total_calls != args.calls:  # every call counted, or the figure lies
                    raise SystemExit(f"{label}: the kernel counted {ended.total_calls} of {args.calls} calls")
                samples[label].append(ns)
        median = {label: statistics.median(v) for label, v in samples.items()}
        plain = samples["session, no condition"]
        print(f"Python {sys.version.split()[0]}, {args.calls} calls per run, median of {args.repeats} runs")
        rows = []
        for label, condition in MODES:
            # the median of each repeat's difference: the two ran minutes apart at most, on the same machine load
            added = "-" if condition in (None, "") else \
                f"{statistics.median(a - b for a, b in zip(samples[label], plain, strict=True)):+.0f}"
            rows.append([label, f"`{condition}`" if condition else "", f"{median[label]:.0f}", added])
        table("Added cost per call of a --where condition on a Python function (timing-only sessions)",
              ["mode", "condition", "ns/call", "added vs. no condition"], rows)
        own = in_process(args.calls, args.repeats)
        table("The SDK's share, in the process (armed, probe site called, no kernel probe)",
              ["mode", "ns/call", "added vs. no condition"],
              [[label.replace("session, ", "armed, "), f"{own[label]:.0f}",
                "-" if condition == "" else f"{own['added ' + label]:+.0f}"]
               for label, condition in MODES if condition is not None])
    finally:
        target.stop()
        agent.close()
        agent_proc.stop()
        env.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
