"""Heartbeat decisions as pure functions of monotonic timestamps."""

from __future__ import annotations

from dataclasses import dataclass


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
