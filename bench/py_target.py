"""Benchmark target (Python): opted in with coral.sdk.init(); each stdin line
"K [RATE]" makes K calls of work() (at most RATE per second) and prints the
mean nanoseconds per call."""

from __future__ import annotations

import sys
import time

import coral.sdk


def work(a: int, b: int) -> int:
    return a + b


def main() -> None:
    coral.sdk.init(service="bench-py")
    mod = sys.modules[__name__]
    for line in sys.stdin:
        parts = line.split()
        k, rate = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
        gap = 1_000_000_000 // rate if rate else 0
        start = time.monotonic_ns()
        next_at = start
        for i in range(k):
            if gap:
                while time.monotonic_ns() < next_at:
                    pass
                next_at += gap
            mod.work(i, 1)  # looked up each call, as callers of an armed function do
        print(f"{(time.monotonic_ns() - start) / max(k, 1):.1f}", flush=True)


if __name__ == "__main__":
    main()
