"""The per-session CPU budget: how much a probed hot function slows its
service, with no budget and with the budget cutting in. Prints markdown.

    .venv/bin/python bench/cpu_budget.py [--threads 3] [--repeats 7] [--budget 2]

The service is bench/hot.c under coral-run: THREADS threads call one tiny
function in a tight loop (the worst case: nearly all of its time is the
probe's). Its throughput (calls/s over all threads, counted by the program
itself over --window-ms) is the measure; slowdown = unprobed / probed, the
median of --repeats windows. A second service with one thread gives the
added cost of one probed call (an entry and a return hit)."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import table
from tests.harness import REPO, CoralEnv, Process, build_c, coralctl, start_agent, start_attach, tool


class Hot:
    def __init__(self, env: CoralEnv, binary: Path, threads: int) -> None:
        self.run = Process(
            f"hot{threads}",
            [tool("coral-run"), "--service", f"hot{threads}", "--", str(binary), str(threads)],
            env,
            stdin=subprocess.PIPE,
        ).wait_ready()

    def rate(self, ms: int) -> float:
        stdin, stdout = self.run.proc.stdin, self.run.proc.stdout
        assert stdin is not None and stdout is not None  # created with pipes
        stdin.write(f"{ms}\n".encode())
        stdin.flush()
        return float(stdout.readline())

    def median(self, ms: int, repeats: int) -> float:
        return statistics.median(self.rate(ms) for _ in range(repeats))

    def stop(self) -> None:
        if self.run.proc.stdin:
            self.run.proc.stdin.close()
        self.run.stop()


def agent_with(budget: float) -> tuple[CoralEnv, Process]:
    env = CoralEnv.create()
    env.root.mkdir(parents=True, exist_ok=True)
    config = env.root / "coral.toml"
    config.write_text(f"[sessions]\ncpu_budget_percent = {budget}\n")
    env.env["CORAL_CONFIG"] = str(config)
    return env, start_agent(env)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--window-ms", type=int, default=200)
    ap.add_argument("--budget", type=float, default=2.0, help="cpu_budget_percent for the budgeted run")
    args = ap.parse_args()
    binary = build_c(REPO / "bench" / "hot.c", Path(tempfile.mkdtemp(prefix="coral-bench-")) / "hot")
    ms, n = args.window_ms, args.repeats

    # No budget: the probe stays for as long as the session lasts.
    env, agent = agent_with(0)
    one, many = Hot(env, binary, 1), Hot(env, binary, args.threads)
    try:
        base1, base = one.median(ms, n), many.median(ms, n)
        attach1, s1 = start_attach(env, "hot1", "hot", "--local", "--duration", "10m", "--no-save")
        probed1 = one.median(ms, n)
        coralctl(env, "--local", "debug", "detach", s1["session_id"])
        attach1.communicate(timeout=60)
        attach, s = start_attach(env, f"hot{args.threads}", "hot", "--local", "--duration", "10m", "--no-save")
        probed = many.median(ms, n)
        coralctl(env, "--local", "debug", "detach", s["session_id"])
        attach.communicate(timeout=60)
    finally:
        one.stop()
        many.stop()
        agent.stop()
        env.remove()
    per_call = 1e9 / probed1 - 1e9 / base1

    # With a budget: the same attach, cut by the kernel.
    env, agent = agent_with(args.budget)
    many = Hot(env, binary, args.threads)
    try:
        base_b = many.median(ms, n)
        attach, s = start_attach(env, f"hot{args.threads}", "hot", "--local", "--duration", "10m", "--no-save")
        first = many.rate(1000)  # the first second: the cut comes in it
        out, _ = attach.communicate(timeout=60)
        summary = json.loads(out.splitlines()[-1])
        after = many.median(ms, n)
    finally:
        many.stop()
        agent.stop()
        env.remove()

    table(
        f"Probed hot function, 1 thread: added cost per call ({n} windows of {ms} ms, median)",
        ["unprobed calls/s", "probed calls/s", "added ns per call (entry + return hits)", "per hit"],
        [[f"{base1:,.0f}", f"{probed1:,.0f}", f"{per_call:,.0f}", f"{per_call / 2:,.0f}"]],
    )
    table(
        f"Service slowdown, {args.threads} threads calling the probed function in a tight loop "
        f"(calls/s, median of {n} windows of {ms} ms; slowdown = unprobed / probed)",
        ["run", "unprobed", "probed", "slowdown"],
        [
            ["no budget, probe attached", f"{base:,.0f}", f"{probed:,.0f}", f"{base / probed:.2f}x"],
            [
                f"budget {args.budget:g}%: the first second after attach (the cut comes in it)",
                f"{base_b:,.0f}",
                f"{first:,.0f}",
                f"{base_b / first:.2f}x",
            ],
            [f"budget {args.budget:g}%: after the cut", f"{base_b:,.0f}", f"{after:,.0f}", f"{base_b / after:.2f}x"],
        ],
    )
    table(
        "The budgeted session",
        ["status", "calls seen by the kernel before the cut"],
        [[f"{summary['status']} ({summary['status_reason']})", f"{summary['calls']:,}"]],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
