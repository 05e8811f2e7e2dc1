"""Heartbeat decisions as pure functions of monotonic timestamps."""

from __future__ import annotations

from dataclasses import dataclass, field


def is_dead(last_heard: float, now: float, interval: float, liveness: int) -> bool:
    """A peer is dead once ``liveness`` heartbeat intervals pass in silence."""
    return now - last_heard > interval * liveness


@dataclass
class Backoff:
    """Reconnect delays doubling from ``initial`` to ``maximum``; reset on success."""

    initial: float = 1.0
    maximum: float = 32.0
    current: float = 0.0

    def next_delay(self) -> float:
        self.current = self.initial if self.current == 0 else min(self.current * 2, self.maximum)
        return self.current

    def reset(self) -> None:
        self.current = 0.0


@dataclass
class Breaker:
    """A peer that did not answer is not asked again until its cooldown has
    passed (doubling from ``initial`` to ``maximum`` while it stays silent);
    then one ask goes through, and an answer closes the breaker."""

    initial: float = 5.0
    maximum: float = 60.0
    open_until: float = 0.0
    backoff: Backoff = field(init=False)

    def __post_init__(self) -> None:
        self.backoff = Backoff(self.initial, self.maximum)

    def closed(self, now: float) -> bool:
        return now >= self.open_until

    def failed(self, now: float) -> float:
        """Open it; returns the cooldown."""
        delay = self.backoff.next_delay()
        self.open_until = now + delay
        return delay

    def answered(self) -> None:
        self.backoff.reset()
        self.open_until = 0.0
