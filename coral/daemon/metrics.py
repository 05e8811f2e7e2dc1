"""What a daemon's /metrics serves, as plain data: the loop builds a
Snapshot (families of numbers) once per heartbeat, and the server thread
(coral/daemon/prometheus.py, imported only when [agent] / [colony]
metrics_listen is set) serves whichever snapshot is current. Counts only:
no captured value, no service, function, process or user name reaches a
label (docs/security.md)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

# Requests the colony is timing at once, at most (a reply never sent, e.g.
# to a client that left, must not hold memory for good): the oldest go first.
MAX_TIMED = 100_000
OTHER = "other"  # the method label of a request for a method not served: the label set stays bounded


@dataclass(frozen=True)
class Family:
    """One metric family in a snapshot: `values` maps the value of its one
    label (`label`) to a number, or "" to it when it has no label."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    values: Mapping[str, float] = field(default_factory=dict)
    label: str = ""


Snapshot = tuple[Family, ...]


def one(name: str, kind: Literal["counter", "gauge"], help: str, value: float) -> Family:
    return Family(name, kind, help, {"": value})


class RequestTimes:
    """When each request a daemon answers later came in, by a key the reply
    also carries (the colony: the client's identity and request id)."""

    def __init__(self, observe: Callable[[str, float], None], limit: int = MAX_TIMED) -> None:
        self.observe = observe
        self.limit = limit
        self._started: dict[tuple[bytes, bytes], tuple[str, float]] = {}

    def start(self, key: tuple[bytes, bytes], method: str, now: float) -> None:
        self._started.pop(key, None)  # a reused id starts again, at the end of the order
        self._started[key] = (method, now)
        if len(self._started) > self.limit:
            del self._started[next(iter(self._started))]

    def finish(self, key: tuple[bytes, bytes], now: float | None = None) -> None:
        started = self._started.pop(key, None)
        if started is not None:
            self.observe(started[0], (time.monotonic() if now is None else now) - started[1])

    def __len__(self) -> int:
        return len(self._started)
