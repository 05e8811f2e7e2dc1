"""Benchmark target for conditions (Python): opted in with
coral.sdk.init(); each stdin line "K" makes K calls of charge() and prints
the mean nanoseconds per call."""

from __future__ import annotations

import sys
import time

import coral.sdk


class Request:
    def __init__(self, amount: int, tier: int) -> None:
        self.amount = amount
        self.tier = tier


def charge(amount: int, currency: str, req: Request) -> int:
    return amount + req.tier


def main() -> None:
    coral.sdk.init(service="bench-py-where")
    mod = sys.modules[__name__]
    req = Request(500, 3)
    for line in sys.stdin:
        k = int(line)
        start = time.monotonic_ns()
        for i in range(k):
            mod.charge(i, "EUR", req)  # looked up each call, as callers of an armed function do
        print(f"{(time.monotonic_ns() - start) / max(k, 1):.1f}", flush=True)


if __name__ == "__main__":
    main()
