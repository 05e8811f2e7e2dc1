"""What a 99 Hz on-CPU profile costs a CPU-bound native service: Coral's
`coralctl profile` against BCC's `profile` tool (profile-bpfcc, Debian's
bpfcc-tools), on the same process in the same run, modes interleaved.

    .venv/bin/python bench/profile.py [--repeats 5] [--seconds 5]

The service (bench/profiled.c) reports the thread CPU time of each batch
of a fixed loop. For each mode, the batches that ran wholly while sampling
was on (Coral: the profile's own start and end; BCC: from when its perf
events are open, for the duration asked) give the median CPU time per
batch; the table shows medians over repeats and the ratio to no profiler."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import table
from tests.harness import CoralEnv, Process, coralctl, start_agent, start_colony, tool

HERE = Path(__file__).resolve().parent
BCC_PROFILE = "/usr/sbin/profile-bpfcc"
FREQUENCY = 99


def batches(log: Path, since_ns: int, until_ns: int) -> list[int]:
    """CPU ns of the batches that began and ended inside [since, until]."""
    out, previous_end = [], 0
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        end, cpu = int(parts[0]), int(parts[1])
        if previous_end >= since_ns and end <= until_ns:
            out.append(cpu)
        previous_end = end
    return out


def perf_events_open(pid: int) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[perf_event]" for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def run_none(seconds: float) -> tuple[int, int]:
    start = time.time_ns()
    time.sleep(seconds)
    return start, time.time_ns()


def run_coral(env: CoralEnv, seconds: float) -> tuple[int, int]:
    out = coralctl(env, "--output", "json", "profile", "profiled", "--duration", f"{seconds:g}s",
                   "--frequency", str(FREQUENCY), timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"coralctl profile failed: {out.stderr}")
    session = json.loads(out.stdout.splitlines()[0])
    return session["started_unix_ns"], session["ended_unix_ns"]


def run_bcc(pid: int, seconds: float) -> tuple[int, int]:
    """profile-bpfcc -U (user stacks, as Coral) -f (folded), until its perf events are open plus the duration."""
    proc = subprocess.Popen([BCC_PROFILE, "-U", "-f", "-F", str(FREQUENCY), "-p", str(pid), str(int(seconds))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while not perf_events_open(proc.pid):
        if proc.poll() is not None:
            raise SystemExit(f"profile-bpfcc exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.01)
    start = time.time_ns()
    out, _ = proc.communicate(timeout=seconds + 60)
    if b"work" not in out:
        raise SystemExit("profile-bpfcc did not see the service's work()")
    return start, start + int(seconds * 1e9)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    if not Path(BCC_PROFILE).exists():
        raise SystemExit(f"{BCC_PROFILE} is missing: apt-get install bpfcc-tools")
    env = CoralEnv.create()
    binary = env.root / "profiled"
    env.root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-O0", "-fno-omit-frame-pointer", "-o", str(binary), str(HERE / "profiled.c")], check=True)
    log = env.root / "batches.log"
    colony = start_colony(env)
    agent = start_agent(env)
    service = Process("run-profiled", [tool("coral-run"), "--service", "profiled", "--", str(binary), str(log)],
                      env).wait_ready()
    pid = service.child_pid
    per_mode: dict[str, list[float]] = {"none": [], "coral": [], "bcc": []}
    counts: dict[str, list[int]] = {m: [] for m in per_mode}
    try:
        for _ in range(args.repeats):
            for mode in per_mode:
                if mode == "none":
                    since, until = run_none(args.seconds)
                elif mode == "coral":
                    since, until = run_coral(env, args.seconds)
                else:
                    since, until = run_bcc(pid, args.seconds)
                got = batches(log, since, until)
                per_mode[mode].append(statistics.median(got))
                counts[mode].append(len(got))
    finally:
        service.proc.send_signal(signal.SIGTERM)
        service.stop()
        agent.stop()
        colony.stop()
        shutil.rmtree(env.root, ignore_errors=True)
    base = statistics.median(per_mode["none"])
    rows = []
    for mode, label in (("none", "no profiler"), ("coral", f"coralctl profile, {FREQUENCY} Hz"),
                        ("bcc", f"profile-bpfcc -U -F {FREQUENCY}")):
        med = statistics.median(per_mode[mode])
        rows.append([label, f"{med / 1e6:.2f} ms", f"{med / base:.3f}×",
                     ", ".join(f"{v / 1e6:.2f}" for v in per_mode[mode]), f"{statistics.median(counts[mode]):.0f}"])
    coral, bcc = statistics.median(per_mode["coral"]), statistics.median(per_mode["bcc"])
    table(f"A CPU-bound service profiled at {FREQUENCY} Hz ({args.repeats} repeats of {args.seconds:g} s, interleaved)",
          ["mode", "CPU per batch (median)", "vs none", "each repeat (ms)", "batches per repeat"], rows)
    print(f"\nCoral's slowdown against BCC's: {coral / bcc:.3f}×")


if __name__ == "__main__":
    main()
