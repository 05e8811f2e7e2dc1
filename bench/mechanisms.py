"""What a probe costs per mechanism and per build: Coral's timing-only
session against a raw BCC program of the same mechanism with empty
handlers, on the same function in the same run. Prints a markdown table.

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
    """Empty BCC handlers where Coral probes: the entry, and a uretprobe or each RET."""

    def __init__(self, target: Target, function: str, mechanism: str) -> None:
        from bcc import BPF

        self.bpf = BPF(text=EMPTY)
        self.target, self.mechanism = target, mechanism
        elf = ElfFunctions.load(target.binary)
        self.address, size = elf.symbols[function]
        offset = elf.file_offset(self.address)
        self.rets = [self.address + r - offset for r in return_offsets(target.binary, offset, size)]

    def attach(self) -> None:
        b, binary, pid = self.bpf, self.target.binary, self.target.pid
        b.attach_uprobe(name=binary, addr=self.address, fn_name=b"on_hit", pid=pid)
        if self.mechanism == "uretprobe":
            b.attach_uretprobe(name=binary, addr=self.address, fn_name=b"on_hit", pid=pid)
        else:
            for ret in self.rets:
                b.attach_uprobe(name=binary, addr=ret, fn_name=b"on_hit", pid=pid)

    def detach(self) -> None:
        for ev in list(self.bpf.uprobe_fds):
            self.bpf.detach_uprobe_event(ev)


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
               "Coral added", "ratio", "the agent's probe_cost_ns"], rows)
    finally:
        agent.close()
        agent_proc.stop()
        env.remove()
    return 0


def measure(agent: Client, target: Target, build: str, lang: str, function: str, calls: int,
            repeats: int) -> list[str]:
    target.ns_per_call(function, calls // 10)  # warm up
    samples: dict[str, list[float]] = {"base": [], "raw": [], "coral": []}
    mechanism, probe_cost = "", 0
    raw: RawProbe | None = None
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
        raw = raw or RawProbe(target, function, mechanism)
        raw.attach()
        samples["raw"].append(target.ns_per_call(function, calls))
        raw.detach()
    if raw:
        raw.bpf.cleanup()
    base, raw_ns, coral = (statistics.median(samples[k]) for k in ("base", "raw", "coral"))
    added_raw, added_coral = raw_ns - base, coral - base
    return [build, lang, function, first_instruction(target.binary, function), mechanism, f"{base:.1f}",
            f"{added_raw:.0f}", f"{added_coral:.0f}", f"{added_coral / added_raw:.2f}x", f"{probe_cost}"]


if __name__ == "__main__":
    sys.exit(main())
