"""How much CPU the agent may spend taking calls in: reading the ring
buffer, decoding, writing to agent.duckdb. A fixed window of one second; in
a window whose charge has reached `percent` of one CPU, the agent stops
reading until the next window. The kernel then sheds what does not fit in
the ring buffer and counts it (`ringbuf_full`), so a hot function costs the
host a bounded share of a CPU and every call is still accounted for. The
loop keeps answering its sockets meanwhile. Pure bookkeeping: the caller
measures and charges."""

from __future__ import annotations

from dataclasses import dataclass

WINDOW = 1.0  # seconds


@dataclass
class IngestBudget:
    percent: float  # of one CPU; 0: no limit
    window_start: float = 0.0
    charged: float = 0.0  # CPU seconds in this window
    paused_windows: int = 0  # windows in which reading stopped early

    def allows(self, now: float) -> bool:
        self._roll(now)
        return not self.percent or self.charged < self.percent / 100 * WINDOW

    def resume_at(self, now: float) -> float:
        """When reading may go on: now, or the next window's start."""
        return now if self.allows(now) else self.window_start + WINDOW

    def charge(self, now: float, cpu_seconds: float) -> None:
        self._roll(now)
        was_open = self.allows(now)
        self.charged += cpu_seconds
        if was_open and not self.allows(now):
            self.paused_windows += 1

    def _roll(self, now: float) -> None:
        if now - self.window_start >= WINDOW:
            self.window_start = now - (now - self.window_start) % WINDOW if self.window_start else now
            self.charged = 0.0
