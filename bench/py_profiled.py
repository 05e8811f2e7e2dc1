"""The CPU-bound Python service bench/profile.py profiles (--python): batches
of a fixed loop, each reported as one line "END_REALTIME_NS CPU_NS" (its end
on the wall clock, and the thread CPU time it took) to the file named by
argv[1], as bench/profiled.c does. Opted in with the Coral SDK; "ready" is
printed once it has registered."""

from __future__ import annotations

import sys
import time

import coral.sdk

LOOP = 20_000


def work(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def serve(path: str) -> None:
    with open(path, "w", buffering=1) as out:
        while True:
            cpu = time.thread_time_ns()
            work(LOOP)
            out.write(f"{time.time_ns()} {time.thread_time_ns() - cpu}\n")


if __name__ == "__main__":
    coral.sdk.init(service="py-profiled").wait_bound()
    print("ready", flush=True)
    serve(sys.argv[1])
