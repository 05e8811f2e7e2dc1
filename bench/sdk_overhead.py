"""Python SDK costs per call, measured in one run against a plain call of
the same function. Prints a markdown table.

    .venv/bin/python bench/sdk_overhead.py [--calls 200000] [--repeats 7]

Rows: the plain function before coral.sdk.init(); the same object after
init (nothing is touched: identical); armed with no tracer attached
(semaphore 0: the wrapper only forwards); armed with the semaphore forced
to 1 in the extension's test mode (capture off), i.e. everything a traced
call costs in the process except the kernel's trampoline (~0.7 us here):
clocks, reprs, redaction, the call to the nop5 probe site. As root, one
more row: armed with a real kernel uprobe on the probe site (a perf event
counting hits, semaphore raised by the kernel, no BPF program), which adds
the kernel's nop5 trampoline to the traced cost.

Each figure is the median over repeats of a loop of --calls calls; the
variants are interleaved within each repeat so drift hits them alike.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import coral.sdk
from coral.sdk import _probe
from coral.sdk.arming import ARMS

KERNEL_ROW = "armed, kernel uprobe attached"


def validate_card(card: str, amount: int) -> int:
    return amount


def ns_per_call(fn: Callable[[str, int], Any], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn("4000123412341000", 1250)
    return (time.perf_counter_ns() - start) / calls


def loop_only(calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        pass
    return (time.perf_counter_ns() - start) / calls


def kernel_uprobe() -> Any:
    """tests.test_sdk_probe.KernelUprobe where this machine allows it."""
    try:
        from tests.test_sdk_probe import KernelUprobe

        KernelUprobe(os.getpid()).close()
    except (OSError, ImportError) as exc:
        print(f"(no kernel uprobe row: {exc})", file=sys.stderr)
        return None
    return KernelUprobe


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5 (the table shows medians)")
    logging.basicConfig(level=logging.ERROR)  # "no agent running" is expected here
    if "CORAL_RUNTIME_DIR" in os.environ:
        return run(args.calls, args.repeats)
    with tempfile.TemporaryDirectory(prefix="coral-bench-", dir="/tmp") as runtime_dir:
        os.environ["CORAL_RUNTIME_DIR"] = runtime_dir
        return run(args.calls, args.repeats)


def run(calls: int, repeats: int) -> int:
    module = sys.modules[__name__]
    plain = module.validate_card
    results: dict[str, list[float]] = {name: [] for name in ("loop", "plain", "after init", "armed, no tracer", "armed, traced")}

    def measure(name: str, fn: Callable[[str, int], Any] | None) -> None:
        results[name].append(loop_only(calls) if fn is None else ns_per_call(fn, calls))

    sdk = coral.sdk.init(service="sdk-bench")
    sdk.wait_bound(10)
    after_init = module.validate_card
    if after_init is not plain:
        raise SystemExit("init() replaced an unarmed function: this is a bug")
    kernel_probe = kernel_uprobe()
    if kernel_probe is not None:
        results[KERNEL_ROW] = []
    arm = ARMS.arm(f"{__name__}.validate_card", 1, capture_args=True, capture_return=True)
    armed = module.validate_card
    try:
        for _ in range(repeats):
            measure("loop", None)
            measure("plain", plain)
            measure("after init", after_init)
            _probe._set_test_mode(semaphore=0, capture=False)
            measure("armed, no tracer", armed)
            _probe._set_test_mode(semaphore=1, capture=False)
            measure("armed, traced", armed)
            _probe._set_test_mode(semaphore=0, capture=False)
            if kernel_probe is not None:
                uprobe = kernel_probe(os.getpid())
                try:
                    measure(KERNEL_ROW, armed)
                finally:
                    uprobe.close()
    finally:
        _probe._set_test_mode(semaphore=0, capture=False)
        coral.sdk.shutdown()
    del arm

    base = statistics.median(results["plain"])
    print(f"Python {sys.version.split()[0]}, {calls} calls x {repeats} repeats, median ns per call\n")
    print("| variant | ns/call | added vs plain | ratio |")
    print("|---|---:|---:|---:|")
    for name, values in results.items():
        median = statistics.median(values)
        if name == "loop":
            print(f"| empty loop (for reference) | {median:.1f} | | |")
            continue
        print(f"| {name} | {median:.1f} | {median - base:+.1f} | {median / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
