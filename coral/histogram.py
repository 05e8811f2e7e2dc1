"""The kernel's latency histogram (bpf/coral_probes.c, hist_bucket) turned
back into nanoseconds: log-linear buckets, 8 per power of two."""

from __future__ import annotations

import math
from collections.abc import Mapping

SUB_BITS = 3
SUB = 1 << SUB_BITS
BUCKETS = 512


def bucket_of(ns: int) -> int:
    """The same bucket the kernel picks (for tests and for merging)."""
    if ns < SUB:
        return ns
    msb = ns.bit_length() - 1
    return (msb << SUB_BITS) + ((ns >> (msb - SUB_BITS)) & (SUB - 1))


def bucket_bounds(bucket: int) -> tuple[int, int]:
    """[low, high) in nanoseconds."""
    if bucket < SUB:
        return bucket, bucket + 1
    msb, sub = bucket >> SUB_BITS, bucket & (SUB - 1)
    width = 1 << (msb - SUB_BITS)
    low = (1 << msb) + sub * width
    return low, low + width


def percentile_ns(histogram: Mapping[int, int], p: float, max_ns: int = 0) -> int:
    """The p-th percentile (nearest rank) as its bucket's midpoint, never
    above the exact maximum. Relative error at most 1/16."""
    total = sum(histogram.values())
    if total == 0:
        return 0
    rank = max(1, math.ceil(p / 100 * total))
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            low, high = bucket_bounds(bucket)
            mid = (low + high - 1) // 2 if high - low > 1 else low
            return min(mid, max_ns) if max_ns else mid
    return max_ns
