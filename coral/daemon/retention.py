"""Retention: how long ended sessions are kept, and which to purge now.

Pure decisions (no database): the stores hand in candidate rows, this
module says which go. Both daemons purge on a schedule from their loop,
a bounded batch at a time, so a large backlog never stalls serving."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

_AGE = re.compile(r"(\d+)(d|h|m|s)")
_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
PURGE_BATCH = 50  # sessions looked at per run
PURGE_ROWS = 100_000  # a run stops once it deleted this many rows; more left over: the next run comes one tick later


def parse_age(text: str) -> int:
    """'7d', '12h', '30m', '90s', '1d12h' -> seconds; '0' keeps forever (0)."""
    t = text.strip().lower()
    if t == "0":
        return 0
    pos, total = 0, 0
    for m in _AGE.finditer(t):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if not t or pos != len(t) or total == 0:
        raise ValueError(f"invalid age {text!r}: use forms like 7d, 12h, 30m, 90s (or 0 to keep forever)")
    return total


@dataclass(frozen=True)
class Retention:
    keep_seconds: int  # 0: keep forever
    batch: int = PURGE_BATCH

    def cutoff_ns(self, now_ns: int) -> int | None:
        """Sessions that ended before this are purged; None: nothing is."""
        return now_ns - self.keep_seconds * 1_000_000_000 if self.keep_seconds else None

    def purgeable(self, sessions: Iterable[tuple[str, str, int]], now_ns: int) -> list[str]:
        """Of (session id, status, ended ns) rows, the ids to purge now:
        ended (never an active session), longer ago than the retention,
        oldest first, at most one batch."""
        cutoff = self.cutoff_ns(now_ns)
        if cutoff is None:
            return []
        due = sorted((ended, sid) for sid, status, ended in sessions if status != "active" and 0 < ended < cutoff)
        return [sid for _, sid in due[: self.batch]]


@dataclass
class PurgeSchedule:
    """When to purge next: every `interval` seconds, or at the next turn of
    the loop while there is more to purge."""

    interval: float
    next_at: float = 0.0

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def done(self, now: float, more: bool) -> None:
        self.next_at = now if more else now + self.interval


Candidates = Callable[[int, int], list[tuple[str, str, int]]]  # (before ns, limit) -> (id, status, ended ns) rows
Purge = Callable[[list[str]], tuple[int, int]]  # ids -> (sessions, rows) deleted


def purge_once(
    retention: Retention, candidates: Candidates, purge: Purge, now_ns: int, max_rows: int = PURGE_ROWS
) -> tuple[int, int, bool]:
    """One bounded run: purge due sessions one by one, oldest first, until a
    batch is done or `max_rows` rows (calls) went. Returns
    (sessions, rows, whether more may be due)."""
    cutoff = retention.cutoff_ns(now_ns)
    if cutoff is None:
        return 0, 0, False
    due = retention.purgeable(candidates(cutoff, retention.batch), now_ns)
    sessions = rows = 0
    for session_id in due:
        s, r = purge([session_id])
        sessions, rows = sessions + s, rows + r
        if rows >= max_rows:
            return sessions, rows, True
    return sessions, rows, len(due) >= retention.batch
