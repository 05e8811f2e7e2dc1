"""How the agent learns of calls, and what it costs. The kernel could wake
the agent for a call that lands in an empty ring buffer (the default
notification of bpf_ringbuf_submit); the agent instead drains on a timer
while a session runs (BPF_RB_NO_WAKEUP, agent.drain_interval). A wake-up
is paid inside the probed call, so it matters most for sparse calls, where
every call finds the buffer empty. Measured on calls spaced by a sleep,
each timed alone inside the target: raw BCC probes that submit one 8-byte
record with and without the wake-up, and Coral's timing-only session; then
the agent's own CPU for a few drain intervals. Prints markdown tables.

    .venv/bin/python bench/wakeup.py [--calls 400] [--gap-us 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import functools
import os
import select
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.native_overhead import Target, with_session
from bench.report import table
from coral.daemon.client import Client
from coral.elfinfo import ElfFunctions
from tests.harness import CoralEnv, Process, build_c, tool

HERE = Path(__file__).resolve().parent

RAW_RECORD = r"""
BPF_RINGBUF_OUTPUT(events, 64);
int on_entry(struct pt_regs *ctx) {
    u64 *e = events.ringbuf_reserve(sizeof(u64));
    if (!e) return 0;
    *e = bpf_ktime_get_ns();
    events.ringbuf_submit(e, FLAGS);
    return 0;
}
"""


class RawRecord:
    """An entry uprobe that submits one record, and a consumer thread: woken
    by the kernel (poll on the ring buffer), or on a 50 ms timer."""

    def __init__(self, pid: int, binary: str, wake: bool) -> None:
        from bcc import BPF

        self.bpf = BPF(text=RAW_RECORD.replace("FLAGS", "0" if wake else "BPF_RB_NO_WAKEUP"))
        self.records = 0
        self.wakeups = 0
        self.bpf["events"].open_ring_buffer(self._on_record)
        self.wake, self.stopping = wake, False
        elf = ElfFunctions.load(binary)
        self.bpf.attach_uprobe(name=binary, addr=elf.symbols["bench_work"][0], fn_name=b"on_entry", pid=pid)
        self.thread = threading.Thread(target=self._consume, daemon=True)
        self.thread.start()

    def _on_record(self, _ctx: Any, _data: Any, _size: int) -> int:
        self.records += 1
        return 0

    def _consume(self) -> None:
        poller = select.poll()
        poller.register(self.bpf["events"].map_fd, select.POLLIN)
        while not self.stopping:
            if self.wake:
                if poller.poll(100):
                    self.wakeups += 1
            else:
                time.sleep(0.05)
            self.bpf.ring_buffer_consume()

    def close(self) -> None:
        self.stopping = True
        self.thread.join()
        self.bpf.cleanup()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=400, help="sparse calls per run")
    ap.add_argument("--gap-us", type=int, default=2000, help="sleep before each call")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--drain", type=float, nargs="*", default=[0.005, 0.01, 0.05], help="drain_interval values")
    args = ap.parse_args()
    env = CoralEnv.create()
    work = env.root / "bin"
    work.mkdir(parents=True)
    config = env.root / "bench.toml"
    config.write_text("[sessions]\ncpu_budget_percent = 0\n")
    env.env["CORAL_CONFIG"] = str(config)
    binary = str(build_c(HERE / "sparse.c", work / "sparse"))
    agent_proc = Process("agentd", [tool("coral-agentd")], env).wait_ready()
    agent = Client(env.endpoint("agent.sock"), 60)
    target = Target(env, "sparse", [binary])
    samples: dict[str, list[float]] = {"base": [], "timer": [], "woken": [], "coral": []}
    wakeups = records = 0

    def measure() -> float:
        return target.ns_per_call(args.calls, args.gap_us)

    try:
        print(f"{args.calls} calls {args.gap_us} µs apart per run, median of {args.repeats} runs, "
              f"kernel {os.uname().release}, {os.cpu_count()} CPUs")
        measure()  # warm up
        for _ in range(args.repeats):  # modes interleaved: drift on a noisy VM hits them all alike
            samples["base"].append(measure())
            for wake in (False, True):
                raw = RawRecord(target.pid, binary, wake)
                samples["woken" if wake else "timer"].append(measure())
                raw.close()
                if wake:
                    wakeups, records = wakeups + raw.wakeups, records + raw.records
            samples["coral"].append(with_session(agent, "sparse", "bench_work", False, measure))
        base, timer, woken, coral = (statistics.median(samples[k]) for k in ("base", "timer", "woken", "coral"))
        table(f"A sparse call's cost (ns, median of each call timed alone; {args.gap_us} µs between calls)",
              ["probe", "ns per call", "added"],
              [["unprobed", f"{base:.0f}", ""],
               ["raw BCC: entry uprobe + one record, BPF_RB_NO_WAKEUP (consumer on a 50 ms timer)",
                f"{timer:.0f}", f"{timer - base:.0f}"],
               [f"raw BCC: the same, kernel wake-up (consumer in poll; woken {wakeups:,} times for {records:,} "
                "records)", f"{woken:.0f}", f"{woken - base:.0f}"],
               ["the wake-up alone (second row minus first)", "", f"{woken - timer:.0f}"],
               ["Coral, timing-only session (entry + return probe, drained on its timer)", f"{coral:.0f}",
                f"{coral - base:.0f}"]])
        target.stop()
        agent.close()
        agent_proc.stop()
        rows = []
        for drain in args.drain:  # what the timer costs the agent instead
            config.write_text(f"[sessions]\ncpu_budget_percent = 0\n[agent]\ndrain_interval = {drain}\n")
            agent_proc = Process("agentd", [tool("coral-agentd")], env).wait_ready()
            agent = Client(env.endpoint("agent.sock"), 60)
            target = Target(env, "sparse", [binary])
            idle = cpu_seconds(agent_proc.pid, 5.0)
            calls = functools.partial(target.ns_per_call, 1000, 5000)
            running = with_session(agent, "sparse", "bench_work", False,
                                   functools.partial(cpu_seconds, agent_proc.pid, 5.0, calls))
            rows.append([f"{drain * 1000:g} ms", f"{idle * 100:.2f}%", f"{running * 100:.2f}%"])
            target.stop()
            agent.close()
            agent_proc.stop()
        table("The agent's CPU (percent of one CPU over 5 s) by agent.drain_interval",
              ["drain_interval", "no session", "one session, 200 calls/s"], rows)
    finally:
        target.stop()
        agent.close()
        agent_proc.stop()
        env.remove()
    return 0


def cpu_seconds(pid: int, seconds: float, work: Callable[[], object] | None = None) -> float:
    """CPU seconds a process used per second over about `seconds` (while `work` runs in a loop)."""
    def used() -> float:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    start, t0 = used(), time.monotonic()
    while time.monotonic() - t0 < seconds:
        if work is None:
            time.sleep(0.1)
        else:
            work()
    return (used() - start) / (time.monotonic() - t0)


if __name__ == "__main__":
    sys.exit(main())
