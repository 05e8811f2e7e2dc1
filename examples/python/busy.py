"""A CPU-bound Python demo for `coralctl profile`: serve() calls hot_path()
and cold_path() forever; both run the same loop, 7 and 3 units of it, so
about 70% and 30% of the CPU the process gets goes to each.

    python examples/python/busy.py
    coralctl profile busy-py --duration 5s

"ready" is printed once the SDK has registered with the agent.
"""

from __future__ import annotations

import coral.sdk

UNIT = 100_000


def hot_path() -> int:
    total = 0
    for i in range(7 * UNIT):
        total += i
    return total


def cold_path() -> int:
    total = 0
    for i in range(3 * UNIT):
        total += i
    return total


def serve() -> None:
    while True:
        hot_path()
        cold_path()


if __name__ == "__main__":
    coral.sdk.init(service="busy-py").wait_bound()
    print("ready", flush=True)
    serve()
