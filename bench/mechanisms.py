"""What a probe costs per mechanism and per build: Coral's timing-only
session against a raw BCC program of the same mechanism with empty
handlers, on the same function in the same run, and against the least a
program that reports every call's duration does (TIMING). Prints a
markdown table.

    .venv/bin/python bench/mechanisms.py [--calls 100000] [--repeats 5] [--build=-O0 ...] [--file C]

bench/mechanisms.c is built as C and as C++ with each set of build flags
in BUILDS. In the C file both functions get a uretprobe; in the C++ file
the leaf (it calls nothing) keeps the uretprobe and bench_call is probed
at its RET (docs/native-targets.md, "How returns are seen"). The raw
program is attached where Coral attaches: the first instruction, and a
uretprobe or the RET. Modes are interleaved within each repeat; figures
are medians of the repeats, and the added cost is (probed - unprobed).
The agent runs with no CPU budget and no ingest cap, so every call of the
loop is measured, not cut short. The last column is the session's
probe_cost_ns: the share of each reported duration the agent measured as
the probes' own, for that first instruction and mechanism."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import capstone

from bench.report import full_speed_env, table
from coral.agentd.targets import return_offsets
from coral.daemon.client import Client
from coral.elfinfo import ElfFunctions
from coral.proto import coral_pb2 as pb
from tests.harness import CoralEnv, Process, tool

HERE = Path(__file__).resolve().parent
BUILDS = {
    "-O0": ["-O0"],
    "-O2": ["-O2"],
    "-O2 -fpatchable-function-entry=5": ["-O2", "-fpatchable-function-entry=5"],
    "-O2 -pg -mfentry -mnop-mcount (non-PIE)": ["-O2", "-pg", "-mfentry", "-mnop-mcount", "-fno-pie", "-no-pie"],
}
EMPTY = "int on_hit(void *ctx) { return 0; }\n"
# The least a tool that reports every call's duration does: the entry's time
# kept per thread, and at the return one 24-byte record per call in a ring
# buffer, unwoken (the bench drains it between runs). No depth, no sessions,
# no counters. The time is kept in a hash by thread id, as BCC's funclatency
# keeps it (update and delete a call), or in the thread's task storage, as
# Coral keeps its frames.
TIMING = r"""
#include <uapi/linux/ptrace.h>
struct call { u32 pid; u32 tid; u64 start_ns; u64 duration_ns; };
BPF_RINGBUF_OUTPUT(calls, 1024);
#ifdef BY_TASK
BPF_TASK_STORAGE(starts, u64);
#else
BPF_HASH(starts, u32, u64, 65536);
#endif
int on_entry(struct pt_regs *ctx)
{
#ifdef BY_TASK
    u64 *start = starts.task_storage_get(bpf_get_current_task_btf(), 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (start)
        *start = bpf_ktime_get_ns();
#else
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 ts = bpf_ktime_get_ns();
    starts.update(&tid, &ts);
#endif
    return 0;
}
int on_return(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
#ifdef BY_TASK
    u64 *start = starts.task_storage_get(bpf_get_current_task_btf(), 0, 0);
#else
    u64 *start = starts.lookup(&tid);
#endif
    if (!start || !*start)
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct call *c = calls.ringbuf_reserve(sizeof(*c));
    if (c) {
        c->pid = id >> 32;
        c->tid = tid;
        c->start_ns = *start;
        c->duration_ns = now - *start;
        calls.ringbuf_submit(c, BPF_RB_NO_WAKEUP);
    }
#ifdef BY_TASK
    *start = 0;
#else
    starts.delete(&tid);
#endif
    return 0;
}
"""


class Target:
    """bench/mechanisms.c under coral-run."""

    def __init__(self, env: CoralEnv, service: str, binary: str) -> None:
        self.service, self.binary = service, binary
        self.run = Process(service, [tool("coral-run"), "--service", service, "--", binary], env,
                           stdin=subprocess.PIPE).wait_ready()
        self.pid = self.run.child_pid

    def ns_per_call(self, function: str, calls: int) -> float:
        stdin, stdout = self.run.proc.stdin, self.run.proc.stdout
        assert stdin is not None and stdout is not None  # created with pipes
        stdin.write(f"{function} {calls}\n".encode())
        stdin.flush()
        return float(stdout.readline().split()[0])

    def stop(self) -> None:
        if self.run.proc.stdin:
            self.run.proc.stdin.close()
        self.run.stop()


def first_instruction(binary: str, function: str) -> str:
    elf = ElfFunctions.load(binary)
    address, _ = elf.symbols[function]
    offset = elf.file_offset(address)
    with open(binary, "rb") as f:
        f.seek(offset)
        code = f.read(16)
    insn = next(capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64).disasm(code, 0))
    return f"`{insn.mnemonic} {insn.op_str}`".replace(" `", "`").strip() + f" ({insn.size} B)"


class RawProbe:
    """Raw BCC handlers where Coral probes: the entry, and a uretprobe or each
    RET. Empty ones, or TIMING's keeping the entry's time by `timing`: "hash"
    or "task"."""

    def __init__(self, target: Target, function: str, mechanism: str, timing: str = "") -> None:
        from bcc import BPF

        self.bpf = BPF(text=TIMING, cflags=["-DBY_TASK"] if timing == "task" else []) if timing else BPF(text=EMPTY)
        self.entry, self.ret = (b"on_entry", b"on_return") if timing else (b"on_hit", b"on_hit")
        self.calls = 0
        if timing:
            def count(ctx: object, data: object, size: int) -> int:
                self.calls += 1
                return 0
            self.bpf["calls"].open_ring_buffer(count)
        self.target, self.mechanism = target, mechanism
        elf = ElfFunctions.load(target.binary)
        self.address, size = elf.symbols[function]
        offset = elf.file_offset(self.address)
        self.rets = [self.address + r - offset for r in return_offsets(target.binary, offset, size)]

    def attach(self) -> None:
        b, binary, pid = self.bpf, self.target.binary, self.target.pid
        if self.mechanism == "uretprobe":
            b.attach_uretprobe(name=binary, addr=self.address, fn_name=self.ret, pid=pid)
        else:
            for ret in self.rets:
                b.attach_uprobe(name=binary, addr=ret, fn_name=self.ret, pid=pid)
        b.attach_uprobe(name=binary, addr=self.address, fn_name=self.entry, pid=pid)  # after its returns, as Coral

    def detach(self) -> None:
        for ev in list(self.bpf.uprobe_fds):
            self.bpf.detach_uprobe_event(ev)
        if self.entry == b"on_entry":
            self.bpf.ring_buffer_consume()  # outside the timed loop


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--build", action="append", choices=list(BUILDS), help="only these builds (default: all)")
    ap.add_argument("--file", action="append", choices=["C", "C++"], help="only these files (default: both)")
    args = ap.parse_args()
    env = full_speed_env()
    work = env.root / "bin"
    agent_proc = Process("agentd", [tool("coral-agentd")], env).wait_ready()
    agent = Client(env.endpoint("agent.sock"), 60)
    rows = []
    try:
        print(f"{args.calls} calls per run, median of {args.repeats} runs, kernel {os.uname().release}, "
              f"{os.cpu_count()} CPUs, load {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
        for i, (build, flags) in enumerate(BUILDS.items()):
            if args.build and build not in args.build:
                continue
            for lang, compiler, function in (("C", "gcc", "bench_leaf"), ("C++", "g++", "bench_leaf"),
                                             ("C++", "g++", "bench_call")):
                if args.file and lang not in args.file:
                    continue
                binary = str(work / f"m{i}{lang}")
                if not os.path.exists(binary):
                    subprocess.run([compiler, "-x", lang.lower(), *flags, "-g", "-o", binary,
                                    str(HERE / "mechanisms.c")], check=True)
                target = Target(env, f"mech-{i}-{lang.lower().strip('+')}{'p' * lang.count('+')}", binary)
                try:
                    rows.append(measure(agent, target, build, lang, function, args.calls, args.repeats))
                finally:
                    target.stop()
        table("Added cost per call (ns) by build and return mechanism: Coral timing-only vs raw BCC empty "
              "handlers, same function, same run",
              ["build", "file", "function", "first instruction", "returns", "unprobed ns/call", "raw added",
               "timing by hash added", "timing by task storage added", "Coral added", "ratio",
               "Coral / timing by task storage",
               "the agent's probe_cost_ns"], rows)
    finally:
        agent.close()
        agent_proc.stop()
        env.remove()
    return 0


def measure(agent: Client, target: Target, build: str, lang: str, function: str, calls: int,
            repeats: int) -> list[str]:
    target.ns_per_call(function, calls // 10)  # warm up
    samples: dict[str, list[float]] = {"base": [], "coral": [], "raw": [], "hash": [], "task": []}
    mechanism, probe_cost = "", 0
    raws: dict[str, RawProbe] = {}
    for _ in range(repeats):
        samples["base"].append(target.ns_per_call(function, calls))
        reply = agent.call("AttachUprobe", pb.AttachUprobeRequest(service=target.service, function=function,
                                                                  duration_ms=600_000))
        session = reply.session  # type: ignore[attr-defined]
        try:
            samples["coral"].append(target.ns_per_call(function, calls))
        finally:
            agent.call("DetachUprobe", pb.DetachUprobeRequest(session_id=session.session_id))
        mechanism, probe_cost = session.return_probe, session.probe_cost_ns
        for kind, timing in (("raw", ""), ("hash", "hash"), ("task", "task")):
            probe = raws.get(kind) or raws.setdefault(kind, RawProbe(target, function, mechanism, timing))
            probe.attach()
            samples[kind].append(target.ns_per_call(function, calls))
            probe.detach()
    for kind, probe in raws.items():
        probe.bpf.cleanup()
        if kind != "raw" and probe.calls != calls * repeats:
            raise SystemExit(f"the minimal timing program ({kind}) reported {probe.calls} calls, not {calls * repeats}")
    base = statistics.median(samples["base"])
    added = {k: statistics.median(v) - base for k, v in samples.items()}
    return [build, lang, function, first_instruction(target.binary, function), mechanism, f"{base:.1f}",
            f"{added['raw']:.0f}", f"{added['hash']:.0f} ({added['hash'] / added['raw']:.2f}x)",
            f"{added['task']:.0f} ({added['task'] / added['raw']:.2f}x)", f"{added['coral']:.0f}",
            f"{added['coral'] / added['raw']:.2f}x", f"{added['coral'] / added['task']:.2f}x", f"{probe_cost}"]


if __name__ == "__main__":
    sys.exit(main())
