"""When the colony pulls a session's events from its agents: a pure
schedule (no sockets, no database). Each part of an open session is pulled
every `interval` seconds while it runs, at once while a page came back full
or once it has ended (its last events), never twice at the same time, and
at most `per_tick` pulls start per loop iteration so the colony keeps
serving clients whatever the number of sessions."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from coral.proto import coral_pb2 as pb

PULL_PAGE = 2000  # events per pull (1000 calls)
PULLS_PER_TICK = 16

PartKey = tuple[str, str]  # (session id, agent id)


@dataclass
class PullSchedule:
    interval: float
    per_tick: int = PULLS_PER_TICK
    in_flight: set[PartKey] = field(default_factory=set)
    next_at: dict[PartKey, float] = field(default_factory=dict)
    _start: int = 0  # where the last round stopped: every part gets its turn

    def due(self, sessions: Iterable[pb.DebugSession], reachable: Callable[[str], bool], now: float) -> list[PartKey]:
        """The parts to pull now, at most `per_tick`: ended parts and full
        pages first, then running parts whose interval has passed, in turn."""
        urgent: list[PartKey] = []
        routine: list[PartKey] = []
        for s in sessions:
            for p in s.parts:
                key = (s.session_id, p.agent_id)
                if p.complete or key in self.in_flight or not reachable(p.agent_id):
                    continue
                if p.session.status != "active" or self.next_at.get(key) == 0.0:
                    urgent.append(key)
                elif now >= self.next_at.get(key, 0.0):
                    routine.append(key)
        room = self.per_tick - len(urgent)
        if room <= 0:
            return urgent[: self.per_tick]
        if len(routine) > room:
            start = self._start % len(routine)
            self._start = start + room
            routine = (routine[start:] + routine[:start])[:room]
        return urgent + routine

    def hurry(self, key: PartKey) -> None:
        """Pull this part at the next chance (a client waits for it)."""
        self.next_at[key] = 0.0

    def sent(self, key: PartKey, now: float) -> None:
        self.in_flight.add(key)
        self.next_at[key] = now + self.interval

    def answered(self, key: PartKey, more: bool) -> None:
        """A pull came back (or failed); `more`: a full page, pull again at once."""
        self.in_flight.discard(key)
        if more:
            self.next_at[key] = 0.0

    def forget(self, session_id: str) -> None:
        for key in [k for k in self.next_at if k[0] == session_id]:
            del self.next_at[key]
