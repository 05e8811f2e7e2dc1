"""What Coral's own BPF programs cost per hit, measured inside the kernel:
run_time_ns / run_cnt of each of the agent's programs (coral_hit,
coral_return, ...) with kernel.bpf_stats_enabled on, while a timing-only
session watches bench_leaf of bench/mechanisms.c built at -O0 (entry on
`push %rbp`, emulated; return by uretprobe). Far less sensitive to a
loaded VM than the wall-clock ratios of bench/mechanisms.py: it counts
the programs' own time, not the trap's nor the agent's draining.

    sudo .venv/bin/python bench/hit_cost.py [--calls 200000] [--repeats 5] [--flags="-O2 -fpatchable-function-entry=5"]
    sudo .venv/bin/python bench/hit_cost.py --helpers

--helpers times, the same way, one BCC program per helper a hit of Coral's
calls (and nothing else), at the entry of the same function: what the
programs cost at the least, with the calls they make.

Only the agent this script starts is read (its program fds, in
/proc/PID/fdinfo), so other agents on the machine do not count. A
tail-called program (coral_count, coral_where, coral_stack) is timed as
part of the program that called it. The floor is measured in the same
run: an empty BCC program attached where Coral's are (the statistics cost
each run of any program some 45 ns of their own). Also shown: the loop's
ns per call under Coral, and the agent's CPU per call (draining and
storing the records, read from /proc/PID/stat). The sysctl is restored at
the end. Figures are medians over the repeats, one session each."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.mechanisms import RawProbe, Target
from bench.report import cpu_seconds, full_speed_env, table
from coral.daemon.client import Client
from coral.proto import coral_pb2 as pb
from tests.harness import Process, tool

HERE = Path(__file__).resolve().parent
STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
HELPERS_DECLS = r"""
#include <uapi/linux/ptrace.h>
struct key { u32 tgid; u32 pad; u64 ip; };  /* as coral_probes.c's struct site_key before the cookie */
struct value { u64 words[4]; };
struct site { u64 words[5]; };              /* as coral_probes.c's struct site */
struct frames { u64 words[130]; };          /* about coral_probes.c's struct stack */
BPF_HASH(sites, struct key, struct value, 16384);
BPF_ARRAY(site_array, struct site, 16384);
BPF_TASK_STORAGE(thread_stacks, struct frames);
BPF_RINGBUF_OUTPUT(events, 64);
"""
HELPERS = {
    "empty": "return 0;",
    "bpf_get_current_pid_tgid": "return bpf_get_current_pid_tgid() == 3;",
    "bpf_ktime_get_ns": "return bpf_ktime_get_ns() == 3;",
    "task storage (bpf_get_current_task_btf, task_storage_get)":
        "struct frames *f = thread_stacks.task_storage_get(bpf_get_current_task_btf(), 0, "
        "BPF_LOCAL_STORAGE_GET_F_CREATE); if (f) f->words[0]++; return 0;",
    "hash lookup, 16-byte key":
        "struct key k = {.tgid = 5, .pad = 0, .ip = PT_REGS_IP(ctx)}; return sites.lookup(&k) != 0;",
    "the site by the attach cookie (bpf_get_attach_cookie, array lookup)":
        "u32 i = bpf_get_attach_cookie(ctx); struct site *s = site_array.lookup(&i); return s && s->words[0] == 3;",
    "ring buffer reserve and submit, 32 bytes":
        "struct value *v = events.ringbuf_reserve(sizeof(*v)); if (!v) return 0; "
        "v->words[0] = v->words[1] = v->words[2] = v->words[3] = 1; events.ringbuf_submit(v, BPF_RB_NO_WAKEUP); return 0;",
    "ring buffer output (a copy), 32 bytes":
        "struct value v = {.words = {1, 1, 1, 1}}; events.ringbuf_output(&v, sizeof(v), BPF_RB_NO_WAKEUP); return 0;",
}


def program_times(pid: int) -> dict[str, tuple[int, int]]:
    """(run_time_ns, run_cnt) of each BPF program process `pid` holds, by name."""
    by_id: dict[int, tuple[int, int]] = {}
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue  # closed meanwhile
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if "prog_id" in fields and "run_time_ns" in fields:
            by_id[int(fields["prog_id"])] = (int(fields["run_time_ns"]), int(fields["run_cnt"]))
    out: dict[str, tuple[int, int]] = {}
    for prog_id, times in by_id.items():
        shown = subprocess.run(["bpftool", "prog", "show", "id", str(prog_id), "--json"], capture_output=True,
                               text=True, check=False)
        if shown.returncode == 0:
            out[str(json.loads(shown.stdout).get("name", prog_id))] = times
    return out


def helpers(binary: str, calls: int, repeats: int) -> list[list[str]]:
    """ns per run of a program doing only each helper, at bench_leaf's entry (stats already on)."""
    from bcc import BPF

    from coral.elfinfo import ElfFunctions

    address, _ = ElfFunctions.load(binary).symbols["bench_leaf"]
    loop = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert loop.stdin is not None and loop.stdout is not None  # created with pipes

    def run(n: int) -> None:
        loop.stdin.write(f"bench_leaf {n}\n".encode())  # type: ignore[union-attr]
        loop.stdin.flush()  # type: ignore[union-attr]
        loop.stdout.readline()  # type: ignore[union-attr]

    samples: dict[str, list[float]] = {}
    try:
        run(calls // 10)
        for _ in range(repeats):
            for name, body in HELPERS.items():
                b = BPF(text=HELPERS_DECLS + "int on_hit(struct pt_regs *ctx) { " + body + " }")
                b.attach_uprobe(name=binary, addr=address, fn_name=b"on_hit", pid=loop.pid)
                before = program_times(os.getpid()).get("on_hit", (0, 0))
                run(calls)
                after = program_times(os.getpid())["on_hit"]
                b.cleanup()
                samples.setdefault(name, []).append((after[0] - before[0]) / max(1, after[1] - before[1]))
    finally:
        loop.stdin.close()
        loop.wait()
    empty = statistics.median(samples["empty"])
    return [[name, f"{statistics.median(v):.0f}", f"{statistics.median(v) - empty:.0f}"] for name, v in samples.items()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--flags", default="-O0", help="gcc flags for bench/mechanisms.c (default -O0)")
    ap.add_argument("--helpers", action="store_true", help="time each helper Coral calls, alone")
    args = ap.parse_args()
    env = full_speed_env()
    binary = str(env.root / "bin" / "hitcost")
    subprocess.run(["gcc", "-x", "c", *args.flags.split(), "-g", "-o", binary, str(HERE / "mechanisms.c")],
                   check=True)
    saved = STATS_SYSCTL.read_text().strip()
    if args.helpers:
        try:
            STATS_SYSCTL.write_text("1\n")
            rows = helpers(binary, args.calls, args.repeats)
        finally:
            STATS_SYSCTL.write_text(saved + "\n")
            env.remove()
        print(f"{args.calls} calls of bench_leaf ({args.flags}) per run, {args.repeats} runs, kernel "
              f"{os.uname().release}, load {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
        table("In-kernel ns per run of a program doing one helper call at the entry (bpf_stats on)",
              ["program", "median ns", "over the empty one"], rows)
        return 0
    agent_proc = Process("agentd", [tool("coral-agentd")], env).wait_ready()
    agent = Client(env.endpoint("agent.sock"), 60)
    target = Target(env, "hitcost", binary)
    per_call: dict[str, list[float]] = {}
    wall: list[float] = []
    agent_cpu: list[float] = []
    try:
        STATS_SYSCTL.write_text("1\n")
        target.ns_per_call("bench_leaf", args.calls // 10)  # warm up
        for _ in range(args.repeats):
            reply = agent.call("AttachUprobe", pb.AttachUprobeRequest(service="hitcost", function="bench_leaf",
                                                                      duration_ms=600_000))
            session = reply.session  # type: ignore[attr-defined]
            try:
                before, cpu = program_times(agent_proc.pid), cpu_seconds(agent_proc.pid)
                wall.append(target.ns_per_call("bench_leaf", args.calls))
                after = program_times(agent_proc.pid)
            finally:
                agent.call("DetachUprobe", pb.DetachUprobeRequest(session_id=session.session_id))
            # The session's records are drained by the end of the detach: the agent's CPU for them all.
            agent_cpu.append((cpu_seconds(agent_proc.pid) - cpu) * 1e9 / args.calls)
            for name, (ns, cnt) in after.items():
                d_ns, d_cnt = ns - before.get(name, (0, 0))[0], cnt - before.get(name, (0, 0))[1]
                if d_cnt:
                    per_call.setdefault(name, []).append(d_ns / d_cnt)
            # The floor: an empty program where Coral's are (entry and uretprobe), in this process.
            raw = RawProbe(target, "bench_leaf", session.return_probe)
            raw.attach()
            raw_before = program_times(os.getpid())
            target.ns_per_call("bench_leaf", args.calls)
            raw_after = program_times(os.getpid())
            raw.detach()
            raw.bpf.cleanup()
            ns, cnt = (raw_after["on_hit"][i] - raw_before.get("on_hit", (0, 0))[i] for i in (0, 1))
            per_call.setdefault("empty (raw BCC on_hit)", []).append(ns / cnt if cnt else 0.0)
    finally:
        STATS_SYSCTL.write_text(saved + "\n")
        target.stop()
        agent.close()
        agent_proc.stop()
        env.remove()
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"{args.calls} calls of bench_leaf ({args.flags}) per run, {args.repeats} runs, kernel "
          f"{os.uname().release}, load {' '.join(load)}")
    rows = [[name, f"{statistics.median(v):.0f}", f"{min(v):.0f}-{max(v):.0f}"] for name, v in sorted(per_call.items())]
    rows.append(["(the loop, wall clock: ns per call)", f"{statistics.median(wall):.0f}",
                 f"{min(wall):.0f}-{max(wall):.0f}"])
    rows.append(["(the agent's CPU, draining and storing: ns per call)", f"{statistics.median(agent_cpu):.0f}",
                 f"{min(agent_cpu):.0f}-{max(agent_cpu):.0f}"])
    table("In-kernel ns per run of each of Coral's programs (run_time_ns / run_cnt, bpf_stats on)",
          ["program", "median ns", "range"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
