"""Native probe costs: Coral against raw BCC programs, measured in the same
run on the same target processes. Prints markdown tables.

    .venv/bin/python bench/native_overhead.py [--calls 200000] [--repeats 7]

Per-call figures are medians of repeats of a loop that times itself; the
added cost is (probed - unprobed). These VMs are noisy: compare ratios."""

from __future__ import annotations

import argparse
import functools
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import SUSTAINED_HEADER, full_speed_env, sustained_row, table
from coral.agentd.targets import return_offsets
from coral.daemon.client import Client
from coral.elfinfo import ElfFunctions
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, Process, build_c, tool

HERE = Path(__file__).resolve().parent

RAW_TIMING = r"""
#include <uapi/linux/ptrace.h>
BPF_HASH(start, u64, u64, 65536);
BPF_ARRAY(total, u64, 2);
int on_entry(struct pt_regs *ctx) {
    u64 key = KEY; u64 ts = bpf_ktime_get_ns();
    start.update(&key, &ts);
    return 0;
}
int on_return(struct pt_regs *ctx) {
    u64 key = KEY; u64 *ts = start.lookup(&key);
    if (!ts) return 0;
    u64 d = bpf_ktime_get_ns() - *ts; start.delete(&key);
    int i = 0; u64 *t = total.lookup(&i); if (t) __sync_fetch_and_add(t, d);
    return 0;
}
"""


class Target:
    def __init__(self, env: CoralEnv, name: str, argv: list[str]) -> None:
        self.service = name
        self.run = Process(name, [tool("coral-run"), "--service", name, "--", *argv], env, stdin=subprocess.PIPE)
        self.run.wait_ready()
        status = next(p for m in self.run.notify.messages for p in m.split("\n") if p.startswith("STATUS="))
        self.pid = int(status.split(" pid ")[1].split()[0])

    def ns_per_call(self, calls: int, rate: int = 0) -> float:
        stdin, stdout = self.run.proc.stdin, self.run.proc.stdout
        assert stdin is not None and stdout is not None  # created with pipes
        stdin.write(f"{calls} {rate}\n".encode() if rate else f"{calls}\n".encode())
        stdin.flush()
        return float(stdout.readline().split()[0])

    def median(self, calls: int, repeats: int) -> float:
        self.ns_per_call(calls // 10)  # warm up
        return statistics.median(self.ns_per_call(calls) for _ in range(repeats))

    def stop(self) -> None:
        if self.run.proc.stdin:
            self.run.proc.stdin.close()
        self.run.stop()


class RawProbe:
    """The baseline: a minimal BCC entry + return timing program (a uretprobe
    for C; a uprobe on each RET for Go, as Coral does), compiled once."""

    def __init__(self, pid: int, binary: str, symbol: str, go: bool) -> None:
        from bcc import BPF

        key = "(((u64)bpf_get_current_pid_tgid() >> 32) << 32) ^ ctx->r14" if go else "bpf_get_current_pid_tgid()"
        self.bpf = BPF(text=RAW_TIMING.replace("KEY", key))
        self.pid, self.binary, self.go = pid, binary, go
        elf = ElfFunctions.load(binary)
        self.address, size = elf.symbols[symbol]
        offset = elf.file_offset(self.address)
        self.rets = [self.address + r - offset for r in return_offsets(binary, offset, size)] if go else []

    def attach(self) -> None:
        b = self.bpf
        b.attach_uprobe(name=self.binary, addr=self.address, fn_name=b"on_entry", pid=self.pid)
        if self.go:
            for ret in self.rets:
                b.attach_uprobe(name=self.binary, addr=ret, fn_name=b"on_return", pid=self.pid)
        else:
            b.attach_uretprobe(name=self.binary, addr=self.address, fn_name=b"on_return", pid=self.pid)

    def detach(self) -> None:
        for ev in list(self.bpf.uprobe_fds):
            self.bpf.detach_uprobe_event(ev)


def with_session(agent: Client, service: str, function: str, capture: bool, fn: Callable[[], float]) -> float:
    cfg = pb.UprobeConfig(capture_args=capture, capture_return=capture)
    sid = agent.call("AttachUprobe", pb.AttachUprobeRequest(service=service, function=function, duration_ms=600_000,
                                                            config=cfg)).session.session_id  # type: ignore[attr-defined]
    try:
        return fn()
    finally:
        agent.call("DetachUprobe", pb.DetachUprobeRequest(session_id=sid))


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    env = full_speed_env()
    work = env.root / "bin"
    c_bin = str(build_c(HERE / "target.c", work / "target_c"))
    go_bin = str(work / "target_go")
    subprocess.run(["go", "build", "-o", go_bin, str(HERE / "target.go")], check=True,
                   env={**os.environ, "GOCACHE": str(env.root / "gocache"), "GOPATH": str(env.root / "gopath"),
                        "GO111MODULE": "off"})
    t0 = time.monotonic()
    agent_proc = Process("agentd", [tool("coral-agentd")], env).wait_ready()
    startup = time.monotonic() - t0
    compiled = re.search(r"RSS (\d+) MiB -> (\d+) MiB", agent_proc.output())  # the agent's own log line
    started_rss = rss_kb(agent_proc.pid)
    agent = Client(env.endpoint("agent.sock"), 60)
    c, go = Target(env, "bench-c", [c_bin]), Target(env, "bench-go", [go_bin])
    n, r = args.calls, args.repeats
    try:
        print(f"Target: {n} calls per run, median of {r} runs, kernel {os.uname().release}, {os.cpu_count()} CPUs")
        t = time.monotonic()
        sid = agent.call("AttachUprobe", pb.AttachUprobeRequest(service="bench-c", function="bench_work",
                                                                duration_ms=600_000)).session.session_id  # type: ignore[attr-defined]
        first_attach_ms = (time.monotonic() - t) * 1000
        agent.call("DetachUprobe", pb.DetachUprobeRequest(session_id=sid))
        rows = []
        for name, target, binary, symbol, is_go in (("C (bench_work)", c, c_bin, "bench_work", False),
                                                     ("Go (main.work)", go, go_bin, "main.work", True)):
            # Modes interleaved within each repeat, so drift on a noisy VM hits them all alike.
            samples: dict[str, list[float]] = {"base": [], "raw": [], "plain": [], "full": []}
            target.ns_per_call(n // 10)  # warm up
            raw = RawProbe(target.pid, binary, symbol, is_go)
            measure = functools.partial(target.ns_per_call, n)
            for _ in range(r):
                samples["base"].append(measure())
                raw.attach()
                samples["raw"].append(measure())
                raw.detach()
                samples["plain"].append(with_session(agent, target.service, symbol, False, measure))
                samples["full"].append(with_session(agent, target.service, symbol, True, measure))
            raw.bpf.cleanup()
            base, raw_ns, plain, full = (statistics.median(samples[k]) for k in ("base", "raw", "plain", "full"))
            added_raw = raw_ns - base
            rows.append([name, f"{base:.1f}", f"{added_raw:.0f}", f"{plain - base:.0f}", f"{(plain - base) / added_raw:.2f}x",
                         f"{full - base:.0f}", f"{(full - base) / added_raw:.2f}x"])
        table("Added cost per probed call (ns): Coral vs a raw BCC timing probe, same run",
              ["target", "unprobed ns/call", "raw BCC added", "Coral timing added", "ratio",
               "Coral 4 args + return added", "ratio"], rows)

        for _ in range(2):  # warm up allocators and caches before measuring memory
            for sid in [agent.call("AttachUprobe", pb.AttachUprobeRequest(
                    service="bench-c", function="bench_work", duration_ms=600_000)).session.session_id  # type: ignore[attr-defined]
                    for _ in range(16)]:
                agent.call("DetachUprobe", pb.DetachUprobeRequest(session_id=sid))
        latencies = []
        sessions = []
        idle = rss_kb(agent_proc.pid)
        for _ in range(16):
            t = time.monotonic()
            reply = agent.call("AttachUprobe", pb.AttachUprobeRequest(service="bench-c", function="bench_work",
                                                                      duration_ms=600_000))
            latencies.append((time.monotonic() - t) * 1000)
            sessions.append(reply.session.session_id)  # type: ignore[attr-defined]
        busy = rss_kb(agent_proc.pid)
        for sid in sessions:
            agent.call("DetachUprobe", pb.DetachUprobeRequest(session_id=sid))
        table("Agent: start-up, attach latency, memory", ["measure", "value"], [
            ["agent start to READY (compiles the one BPF program)", f"{startup * 1000:.0f} ms"],
            ["first attach after start", f"{first_attach_ms:.1f} ms"],
            ["later attaches, median of 16", f"{statistics.median(latencies):.1f} ms"],
            ["agentd RSS after compiling, before releasing the compiler's pages (its log)",
             f"{compiled.group(1)} MiB" if compiled else "not logged"],
            ["agentd RSS after start (compiler's pages released)", f"{started_rss / 1024:.1f} MiB"],
            ["agentd RSS idle, after the sessions above", f"{idle / 1024:.1f} MiB"],
            ["added RSS per session (16 sessions)", f"{(busy - idle) / 16 / 1024:.2f} MiB"],
        ])

        rows = []
        for rate in (20_000, 50_000, 100_000, 200_000, 0):
            calls = rate * 5 if rate else n  # five seconds: sustained, not a burst the ring buffer absorbs
            sid = agent.call("AttachUprobe", pb.AttachUprobeRequest(service="bench-c", function="bench_work",
                                                                    duration_ms=600_000)).session.session_id  # type: ignore[attr-defined]
            ns = c.ns_per_call(calls, rate)
            s = agent.call("DetachUprobe", pb.DetachUprobeRequest(session_id=sid)).session  # type: ignore[attr-defined]
            rows.append(sustained_row(f"{rate:,}" if rate else "unpaced", ns, calls, s))
        table("Sustained rate on one target thread (Coral session, timing only)", SUSTAINED_HEADER, rows)
    finally:
        c.stop()
        go.stop()
        agent.close()
        agent_proc.stop()
        env.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
