"""The BPF ring buffer, read straight from its memory map, many records at a
time. BCC's own reader calls back into Python once per record (a ctypes
callback, a copy and a decode each); at a hot function's rate that alone
is more than the agent can spend. Here the agent maps the ring buffer
itself, as libbpf does, and takes every complete record between the
consumer and producer positions in runs: records of one size in a row are
one numpy array, copied out in one go, then handed back to the kernel.

The kernel's layout (kernel/bpf/ringbuf.c, the same for every 64-bit
kernel with BPF_MAP_TYPE_RINGBUF): page 0 of the map holds the consumer
position (the only page user space may write), page 1 the producer
position, and the data follows. The kernel lets a reader map the data
twice in a row, so that what wraps is contiguous; the agent maps it once
(the second copy would count its pages twice in the agent's RSS) and
joins the two ends in a copy when what it reads wraps. Each record has an 8-byte header: its
length, with a busy bit while the program still writes it and a discard
bit if it gave it up; records are 8-byte aligned."""

from __future__ import annotations

import mmap
import struct

import numpy as np

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER_BYTES = 8
_POSITION = struct.Struct("<Q")
TIMING_MAX_STRIDE = 128  # bytes, header included: the longest timing-only record (Python's, 56 + 8) with room
HEAVY_WEIGHT = 8  # a byte of a record with values, against a read's limit
MAX_RECORD_BYTES = 64 * 1024  # past a read's byte limit, room for the record that reaches it (Coral's are < 1 KiB)


def stride_of(length: int) -> int:
    """A record's room in the ring: header, body, padding to 8 bytes."""
    return (length + HEADER_BYTES + 7) & ~7


class RingReader:
    """The consumer side of one BPF_MAP_TYPE_RINGBUF map. The kernel clears
    a record's busy bit only after its body is written, so a body is read
    after the header that said it was complete: on x86-64 loads are not
    reordered with older loads, which is what this relies on (Coral's BPF
    program is built for x86-64)."""

    def __init__(self, map_fd: int, data_bytes: int) -> None:
        if data_bytes <= 0 or data_bytes & (data_bytes - 1):
            raise ValueError(f"a ring buffer's size is a power of two, not {data_bytes}")
        page = mmap.PAGESIZE
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._producer = mmap.mmap(map_fd, page + data_bytes, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._data: np.ndarray | None = np.frombuffer(self._producer, dtype=np.uint8, offset=page)
        self._mask = data_bytes - 1

    def read(self, limit: int = 0) -> tuple[list[np.ndarray], bool]:
        """Take the complete records in the ring, about `limit` bytes of them
        at most (0: all; at least one record), as runs: each a copied
        (records, stride) array of bytes, header included, in the order the
        program submitted them. Also whether it stopped at the limit (more
        may be waiting)."""
        if self._data is None:
            return [], False
        consumer = _POSITION.unpack_from(self._consumer)[0]
        available = _POSITION.unpack_from(self._producer)[0] - consumer
        if not available:
            return [], False
        if limit:  # a little more than the limit: the record that reaches it is read whole
            available = min(available, limit + MAX_RECORD_BYTES)
        start, size = consumer & self._mask, self._mask + 1
        if start + available <= size:  # the headers are read in place, the bodies copied after
            window = self._data[start: start + available]
            found, end = find_runs(window, limit or -1)
        else:
            # It wraps: the two ends are joined in a copy, and a copy may read a
            # body before its header. The headers are read from a first copy,
            # and what they said was complete is copied again, after them.
            found, end = find_runs(joined(self._data, start, available), limit or -1)
            window = joined(self._data, start, end)
        runs = []
        for at, count, stride in found:
            if count < 0:  # a record the program gave up (counted there, as unreadable): its room is passed over
                continue
            runs.append(window[at: at + count * stride].reshape(count, stride).copy())
        _POSITION.pack_into(self._consumer, 0, consumer + end)  # the kernel may reuse what lies before this
        return runs, bool(limit) and cost_of(found) >= limit

    def produced(self) -> int:
        """The producer's position: every record reserved so far lies before it."""
        return int(_POSITION.unpack_from(self._producer)[0]) if self._data is not None else 0

    def consumed(self) -> int:
        """The consumer's position: every record before it has been taken."""
        return int(_POSITION.unpack_from(self._consumer)[0]) if self._data is not None else 0

    def close(self) -> None:
        self._data = None
        self._producer.close()
        self._consumer.close()


def joined(data: np.ndarray, start: int, length: int) -> np.ndarray:
    """`length` bytes of the ring's data from `start`, across its end: a copy."""
    if start + length <= len(data):
        return data[start: start + length].copy()
    return np.concatenate((data[start:], data[: start + length - len(data)]))


def weight_of(stride: int) -> int:
    """What a record of this stride costs against a read's limit, per byte:
    a record with values (longer than any timing record) is decoded one by
    one, about 8 times the cost of a timing record's byte (a 2 MiB batch of
    them held the agent's loop about 250 ms: bench/session_end.py)."""
    return HEAVY_WEIGHT if stride > TIMING_MAX_STRIDE else 1


def cost_of(found: list[tuple[int, int, int]]) -> int:
    """What the runs `find_runs` found cost against its limit."""
    return sum(stride if count < 0 else count * stride * weight_of(stride) for _, count, stride in found)


def find_runs(window: np.ndarray, room: int) -> tuple[list[tuple[int, int, int]], int]:
    """The runs of records with equal headers in `window` (bytes from the
    consumer position on), as (offset, records, stride), with records -1
    for a discarded one; and the offset where reading stopped: at a busy
    record, at the end, or once about `room` bytes are taken, records with
    values counted `weight_of` times (-1: no limit; a run takes at least one
    record)."""
    found: list[tuple[int, int, int]] = []
    at, spent, size = 0, 0, len(window)
    headers = window[: size - size % 4].view("<u4")
    while at + HEADER_BYTES <= size and (room < 0 or spent < room):
        header = int(headers[at // 4])
        if header & BUSY_BIT:
            break
        stride = stride_of(header & ~(BUSY_BIT | DISCARD_BIT))
        if at + stride > size:
            break  # the record goes past what was taken (the producer, or the limit's margin): next time
        if header & DISCARD_BIT:
            found.append((at, -1, stride))
            at += stride
            spent += stride
            continue
        most = (size - at) // stride
        cost = stride * weight_of(stride)
        if room > 0:
            most = min(most, -(-(room - spent) // cost))  # whole records, up to the one that reaches the limit
        same = headers[at // 4: (at + most * stride) // 4: stride // 4]
        differs = np.flatnonzero(same != header)
        count = int(differs[0]) if differs.size else most
        found.append((at, count, stride))
        at += count * stride
        spent += count * cost
    return found, at
