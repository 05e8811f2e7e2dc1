"""The agent's call counts over every session of this run, for /metrics
(coral/daemon/metrics.py): what ended sessions left, plus what live ones
count so far. Each count only grows, whatever order sessions end in, so
Prometheus can treat them as counters."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

STORAGE = "storage"  # the one cause counted as it happens: a loss can come after a session's final counts


@dataclass
class CallTotals:
    """Sessions ended (by status) and the calls of those whose final counts
    are in; calls stored and lost to storage as they happen."""

    ended: Counter[str] = field(default_factory=Counter)  # sessions, by status
    calls: int = 0  # seen by the kernel: returned while the session ran
    lost: Counter[str] = field(default_factory=Counter)  # by cause, as in a session's lost map
    stored: int = 0  # handed to agent.duckdb and taken (written, or held while it cannot be)

    def session_ended(self, status: str) -> None:
        self.ended[status] += 1

    def session_final(self, calls: int, lost: Mapping[str, int]) -> None:
        """A session's final counts (storage losses are counted by `flushed`)."""
        self.calls += calls
        self.lost.update({cause: n for cause, n in lost.items() if cause != STORAGE})

    def flushed(self, handed: int, dropped: int) -> None:
        self.stored += handed - dropped
        self.lost[STORAGE] += dropped

    def with_live(self, live: Iterable[tuple[int, Mapping[str, int]]]) -> tuple[int, Counter[str]]:
        """Calls seen and lost by cause: these totals plus the live
        sessions' (calls, lost) so far (each counted here once it is final)."""
        calls, lost = self.calls, Counter(self.lost)
        for n, session_lost in live:
            calls += n
            lost.update({cause: v for cause, v in session_lost.items() if cause != STORAGE})
        return calls, lost
