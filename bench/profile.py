"""What a 99 Hz on-CPU profile costs a CPU-bound service: Coral's
`coralctl profile` against BCC's `profile` tool (profile-bpfcc, Debian's
bpfcc-tools), and for a Python service (--python) against py-spy too, on
the same process in the same run, modes interleaved.

    .venv/bin/python bench/profile.py [--repeats 5] [--seconds 5] [--python]

The service (bench/profiled.c, or bench/py_profiled.py) reports the thread
CPU time of each batch of a fixed loop. For each mode, the batches that ran
wholly while sampling was on (Coral: the profile's own start and end; BCC:
from when its perf events are open, for the duration asked; py-spy: from
when it says it samples) give the median CPU time per batch, and the median
wall time between batch ends (py-spy stops the process to read it: that
shows in wall time, not in the target's CPU time); the table shows medians
over repeats and the ratio to no profiler."""

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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import table
from tests.harness import CoralEnv, Process, coralctl, start_agent, start_colony, tool
from tests.test_native_e2e import wait_for_service

HERE = Path(__file__).resolve().parent
BCC_PROFILE = "/usr/sbin/profile-bpfcc"
PY_SPY = Path(sys.executable).parent / "py-spy"  # setup.cfg's dev extra
FREQUENCY = 99


def batches(log: Path, since_ns: int, until_ns: int) -> tuple[list[int], list[int]]:
    """CPU ns of the batches that began and ended inside [since, until], and
    the wall ns from the end of the one before to the end of each."""
    cpu_ns, wall_ns, previous_end = [], [], 0
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        end, cpu = int(parts[0]), int(parts[1])
        if previous_end >= since_ns and end <= until_ns:
            cpu_ns.append(cpu)
            wall_ns.append(end - previous_end)
        previous_end = end
    return cpu_ns, wall_ns


def perf_events_open(pid: int) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[perf_event]" for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def run_none(seconds: float) -> tuple[int, int]:
    start = time.time_ns()
    time.sleep(seconds)
    return start, time.time_ns()


def run_coral(env: CoralEnv, service: str, seconds: float) -> tuple[int, int]:
    out = coralctl(env, "--output", "json", "profile", service, "--duration", f"{seconds:g}s",
                   "--frequency", str(FREQUENCY), timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"coralctl profile failed: {out.stderr}")
    session = json.loads(out.stdout.splitlines()[0])
    return session["started_unix_ns"], session["ended_unix_ns"]


def run_py_spy(pid: int, seconds: float) -> tuple[int, int]:
    """py-spy record at the same rate, as its users run it (it stops the
    process while it reads each sample), from its first line."""
    proc = subprocess.Popen([str(PY_SPY), "record", "-r", str(FREQUENCY), "-d", str(int(seconds)), "-p", str(pid),
                             "-f", "raw", "-o", "/dev/null"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    if "Sampling process" not in first:
        raise SystemExit(f"py-spy did not start: {first}{proc.stdout.read()}")
    start = time.time_ns()
    out, _ = proc.communicate(timeout=seconds + 60)
    if proc.returncode != 0:
        raise SystemExit(f"py-spy failed: {out}")
    return start, start + int(seconds * 1e9)


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
    if b"work" not in out and b"_PyEval_EvalFrameDefault" not in out:
        raise SystemExit("profile-bpfcc did not see the service's work")
    return start, start + int(seconds * 1e9)


def start_service(env: CoralEnv, python: bool, log: Path) -> tuple[str, int, Callable[[], None]]:
    """The profiled service: its name, pid, and how to stop it."""
    if python:
        proc = subprocess.Popen([sys.executable, str(HERE / "py_profiled.py"), str(log)], env=env.env,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("bench/py_profiled.py did not start")

        def stop_python() -> None:
            proc.terminate()
            proc.wait(10)

        return "py-profiled", proc.pid, stop_python
    binary = env.root / "profiled"
    subprocess.run(["gcc", "-O0", "-fno-omit-frame-pointer", "-o", str(binary), str(HERE / "profiled.c")], check=True)
    service = Process("run-profiled", [tool("coral-run"), "--service", "profiled", "--", str(binary), str(log)],
                      env).wait_ready()

    def stop_native() -> None:
        service.proc.send_signal(signal.SIGTERM)
        service.stop()

    return "profiled", service.child_pid, stop_native


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--python", action="store_true", help="a Python service (bench/py_profiled.py), py-spy as well")
    args = ap.parse_args()
    if not Path(BCC_PROFILE).exists():
        raise SystemExit(f"{BCC_PROFILE} is missing: apt-get install bpfcc-tools")
    if args.python and not PY_SPY.exists():
        raise SystemExit(f"{PY_SPY} is missing: scripts/setup.sh installs it (setup.cfg, the dev extra)")
    env = CoralEnv.create()
    env.root.mkdir(parents=True, exist_ok=True)
    log = env.root / "batches.log"
    colony = start_colony(env)
    agent = start_agent(env)
    modes = ["none", "coral", "bcc"] + (["py-spy"] if args.python else [])
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    wall: dict[str, list[float]] = {m: [] for m in modes}
    counts: dict[str, list[int]] = {m: [] for m in modes}
    stop: Callable[[], None] = lambda: None  # noqa: E731 (until the service runs)
    try:
        service, pid, stop = start_service(env, args.python, log)
        if args.python:
            wait_for_service(env, service)
        for _ in range(args.repeats):
            for mode in modes:
                if mode == "none":
                    since, until = run_none(args.seconds)
                elif mode == "coral":
                    since, until = run_coral(env, service, args.seconds)
                elif mode == "bcc":
                    since, until = run_bcc(pid, args.seconds)
                else:
                    since, until = run_py_spy(pid, args.seconds)
                cpu_ns, wall_ns = batches(log, since, until)
                cpu[mode].append(statistics.median(cpu_ns))
                wall[mode].append(statistics.median(wall_ns))
                counts[mode].append(len(cpu_ns))
    finally:
        stop()
        agent.stop()
        colony.stop()
        shutil.rmtree(env.root, ignore_errors=True)
    base_cpu, base_wall = statistics.median(cpu["none"]), statistics.median(wall["none"])
    labels = {"none": "no profiler", "coral": f"coralctl profile, {FREQUENCY} Hz",
              "bcc": f"profile-bpfcc -U -F {FREQUENCY}", "py-spy": f"py-spy record -r {FREQUENCY}"}
    rows = []
    for mode in modes:
        c, w = statistics.median(cpu[mode]), statistics.median(wall[mode])
        rows.append([labels[mode], f"{c / 1e6:.3f} ms", f"{c / base_cpu:.3f}×", f"{w / 1e6:.3f} ms",
                     f"{w / base_wall:.3f}×", ", ".join(f"{v / 1e6:.3f}" for v in cpu[mode]),
                     f"{statistics.median(counts[mode]):.0f}"])
    kind = "Python" if args.python else "native"
    table(f"A CPU-bound {kind} service profiled at {FREQUENCY} Hz ({args.repeats} repeats of {args.seconds:g} s, "
          "interleaved)", ["mode", "CPU per batch", "vs none", "wall per batch", "vs none", "CPU, each repeat (ms)",
                           "batches per repeat"], rows)
    for other in modes[2:]:
        by_cpu = statistics.median(cpu["coral"]) / statistics.median(cpu[other])
        by_wall = statistics.median(wall["coral"]) / statistics.median(wall[other])
        print(f"\nCoral's slowdown against {labels[other]}: CPU {by_cpu:.3f}×, wall {by_wall:.3f}×")


if __name__ == "__main__":
    main()
