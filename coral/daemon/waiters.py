"""Questions held until there is news: a follower's QueryUprobeEvents with
`wait_ms` waits here until its session has a new call, changes state, or its
wait is over (docs/protocol.md, "Following a session"). Pure bookkeeping,
no sockets: each held question is a callback that answers it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

MAX_WAIT_MS = 5000  # a longer wait_ms is taken as this
MAX_PER_KEY = 64  # questions held on one session; one more is answered at once


@dataclass
class _Held:
    deadline: float
    answer: Callable[[], None]


@dataclass
class Waiters:
    per_key: int = MAX_PER_KEY
    held: dict[str, list[_Held]] = field(default_factory=dict)
    woken: int = 0  # questions answered because their session had news
    timed_out: int = 0  # answered when their wait was over

    def hold(self, key: str, wait_ms: int, now: float, answer: Callable[[], None], bounded: bool = True) -> bool:
        """Hold a question on `key` for up to `wait_ms`; False when `key`
        already has `per_key` held (answer it now), unless not `bounded`."""
        waiting = self.held.setdefault(key, [])
        if bounded and len(waiting) >= self.per_key:
            return False
        waiting.append(_Held(now + min(wait_ms, MAX_WAIT_MS) / 1000, answer))
        return True

    def wake(self, key: str) -> int:
        """Answer every question held on `key` (it has news)."""
        waiting = self.held.pop(key, [])
        self.woken += len(waiting)
        for w in waiting:
            w.answer()
        return len(waiting)

    def expire(self, now: float) -> int:
        """Answer the questions whose wait is over."""
        n = 0
        for key in list(self.held):
            due = [w for w in self.held[key] if w.deadline <= now]
            if not due:
                continue
            self.held[key] = [w for w in self.held[key] if w.deadline > now]
            if not self.held[key]:
                del self.held[key]
            for w in due:
                w.answer()
            n += len(due)
        self.timed_out += n
        return n

    def next_deadline(self) -> float | None:
        return min((w.deadline for ws in self.held.values() for w in ws), default=None)

    def __len__(self) -> int:
        return sum(len(ws) for ws in self.held.values())

    def counters(self) -> dict[str, int]:
        return {"followers.held": len(self), "followers.woken": self.woken, "followers.timed_out": self.timed_out}
