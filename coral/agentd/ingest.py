"""How much CPU the agent may spend taking calls in: reading the ring
buffer, decoding, writing to agent.duckdb, handing calls out. A token
bucket: it fills at `percent` of one CPU and holds at most BURST seconds of
that; work is allowed while it holds any, and charged after (so it may go
into debt, by one piece of work at most). While it is empty the agent stops
reading; the kernel then sheds what does not fit in the ring buffer and
counts it (`ringbuf_full`), so a hot function costs the host a bounded
share of a CPU and every call is still accounted for. The loop keeps
answering its sockets meanwhile. Pure bookkeeping: the caller measures and
charges.

Any span of T seconds holds at most percent × (T + BURST) of CPU plus the
piece of work that emptied the bucket. Fixed one-second windows, which this
replaced, allowed twice the budget in a second that straddled two of them:
the end of one window and the start of the next."""

from __future__ import annotations

from dataclasses import dataclass

BURST = 0.1  # seconds of the budget that may be spent at once


@dataclass
class IngestBudget:
    percent: float  # of one CPU; 0: no limit
    tokens: float = 0.0  # CPU seconds that may still be spent (below 0: owed)
    last: float | None = None  # when the bucket was last filled
    paused_windows: int = 0  # times the bucket was emptied and reading stopped (ping: ingest.paused_windows)

    @property
    def rate(self) -> float:
        return self.percent / 100

    def allows(self, now: float) -> bool:
        self._fill(now)
        return not self.percent or self.tokens > 0

    def resume_at(self, now: float) -> float:
        """When reading may go on: now, or once the bucket holds CPU again."""
        return now if self.allows(now) else now + (-self.tokens) / self.rate + 1e-6

    def charge(self, now: float, cpu_seconds: float) -> None:
        if not self.percent:
            return
        was_open = self.allows(now)
        self.tokens -= cpu_seconds
        if was_open and self.tokens <= 0:
            self.paused_windows += 1

    def _fill(self, now: float) -> None:
        if self.last is None:
            self.last, self.tokens = now, self.rate * BURST
        elif now > self.last:
            self.tokens = min(self.rate * BURST, self.tokens + (now - self.last) * self.rate)
            self.last = now
