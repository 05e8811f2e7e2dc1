"""Calls drained from the ring buffer and not yet in agent.duckdb, kept as
columns. A block is one session's calls with consecutive seqs, in the order
they returned; blocks follow each other in seq order. A timing-only block
is numpy arrays made from the ring buffer's records without a Python
object per call, and goes into agent.duckdb the same way (calls are the
unit, a hot function makes millions of them)."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CallRow:
    """One completed call, as agent.duckdb's calls table holds it."""

    seq: int
    session_id: str
    start_ns: int  # Unix time
    duration_ns: int
    pid: int
    tid: int
    args: str  # JSON list of {name, type, value}, or ""
    ret: str  # JSON {type, value, is_error, error_message}, or ""
    stack: str = ""  # --stack: JSON {frames: [[function, file, line, module], ...], truncated}, or ""


@dataclass(frozen=True)
class CallBlock:
    session_id: str
    first_seq: int
    start_ns: np.ndarray  # int64, Unix time
    duration_ns: np.ndarray  # int64
    pid: np.ndarray  # int64
    tid: np.ndarray  # int64
    args: Sequence[str] | None = None  # JSON per call; None: timing only ("" each)
    ret: Sequence[str] | None = None
    stack: Sequence[str] | None = None  # --stack: JSON per call (CallRow.stack); None: "" each

    @staticmethod
    def of_values(session_id: str, first_seq: int, start_ns: list[int], duration_ns: list[int], pid: list[int],
                  tid: list[int], args: list[str], ret: list[str], stack: list[str] | None = None) -> CallBlock:
        """A block of calls decoded one by one (captured values)."""
        start, duration, pids, tids = (np.array(c, dtype=np.int64) for c in (start_ns, duration_ns, pid, tid))
        return CallBlock(session_id, first_seq, start, duration, pids, tids, args, ret, stack)

    def __len__(self) -> int:
        return len(self.start_ns)

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self) - 1

    @property
    def seqs(self) -> np.ndarray:
        return np.arange(self.first_seq, self.first_seq + len(self), dtype=np.int64)

    def split(self, n: int) -> tuple[CallBlock, CallBlock]:
        """Its first `n` calls, and the rest."""
        def part(a: int, b: int | None) -> CallBlock:
            cut = slice(a, b)
            return CallBlock(self.session_id, self.first_seq + a, self.start_ns[cut], self.duration_ns[cut],
                             self.pid[cut], self.tid[cut], None if self.args is None else self.args[cut],
                             None if self.ret is None else self.ret[cut],
                             None if self.stack is None else self.stack[cut])
        return part(0, n), part(n, None)

    def rows(self, after_seq: int, since_ns: int, until_ns: int, limit: int) -> list[CallRow]:
        """Its calls after `after_seq`, filtered as agent.duckdb's query filters
        (overlapping [since_ns, until_ns]; 0: open), at most `limit`."""
        at = max(0, after_seq + 1 - self.first_seq)
        if at >= len(self) or limit <= 0:
            return []
        start, duration = self.start_ns[at:], self.duration_ns[at:]
        keep = np.ones(len(start), dtype=bool)
        if since_ns:
            keep &= start + duration >= since_ns
        if until_ns:
            keep &= start <= until_ns
        picked = (np.flatnonzero(keep)[:limit] + at).tolist()
        columns = [self.start_ns[picked].tolist(), self.duration_ns[picked].tolist(), self.pid[picked].tolist(),
                   self.tid[picked].tolist()]
        return [CallRow(self.first_seq + i, self.session_id, s, d, p, t, self.args[i] if self.args is not None else "",
                        self.ret[i] if self.ret is not None else "", self.stack[i] if self.stack is not None else "")
                for i, s, d, p, t in zip(picked, *columns, strict=True)]


def rows_in_blocks(blocks: Sequence[CallBlock], session_id: str, after_seq: int, since_ns: int, until_ns: int,
                   limit: int) -> list[CallRow]:
    """A session's calls after `after_seq` in `blocks` (in seq order), filtered
    as agent.duckdb's query filters, at most `limit`."""
    rows: list[CallRow] = []
    first = bisect.bisect_right([b.last_seq for b in blocks], after_seq)
    for block in blocks[first:]:
        if block.session_id == session_id:
            rows += block.rows(after_seq, since_ns, until_ns, limit - len(rows))
            if len(rows) >= limit:
                break
    return rows


def calls_of(blocks: Iterable[CallBlock], session_id: str) -> int:
    return sum(len(b) for b in blocks if b.session_id == session_id)


def take(blocks: list[CallBlock], limit: int) -> tuple[list[CallBlock], list[CallBlock]]:
    """The first `limit` calls of `blocks` (0: all), and the rest."""
    if not limit:
        return blocks, []
    head: list[CallBlock] = []
    for i, block in enumerate(blocks):
        if len(block) >= limit:
            first, rest = block.split(limit)
            return [*head, first], ([rest] if len(rest) else []) + blocks[i + 1:]
        head.append(block)
        limit -= len(block)
    return head, []


def as_columns(blocks: Sequence[CallBlock]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Blocks as one table to scan: the session ids, and columns with each
    call's session as a 1-based index into them (DuckDB's list indexing)."""
    sessions = sorted({b.session_id for b in blocks})
    index = {s: i + 1 for i, s in enumerate(sessions)}
    columns = {
        "seq": np.concatenate([b.seqs for b in blocks]),
        "session": np.repeat(np.array([index[b.session_id] for b in blocks], dtype=np.int64), [len(b) for b in blocks]),
        "start_ns": np.concatenate([b.start_ns for b in blocks]),
        "duration_ns": np.concatenate([b.duration_ns for b in blocks]),
        "pid": np.concatenate([b.pid for b in blocks]),
        "tid": np.concatenate([b.tid for b in blocks]),
    }
    if all(b.args is not None for b in blocks):
        columns["args"] = np.array([a for b in blocks for a in b.args or ()], dtype=object)
        columns["ret"] = np.array([r for b in blocks for r in b.ret or ()], dtype=object)
        columns["stack"] = np.array([x for b in blocks for x in (b.stack if b.stack is not None else [""] * len(b))],
                                    dtype=object)
    return sessions, columns
